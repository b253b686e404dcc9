"""Time integration of the shifted HJB equation in FTT format (docs/design.md s.4).

With W_t = -log p_t - log Z - |x|^2/2 (p_t the OU marginal started at the target):

    d/dt W = L W - |grad W|^2,   L = Delta - x . grad,   W_0 = U - |x|^2/2,
    W_inf = (d/2) log(2 pi) - log Z,   score  grad log p_t(x) = -x - grad W_t(x).

L is diagonal in the Hermite basis (L h_alpha = -|alpha| h_alpha), so the stiff part is
integrated exactly by Lawson (integrating-factor) schemes with E(tau) = e^{tau L}
(degree-n slices of every core scaled by e^{-tau n}) and N(W) = P_p |grad W|^2:

    Lawson-Euler:  W_E = round( E(tau) (W - tau N(W)) )
    Lawson-Heun:   W_H = round( E(tau) (W - tau/2 N(W)) - tau/2 N(W_E) )   (second order)

The local error is estimated by ||W_H - W_E|| (L2(gamma)); a step is accepted when it is below
step_tol (1 + ||W - E W||) and the step size follows tau <- tau * clip(0.9 sqrt(tol/err), 0.2, 2).
Rank adaptivity comes from rounding with a relative tolerance (and a rank cap), degree
adaptivity from the coefficient mass of the top degree in each mode (read off at the
orthogonality centre during rounding): a mode whose top-degree mass exceeds
degree_tol ||W - E W|| gets ``degree_step`` more degrees (up to ``max_degree``).

Cole-Hopf: e^{-W_t} solves d/dt h = L h, hence Z = (2 pi)^{d/2} E_gamma[e^{-W_t}] for every t;
at the end W_T = c + delta with c = E_gamma W_T, and
log Z = (d/2) log 2 pi - c + log E_gamma[e^{-delta}] ~ (d/2) log 2 pi - c + ||delta||^2 / 2.

All of this is host-side numpy float64 (see :mod:`numpyro_hjb.tt.core`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import core as C
from . import dlra
from .settings import Adaptivity, Integration

__all__ = [
    "HJBResult",
    "integrate",
    "lawson_euler_step",
    "lawson_heun_step",
    "log_z_readoff",
    "nonlinear_term",
]


def nonlinear_term(w: C.TT, round_tol: float, max_rank: int | None, cutoff: float = 0.0) -> C.TT:
    """N(W) = round(P_p sum_mu chi(x_mu) (d_mu W)^2) (rank <= 2 r^2 before rounding), with
    chi(x) = exp(-(x / R)^8) for ``cutoff`` R > 0, else chi = 1."""
    return C.round_tt(C.grad_norm_sq(w, cutoff=cutoff), round_tol, max_rank)


def lawson_euler_step(
    w: C.TT,
    tau: float,
    round_tol: float,
    max_rank: int | None,
    n_w: C.TT | None = None,
    cutoff: float = 0.0,
) -> C.TT:
    """W+ = round(e^{tau L}(W - tau N(W))) (``n_w``: N(W) if already computed)."""
    n_w = nonlinear_term(w, round_tol, max_rank, cutoff) if n_w is None else n_w
    return C.round_tt(C.apply_ou_semigroup(C.add(w, C.scale(n_w, -tau)), tau), round_tol, max_rank)


def lawson_heun_step(
    w: C.TT,
    tau: float,
    round_tol: float,
    max_rank: int | None,
    n_w: C.TT | None = None,
    cutoff: float = 0.0,
) -> tuple[C.TT, C.TT, dict]:
    """Lawson-Heun (exponential RK2): returns (W_H, W_E, rounding info of W_H).

    W_E = round(E (W - tau N(W))),  W_H = round(E (W - tau/2 N(W)) - tau/2 N(W_E)).
    """
    n_w = nonlinear_term(w, round_tol, max_rank, cutoff) if n_w is None else n_w
    w_e = lawson_euler_step(w, tau, round_tol, max_rank, n_w, cutoff)
    n_e = nonlinear_term(w_e, round_tol, max_rank, cutoff)
    half = C.apply_ou_semigroup(C.add(w, C.scale(n_w, -0.5 * tau)), tau)
    w_h, info = C.round_tt(C.add(half, C.scale(n_e, -0.5 * tau)), round_tol, max_rank, True)
    return w_h, w_e, info


def log_z_readoff(w: C.TT) -> tuple[float, float]:
    """(log Z ~ (d/2) log 2 pi - c + ||delta||^2/2, ||delta||) with c = E_gamma W, delta = W - c
    (second-order Cole-Hopf correction for the non-constant remainder)."""
    c0 = C.constant_coefficient(w)
    delta = C.nonconstant_norm(w)
    return 0.5 * w.dim * math.log(2 * math.pi) - c0 + 0.5 * delta**2, delta


class HJBResult(NamedTuple):
    """Snapshots W_{t_j} at the requested times, the final W, the per-step history."""

    snapshots: list
    snapshot_times: np.ndarray
    final: C.TT
    final_time: float
    history: dict
    num_steps: int
    num_rejected: int


def _nonconst_sq(info: dict, w: C.TT) -> float:
    c0 = C.constant_coefficient(w)
    return max(info["norm"] ** 2 - c0**2, 0.0)


def _grown_degrees(w: C.TT, info: dict, nonconst: float, adaptivity: Adaptivity) -> C.TT:
    """W with ``degree_step`` more degrees in every mode whose top-degree mass exceeds
    degree_tol ||W - E W|| (and 1e3 round_tol ||W||), up to ``max_degree``."""
    a = adaptivity
    top = np.asarray(info["top_degree_mass"])
    degs = list(C.degrees(w))
    grow = [
        (top[k] > a.degree_tol * nonconst)
        and (top[k] > 1e3 * a.round_tol * info["norm"])
        and degs[k] < a.max_degree
        for k in range(w.dim)
    ]
    if not any(grow):
        return w
    return C.pad_degrees(
        w, [min(p + a.degree_step, a.max_degree) if g else p for p, g in zip(degs, grow)]
    )


def _progress_bar(total: float):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="TT-HJB", unit="t",
                bar_format="{l_bar}{bar}| t={n:.3g}/{total:.3g} [{elapsed}{postfix}]")


def integrate(
    w0: C.TT,
    snapshot_times: Sequence[float],
    integration: Integration | None = None,
    adaptivity: Adaptivity | None = None,
    *,
    cutoff: float = 0.0,
    progress_bar: bool = False,
) -> HJBResult:
    """Integrate dW/dt = L W - |grad W|^2 from W_0 = ``w0`` (module docstring).

    Stores W at every time of ``snapshot_times`` (steps are shortened to land on them), then
    continues until the non-constant part ||W - E W|| < ``stop_tol`` or t = ``t_max``.

    Args:
        w0: the FTT of W_0.
        snapshot_times: forward times t_j >= 0 at which W is stored.
        integration: the integrator and its step control (:class:`~numpyro_hjb.tt.settings.
            Integration`; default: the engine's). ``integrator`` is "heun" (Lawson-Heun,
            second order), "euler" (Lawson-Euler, same error estimate) or "dlra"
            (projector splitting on the fixed-rank manifold, :mod:`numpyro_hjb.tt.dlra`:
            ranks stay those of the rounded W_0, or ``dlra_rank`` where larger; step
            doubling gives the error estimate).
        adaptivity: rounding, rank cap and degree growth (:class:`~numpyro_hjb.tt.settings.
            Adaptivity`); with "dlra" the rounding only shapes W_0.
        cutoff: R > 0 integrates dW/dt = L W - sum_mu chi_R(x_mu) (d_mu W)^2 with
            chi_R(x) = exp(-(x/R)^8). Without it the Hermite-Galerkin HJB is unstable for a
            W_0 that is not a low-degree polynomial (docs/design.md s.4): the top Hermite
            coefficients drive |grad W|^2 in the far field, where L2(gamma) does not
            control the polynomial. The cutoff leaves the bulk |x| < R unchanged up to the
            inward OU transport and makes the far field linear; Cole-Hopf no longer holds
            exactly, so the read-off is approximate (the importance weights stay exact).
        progress_bar: a tqdm bar over t.

    Returns:
        :class:`HJBResult`: snapshots, their times (sorted), the final W and time, the
        per-step history (time, step, max_rank, max_degree, residual ||W - E W||, error)
        and the numbers of accepted and rejected steps.

    Raises:
        RuntimeError: non-finite coefficients, a step size below ``min_step`` or more than
            ``max_steps`` steps (with time, ranks and degrees in the message).
    """
    opts = Integration() if integration is None else integration
    adapt = Adaptivity() if adaptivity is None else adaptivity
    dlra_route = opts.integrator == "dlra"
    snaps_t = np.sort(np.asarray(snapshot_times, dtype=np.float64))
    if snaps_t.size and snaps_t[0] < 0:
        raise ValueError("snapshot times must be >= 0")
    # the error estimate is O(tau^2) for Lawson (Euler's error), O(tau^3) for DLRA (step
    # doubling of a second-order step)
    err_exponent = 1.0 / 3.0 if dlra_route else 0.5
    round_tol, max_rank = adapt.round_tol, adapt.max_rank
    w = C.round_tt(w0, round_tol, max_rank)
    if dlra_route and opts.dlra_rank is not None:
        w = dlra.pad_to_ranks(w, opts.dlra_rank)
    t = 0.0
    tau = opts.init_step
    snapshots: list = []
    j = 0
    while j < snaps_t.size and snaps_t[j] <= 0.0:
        snapshots.append(w)
        j += 1
    hist = {k: [] for k in ("time", "step", "max_rank", "max_degree", "residual", "error")}
    num_steps = num_rejected = 0
    n_w = None
    bar = None
    if progress_bar:
        bar = _progress_bar(float(snaps_t[-1]) if snaps_t.size else opts.t_max)
    nonconst = math.sqrt(_nonconst_sq(C.round_tt(w, 0.0, None, True)[1], w))
    try:
        while True:
            done_snaps = j >= snaps_t.size
            if done_snaps and (nonconst < opts.stop_tol or t >= opts.t_max - 1e-12):
                break
            t_next = snaps_t[j] if not done_snaps else opts.t_max
            tau_eff = min(tau, opts.max_step, t_next - t)
            clipped = tau_eff < tau
            if dlra_route:
                w_h, w_e, info = dlra.dlra_step_pair(w, tau_eff, cutoff)
            else:
                if n_w is None:
                    n_w = nonlinear_term(w, round_tol, max_rank, cutoff)
                w_h, w_e, info = lawson_heun_step(w, tau_eff, round_tol, max_rank, n_w, cutoff)
            if not (C.is_finite(w_h) and C.is_finite(w_e)):
                raise RuntimeError(
                    f"TT-HJB integration blew up at t={t:.6g} (step {tau_eff:.3g}): non-finite "
                    f"coefficients; ranks {C.ranks(w)}, degrees {C.degrees(w)}. Try a smaller "
                    "step_tol/init_step, a larger degree, or whiten/scale the target."
                )
            err = C.norm(C.sub(w_h, w_e))
            tol = opts.step_tol * (1.0 + nonconst)
            factor = min(2.0, max(0.2, 0.9 * (tol / max(err, 1e-300)) ** err_exponent))
            if err <= tol:
                w_new = w_e if opts.integrator == "euler" else w_h
                if opts.integrator == "euler":
                    info = C.round_tt(w_new, 0.0, None, True)[1]
                t = t + tau_eff
                if not done_snaps and abs(t - t_next) <= 1e-12 * max(1.0, t_next):
                    t = float(t_next)
                n_w = None
                nonconst = math.sqrt(_nonconst_sq(info, w_new))
                num_steps += 1
                w = _grown_degrees(w_new, info, nonconst, adapt)
                for key, v in zip(hist, (t, tau_eff, max(C.ranks(w)), max(C.degrees(w)),
                                         nonconst, err)):
                    hist[key].append(v)
                while j < snaps_t.size and snaps_t[j] <= t + 1e-12:
                    snapshots.append(w)
                    j += 1
                if bar is not None:
                    bar.n = min(t, bar.total)
                    bar.set_postfix(rank=max(C.ranks(w)), deg=max(C.degrees(w)), refresh=False)
                    bar.refresh()
                tau = tau_eff * factor if not clipped else max(tau, tau_eff * factor)
            else:
                num_rejected += 1
                tau = tau_eff * factor
            if tau < opts.min_step:
                raise RuntimeError(
                    f"TT-HJB step size {tau:.3g} below min_step at t={t:.6g}; ranks "
                    f"{C.ranks(w)}, degrees {C.degrees(w)} (local error {err:.3g})."
                )
            if num_steps + num_rejected > opts.max_steps:
                raise RuntimeError(
                    f"TT-HJB exceeded max_steps={opts.max_steps} at t={t:.6g}; ranks "
                    f"{C.ranks(w)}, degrees {C.degrees(w)}."
                )
    finally:
        if bar is not None:
            bar.close()
    history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
    return HJBResult(snapshots, snaps_t, w, t, history, num_steps, num_rejected)
