"""Acceptance measurements for the TT engine (run: python benchmarks/tt_acceptance.py [names]).

Targets: gauss{d} (random covariance with condition number 100, Laplace-whitened or not),
manywell5 (-sum (x_i^2 - 4)^2), manywell20 (-sum (x_i^2 - 2)^2), gmm9. Prints one JSON line
per run with the settings and the numbers. Uses the public API (``numpyro_hjb.fit``) and the
engine's documented state and score (:func:`numpyro_hjb.tt.samplers.score_fn`).
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import numpyro_hjb
import numpyro_hjb.tt.engine  # noqa: F401  (registers the engine "tt")
from numpyro_hjb.diffusion import gaussian_ou_marginal
from numpyro_hjb.evidence import estimate_evidence
from numpyro_hjb.target import Target, whiten
from numpyro_hjb.tt.samplers import score_fn


def gauss_target(
    d: int,
    seed: int = 0,
    log_z: float = 1.3,
    eigenvalues: tuple[float, float] = (0.1, 10.0),
    mean_scale: float = 1.0,
):
    """exp(log_z) N(m, S) as a Target, S = Q diag(geomspace(*eigenvalues)) Q^T with a random
    rotation Q; returns (target, m, S, log_z)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = q @ np.diag(np.geomspace(*eigenvalues, d)) @ q.T
    m = mean_scale * rng.normal(size=d)
    prec = np.linalg.inv(s)  # numpy float64: the engine evaluates it in float64
    half = 0.5 * np.linalg.slogdet(2 * np.pi * s)[1]

    def log_density(x):
        return -0.5 * (x - m) @ prec @ (x - m) - half + log_z

    return Target.from_log_density(log_density, d), m, s, log_z


def _fit_and_propose(target, cfg: dict, num: int):
    """Fit the engine with the settings ``cfg``, draw ``num`` proposals; time both."""
    t0 = time.perf_counter()
    res = numpyro_hjb.fit(target, engine="tt", rng_key=jax.random.PRNGKey(0),
                          progress_bar=False, **cfg)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, lw = res.propose(jax.random.PRNGKey(1), num)
    return res.state, res.info, x, lw, fit_s, time.perf_counter() - t0


def run_gauss(d: int, whitened: bool, num: int = 4096, **cfg) -> dict:
    with jax.enable_x64(True):  # the Laplace pre-fit in float64, from a float64 point
        target, m, s, log_z = gauss_target(d)
        if whitened:
            target = whiten(target, "laplace", precision="float64")
        tril = np.asarray(target.scale_tril)
        li = np.linalg.inv(tril)
        m = li @ (m - np.asarray(target.shift))
        s = li @ s @ li.T
    state, info, x, lw, fit_s, prop_s = _fit_and_propose(target, cfg, num)
    ev = estimate_evidence(lw)
    # score error at points drawn from the exact p_t
    rng = np.random.default_rng(7)
    score_err = 0.0
    n_t = len(state.times)
    for j in (0, n_t // 4, n_t // 2, n_t - 1):
        t = float(state.times[j])
        with jax.enable_x64(True):
            marginal = gaussian_ou_marginal(jnp.asarray(m), jnp.asarray(s), t)
            mt, st = (np.asarray(a) for a in marginal)
            pts = mt + rng.standard_normal((500, d)) @ np.linalg.cholesky(st).T
            exact = -(pts - mt) @ np.linalg.inv(st)
            got = np.asarray(score_fn(state, jnp.asarray(pts), t))
        score_err = max(score_err, float(np.abs(got - exact).max()))
    return {
        "target": f"gauss{d}" + ("-whitened" if whitened else ""),
        "config": cfg,
        "log_z_true": log_z,
        "readoff_err": abs(info["log_z_readoff"] - log_z),
        "is_err": abs(ev.log_z - log_z),
        "is_se": ev.log_z_se,
        "ess": ev.ess,
        "score_err_max": score_err,
        "fit_s": fit_s,
        "propose_s": prop_s,
        "num": num,
        **{k: info[k] for k in ("formulation", "num_steps", "max_rank_used", "max_degree_used",
                                "final_ranks", "num_target_evals")},
    }


def _manywell(d: int, c: float):
    ys = np.linspace(-8, 8, 400001)
    lz1 = math.log(np.trapezoid(np.exp(-((ys**2 - c) ** 2)), ys))
    return Target.from_log_density(lambda x: -jnp.sum((x**2 - c) ** 2), d), d * lz1


def _gmm9():
    means = np.asarray([[a, b] for a in (-5.0, 0.0, 5.0) for b in (-5.0, 0.0, 5.0)])

    def log_density(x):
        comp = -jnp.sum((x - means) ** 2, axis=1) / 0.6 - math.log(2 * math.pi * 0.3)
        return jax.scipy.special.logsumexp(comp) - math.log(9.0)

    return Target.from_log_density(log_density, 2), 0.0, np.asarray(means)


def run_multimodal(name: str, num: int = 4096, **cfg) -> dict:
    if name == "gmm9":
        target, log_z, means = _gmm9()
    else:
        d, c = {"manywell5": (5, 4.0), "manywell20": (20, 2.0)}[name]
        target, log_z = _manywell(d, c)
    state, info, x, lw, fit_s, prop_s = _fit_and_propose(target, cfg, num)
    ev = estimate_evidence(lw)
    x = np.asarray(x)
    w = np.exp(np.asarray(lw) - np.max(lw))
    w /= w.sum()
    if name == "gmm9":
        lab = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        weights = np.bincount(lab, weights=w, minlength=9)
        modes = int(np.sum(weights > 0.5 / 9))
        tv = 0.5 * float(np.abs(weights - 1 / 9).sum())
        n_modes = 9
    else:
        k = min(x.shape[1], 5)
        lab = (x[:, :k] > 0).astype(int) @ (2 ** np.arange(k))
        weights = np.bincount(lab, weights=w, minlength=2**k)
        modes = int(np.sum(weights > 0.5 / 2**k))
        tv = 0.5 * float(np.abs(weights - 1 / 2**k).sum())
        n_modes = 2**k
    return {
        "target": name,
        "config": cfg,
        "log_z_true": log_z,
        "readoff_err": abs(info["log_z_readoff"] - log_z),
        "is_log_z": ev.log_z,
        "is_err": abs(ev.log_z - log_z),
        "is_se": ev.log_z_se,
        "ess": ev.ess,
        "modes": f"{modes}/{n_modes}",
        "mode_tv": tv,
        "fit_s": fit_s,
        "propose_s": prop_s,
        "num": num,
        **{k: info[k] for k in ("formulation", "num_steps", "max_rank_used", "max_degree_used",
                                "final_ranks", "num_target_evals", "cross_holdout_error", "t_switch")},
    }


RUNS = {
    "gauss2w": lambda: run_gauss(2, True),
    "gauss5w": lambda: run_gauss(5, True),
    "gauss20w": lambda: run_gauss(20, True),
    "gauss5": lambda: run_gauss(5, False),
    "gauss5-dlra": lambda: run_gauss(5, False, integrator="dlra"),
    "gauss5-dlra-tight": lambda: run_gauss(5, False, integrator="dlra", step_tol=1e-8),
    "manywell5": lambda: run_multimodal(
        "manywell5", formulation="cole_hopf", sampler="tweedie", ch_degree=96, scale=0.8
    ),
    "manywell20": lambda: run_multimodal(
        "manywell20", formulation="cole_hopf", sampler="tweedie", ch_degree=96, scale=0.8
    ),
    "gmm9": lambda: run_multimodal("gmm9", formulation="cole_hopf", sampler="tweedie", scale=2.0),
}


def main(argv: list[str]) -> None:
    for name in argv or list(RUNS):
        try:
            out = RUNS[name]()
        except Exception as err:  # report and go on
            out = {"target": name, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
