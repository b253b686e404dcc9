"""The headline table: the default engine on every target, 3 seeds, beside the peers run in
the same command at equal wall-clock (``python -m numpyro_hjb bench headline``).

For each target and seed:

* **ours**: ``numpyro_hjb.fit(model, rng_key=PRNGKey(seed))`` with every default, then 2,000
  draws. Reported: log Z_hat - log Z and its SE, the goal's metric (modes and mode TV, the W1
  distance of x1 against its exact-draw floor, posterior means and sds against the
  reference, <|m|>), the fit's wall-clock and its compilation time.
* **SMC**: BlackJAX adaptive tempered SMC (:mod:`numpyro_hjb.smc`, HMC moves, from the
  model's prior where every latent site has a proper prior, else from N(0, s^2 I) with the
  target's ``init_scale``) with its particle count raised until its run
  time (after compilation) equals our fit's time after compilation (past 400,000 particles,
  independent runs fill the time and their Z estimates are averaged).
* **NUTS**: NumPyro NUTS, 2 chains x 1000 warm-up steps, then as many draws as fill our
  fit's wall-clock, on the same model: its time, and the same sample metric where one is
  defined.

The goals are those of the issue that defined the table (docs/benchmarks.md says which).
Results go to ``docs/benchmarks.json`` and the table to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time

import jax
import numpy as np

from .targets import get_target

__all__ = ["GOALS", "HEADLINE_TARGETS", "main", "run_nuts", "run_ours", "run_smc"]

HEADLINE_TARGETS = ("gmm9", "manywell5", "manywell50", "funnel10", "eight_schools",
                    "logistic_regression", "random_walk50", "phi4")

#: target -> (goal text, Delta log Z bound or None)
GOALS = {
    "gmm9": ("Δlog Z ≤ 0.01, 9/9 modes, TV ≤ 0.05", 0.01),
    "manywell5": ("Δlog Z ≤ 0.02, 32/32 modes", 0.02),
    "manywell50": ("Δlog Z ≤ 0.05, 32/32 modes", 0.05),
    "funnel10": ("Δlog Z ≤ 0.05, W1(x₁) ≤ 2 × floor", 0.05),
    "eight_schools": ("Δlog Z ≤ 0.02", 0.02),
    "logistic_regression": ("Δlog Z ≤ 0.02", 0.02),
    "random_walk50": ("means within 3 MCSE, sds within 10 %", None),
    "phi4": ("⟨|m|⟩ within 2 %", None),
}
NUM_DRAWS = 2000
NUTS_SETTINGS = {"num_chains": 2, "num_warmup": 1000, "num_samples": 2000}


def _sample_metrics(name: str, target, x: np.ndarray, rng_key) -> dict:
    """The goal's sample metric for draws x (n, d) in flat unconstrained coordinates."""
    from . import metrics

    out: dict = {}
    if target.mode_of is not None:
        covered, total, tv = metrics.mode_coverage(x, target)
        out.update(modes=f"{covered}/{total}", modes_ok=covered == total, mode_tv=tv)
    if name.startswith("funnel"):
        from scipy.stats import wasserstein_distance

        exact = [np.asarray(target.sample_exact(jax.random.fold_in(rng_key, i), x.shape[0]))[:, 0]
                 for i in range(6)]
        floor = float(np.mean([wasserstein_distance(exact[2 * i], exact[2 * i + 1])
                               for i in range(3)]))
        out.update(w1_x1=float(wasserstein_distance(x[:, 0], exact[0])), w1_floor=floor)
    if name.startswith("random_walk"):
        unique = len(np.unique(x, axis=0))
        sd = x.std(0)
        mcse = sd / math.sqrt(min(unique, x.shape[0]))
        z = np.abs(x.mean(0) - target.mean) / mcse
        ratio = sd / target.true_std
        out.update(max_mean_z=float(z.max()), max_sd_dev=float(np.max(np.abs(ratio - 1.0))))
    if name == "phi4":
        from .models import _reference, phi4_abs_magnetisation

        ref = _reference("phi4")["abs_magnetisation"]
        m = phi4_abs_magnetisation(x)
        out.update(abs_m=m, abs_m_ref=ref, abs_m_dev=abs(m / ref - 1.0))
    return out


def goal_met(name: str, row: dict) -> bool | None:
    """Whether one seed's result meets the target's goal."""
    bound = GOALS[name][1]
    ok = True
    if bound is not None:
        ok &= row.get("delta_log_z") is not None and abs(row["delta_log_z"]) <= bound
    if "modes_ok" in row:
        ok &= bool(row["modes_ok"]) and (name != "gmm9" or row["mode_tv"] <= 0.05)
    if "w1_x1" in row:
        ok &= row["w1_x1"] <= 2 * row["w1_floor"]
    if "max_mean_z" in row:
        ok &= row["max_mean_z"] <= 3.0 and row["max_sd_dev"] <= 0.1
    if "abs_m_dev" in row:
        ok &= row["abs_m_dev"] <= 0.02
    return bool(ok)


def run_ours(name: str, seed: int, progress_bar: bool = False) -> dict:
    """The default engine with every default: fit, 2,000 draws, metrics."""
    import numpyro_hjb
    from numpyro_hjb.api import _estimate

    target = get_target(name)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    fit = numpyro_hjb.fit(target.model, rng_key=key, progress_bar=progress_bar)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    draws = fit.sample(jax.random.fold_in(key, 1), NUM_DRAWS)
    x = np.asarray(jax.vmap(fit.target.to_unconstrained)(draws.x))
    draw_s = time.perf_counter() - t1
    # the estimate of log int rho: the synthetic targets have a flat improper site, where
    # numpyro_hjb.log_evidence refuses (the evidence p(y) is undefined)
    ev = _estimate(fit, jax.random.fold_in(key, 2), 4096)
    row = {
        "engine": fit.engine, "seed": seed, "log_z": ev.log_z, "log_z_se": ev.log_z_se,
        "delta_log_z": None if not math.isfinite(target.log_z) else ev.log_z - target.log_z,
        "fit_s": fit_s, "draw_s": draw_s, "compile_s": float(fit.info.get("compile_s", 0.0)),
        "ess": ev.ess, "method": ev.method,
        "info": {k: v for k, v in fit.info.items() if isinstance(v, (int, float, str))},
    }
    row.update(_sample_metrics(name, target, x, jax.random.fold_in(key, 3)))
    row["met"] = goal_met(name, row)
    return row


def run_smc(name: str, seed: int, seconds: float, calibrate: int = 2000,
            max_particles: int = 400_000) -> dict:
    """BlackJAX adaptive tempered SMC given ``seconds`` of run time (after compilation): a
    calibration run at ``calibrate`` particles sizes one run; where that size passes
    ``max_particles`` (memory), independent runs at ``max_particles`` fill the time and their
    evidences are averaged, Z_hat = mean_r Z_hat_r (unbiased, as each Z_hat_r is)."""
    from jax.scipy.special import logsumexp

    from numpyro_hjb.smc import tempered_smc_program

    target = get_target(name)
    prior = _prior(target)

    def timed(n, key):
        program = tempered_smc_program(target.log_density, target.dim, target.init_scale,
                                       {"num_particles": int(n)}, prior=prior)
        jax.block_until_ready(program(jax.random.PRNGKey(10_000 + seed)))  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(program(key))
        return program, out, time.perf_counter() - t0

    _, _, t_cal = timed(calibrate, jax.random.PRNGKey(20_000 + seed))
    n = int(min(max(calibrate * seconds / max(t_cal, 1e-3), 200), max_particles))
    program, (particles, log_z, n_temps), run_s = timed(n, jax.random.PRNGKey(seed))
    log_zs, total_s, r = [float(log_z)], run_s, 1
    while total_s + run_s <= seconds * 1.05:  # replicas, only when capped at max_particles
        t0 = time.perf_counter()
        _, lz, _ = jax.block_until_ready(program(jax.random.fold_in(jax.random.PRNGKey(seed), r)))
        total_s += time.perf_counter() - t0
        log_zs.append(float(lz))
        r += 1
    log_z = float(logsumexp(np.array(log_zs)) - math.log(len(log_zs)))
    row = {"num_particles": n, "num_runs": len(log_zs), "run_s": total_s, "log_z": log_z,
           "start": "prior" if prior is not None else f"N(0, {target.init_scale:g}² I)",
           "num_temperatures": int(n_temps), "capped": n == max_particles,
           "delta_log_z": None if not math.isfinite(target.log_z) else log_z - target.log_z}
    x = np.asarray(particles)[: NUM_DRAWS * 4]
    idx = np.random.default_rng(seed).choice(x.shape[0], min(NUM_DRAWS, x.shape[0]), replace=False)
    row.update(_sample_metrics(name, target, x[idx], jax.random.PRNGKey(30_000 + seed)))
    return row


def _prior(target):
    """(parts, sample) of the model's prior when every latent site has a proper one (the
    peer then tempers the likelihood from the prior, as Bayesian SMC usually does), else
    None (it starts from N(0, s^2 I))."""
    from numpyro_hjb import make_target
    from numpyro_hjb.annealing.reference import prior_base

    base = prior_base(make_target(target.model))
    return None if base is None else (base.parts, base.sample)


def run_nuts(name: str, seed: int, seconds: float) -> dict:
    """NumPyro NUTS, 2 chains run one after the other: 1,000 warm-up steps each, then as many
    draws as fill ``seconds`` of wall-clock in all (at least 2,000 per chain, at most 50,000),
    sized from the warm-up's pace."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import MCMC, NUTS

    target = get_target(name)
    s = NUTS_SETTINGS
    chains, pace = [], None  # pace: seconds per draw, from the previous chain's draws
    t0 = time.perf_counter()
    for c in range(s["num_chains"]):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), c)
        mcmc = MCMC(NUTS(target.model), num_warmup=s["num_warmup"], num_samples=s["num_samples"],
                    num_chains=1, progress_bar=False)
        t1 = time.perf_counter()
        mcmc.warmup(key, extra_fields=("diverging",), collect_warmup=False)
        warm_s = time.perf_counter() - t1
        chains_left = s["num_chains"] - c
        left = (seconds - (time.perf_counter() - t0)) / chains_left
        step = pace if pace is not None else warm_s / s["num_warmup"]
        mcmc.num_samples = int(np.clip(left / max(step, 1e-6), s["num_samples"], 50_000))
        t2 = time.perf_counter()
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("diverging",))
        pace = (time.perf_counter() - t2) / mcmc.num_samples
        chains.append(mcmc)
    run_s = time.perf_counter() - t0
    latent = _latent_names(target)
    flat = np.concatenate([np.asarray(jax.vmap(lambda d: ravel_pytree(d)[0])(
        {k: v for k, v in m.get_samples().items() if k in latent})) for m in chains])
    idx = np.random.default_rng(seed).choice(flat.shape[0], NUM_DRAWS, replace=False)
    row = {"run_s": run_s, "num_samples": int(flat.shape[0]),
           "divergences": int(sum(np.sum(m.get_extra_fields()["diverging"]) for m in chains))}
    row.update(_sample_metrics(name, target, flat[idx], jax.random.PRNGKey(40_000 + seed)))
    return row


def _latent_names(target) -> tuple:
    from numpyro_hjb import make_target

    return make_target(target.model).site_names


def _fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def summarise(name: str, rows: list[dict]) -> dict:
    """RMSE of log Z_hat over seeds for ours and the SMC peer, coverage, goal per seed."""
    ours = [r["ours"] for r in rows]
    smc = [r["smc"] for r in rows]
    out = {"target": name, "goal": GOALS[name][0], "met_every_seed": all(o["met"] for o in ours)}
    if ours[0].get("delta_log_z") is not None:
        e = np.array([o["delta_log_z"] for o in ours])
        f = np.array([s["delta_log_z"] for s in smc])
        out.update(rmse=float(np.sqrt(np.mean(e**2))), smc_rmse=float(np.sqrt(np.mean(f**2))),
                   covered=[bool(abs(o["delta_log_z"]) <= 2 * o["log_z_se"]) for o in ours])
        out["rmse_ratio"] = out["rmse"] / out["smc_rmse"] if out["smc_rmse"] > 0 else None
    return out


def markdown(results: dict) -> str:
    lines = [
        "# Benchmarks: the default engine against the peers",
        "",
        "Generated by `python -m numpyro_hjb bench headline` (do not edit by hand); every "
        "number comes from one run of that command on one machine.",
        f"Machine: {results['device']}; run {results['date']}.",
        f"Seeds per target: {max(len(r) for r in results['targets'].values())}"
        + ("" if any("nuts" in r for rows in results["targets"].values() for r in rows)
           else "; NUTS not run (`--no-nuts`)") + ".",
        "",
        "- **Ours**: `numpyro_hjb.fit(model, rng_key=PRNGKey(seed))` with every default "
        f"(engine `{results['engine']}`), then {NUM_DRAWS} draws. Δ = log Ẑ − log Z ± its SE "
        "(from independent particle systems). fit s: the whole fit, compilation included "
        "(compile s: of which compilation).",
        "- **SMC**: BlackJAX adaptive tempered SMC (HMC moves; from the prior where every "
        "latent site has a proper prior, tempering the likelihood, else from N(0, s² I)), its particle "
        "count raised until its run time after compilation equals our fit's time after "
        "compilation; past 400,000 particles (memory) independent runs of 400,000 fill the time and "
        "their Z estimates are averaged (run s, particles × runs). **NUTS**: NumPyro, 2 chains × "
        "1000 warm-up steps, then as many draws as fill our fit's whole wall-clock "
        "(at least 2000, at most 50,000 per chain; NUTS s, draws).",
        "- The synthetic targets are given as a flat improper site plus `numpyro.factor`: the "
        "engines see only the unnormalised density. Goals: issue 16.",
        "",
        "| target | goal | seed | ours Δ ± SE | ours metric | fit s (compile) | met | SMC Δ | "
        "SMC metric | SMC run s (particles × runs) | NUTS metric (s, draws) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results["targets"].items():
        for r in rows:
            o, s, n = r["ours"], r["smc"], r.get("nuts", {})
            lines.append("| " + " | ".join([
                name, GOALS[name][0], str(o["seed"]),
                "–" if o.get("delta_log_z") is None else f"{o['delta_log_z']:+.4f} ± {o['log_z_se']:.4f}",
                _metric(o), f"{o['fit_s']:.0f} ({o['compile_s']:.0f})", "yes" if o["met"] else "**no**",
                "–" if s.get("delta_log_z") is None else f"{s['delta_log_z']:+.4f}",
                _metric(s), f"{s['run_s']:.1f} ({s['num_particles']:,} × {s.get('num_runs', 1)})",
                f"{_metric(n)} ({n.get('run_s', float('nan')):.0f} s, {n.get('num_samples', 0):,})" if n else "–",
            ]) + " |")
    lines += ["", "| target | met on every seed run | RMSE of log Ẑ over the seeds | SMC RMSE | ratio | "
              "log Ẑ ± 2 SE covers |", "|---|---|---|---|---|---|"]
    covered = []
    for name, summ in results["summary"].items():
        covered += summ.get("covered", [])
        lines.append("| " + " | ".join([
            name, "yes" if summ["met_every_seed"] else "**no**", _fmt(summ.get("rmse"), ".4f"),
            _fmt(summ.get("smc_rmse"), ".4f"), _fmt(summ.get("rmse_ratio"), ".2f"),
            f"{sum(summ['covered'])}/{len(summ['covered'])}" if "covered" in summ else "–",
        ]) + " |")
    if covered:
        lines += ["", f"log Ẑ ± 2 SE covers the truth in {sum(covered)} of {len(covered)} "
                  f"target × seed cases ({100 * sum(covered) / len(covered):.0f} %)."]
    return "\n".join(lines) + "\n"


def _metric(r: dict) -> str:
    if "modes" in r:
        return f"{r['modes']} modes, TV {r['mode_tv']:.3f}"
    if "w1_x1" in r:
        return f"W1(x₁) {r['w1_x1']:.3f} (floor {r['w1_floor']:.3f})"
    if "max_mean_z" in r:
        return f"max \\|Δmean\\|/MCSE {r['max_mean_z']:.1f}, max \\|sd/ref − 1\\| {r['max_sd_dev']:.3f}"
    if "abs_m" in r:
        return f"⟨\\|m\\|⟩ {r['abs_m']:.3f} (ref {r['abs_m_ref']:.3f})"
    return "–"


def main(argv=None) -> int:
    import numpyro_hjb

    ap = argparse.ArgumentParser(prog="python -m numpyro_hjb bench headline")
    ap.add_argument("--targets", nargs="*", default=list(HEADLINE_TARGETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-nuts", action="store_true")
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args(argv)
    json_path = os.path.splitext(args.out)[0] + ".json"
    results = {"targets": {}, "summary": {}}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    dev = jax.devices()[0]
    results["device"] = (f"cpu ({os.cpu_count()} cores)" if dev.platform == "cpu"
                         else f"{dev.platform}: {getattr(dev, 'device_kind', '?')}")
    results["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["engine"] = numpyro_hjb.DEFAULT_ENGINE
    for name in args.targets:
        rows = []
        for seed in range(args.seeds):
            ours = run_ours(name, seed)
            equal = max(ours["fit_s"] - ours["compile_s"], 1.0)
            smc = run_smc(name, seed, equal)
            row = {"ours": ours, "smc": smc}
            if not args.no_nuts:
                row["nuts"] = run_nuts(name, seed, ours["fit_s"])
            rows.append(row)
            print(json.dumps({"target": name, "seed": seed, "ours": {
                k: ours.get(k) for k in ("delta_log_z", "log_z_se", "fit_s", "compile_s", "met")},
                "smc": {k: smc.get(k) for k in ("delta_log_z", "run_s", "num_particles")}}),
                flush=True)
        results["targets"][name] = rows
        results["summary"][name] = summarise(name, rows)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(args.out, "w") as f:
            f.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
