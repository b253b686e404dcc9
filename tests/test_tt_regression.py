"""Least-squares (ALS) fit of a functional TT to samples with gradients, and the engine's
least-squares fallback for W_0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.target import Target
from numpyro_hjb.tt import core as C
from numpyro_hjb.tt import engine
from numpyro_hjb.tt.regression import tt_least_squares


def _random_tt(d, degree, rank, seed):
    rng = np.random.default_rng(seed)
    rk = [1] + [rank] * (d - 1) + [1]
    return C.TT(tuple(rng.standard_normal((rk[k], degree + 1, rk[k + 1])) for k in range(d)))


def _samples(tt, n, seed):
    x = np.random.default_rng(seed).standard_normal((n, tt.dim))
    with jax.enable_x64(True):
        v, g, _ = C.value_grad_lap(tt.cores, jnp.asarray(x), laplacian=False)
    return x, np.asarray(v), np.asarray(g)


def _rel_err(fit, exact):
    """Exact relative L2(gamma) error (coefficient space)."""
    return C.norm(C.sub(fit, exact)) / C.norm(exact)


def test_als_recovers_exact_low_rank_polynomial():
    """Rank-2, degree-3 FTT in d = 4 (a polynomial in the model class): recovered to ~1e-8
    from values only, and from fewer samples with gradients (one spare rank)."""
    exact = _random_tt(4, 3, 2, seed=1)
    x, v, g = _samples(exact, 2000, seed=2)
    # ALS converges linearly here (measured 1e-4 / 1e-6 / 4e-10 after 20 / 40 / 80 sweeps)
    fit = tt_least_squares(x, v, 3, 2, num_sweeps=80, tol=0.0, rng=np.random.default_rng(0))
    assert _rel_err(fit, exact) < 1e-8
    x, v, g = _samples(exact, 300, seed=4)
    fit = tt_least_squares(x, v, 3, 3, grads=g, num_sweeps=40, rng=np.random.default_rng(0))
    assert _rel_err(fit, exact) < 1e-8  # measured 3e-11
    assert C.ranks(C.round_tt(fit, 1e-6)) == (1, 2, 2, 2, 1)


def test_gradient_rows_need_fewer_samples():
    """Same 150 samples, same 40 sweeps, rank cap 3 (69 free parameters): with the d gradient
    rows per sample the fit is exact, from values alone it is far off (measured 3e-10 vs 2.4;
    values alone need ~600 samples for 4e-8)."""
    exact = _random_tt(4, 3, 2, seed=1)
    x, v, g = _samples(exact, 150, seed=4)
    err_grad = _rel_err(
        tt_least_squares(x, v, 3, 3, grads=g, num_sweeps=40, rng=np.random.default_rng(0)), exact
    )
    err_val = _rel_err(
        tt_least_squares(x, v, 3, 3, num_sweeps=40, rng=np.random.default_rng(0)), exact
    )
    assert err_grad < 1e-7
    assert err_val > 1e-2


def test_tikhonov_keeps_underdetermined_fit_bounded():
    """Fewer samples than unknowns: the regularised fit stays finite and moderate."""
    exact = _random_tt(3, 4, 2, seed=5)
    x, v, _ = _samples(exact, 20, seed=6)
    fit = tt_least_squares(x, v, 4, 2, reg=1e-6, num_sweeps=5, rng=np.random.default_rng(0))
    assert C.is_finite(fit) and C.norm(fit) < 1e3 * C.norm(exact)


def _correlated_gauss(d=3, log_z=0.3):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = q @ np.diag(np.geomspace(0.5, 2.0, d)) @ q.T
    prec = jnp.asarray(np.linalg.inv(s))
    half = 0.5 * np.linalg.slogdet(2 * np.pi * s)[1]

    def log_density(x):
        return -0.5 * x @ prec @ x - half + log_z

    return Target.from_log_density(log_density, d), log_z


FAST = {"num_sampling_steps": 10, "horizon": 5.0, "step_tol": 1e-5, "t_max": 20.0}


def _fit_stats(target, options: dict) -> dict:
    settings = engine.TT_ENGINE.make_settings(**options)
    _, info = engine.fit(target, jax.random.PRNGKey(0), settings, False)
    return info.stats


def test_engine_least_squares_fallback_rescues_a_poor_cross():
    """A rank-1 cross cannot represent the correlated quadratic W_0 (TT rank 3); with a very
    low ls_fallback_tol the least-squares fit (rank 4) is exact, so the exact HJB runs and
    reads off log Z."""
    target, log_z = _correlated_gauss()
    poor = {**FAST, "cross_rank": 1, "cross_max_rank": 1}
    cfg = {**poor, "ls_fallback_tol": 1e-10}
    info = _fit_stats(target, cfg)
    assert info["w0_fit"] == "least_squares"
    assert info["w0_holdout_cross"] > 1e-3
    assert info["w0_holdout_ls"] < 1e-10
    assert info["formulation"] == "hjb"
    assert info["log_z_readoff"] == pytest.approx(log_z, abs=1e-4)
    # default settings: a good cross, no fallback
    info = _fit_stats(target, FAST)
    assert info["w0_fit"] == "cross" and np.isnan(info["w0_holdout_ls"])
    assert info["w0_holdout_cross"] < 1e-10 and info["formulation"] == "hjb"
