"""Where along the path a learned sampler loses its importance weight.

log w = (log rho(y_K) - log N(y_K; 0, final_var)) + sum_k (log r_k - log f_k)  (docs/design.md s.3)

is split into the terminal term and the step terms summed over time windows. For each
window the variance of its sum and its covariance with the rest of log w are reported
(var + cov, summed over the windows and the terminal term, is Var log w). The quantiles of
log w about its median show whether the ESS is lost to a broad spread or to a tail of bad
paths, and the end points of the worst paths say where those paths land.

Run: ``python -m benchmarks.weight_budget manywell5 --engine dds
--set num_steps=256 ...`` (fits, then reports on fresh paths).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_hjb.api import FitResult, fit
from numpyro_hjb.control.problem import build_problem
from numpyro_hjb.diffusion import path_log_weight_terms, simulate_paths
from numpyro_hjb.evidence import estimate_evidence
from .targets import get_target

#: window edges in diffusion time t (the generation runs from t = T down to 0)
DEFAULT_EDGES = (1.0, 0.3, 0.1, 0.03, 0.01)


def weight_budget(
    result: FitResult,
    rng_key: jax.Array,
    num: int = 4096,
    edges: Sequence[float] = DEFAULT_EDGES,
    num_worst: int = 10,
) -> dict:
    """Split Var(log w) of ``num`` fresh paths of a learned-control fit (dis, dds, pis) over
    time windows (t in (edges[i+1], edges[i]], the first window reaching up to T)."""
    if result.engine not in ("dis", "dds", "pis"):
        raise ValueError(f"weight_budget needs a learned-control fit, got engine {result.engine!r}")
    problem = build_problem(result.target, result.settings, batch_size=num)
    ys, us = simulate_paths(rng_key, problem.scheme, problem.control(result.state.params), num,
                            problem.dim)
    steps, terminal, _ = path_log_weight_terms(problem.scheme, ys, us, problem.log_density)
    steps, terminal = np.asarray(steps, np.float64), np.asarray(terminal, np.float64)
    log_w = terminal + steps.sum(0)
    t_step = np.asarray(problem.scheme.times[:-1], np.float64)
    bounds = [float(t_step.max()), *[float(e) for e in edges], 0.0]
    windows = []
    for hi, lo in itertools.pairwise(bounds):
        mask = (t_step <= hi) & ((t_step > lo) if lo > 0 else (t_step >= 0))
        part = steps[mask].sum(0)
        windows.append({
            "t": [lo, hi], "steps": int(mask.sum()), "var": float(part.var()),
            "cov_with_rest": float(np.cov(part, log_w - part, ddof=0)[0, 1]),
        })
    q = np.quantile(log_w, [0.001, 0.01, 0.1, 0.5, 0.9, 0.99])
    worst = np.argsort(log_w)[:num_worst]
    ev = estimate_evidence(jnp.asarray(log_w))
    return {
        "ess": float(ev.ess),
        "var_log_w": float(log_w.var()),
        "terminal": {"var": float(terminal.var()),
                     "cov_with_rest": float(np.cov(terminal, log_w - terminal, ddof=0)[0, 1])},
        "windows": windows,
        "log_w_quantiles_about_median": dict(zip(
            ["0.1%", "1%", "10%", "90%", "99%"], (q[[0, 1, 2, 4, 5]] - q[3]).tolist())),
        "worst_end_points": np.asarray(ys[-1])[worst].tolist(),
    }


def main(argv: list[str]) -> None:
    from .cli import parse_settings

    ap = argparse.ArgumentParser(prog="python -m benchmarks.weight_budget")
    ap.add_argument("target")
    ap.add_argument("--engine", default="dds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num", type=int, default=4096)
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    bench = get_target(args.target)
    result = fit(bench.model, engine=args.engine, rng_key=jax.random.PRNGKey(args.seed),
                 progress_bar=False, **parse_settings(args.settings))
    out = weight_budget(result, jax.random.PRNGKey(args.seed + 1), args.num)
    print(json.dumps({"target": args.target, "engine": args.engine,
                      "settings": args.settings, **out}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
