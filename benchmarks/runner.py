"""Run one sampler on one benchmark target, score it, and publish it (docs/lab/benchmarks.md).

:func:`run_benchmark` fits ``numpyro_hjb.fit(target.model, engine=...)`` (the same path as a
user's model), times 10,000 fresh proposals after compilation, estimates log Z from them
(:func:`numpyro_hjb.evidence.estimate_evidence`), draws 2,000 resampled posterior samples
and scores them against 2,000 exact samples (:mod:`benchmarks.metrics`).
The peers run on the same target: ``engine="nuts"`` (NumPyro NUTS on the model) and
``engine="smc"`` (BlackJAX adaptive tempered SMC on the flat log density).

:func:`write_results` upserts rows into ``docs/benchmarks.json`` (keyed by target, method,
settings) and regenerates ``docs/benchmarks.md`` from it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from numpyro_hjb.smc import SMC_DEFAULTS
from . import metrics
from .targets import BenchmarkTarget, get_target

__all__ = [
    "PEERS",
    "LEARNED_ENGINES",
    "NUM_METRIC_SAMPLES",
    "run_benchmark",
    "run_seeds",
    "aggregate_rows",
    "method_label",
    "settings_label",
    "format_row",
    "markdown_table",
    "write_results",
    "plot_run",
]

#: engines whose ``loss`` setting goes into the method label
LEARNED_ENGINES = ("dis", "dds", "pis")
#: engines that are not numpyro_hjb engines
PEERS = ("nuts", "smc")
#: model samples and exact samples compared by the metrics
NUM_METRIC_SAMPLES = 2000

NUTS_SETTINGS = {"num_chains": 2, "num_warmup": 1000, "num_samples": 2000}
SMC_SETTINGS = dict(SMC_DEFAULTS)

COLUMNS = (
    "target", "method", "settings", "Δlog Z ± SE", "ELBO", "ESS", "k̂", "W²_γ", "Δstd",
    "modes", "mode TV", "compile s", "train s", "sample 10k s", "grad evals",
)


# --------------------------------------------------------------------------- labels


def method_label(engine: str, fit_config: dict | None = None) -> str:
    """"DIS-LV", "NUTS", "SMC", "TT-HJB", ..."""
    fit_config = fit_config or {}
    if engine in LEARNED_ENGINES:
        return f"{engine.upper()}-{str(fit_config.get('loss', 'lv')).upper()}"
    return {"tt": "TT-HJB"}.get(engine, engine.upper())


def settings_label(fit_config: dict | None = None) -> str:
    """Short, sorted ``key=value`` list of the non-default settings (``loss`` excluded)."""
    items = sorted((k, v) for k, v in (fit_config or {}).items() if k != "loss")
    return " ".join(f"{k}={v}" for k, v in items) or "defaults"


# --------------------------------------------------------------------------- runs


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def _run_engine(target, engine, rng_key, num_samples, progress_bar, fit_config) -> dict:
    """A numpyro_hjb engine: fit, time ``num_samples`` proposals, resample 2,000 draws."""
    from numpyro_hjb.api import fit
    from numpyro_hjb.evidence import estimate_evidence

    # The fit gets the run's key itself (as a user's fit(model, rng_key=PRNGKey(seed)));
    # the evaluation keys are folded off it.
    key_compile, key_prop, key_draw = jax.random.split(jax.random.fold_in(rng_key, 1), 3)
    result = fit(target.model, engine=engine, rng_key=rng_key, progress_bar=progress_bar,
                 **fit_config)
    _, propose_compile_s = _timed(result.propose, key_compile, num_samples)
    (_, log_w), sample_s = _timed(result.propose, key_prop, num_samples)
    ev = estimate_evidence(log_w, method=f"{engine} importance sampling")
    draws = result.sample(key_draw, NUM_METRIC_SAMPLES)
    z = jax.vmap(result.target.to_unconstrained)(draws.x)
    info = result.info
    return {
        "samples": np.asarray(z),
        "history": dict(result.history),
        "log_z": ev.log_z, "log_z_se": ev.log_z_se, "elbo": ev.elbo, "ess": ev.ess,
        "khat": ev.khat, "num_nonfinite": ev.num_nonfinite,
        "compile_s": info.get("compile_s"), "train_s": info.get("train_s"),
        "sample_s": sample_s, "propose_compile_s": propose_compile_s,
        "grad_evals": info.get("num_target_grad_evals"),
        "num_target_evals": info.get("num_target_evals"),
        "scale_search": info.get("scale_search") or None,  # TT scale="auto"
        "config": {k: v for k, v in result.config.items() if _is_plain(v)},
    }


def _run_nuts(target, rng_key, progress_bar) -> dict:
    """NumPyro NUTS on the model: 2 chains x (1000 warm-up + 2000 draws), sequential.

    ``train_s`` is the warm-up (compilation included; NUTS has no separate compile step),
    ``sample_s`` the 2 x 2000 draws; gradient evaluations are the leapfrog steps of both.
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import MCMC, NUTS

    s = NUTS_SETTINGS
    mcmc = MCMC(NUTS(target.model), num_warmup=s["num_warmup"], num_samples=s["num_samples"],
                num_chains=s["num_chains"], chain_method="sequential", progress_bar=progress_bar)
    key_warm, key_run, key_sub = jax.random.split(rng_key, 3)
    t0 = time.perf_counter()
    mcmc.warmup(key_warm, collect_warmup=True, extra_fields=("num_steps",))
    warm_steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mcmc.run(key_run, extra_fields=("num_steps", "diverging"))
    jax.block_until_ready(mcmc.get_samples())
    sample_s = time.perf_counter() - t0
    extra = mcmc.get_extra_fields()
    # Latent sites only (the targets have no deterministic sites); ravel_pytree sorts the
    # names as make_target does, and all sites have real support (constrained =
    # unconstrained coordinates).
    draws = mcmc.get_samples()
    flat = jax.vmap(lambda d: ravel_pytree(d)[0])(draws)
    idx = jax.random.choice(key_sub, flat.shape[0], (NUM_METRIC_SAMPLES,), replace=False)
    return {
        "samples": np.asarray(flat[idx]),
        "history": {},
        "compile_s": None, "train_s": train_s, "sample_s": sample_s,
        "grad_evals": warm_steps + int(np.sum(extra["num_steps"])),
        "num_divergences": int(np.sum(extra["diverging"])),
        "config": dict(s),
    }


def _smc_program(target: BenchmarkTarget, s: dict):
    """Adaptive tempered SMC from N(0, sigma^2 I) to rho with HMC moves
    (:func:`numpyro_hjb.smc.tempered_smc_program`), sigma = the target's ``init_scale``."""
    from numpyro_hjb.smc import tempered_smc_program

    return tempered_smc_program(target.log_density, target.dim, target.init_scale, s)


def _run_smc(target, rng_key) -> dict:
    """The SMC peer: compile + run once (``compile_s``), then time a second run (``train_s``)."""
    s = SMC_SETTINGS
    run = _smc_program(target, s)
    key_compile, key_run, key_sub = jax.random.split(rng_key, 3)
    _, first_s = _timed(run, key_compile)
    (particles, log_z, n_temps), train_s = _timed(run, key_run)
    idx = jax.random.choice(key_sub, particles.shape[0], (NUM_METRIC_SAMPLES,),
                            replace=particles.shape[0] < NUM_METRIC_SAMPLES)
    grad_evals = int(n_temps) * s["num_mcmc_steps"] * s["num_particles"] * (
        s["num_integration_steps"] + 1)
    return {
        "samples": np.asarray(particles[idx]),
        "history": {},
        "log_z": float(log_z),
        "compile_s": max(first_s - train_s, 0.0), "train_s": train_s, "sample_s": None,
        "grad_evals": grad_evals,
        "num_temperatures": int(n_temps),
        "config": {**s, "init_scale": float(target.init_scale), "moves": "hmc"},
    }


def _is_plain(v) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, (tuple, list)) and all(isinstance(e, (int, float, str)) for e in v)
    )


def _score(target: BenchmarkTarget, samples: np.ndarray,
           rng_key) -> tuple[dict, np.ndarray | None]:
    """All sample metrics against 2,000 exact samples; a model target without exact samples
    (``sample_exact`` None) gets no W2, only the sd error against its reference."""
    out = {"w2": None, "delta_std": metrics.delta_std(samples, target.true_std)}
    exact = None
    if target.sample_exact is not None:
        exact = np.asarray(target.sample_exact(rng_key, NUM_METRIC_SAMPLES))
        out["w2"] = metrics.sinkhorn_w2(samples, exact)["w2"]
    if target.mode_of is not None:
        covered, total, tv = metrics.mode_coverage(samples, target)
        out.update(modes_covered=covered, num_modes=total, mode_tv=tv)
    if target.num_wells:
        out["well_balance"] = metrics.well_balance(samples, target.num_wells)
    return out, exact


def run_benchmark(
    target_name: str,
    engine: str,
    seed: int = 0,
    num_samples: int = 10_000,
    progress_bar: bool = False,
    figure_dir: str | None = None,
    **fit_config,
) -> dict:
    """Fit ``engine`` on the benchmark target ``target_name`` and score it.

    Args:
        target_name: a name from :func:`~benchmarks.targets.get_target`.
        engine: a numpyro_hjb engine ("dis", "dds", "pis", "tt") or a peer ("nuts", "smc").
        seed: PRNG seed (``jax.random.PRNGKey(seed)``) of the fit and the evaluation.
        num_samples: proposals drawn (after a compiling call) for the timing and log Z.
        progress_bar: show the fit's progress bar.
        figure_dir: if given, save ``{figure_dir}/{target}_{method}.png``.
        **fit_config: passed to ``numpyro_hjb.fit`` (e.g. ``loss="lv"``,
            ``num_iterations=2000``, ``whitening="laplace"``); not accepted by the peers.

    Returns:
        a JSON-serialisable row: target, method, settings, seed, log_z_true, log_z,
        log_z_se, delta_log_z, elbo, ess, khat, w2, w2_settings, delta_std, modes_covered,
        num_modes, mode_tv, well_balance, compile_s, train_s, sample_s, grad_evals, ...
        (entries that do not apply are None).
    """
    from numpyro_hjb.base import ENGINES

    target = get_target(target_name)
    if engine not in ENGINES and engine not in PEERS:
        raise ValueError(f"engine must be one of {sorted([*ENGINES, *PEERS])}, got {engine!r}")
    if engine in PEERS and fit_config:
        raise ValueError(f"engine {engine!r} takes no settings, got {sorted(fit_config)}")
    key_run = jax.random.PRNGKey(seed)
    key_exact = jax.random.fold_in(key_run, 2)
    if engine == "nuts":
        run = _run_nuts(target, key_run, progress_bar)
    elif engine == "smc":
        run = _run_smc(target, key_run)
    else:
        run = _run_engine(target, engine, key_run, num_samples, progress_bar, fit_config)
    scores, exact = _score(target, run["samples"], key_exact)
    method = method_label(engine, {**run.get("config", {}), **fit_config})
    log_z = run.get("log_z")
    row = {
        "target": target.name,
        "method": method,
        "settings": settings_label(fit_config),
        "engine": engine,
        "seeds": [int(seed)],
        "dim": target.dim,
        "log_z_true": float(target.log_z),
        "log_z": log_z,
        "log_z_se": run.get("log_z_se"),
        "delta_log_z": None if log_z is None else metrics.delta_log_z(log_z, target.log_z),
        "elbo": run.get("elbo"),
        "ess": run.get("ess"),
        "khat": run.get("khat"),
        "w2": scores["w2"],
        # sqrt of the (squared-cost) divergence, on the scale of W_2 itself
        "w2_sqrt": None if scores["w2"] is None else math.sqrt(max(scores["w2"], 0.0)),
        "w2_settings": metrics.sinkhorn_settings(),
        "delta_std": scores["delta_std"],
        "modes_covered": scores.get("modes_covered"),
        "num_modes": scores.get("num_modes"),
        "mode_tv": scores.get("mode_tv"),
        "well_balance": scores.get("well_balance"),
        "compile_s": run.get("compile_s"),
        "train_s": run.get("train_s"),
        "sample_s": run.get("sample_s"),
        "num_samples": int(num_samples) if engine not in PEERS else None,
        "grad_evals": run.get("grad_evals"),
        "config": run.get("config", {}),
        "curve": training_curve(run["history"]),
        "extra": {k: run[k] for k in ("num_divergences", "num_temperatures", "num_nonfinite",
                                       "propose_compile_s", "num_target_evals", "scale_search")
                  if run.get(k) is not None},
        "device": _device(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if figure_dir is not None:
        safe = method.replace("/", "_")
        plot_run(os.path.join(figure_dir, f"{target.name}_{safe}.png"), target,
                 run["samples"], exact, run["history"], title=f"{target.name} {method}")
    return _to_json(row)


def training_curve(history: dict | None, max_points: int = 200) -> dict:
    """The training history as block means over at most ``max_points`` blocks per series
    (non-finite entries ignored), with the iteration each block ends at: kept in the JSON
    so that a fit that degrades or collapses can be diagnosed from its row."""
    if not history or "loss" not in history or len(history["loss"]) == 0:
        return {}
    n = len(history["loss"])
    edges = np.unique(np.linspace(0, n, min(n, max_points) + 1).astype(int))
    out = {"iteration": [int(e) for e in edges[1:]]}
    for name, series in history.items():
        series = np.asarray(series, dtype=float)
        if series.shape != (n,):
            continue
        blocks = [series[a:b][np.isfinite(series[a:b])] for a, b in zip(edges[:-1], edges[1:])]
        out[name] = [float(b.mean()) if b.size else None for b in blocks]
    return out


def run_seeds(target_name: str, engine: str, seeds: Sequence[int], **kwargs) -> dict:
    """:func:`run_benchmark` for each seed, combined by :func:`aggregate_rows`."""
    rows = [run_benchmark(target_name, engine, seed=int(s), **kwargs) for s in seeds]
    return aggregate_rows(rows)


_MEAN_KEYS = ("log_z", "delta_log_z", "elbo", "ess", "khat", "w2", "w2_sqrt", "delta_std",
              "modes_covered", "mode_tv", "well_balance", "compile_s", "train_s", "sample_s",
              "grad_evals")


def aggregate_rows(rows: Sequence[dict]) -> dict:
    """Mean over seeds of the numeric columns; ``log_z_se`` becomes the standard deviation of
    log Z_hat over seeds (``log_z_se_kind = "seed std"``). The per-seed rows are kept."""
    if len(rows) == 1:
        return dict(rows[0])
    out = dict(rows[0])
    for k in _MEAN_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if len(vals) == len(rows) else None
    lz = [r["log_z"] for r in rows if r.get("log_z") is not None]
    out["log_z_se"] = float(np.std(lz, ddof=1)) if len(lz) == len(rows) else None
    out["log_z_se_kind"] = "seed std"
    out["seeds"] = [s for r in rows for s in r["seeds"]]
    out["per_seed"] = [{k: r.get(k) for k in ("seeds", *_MEAN_KEYS, "log_z_se", "curve")}
                       for r in rows]
    out.pop("curve", None)
    return out


def _device() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return f"{dev.platform}: {getattr(dev, 'device_kind', '?')} ({os.cpu_count()} CPU cores)"


def _to_json(obj):
    """Numpy scalars/arrays -> Python values; NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _to_json(np.asarray(obj).tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# --------------------------------------------------------------------------- table


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _fmt_small(v: float) -> str:
    """3 decimals, or 2 significant digits when that would print 0.000 (TT Gaussian rows)."""
    return f"{v:.1e}" if 0 < abs(v) < 5e-4 else f"{v:.3f}"


def format_row(row: dict) -> str:
    """One markdown table row (columns :data:`COLUMNS`)."""
    if row.get("delta_log_z") is None:
        dlz = "–"
    else:
        dlz = _fmt_small(row["delta_log_z"])
        if row.get("log_z_se") is not None:
            dlz += f" ± {_fmt_small(row['log_z_se'])}"
    if row.get("num_modes") is not None:
        cov = row["modes_covered"]
        cov = f"{cov:.0f}" if float(cov).is_integer() else f"{cov:.1f}"
        modes = f"{cov}/{row['num_modes']}"
    elif row.get("well_balance") is not None:
        modes = f"balance {row['well_balance']:.3f}"
    else:
        modes = "–"
    grad = row.get("grad_evals")
    cells = [
        row["target"], row["method"], row["settings"], dlz, _fmt(row.get("elbo")),
        _fmt(row.get("ess")), _fmt(row.get("khat"), ".2f"), _fmt(row.get("w2")),
        _fmt(row.get("delta_std")), modes, _fmt(row.get("mode_tv")),
        _fmt(row.get("compile_s"), ".1f"), _fmt(row.get("train_s"), ".1f"),
        _fmt(row.get("sample_s"), ".2f"), "–" if grad is None else f"{grad:.2e}",
    ]
    seeds = row.get("seeds", [0])
    if len(seeds) > 1:
        cells[2] = f"{cells[2]} (seeds {','.join(map(str, seeds))})"
    elif list(seeds) != [0]:  # single-seed rows are seed 0 unless they say otherwise
        cells[2] = f"{cells[2]} (seed {seeds[0]})"
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(rows: Sequence[dict]) -> str:
    """The markdown table of ``rows`` (header, separator, one line per row)."""
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    return "\n".join([head, sep, *(format_row(r) for r in rows)])


def _key(row: dict) -> tuple:
    # The seeds belong to the key: a run on another seed adds a row instead of replacing one.
    return (row["target"], row["method"], row["settings"], tuple(row.get("seeds", [0])))


def _header(rows: Sequence[dict]) -> str:
    devices = sorted({r.get("device", "?") for r in rows})
    return "\n".join([
        "# Benchmark results",
        "",
        "Generated by `python -m numpyro_hjb bench` from `benchmarks.json` (do not edit by hand).",
        f"Machine: {', '.join(devices) or 'cpu'}; 2 CPU cores unless the device says otherwise.",
        "",
        "- Δlog Z = |log Ẑ − log Z| from 10,000 fresh proposals, ± its delta-method standard "
        "error (± the std over seeds when several seeds are averaged); ELBO = mean log w; "
        "ESS = 1/(N Σ w̄²); k̂ = PSIS Pareto k̂ (ArviZ).",
        f"- W²_γ: {metrics.sinkhorn_settings()}; 2,000 resampled model draws vs 2,000 exact "
        "samples.",
        "- Δstd = mean over dims of |std − true std|; modes = modes holding ≥ half their true "
        "weight / total; mode TV = total variation between sampled and true mode weights; "
        "manywell20 (2²⁰ modes): 'balance' = max_i |P(x_i > 0) − ½|.",
        "- compile s / train s from the engine (`info`); sample 10k s = second call of "
        "`propose(key, 10_000)`. NUTS: 2 chains × (1000 warm-up + 2000 draws), train s = "
        "warm-up incl. compilation, sample s = draws. SMC: BlackJAX adaptive tempered SMC, "
        "2,000 particles, HMC moves, draws resampled by the final weights, train s = a second "
        "(compiled) run. `warm_start=smc`: train s includes the SMC run and the regression.",
        "",
    ])


def write_results(rows: Sequence[dict], path: str = "docs/benchmarks.md") -> list[dict]:
    """Upsert ``rows`` into ``<path stem>.json`` (key: target, method, settings, seeds) and
    regenerate the markdown table at ``path`` from it. Returns all stored rows."""
    json_path = os.path.splitext(path)[0] + ".json"
    stored: list[dict] = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            stored = json.load(f)
    index = {_key(r): i for i, r in enumerate(stored)}
    for row in rows:
        row = _to_json(row)
        if _key(row) in index:
            stored[index[_key(row)]] = row
        else:
            index[_key(row)] = len(stored)
            stored.append(row)
    stored.sort(key=lambda r: (r["target"], r["method"], r["settings"], r.get("seeds", [0])))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(stored, f, indent=1, ensure_ascii=False)
    with open(path, "w") as f:
        f.write(_header(stored) + "\n" + markdown_table(stored) + "\n")
    return stored


# --------------------------------------------------------------------------- figure


def plot_run(path: str, target: BenchmarkTarget, samples, exact, history: dict | None = None,
             title: str = "") -> str:
    """Left: first two coordinates of model vs exact samples (gmm9: mode centres too).
    Right: training curve ``history["loss"]`` (and ``history["ess"]`` on a second axis);
    omitted when there is no history. Saved with the Agg backend; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_curve = bool(history) and "loss" in history and len(history["loss"]) > 0
    fig, axes = plt.subplots(1, 2 if has_curve else 1, figsize=(10 if has_curve else 5, 4.2))
    ax = axes[0] if has_curve else axes
    x = np.asarray(samples)
    j = 1 if target.dim > 1 else 0
    if exact is not None:
        y = np.asarray(exact)
        ax.scatter(y[:, 0], y[:, j], s=3, alpha=0.35, color="tab:gray", label="exact")
    ax.scatter(x[:, 0], x[:, j], s=3, alpha=0.35, color="tab:blue", label="model")
    if target.name == "gmm9" and target.mode_centres is not None:
        c = target.mode_centres
        ax.scatter(c[:, 0], c[:, 1], marker="x", s=30, color="tab:red", label="mode centres")
    ax.set_xlabel("x1")
    ax.set_ylabel(f"x{j + 1}")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    ax.set_title(title or target.name)
    if has_curve:
        ax2 = axes[1]
        loss = np.asarray(history["loss"], dtype=float)
        ax2.plot(np.arange(loss.size), loss, color="tab:blue", lw=0.8)
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("loss", color="tab:blue")
        if np.all(loss[np.isfinite(loss)] > 0):
            ax2.set_yscale("log")
        if "ess" in history and len(history["ess"]):
            ax3 = ax2.twinx()
            ax3.plot(np.asarray(history["ess"], dtype=float), color="tab:orange", lw=0.8)
            ax3.set_ylabel("ESS", color="tab:orange")
            ax3.set_ylim(0, 1.05)
        ax2.set_title("training")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
