"""Capacity check: can the control network represent the optimal control at all?

The network u_theta of a DDS/DIS fit is regressed on the *exact* optimal control
u* = grad log p_t + y (docs/design.md s.2; p_t known for gmm9 in closed form and for manywell5
by 1-D quadrature), on exact draws y ~ p_t at random step times of the grid. The squared
error of step k is weighted by its path-KL rate c_k^2 / vF_k, so the loss estimates the path
KL between the fitted and the optimal sampler. The ESS of fresh paths of the regressed
network shows what the architecture can reach with an ideal training signal, to be set
against the exact-score floor (:mod:`.discretisation_floor`) and against the LV fits.

Run: ``python -m benchmarks.score_regression manywell5 --iterations 3000
--set num_steps=256 --set grid_power=3 --set conditioning=noise``; ``--engine dis`` regresses
a DIS network (the optimal control is the same; only the sampler's integrator differs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

from numpyro_hjb.api import fit
from numpyro_hjb.control.engine import ControlState
from numpyro_hjb.control.problem import build_problem
from numpyro_hjb.control.warm_start import regress_control
from numpyro_hjb.diffusion import ou_transition
from numpyro_hjb.evidence import estimate_evidence
from .discretisation_floor import funnel_score, gmm9_score, manywell_score
from .targets import get_target


def regress_on_exact_control(name: str, settings: dict, iterations: int = 3000,
                             batch: int = 512, seed: int = 0, engine: str = "dds") -> dict:
    """Fit the network of a DDS or DIS fit (``settings``) to the exact control; returns the
    evidence metrics of 10,000 fresh paths, the loss curve and the regressed fit
    (``result``, a :class:`~numpyro_hjb.api.FitResult` usable as a warm start)."""
    bench = get_target(name)
    if name == "gmm9":
        score = gmm9_score()
    elif name == "manywell5":
        score = manywell_score(4.0)
    elif name == "funnel10":
        score = funnel_score()
    else:
        raise ValueError(f"no exact score for target {name!r} (use gmm9, manywell5 or funnel10)")
    # A one-iteration fit supplies the target, the config and initial parameters.
    result = fit(bench.model, engine=engine, rng_key=jax.random.PRNGKey(seed), progress_bar=False,
                 **{**settings, "num_iterations": 1, "log_every": 1})
    problem = build_problem(result.target, result.settings)
    times = problem.scheme.times[:-1]

    def exact_targets(key, n):
        k_t, k_x, k_e = jax.random.split(key, 3)
        ks = jax.random.randint(k_t, (n,), 0, times.shape[0])
        t = times[ks]
        a, var = ou_transition(t[:, None])
        y = a * bench.sample_exact(k_x, n) + jnp.sqrt(var) * jax.random.normal(
            k_e, (n, bench.dim))
        u_star = jax.vmap(lambda yi, ti: score(yi[None], ti)[0])(y, t) + y
        return ks, y, u_star

    t0 = time.perf_counter()
    params, curve = regress_control(result.state.params, jax.random.PRNGKey(seed + 1),
                                    problem, exact_targets, iterations, batch)
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    result = dataclasses.replace(result, state=ControlState(params), _cache={})
    _, log_w = result.propose(jax.random.PRNGKey(seed + 2), 10_000)
    est = estimate_evidence(log_w)
    return {"target": name, "settings": settings, "iterations": iterations, "batch": batch,
            "delta_log_z": abs(est.log_z - bench.log_z), "ess": est.ess,
            "final_loss": float(jnp.mean(curve[-100:])), "train_s": train_s,
            "loss_curve": curve, "result": result}


def main(argv=None) -> None:
    from .cli import parse_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=["gmm9", "manywell5", "funnel10"])
    parser.add_argument("--engine", choices=["dds", "dis"], default="dds")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    out = regress_on_exact_control(args.target, settings, args.iterations, engine=args.engine)
    out.pop("loss_curve")
    out.pop("result")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
