"""W_0 and h_0 into FTT form from black-box calls of the target (docs/design.md s.4).

In engine coordinates xi = x / s (a diagonal pre-scaling, :class:`~numpyro_hjb.tt.settings.
Scaling`) the target is rho~(xi) = rho(s xi) prod_i s_i, with the same Z, and

    W_0(xi) = -log rho~(xi) - |xi|^2 / 2,      h_0(xi) = e^{-(W_0(xi) - c)}.

* :func:`fit_w0`: TT-cross of W_0 on a Gauss-Hermite grid (:mod:`numpyro_hjb.tt.cross`),
  with the least-squares fallback (:mod:`numpyro_hjb.tt.regression`) when the cross's
  hold-out error is large;
* :func:`fit_h0`: TT-cross of h_0 for the Cole-Hopf route, with c the minimum of W_0 on
  probe points, so that Z = (2 pi)^{d/2} e^{-c} E_gamma[h_0];
* :func:`choose_scale`: the common scale s of ``scale="auto"``, from the convergence of the
  Hermite expansion of h_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import core as C
from .basis import gauss_hermite
from .cross import CrossResult, cross_potential, holdout_error
from .regression import tt_least_squares
from .settings import Cross, TTSettings

__all__ = [
    "ColeHopfFit",
    "choose_scale",
    "engine_log_density",
    "fit_h0",
    "fit_w0",
    "scale_vector",
    "w0_functions",
    "w0_value",
]

HostFn = Callable[[np.ndarray], np.ndarray]

#: points per compiled evaluation of W_0
_EVAL_CHUNK = 65536
#: hold-out points of :func:`numpyro_hjb.tt.cross.holdout_error`
_HOLDOUT = 2000


def engine_log_density(target, scale: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """xi (d,) -> log rho~(xi) = log rho(s xi) + sum log s, in float64 whatever the
    precision of the target's own code (a float32 model is cast at this boundary)."""
    log_det = jnp.sum(jnp.log(scale))

    def log_density(xi):
        x = jnp.asarray(scale * xi, jnp.float64)
        return jnp.asarray(target.log_density(x), jnp.float64) + log_det

    return log_density


def w0_value(log_density, z: jax.Array) -> jax.Array:
    """W_0(z) = -log rho~(z) - |z|^2 / 2 at one point z (d,)."""
    return -log_density(z) - 0.5 * jnp.sum(z**2)


def w0_functions(log_density) -> tuple[HostFn, HostFn]:
    """Host functions points (n, d) -> W_0 (n,) and -> grad W_0 (n, d), compiled once
    (call under ``jax.enable_x64(True)``)."""
    value = jax.jit(jax.vmap(partial(w0_value, log_density)))
    grad = jax.jit(jax.vmap(jax.grad(partial(w0_value, log_density))))

    def w0_fun(pts: np.ndarray) -> np.ndarray:
        return np.concatenate([
            np.asarray(value(jnp.asarray(pts[i : i + _EVAL_CHUNK])))
            for i in range(0, pts.shape[0], _EVAL_CHUNK)
        ])

    def w0_grad_fun(pts: np.ndarray) -> np.ndarray:
        return np.asarray(grad(jnp.asarray(pts)))

    return w0_fun, w0_grad_fun


def scale_vector(scale, dim: int) -> np.ndarray:
    """The (d,) scale s of the setting ``scale`` (None: ones; a number: s I)."""
    if scale is None:
        return np.ones(dim)
    if isinstance(scale, str):
        raise ValueError(f"scale must be None, a number or one number per dimension, got {scale!r}")
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 1 and s.shape != (dim,):
        raise ValueError(f"scale has {s.shape[0]} entries, the target has dimension {dim}")
    return np.broadcast_to(s, (dim,)).copy()


def _cross(fun: HostFn, d: int, degree: int, cross: Cross, round_tol: float, seed: int,
           **extra) -> CrossResult:
    """TT-cross of ``fun`` at ``degree`` with the cross settings."""
    return cross_potential(
        fun, d, degree, rank=cross.cross_rank, max_rank=cross.cross_max_rank,
        num_sweeps=cross.cross_sweeps, round_tol=round_tol, holdout_tol=cross.cross_tol,
        seed=seed, **extra,
    )


def fit_w0(fun: HostFn, grad_fun: HostFn, d: int, degree: int, settings: TTSettings, seed: int,
           **extra) -> tuple[CrossResult, dict]:
    """The FTT of W_0 at ``degree``: the TT-cross; if its hold-out error exceeds
    ``ls_fallback_tol``, also the ALS least-squares fit on ``ls_num_samples`` fresh N(0, I)
    samples with gradients (started from the cross), and the better of the two on the same
    hold-out points. ``extra``: passed to the cross (``num_nodes``).

    Returns (the fit, with its hold-out error and evaluation count; info: ``w0_fit``
    "cross" or "least_squares", ``w0_holdout_cross``, ``w0_holdout_ls`` (nan when the
    fallback did not run)).
    """
    round_tol, ls = settings.adaptivity.round_tol, settings.fallback
    cross = _cross(fun, d, degree, settings.cross, round_tol, seed, **extra)
    info = {"w0_fit": "cross", "w0_holdout_cross": cross.holdout_error,
            "w0_holdout_ls": float("nan")}
    if not cross.holdout_error > ls.ls_fallback_tol:
        return cross, info
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((ls.ls_num_samples, d))
    fit = tt_least_squares(
        x, fun(x), degree, ls.ls_rank, grads=grad_fun(x), num_sweeps=ls.ls_sweeps, rng=rng,
        init=C.round_tt(cross.tt, max_rank=ls.ls_rank),
    )
    fit = C.round_tt(fit, round_tol)
    err_cross = holdout_error(cross.tt, fun, np.random.default_rng([seed, 2]))
    err_ls = holdout_error(fit, fun, np.random.default_rng([seed, 2]))
    info.update(w0_holdout_cross=err_cross, w0_holdout_ls=err_ls)
    if err_ls < err_cross:
        info["w0_fit"] = "least_squares"
        cross = cross._replace(tt=fit, holdout_error=err_ls)
    else:
        cross = cross._replace(holdout_error=err_cross)
    # samples (value and gradient) + the second hold-out evaluation
    return cross._replace(num_evals=cross.num_evals + x.shape[0] + 2 * _HOLDOUT), info


class ColeHopfFit(NamedTuple):
    """h_0 = e^{-(W_0 - c)} as an FTT.

    Attributes:
        h0: the FTT of h_0.
        num_evals: target evaluations it took.
        log_z: (d/2) log 2 pi - c + log E_gamma[h_0], the Cole-Hopf read-off of log Z.
        mean_h: E_gamma[h_0], the constant coefficient.
        holdout_error: hold-out relative error of the cross.
    """

    h0: C.TT
    num_evals: int
    log_z: float
    mean_h: float
    holdout_error: float


def fit_h0(w0_fun: HostFn, d: int, settings: TTSettings, seed: int,
           degree: int | None = None) -> ColeHopfFit:
    """h_0 = e^{-(W_0 - c)} by TT-cross at ``degree`` (default ``ch_degree``) on
    ``ch_nodes (degree + 1)`` nodes per mode, with c the minimum of W_0 on probe points
    (the origin, 4096 N(0, I) points and the 1-D Gauss-Hermite nodes).

    Z = (2 pi)^{d/2} E_gamma[e^{-W_0}] = (2 pi)^{d/2} e^{-c} E_gamma[h_0], and h_t = e^{tL} h_0
    exactly (Cole-Hopf), so W_t = c - log h_t and grad W_t = -grad h_t / h_t.

    Raises:
        RuntimeError: E_gamma[h_0] <= 0 (the expansion failed).
    """
    ch = settings.cole_hopf
    p = ch.ch_degree if degree is None else int(degree)
    rng = np.random.default_rng(seed + 1)
    nodes = np.asarray(gauss_hermite(p + 1)[0])
    probe = np.concatenate(
        [np.zeros((1, d)), rng.standard_normal((4096, d)),
         np.stack([np.zeros(d)] * (p + 1)) + nodes[:, None] * np.eye(d)[0]]
    )
    c = float(np.min(w0_fun(probe)))

    def h_fun(pts):
        return np.exp(-np.clip(w0_fun(pts) - c, -700.0, 700.0))

    cr = _cross(
        h_fun, d, p, settings.cross, settings.adaptivity.round_tol, seed,
        num_nodes=int(math.ceil(ch.ch_nodes * (p + 1))), noise_rel=ch.ch_noise_rel,
    )
    mean_h = C.constant_coefficient(cr.tt)
    if not mean_h > 0:
        raise RuntimeError(
            f"Cole-Hopf: E_gamma[h_0] = {mean_h:.3g} <= 0; the Hermite expansion of "
            "e^{-W_0} failed (increase ch_degree or whiten/scale the target)."
        )
    log_z = 0.5 * d * math.log(2 * math.pi) - c + math.log(mean_h)
    return ColeHopfFit(cr.tt, cr.num_evals + _HOLDOUT + probe.shape[0], log_z, mean_h,
                       cr.holdout_error)


def truncation_indicator(w0_fun: HostFn, d: int, settings: TTSettings,
                         seed: int) -> tuple[float, int, ColeHopfFit | None]:
    """e = || h_p / ||h_p|| - h_{p/2} / ||h_{p/2}|| ||_{L2(gamma)} for the fits of h_0 at
    p = ``ch_degree`` and p // 2 (exact in coefficient space; inf if a fit fails): how fast
    the Hermite expansion of h_0 converges. Unlike a Monte Carlo hold-out error it is not
    dominated by rare points in the tails.

    Returns (e, the target evaluations it took, the degree-p fit or None).
    """
    p = settings.cole_hopf.ch_degree
    fits, evals = [], 0
    for degree in (p, max(p // 2, 1)):
        try:
            fits.append(fit_h0(w0_fun, d, settings, seed, degree))
        except RuntimeError:
            return math.inf, evals, None
        evals += fits[-1].num_evals
    h_p, h_half = (C.scale(f.h0, 1.0 / C.norm(f.h0)) for f in fits)
    diff = C.norm(C.sub(h_p, C.pad_degrees(h_half, C.degrees(h_p))))
    return (diff if math.isfinite(diff) else math.inf), evals, fits[0]


def choose_scale(target, d: int, settings: TTSettings,
                 seed: int) -> tuple[float, dict, int, ColeHopfFit]:
    """The common scale s of ``scale="auto"`` (xi = x / s).

    With e(s) the truncation indicator (:func:`truncation_indicator`) divided by sqrt(d)
    (a product of d equal factors has sqrt(d) times the relative error of one), the
    largest s with e(s) <= ``scale_tol``: the coarsest scale at which the Hermite expansion
    of h_0 is accurate, which keeps the target in xi close to the N(0, I) reference of the
    sampler. From s = 1 it steps by factors ``scale_step`` in the direction in which e
    decreases until e <= ``scale_tol`` (else stops where e stops decreasing), then up
    while e <= ``scale_tol``; within [``scale_min``, ``scale_max``].

    Returns (s, {f"{s:.4g}": e(s)} over the scales tried, target evaluations, the fit of
    h_0 at s).

    Raises:
        RuntimeError: no scale gave a finite fit.
    """

    @jax.jit
    def w0_batch(xi, s):
        ld = engine_log_density(target, jnp.full((d,), s))
        return jax.vmap(partial(w0_value, ld))(xi)

    scores: dict = {}
    fits: dict = {}
    evals = 0

    def score(s: float) -> float:
        nonlocal evals
        s = float(s)
        if s not in scores:
            fun = lambda pts: np.asarray(w0_batch(jnp.asarray(pts), s))  # noqa: E731
            value, n, fits[s] = truncation_indicator(fun, d, settings, seed)
            scores[s] = value / math.sqrt(d)
            evals += n
        return scores[s]

    sc = settings.scaling
    step, lo, hi, tol = sc.scale_step, sc.scale_min, sc.scale_max, sc.scale_tol
    best = 1.0
    if score(best) > tol:  # toward accuracy: the direction in which e decreases
        nearby = [t for t in (best / step, best * step) if lo <= t <= hi]
        factor = min(nearby, key=score) / best if nearby else 1.0
        while (
            score(best) > tol and lo <= best * factor <= hi
            and score(best * factor) < score(best)
        ):
            best *= factor
    if score(best) <= tol:  # then as coarse as the tolerance allows
        while best * step <= hi and score(best * step) <= tol:
            best *= step
    if not math.isfinite(score(best)):
        raise RuntimeError("scale='auto': no scale gave a finite Cole-Hopf fit of h_0")
    return best, {f"{k:.4g}": v for k, v in sorted(scores.items())}, evals, fits[best]
