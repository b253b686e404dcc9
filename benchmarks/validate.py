"""Calibration of the error bars and of the draws (``python -m numpyro_hjb validate``).

Three checks, each of one engine's defaults (``--engines``, default: the default engine):

* **coverage**: log Z_hat +- 2 SE against the exact log Z over ``--seeds`` seeds (20) on
  targets with an exact log Z: gauss5, gmm9, centred eight schools. A calibrated SE covers
  the truth in about 95 % of seeds; the goal is at least 90 %.
* **SBC** (simulation-based calibration, Talts et al. 2018) on a small hierarchical model:
  draw (mu, tau) and data from the prior, fit, rank each true parameter among L = 99 posterior
  draws; over the simulations the ranks are uniform on {0..L} when the posterior is right.
  A chi-square test of the binned ranks per parameter (Bonferroni over parameters).
  Each simulation is a new model (new data), so a fit compiles anew; the SBC fits use a
  shorter time budget (``--sbc-time-budget``), which the table states.
* **two-sample**: draws of ``MCMC(KERNEL(model))`` (the IMH-corrected chain, thinned to one
  draw per proposed particle system) against exact draws, on gmm9 and on eight schools
  (exact draws there: log tau by inverse-CDF sampling of its quadrature marginal, then mu and
  theta from their Gaussian conditionals). An energy-distance permutation test plus
  per-coordinate Kolmogorov-Smirnov tests (Bonferroni), at level 0.01.

Results go to ``docs/validation.json`` (merged part by part), the table to
``docs/validation.md`` and the plot to ``docs/img/validation.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .targets import get_target

__all__ = ["coverage", "sbc", "two_sample", "eight_schools_exact", "main"]

COVERAGE_TARGETS = ("gauss5", "gmm9", "eight_schools")
ALPHA = 0.01


def coverage(engine: str, names=COVERAGE_TARGETS, seeds: int = 20,
             settings: dict | None = None) -> dict:
    """{target: {covered, z (seeds,), ...}} of log Z_hat +- 2 SE over seeds (``settings``:
    overrides of the engine's defaults, for the fast tests only)."""
    import numpyro_hjb
    from numpyro_hjb.api import _estimate

    out = {}
    for name in names:
        target = get_target(name)
        z, rows = [], []
        for seed in range(seeds):
            key = jax.random.PRNGKey(seed)
            t0 = time.perf_counter()
            fit = numpyro_hjb.fit(target.model, engine=engine, rng_key=key, progress_bar=False,
                                  **(settings or {}))
            ev = _estimate(fit, jax.random.fold_in(key, 2), 4096)
            delta = ev.log_z - target.log_z
            z.append(delta / ev.log_z_se if ev.log_z_se > 0 else math.inf)
            rows.append({"seed": seed, "delta": delta, "se": ev.log_z_se,
                         "fit_s": time.perf_counter() - t0})
            print(json.dumps({"coverage": name, "engine": engine, **rows[-1]}), flush=True)
        z = np.asarray(z)
        out[name] = {"covered": int(np.sum(np.abs(z) <= 2)), "seeds": seeds, "z": z.tolist(),
                     "rows": rows, "rmse": float(np.sqrt(np.mean([r["delta"] ** 2 for r in rows]))),
                     "mean_se": float(np.mean([r["se"] for r in rows]))}
    return out


def hierarchical_model(sigma, y=None):
    """mu ~ N(0, 1), tau ~ HalfNormal(1), theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j)."""
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


SBC_SIGMA = np.array([0.5, 1.0, 1.0, 2.0], np.float32)


def sbc(engine: str, num_simulations: int = 100, num_draws: int = 99,
        time_budget: float | None = 10.0, settings: dict | None = None) -> dict:
    """Rank statistics of (mu, tau, theta_0) over simulations from the prior."""
    from numpyro.infer import Predictive

    import numpyro_hjb

    params = ("mu", "tau", "theta0")
    sim = Predictive(hierarchical_model, num_samples=num_simulations)(
        jax.random.PRNGKey(999), jnp.asarray(SBC_SIGMA))
    ranks = {p: [] for p in params}
    extra = {} if time_budget is None or engine != "scld" else {"time_budget": time_budget}
    extra.update(settings or {})
    for i in range(num_simulations):
        key = jax.random.PRNGKey(i)
        fit = numpyro_hjb.fit(hierarchical_model, jnp.asarray(SBC_SIGMA), engine=engine,
                              rng_key=key, progress_bar=False,
                              model_kwargs={"y": sim["y"][i]}, **extra)
        draws = fit.sample(jax.random.fold_in(key, 1), num_draws).samples
        values = {"mu": draws["mu"], "tau": draws["tau"], "theta0": draws["theta"][:, 0]}
        truth = {"mu": sim["mu"][i], "tau": sim["tau"][i], "theta0": sim["theta"][i, 0]}
        for p in params:
            ranks[p].append(int(np.sum(np.asarray(values[p]) < float(truth[p]))))
        print(json.dumps({"sbc": i, "engine": engine, **{p: ranks[p][-1] for p in params}}),
              flush=True)
    out = {"num_simulations": num_simulations, "num_draws": num_draws,
           "time_budget": extra.get("time_budget"), "params": {}}
    for p in params:
        stat, pvalue, bins = _rank_uniformity(np.asarray(ranks[p]), num_draws)
        out["params"][p] = {"ranks": ranks[p], "chi2": stat, "p": pvalue, "bins": bins}
    return out


def _rank_uniformity(ranks: np.ndarray, num_draws: int):
    """Chi-square test of ranks in {0..L} binned into B equal bins (B: about n / 5)."""
    from scipy import stats

    b = int(max(2, min(20, ranks.size // 5)))
    while (num_draws + 1) % b:
        b -= 1
    counts = np.bincount(ranks * b // (num_draws + 1), minlength=b)
    stat, pvalue = stats.chisquare(counts)
    return float(stat), float(pvalue), b


def eight_schools_exact(rng_key, n: int) -> np.ndarray:
    """Exact posterior draws of the centred eight schools in the flat order (mu, log tau,
    theta_0..7): log tau by inverse-CDF sampling of its marginal on a fine grid, then
    mu | tau, y and theta | mu, tau, y from their Gaussian conditionals."""
    from scipy import stats

    from .models import SCHOOLS_SIGMA as s
    from .models import SCHOOLS_Y as y

    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng_key)).ravel().tolist())
    u = np.linspace(-12.0, 8.0, 20_001)
    tau = np.exp(u)
    d = s[None] ** 2 + tau[:, None] ** 2
    log_w = np.array([stats.multivariate_normal.logpdf(y, np.zeros(8), np.diag(di) + 25.0)
                      for di in d]) + stats.halfcauchy.logpdf(tau, scale=5.0) + u
    cdf = np.cumsum(np.exp(log_w - log_w.max()))
    cdf /= cdf[-1]
    i = np.searchsorted(cdf, rng.uniform(size=n))
    lt = u[i] + (u[1] - u[0]) * (rng.uniform(size=n) - 0.5)
    t2 = np.exp(2 * lt)[:, None]
    dd = s[None] ** 2 + t2
    prec = 1 / 25.0 + np.sum(1 / dd, axis=1)
    mu = np.sum(y / dd, axis=1) / prec + rng.standard_normal(n) / np.sqrt(prec)
    v = 1 / (1 / s[None] ** 2 + 1 / t2)
    theta = v * (y / s**2 + mu[:, None] / t2) + np.sqrt(v) * rng.standard_normal((n, 8))
    return np.column_stack([mu, lt, theta])


def _kernel_class(engine: str):
    """The MCMC kernel class of an engine."""
    from numpyro_hjb import mcmc

    for cls in (mcmc.SCLD, mcmc.DDS, mcmc.DIS, mcmc.PIS, mcmc.TTHJB):
        if cls.engine == engine:
            return cls
    raise ValueError(f"no MCMC kernel for engine {engine!r}")


def two_sample(engine: str, names=("gmm9", "eight_schools"), num: int = 500,
               settings: dict | None = None) -> dict:
    """MCMC(kernel) draws, thinned to one per proposed system, against exact draws."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import MCMC
    from numpyro.infer.util import unconstrain_fn

    from numpyro_hjb import make_target

    out = {}
    for name in names:
        target = get_target(name)
        kernel = _kernel_class(engine)(target.model, progress_bar=False, **(settings or {}))
        thin = getattr(kernel, "_draws_per_system", 1)
        mcmc = MCMC(kernel, num_warmup=1, num_samples=num * thin, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0))
        latent = make_target(target.model).site_names
        samples = {k: v for k, v in mcmc.get_samples().items() if k in latent}
        flat = jax.vmap(lambda s: ravel_pytree(unconstrain_fn(target.model, (), {}, s))[0])
        z = np.asarray(flat(samples))[::thin]
        exact = (eight_schools_exact(jax.random.PRNGKey(1), num) if name == "eight_schools"
                 else np.asarray(target.sample_exact(jax.random.PRNGKey(1), num)))
        out[name] = _two_sample_tests(z, exact)
        print(json.dumps({"two_sample": name, "engine": engine, **out[name]}), flush=True)
    return out


def _two_sample_tests(x: np.ndarray, y: np.ndarray, permutations: int = 500) -> dict:
    from scipy import stats

    scale = y.std(0) + 1e-12
    xs, ys = (x - y.mean(0)) / scale, (y - y.mean(0)) / scale
    both = np.concatenate([xs, ys])
    n = xs.shape[0]

    def energy(idx):
        a, b = both[idx[:n]], both[idx[n:]]
        dab = np.mean(np.linalg.norm(a[:, None] - b[None], axis=-1))
        daa = np.mean(np.linalg.norm(a[:, None] - a[None], axis=-1))
        dbb = np.mean(np.linalg.norm(b[:, None] - b[None], axis=-1))
        return 2 * dab - daa - dbb

    rng = np.random.default_rng(0)
    e0 = energy(np.arange(both.shape[0]))
    perm = [energy(rng.permutation(both.shape[0])) for _ in range(permutations)]
    p_energy = float((1 + np.sum(np.asarray(perm) >= e0)) / (1 + permutations))
    p_ks = [float(stats.ks_2samp(x[:, j], y[:, j]).pvalue) for j in range(x.shape[1])]
    min_p_ks = min(1.0, min(p_ks) * len(p_ks))
    return {"energy": float(e0), "p_energy": p_energy, "p_ks_bonferroni": min_p_ks,
            "passed": bool(p_energy >= ALPHA and min_p_ks >= ALPHA), "n": int(n)}


def markdown(results: dict) -> str:
    lines = ["# Validation: calibrated error bars and draws", "",
             "Generated by `python -m numpyro_hjb validate` (do not edit by hand). "
             f"Machine: {results.get('device', '?')}; run {results.get('date', '?')}.", ""]
    for engine, res in results.get("engines", {}).items():
        lines += [f"## engine `{engine}` (defaults)", ""]
        cov = res.get("coverage")
        if cov:
            lines += ["### log Ẑ ± 2 SE coverage", "",
                      "| target | covered | seeds | RMSE of log Ẑ | mean SE | max \\|z\\| | goal ≥ 90 % |",
                      "|---|---|---|---|---|---|---|"]
            for name, c in cov.items():
                frac = c["covered"] / c["seeds"]
                lines.append(f"| {name} | {c['covered']}/{c['seeds']} ({100 * frac:.0f} %) | "
                             f"{c['seeds']} | {c['rmse']:.4f} | {c['mean_se']:.4f} | "
                             f"{np.max(np.abs(c['z'])):.1f} | {'yes' if frac >= 0.9 else '**no**'} |")
            lines.append("")
        s = res.get("sbc")
        if s:
            budget = ("the default time budget" if s["time_budget"] is None
                      else f"time_budget={s['time_budget']:g} s")
            lines += ["### Simulation-based calibration", "",
                      f"{s['num_simulations']} simulations from the prior of a 4-school "
                      f"hierarchical model, {s['num_draws']} draws each ({budget}); "
                      "χ² test of the binned ranks, passed when p ≥ "
                      f"{ALPHA} / {len(s['params'])} (Bonferroni).", "",
                      "| parameter | bins | χ² | p | passed |", "|---|---|---|---|---|"]
            for p, r in s["params"].items():
                ok = r["p"] >= ALPHA / len(s["params"])
                lines.append(f"| {p} | {r['bins']} | {r['chi2']:.1f} | {r['p']:.3f} | "
                             f"{'yes' if ok else '**no**'} |")
            lines.append("")
        t = res.get("two_sample")
        if t:
            lines += ["### Two-sample tests: MCMC draws against exact draws", "",
                      f"Level {ALPHA}: energy-distance permutation test and per-coordinate KS "
                      "tests (Bonferroni), on standardised coordinates.", "",
                      "| target | draws | energy p | KS p (Bonferroni) | passed |",
                      "|---|---|---|---|---|"]
            for name, r in t.items():
                lines.append(f"| {name} | {r['n']} | {r['p_energy']:.3f} | "
                             f"{r['p_ks_bonferroni']:.3f} | {'yes' if r['passed'] else '**no**'} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = results.get("engines", {})
    fig, axes = plt.subplots(len(engines), 2, figsize=(10, 3.2 * len(engines)), squeeze=False)
    for row, (engine, res) in enumerate(engines.items()):
        ax = axes[row, 0]
        for name, c in res.get("coverage", {}).items():
            ax.plot(np.clip(c["z"], -6, 6), np.arange(len(c["z"])), "o", label=name, ms=4)
        ax.axvline(-2, color="k", lw=0.8)
        ax.axvline(2, color="k", lw=0.8)
        ax.set(xlabel="(log Ẑ − log Z) / SE", ylabel="seed", title=f"{engine}: coverage")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        s = res.get("sbc")
        if s:
            for p, r in s["params"].items():
                ax.hist(r["ranks"], bins=r["bins"], range=(0, s["num_draws"] + 1),
                        histtype="step", label=p)
            ax.axhline(s["num_simulations"] / list(s["params"].values())[0]["bins"],
                       color="k", lw=0.8)
            ax.set(xlabel="rank", title=f"{engine}: SBC rank histograms")
            ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import numpyro_hjb

    ap = argparse.ArgumentParser(prog="python -m numpyro_hjb validate",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--engines", nargs="*", default=[numpyro_hjb.DEFAULT_ENGINE])
    ap.add_argument("--parts", nargs="*", default=["coverage", "sbc", "two_sample"],
                    choices=["coverage", "sbc", "two_sample"])
    ap.add_argument("--targets", nargs="*", default=list(COVERAGE_TARGETS))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--sbc-simulations", type=int, default=100)
    ap.add_argument("--sbc-time-budget", type=float, default=10.0,
                    help="the sequential engine's time budget in the SBC fits (s)")
    ap.add_argument("--two-sample-draws", type=int, default=500)
    ap.add_argument("--out", default="docs/validation.md")
    args = ap.parse_args(argv)
    json_path = os.path.splitext(args.out)[0] + ".json"
    results = {"engines": {}}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    dev = jax.devices()[0]
    results["device"] = (f"cpu ({os.cpu_count()} cores)" if dev.platform == "cpu"
                         else f"{dev.platform}: {getattr(dev, 'device_kind', '?')}")
    results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for engine in args.engines:
        res = results["engines"].setdefault(engine, {})
        if "coverage" in args.parts:
            res["coverage"] = {**res.get("coverage", {}),
                               **coverage(engine, args.targets, args.seeds)}
        if "sbc" in args.parts:
            res["sbc"] = sbc(engine, args.sbc_simulations, time_budget=args.sbc_time_budget)
        if "two_sample" in args.parts:
            res["two_sample"] = two_sample(engine, num=args.two_sample_draws)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(args.out, "w") as f:
            f.write(markdown(results))
        plot(results, os.path.join(os.path.dirname(args.out) or ".", "img", "validation.png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
