"""From W_0 to the snapshots the sampler reads: the hjb -> cutoff -> Cole-Hopf cascade
(docs/design.md s.4).

With W_t = v_t - |x|^2 / 2 (v_t = -V_t, so W_0 = U - |x|^2 / 2):

1. "hjb": dW/dt = L W - |grad W|^2 (:func:`numpyro_hjb.tt.hjb.integrate`), when W_0 is a
   polynomial of degree ``degree`` (hold-out error <= ``cross_tol``; Gaussian targets:
   :func:`polynomial_check`). W_t then stays a polynomial of that degree, the Galerkin HJB
   is exact up to time stepping and rounding, and log Z is read off W_T.
2. "hjb(cutoff=R)": for any other W_0 the Hermite-Galerkin HJB is unstable; the far-field
   cutoff sum_mu chi_R(x_mu) (d_mu W)^2 stabilises it (mild targets, low dimension), with
   W_0 refitted at ``cutoff_degree`` on 2 ``cutoff_degree`` + 2 nodes per mode. The read-off
   is then approximate; the sampler's weights stay exact.
3. "cole_hopf": h_t = e^{tL} h_0 with h_0 = e^{-(W_0 - c)} (:func:`numpyro_hjb.tt.w0.fit_h0`):
   linear, exact in time, and stable; grad W = -grad h / h is as good as the expansion of h.

``formulation="auto"`` takes stage 1 when W_0 is a polynomial and stage 3 otherwise (or
when stage 1 fails); "hjb" runs stage 1 for a polynomial W_0 and stage 2 for any other, and
fails if it does not integrate to the end; "cole_hopf" runs stage 3 only. The cutoff stage
is not part of "auto": it has stabilised only 1-D targets (on the rotated gmm9, d = 2, its
step size collapses at t = 0), and its read-off is approximate (docs/lab/notes.md).

The snapshots are stored on the sampler's grid t_k = T (k / K)^power. On the Cole-Hopf
route with the tweedie sampler and ``jump_tol`` > 0 the grid is instead
0, t_s + (T - t_s) (k / (K - 1))^power (:func:`jump_grid`), with the switch time
t_s = min(log(eps_p / jump_tol) / p, T / 4) at which the truncation error eps_p e^{-t p} of
h_t (eps_p the top-degree mass of h_0, p its degree) reaches ``jump_tol``; the last step
t_s -> 0 is then the exact-target final jump (:func:`numpyro_hjb.tt.samplers.final_jump`).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from ..diffusion import time_grid
from . import core as C
from .hjb import HJBResult, integrate, log_z_readoff
from .samplers import sampler_for
from .settings import Sampling, TTSettings
from .w0 import ColeHopfFit, HostFn, fit_h0, fit_w0

__all__ = [
    "PolynomialCheck",
    "RouteResult",
    "jump_grid",
    "polynomial_check",
    "run_route",
    "stack_snapshots",
]

#: hold-out points of each W_0 fit, counted as target evaluations
_HOLDOUT = 2000


class RouteResult(NamedTuple):
    """What the cascade produced.

    Attributes:
        times: (J,) ascending snapshot times.
        snapshots: J FTTs, W_{t_j} (or h_{t_j} on the Cole-Hopf route).
        final: W at the end of the integration (h_0 on the Cole-Hopf route).
        formulation: "hjb", "hjb(cutoff=R)" or "cole_hopf".
        cole_hopf: whether the snapshots are of h (True) or of W.
        h_eps: the guard eps E_gamma[h_0] of grad W = -grad h h / (h^2 + eps^2) (0 for W).
        final_jump: whether the sampler ends with the exact-target jump from times[1].
        t_switch: t_s of the final jump (0 without it).
        log_z: the read-off of log Z.
        readoff_residual: ||W_T - E W_T|| (0 on the Cole-Hopf route).
        holdout_error: hold-out relative error of the last fit of W_0 (or of h_0).
        cross_rank: its largest TT rank.
        num_evals: target evaluations of the fits.
        hjb: the integration's result (None on the Cole-Hopf route).
        hjb_failure: the messages of the stages that failed ("" if none).
        w0_info: the last W_0 fit's report (:func:`numpyro_hjb.tt.w0.fit_w0`).
    """

    times: np.ndarray
    snapshots: list
    final: C.TT
    formulation: str
    cole_hopf: bool
    h_eps: float
    final_jump: bool
    t_switch: float
    log_z: float
    readoff_residual: float
    holdout_error: float
    cross_rank: int
    num_evals: int
    hjb: HJBResult | None
    hjb_failure: str
    w0_info: dict


def jump_grid(sampling: Sampling, t_switch: float) -> np.ndarray:
    """Ascending times 0, t_s + (T - t_s) (k / (K - 1))^power, k = 0..K-1 (K sampler steps:
    K - 1 on [t_s, T] on the power grid, then the jump t_s -> 0)."""
    u = np.linspace(0.0, 1.0, max(sampling.num_sampling_steps, 2))
    return np.concatenate(
        [[0.0], t_switch + (sampling.horizon - t_switch) * u**sampling.grid_power]
    )


def stack_snapshots(snapshots: list) -> tuple[np.ndarray, ...]:
    """TTs of different ranks and degrees zero-padded to common shapes and stacked: core k
    -> (J, R_{k-1}, P_k + 1, R_k), R and P the largest ranks and degrees (exact)."""
    d = snapshots[0].dim
    rk = [max(C.ranks(s)[k] for s in snapshots) for k in range(d + 1)]
    dg = [max(C.degrees(s)[k] for s in snapshots) for k in range(d)]
    padded = [C.pad_ranks(s, rk, dg) for s in snapshots]
    return tuple(np.stack([p[k] for p in padded]) for k in range(d))


class PolynomialCheck(NamedTuple):
    """The fit of W_0 at the route's ``degree`` that decides whether the exact HJB applies.

    Attributes:
        fit: the cross (or least-squares) fit of W_0 (:func:`numpyro_hjb.tt.w0.fit_w0`).
        polynomial: its hold-out error is at most ``cross_tol`` (W_0 is a polynomial of that
            degree: a Gaussian target).
        num_evals: target evaluations of the fit and its hold-out.
        info: the fit's report.
    """

    fit: object
    polynomial: bool
    num_evals: int
    info: dict


def polynomial_check(w0_fun: HostFn, w0_grad_fun: HostFn, d: int, settings: TTSettings,
                     seed: int) -> PolynomialCheck:
    """Fit W_0 at degree ``degree`` and test its hold-out error against ``cross_tol``."""
    fit, info = fit_w0(w0_fun, w0_grad_fun, d, settings.route.degree, settings, seed)
    polynomial = fit.holdout_error <= settings.cross.cross_tol
    return PolynomialCheck(fit, bool(polynomial), fit.num_evals + _HOLDOUT, dict(info))


def _hjb_stages(w0_fun: HostFn, w0_grad_fun: HostFn, d: int, times: np.ndarray,
                settings: TTSettings, seed: int, progress_bar: bool, check: PolynomialCheck):
    """The HJB stages of the cascade: the exact HJB when W_0 is a polynomial; under
    ``formulation="hjb"`` otherwise the cutoff HJB. Returns (HJBResult or None, the cutoff
    used, the last W_0 fit, its evaluations, the failure messages, the W_0 fit report)."""
    route = settings.route
    w0_info = dict(check.info)
    cross, num_evals = check.fit, check.num_evals
    if check.polynomial:
        stages = [0.0]
    elif route.formulation == "hjb":
        stages = [route.cutoff] if route.cutoff > 0 else [0.0]
    else:
        stages = []
    failure = ""
    for r_cut in stages:
        if r_cut > 0:
            cross, info = fit_w0(w0_fun, w0_grad_fun, d, route.cutoff_degree, settings, seed,
                                 num_nodes=2 * route.cutoff_degree + 2)
            w0_info.update(info)  # the last W_0 fit is reported
            num_evals += cross.num_evals + _HOLDOUT
        try:
            res = integrate(cross.tt, times, settings.integration, settings.adaptivity,
                            cutoff=r_cut, progress_bar=progress_bar)
        except RuntimeError as err:
            failure += f"[cutoff={r_cut}] {err} "
            continue
        return res, r_cut, cross, num_evals, failure, w0_info
    if route.formulation == "hjb":
        raise RuntimeError(f"TT-HJB failed: {failure}")
    return None, 0.0, cross, num_evals, failure, w0_info


def _cole_hopf_stage(ch: ColeHopfFit, times: np.ndarray, settings: TTSettings):
    """Stage 3: snapshots h_t = e^{tL} h_0, on the jump grid when the final jump applies.
    Returns (times, snapshots, final_jump, t_switch)."""
    sampling = settings.sampling
    t_switch = 0.0
    if sampler_for(sampling, cole_hopf=True) == "tweedie" and sampling.jump_tol > 0:
        eps_p = float(np.max(C.top_degree_mass(ch.h0)))
        p_h = max(int(max(C.degrees(ch.h0))), 1)
        t_switch = min(max(math.log(eps_p / sampling.jump_tol), 0.0) / p_h,
                       0.25 * sampling.horizon)
        if t_switch > 0:
            times = jump_grid(sampling, t_switch)
    snapshots = [C.apply_ou_semigroup(ch.h0, float(t)) for t in times]
    return times, snapshots, t_switch > 0, t_switch


def run_route(w0_fun: HostFn, w0_grad_fun: HostFn, d: int, settings: TTSettings, seed: int,
              progress_bar: bool, h0_fit: ColeHopfFit | None = None,
              check: PolynomialCheck | None = None) -> RouteResult:
    """The cascade of the module docstring for W_0 given by host functions (values and
    gradients at points (n, d)). ``h0_fit``: a fit of h_0 already made (by the scale search),
    used on the Cole-Hopf route (its evaluations are counted by the search); ``check``: the
    :func:`polynomial_check` of this W_0 when already made. Call under
    ``jax.enable_x64(True)``.

    Raises:
        RuntimeError: ``formulation="hjb"`` and no HJB stage integrated to the end, or the
            Cole-Hopf fit of h_0 failed.
    """
    sampling = settings.sampling
    times = np.sort(np.asarray(
        time_grid(sampling.horizon, sampling.num_sampling_steps, sampling.grid_power)
    ))
    res, failure, num_evals, w0_info = None, "", 0, {}
    if settings.route.formulation in ("auto", "hjb"):
        if check is None:
            check = polynomial_check(w0_fun, w0_grad_fun, d, settings, seed)
        res, r_cut, cross, num_evals, failure, w0_info = _hjb_stages(
            w0_fun, w0_grad_fun, d, times, settings, seed, progress_bar, check
        )
    if res is not None:
        log_z, resid = log_z_readoff(res.final)
        return RouteResult(
            times, res.snapshots, res.final, "hjb" if r_cut == 0 else f"hjb(cutoff={r_cut:g})",
            False, 0.0, False, 0.0, log_z, resid, cross.holdout_error,
            int(max(C.ranks(cross.tt))), num_evals, res, failure, w0_info,
        )
    if failure:
        warnings.warn(f"TT-HJB: using the Cole-Hopf formulation ({failure})")
    if h0_fit is None:
        h0_fit = fit_h0(w0_fun, d, settings, seed)
        num_evals += h0_fit.num_evals
    times, snapshots, final_jump, t_switch = _cole_hopf_stage(h0_fit, times, settings)
    h_eps = settings.cole_hopf.ch_eps * abs(h0_fit.mean_h)
    return RouteResult(
        times, snapshots, h0_fit.h0, "cole_hopf", True, h_eps, final_jump, t_switch,
        h0_fit.log_z, 0.0, h0_fit.holdout_error, int(max(C.ranks(h0_fit.h0))), num_evals,
        None, failure, w0_info,
    )
