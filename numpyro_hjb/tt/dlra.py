"""Dynamical low-rank integration of the HJB equation on the fixed-rank TT manifold.

The second integrator of the TT-HJB paper (docs/design.md s.4). Instead of forming
e^{tau L}(W - tau N(W)) at rank <= 2 r^2 and rounding it back (``hjb.lawson_*``), the
nonlinear flow dW/dt = -N(W), N(W) = P_p |grad W|^2, is projected onto the tangent space
of the manifold of TTs with the ranks of W and integrated there by the projector-splitting
(KSL) scheme of Lubich, Oseledets and Vandereycken (2015, "Time integration of tensor
trains"). One left-to-right sweep over the cores k = 1..d:

    K-step:  K_k <- K_k + tau X_{<k}^T F(Y) X_{>k}          (Y = X_{<k} K_k X_{>k})
             K_k = Q_k R_k (QR; Q_k becomes core k, left-orthogonal)
    S-step:  S_k <- R_k - tau X_{<=k}^T F(Y) X_{>k}         (k < d; backward in time)
             K_{k+1} <- S_k X_{k+1}

with X_{<k} the left-orthogonal cores 1..k-1, X_{>k} the right-orthogonal cores k+1..d and
F = -N evaluated at the current Y of each substep; each substep is one Heun step of its local
ODE. Core j of N(Y) depends on core j of Y only, so the interfaces of the frames with N are
cached and a substep rebuilds one or two cores of N (O(1) cores per substep, O(d) per
sweep). A sweep of tau/2 followed by its adjoint (the right-to-left sweep of tau/2) makes
the scheme second order. The frames are orthonormal in
L2(gamma) because the Hermite basis is orthonormal, so every projection is a contraction of
coefficient cores. The linear part is integrated exactly around it by Strang splitting,
e^{tau L/2} KSL(tau) e^{tau L/2} (e^{tau L} scales the cores and keeps the rank). The ranks
never change: the scheme stays on the manifold fixed by W_0 (or by ``dlra_rank``), and it
never rounds the rank-2r^2 tensor N(W).

Exactness (Lubich-Oseledets-Vandereycken): if F is constant and Y_0 + s F keeps the ranks of
Y_0 for s in [0, tau], the sweep returns Y_0 + tau F exactly (tested).

``dlra_step_pair`` returns one step of tau and two of tau/2, whose difference is the local
error estimate (O(tau^3)) used by ``hjb.integrate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import core as C

#: mode-local right-hand side: (core k of Y, k, d) -> core k of F(Y)
RhsCore = Callable[[np.ndarray, int, int], np.ndarray]

__all__ = [
    "dlra_step",
    "dlra_step_pair",
    "hjb_rhs_core",
    "ksl_sweep",
    "pad_to_ranks",
    "symmetric_ksl",
]


def _fit_degrees(f_core: np.ndarray, n: int) -> np.ndarray:
    """Degree slice 0..n-1 of a core, zero-padded when F has fewer degrees (the L2(gamma)
    projection onto the degrees of Y)."""
    if f_core.shape[1] >= n:
        return f_core[:, :n, :]
    return np.pad(f_core, ((0, 0), (0, n - f_core.shape[1]), (0, 0)))


def _heun(y: np.ndarray, tau: float, g: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """One Heun (explicit trapezoidal) step of dy/dt = g(y)."""
    g0 = g(y)
    return y + 0.5 * tau * (g0 + g(y + tau * g0))


def _reverse(tt: C.TT) -> C.TT:
    """The TT with the order of the variables reversed (core k <-> core d-1-k, transposed)."""
    return C.TT(tuple(np.transpose(c, (2, 1, 0)) for c in reversed(C._np_cores(tt))))


def ksl_sweep(w: C.TT, tau: float, rhs_core: RhsCore) -> C.TT:
    """One Lie-Trotter projector-splitting step of dY/dt = F(Y) on the fixed-rank manifold,
    cores left to right (module docstring; each K- and S-substep by one Heun step of its
    local ODE). F must be mode-local: core j of F(Y) is ``rhs_core(core j of Y, j, d)``, as
    for P_p |grad Y|^2. The interfaces of the frames with F are then cached (left: the
    finished cores; right: the frames still to come), and a substep re-evaluates one or two
    cores of F only. Returns a left-orthogonal TT with the ranks and degrees of ``w``."""
    cores = list(C._np_cores(C.orthogonalize_right(w)))
    d = len(cores)

    def f_core(core, j):
        return _fit_degrees(rhs_core(core, j, d), core.shape[1])

    right = [np.ones((1, 1))] * d  # right[k]: frames k+1..d-1 against their F cores
    for j in range(d - 1, 0, -1):
        right[j - 1] = np.einsum("cd,aic,bid->ab", right[j], cores[j], f_core(cores[j], j))
    left = np.ones((1, 1))  # finished cores 0..k-1 against their F cores
    for k in range(d):
        def g_k(kk, k=k, left=left):
            return np.einsum("ab,bic,dc->aid", left, f_core(kk, k), right[k])

        kk = _heun(cores[k], tau, g_k)
        if k == d - 1:
            cores[k] = kk
            break
        r0, n, r1 = kk.shape
        q, r = np.linalg.qr(kk.reshape(r0 * n, r1))
        cores[k] = q.reshape(r0, n, r1)
        left = np.einsum("ab,aic,bid->cd", left, cores[k], f_core(cores[k], k))
        frame = cores[k + 1]

        def h_k(s, k=k, left=left, frame=frame):  # backward in time: dS/dt = -P_S F
            f_next = f_core(np.einsum("ab,bic->aic", s, frame), k + 1)
            inner = np.einsum("bic,gid,cd->bg", frame, f_next, right[k + 1])
            return -(left @ inner.T)

        cores[k + 1] = np.einsum("ab,bic->aic", _heun(r, tau, h_k), frame)
    return C.TT(tuple(cores))


def symmetric_ksl(w: C.TT, tau: float, rhs_core: RhsCore) -> C.TT:
    """Second-order projector splitting: a left-to-right sweep of tau/2 followed by its
    adjoint, the right-to-left sweep of tau/2 (the left-to-right sweep of the reversed TT)."""
    d = w.dim
    half = ksl_sweep(w, 0.5 * tau, rhs_core)

    def reversed_rhs(core, j, dim):
        return np.transpose(rhs_core(np.transpose(core, (2, 1, 0)), d - 1 - j, dim), (2, 1, 0))

    return _reverse(ksl_sweep(_reverse(half), 0.5 * tau, reversed_rhs))


def _feasible_ranks(degs: Sequence[int]) -> list[int]:
    """Largest TT ranks r_0..r_d a tensor of these mode sizes can have."""
    sizes = [p + 1 for p in degs]
    d = len(sizes)
    out = [1]
    for k in range(1, d):
        out.append(int(min(np.prod(sizes[:k], dtype=float), np.prod(sizes[k:], dtype=float))))
    return out + [1]


def pad_to_ranks(w: C.TT, rank: int) -> C.TT:
    """The same function on the manifold of ranks min(rank, feasible): zero-padded cores
    (the sweep's QR factorisations complete the frames with orthonormal directions)."""
    degs = C.degrees(w)
    caps = [max(min(rank, f), r) for f, r in zip(_feasible_ranks(degs), C.ranks(w))]
    return C.TT(C.pad_ranks(w, caps, degs))


def hjb_rhs_core(core: np.ndarray, k: int, d: int, cutoff: float = 0.0) -> np.ndarray:
    """Core k of F(W) = -P_p sum_mu chi_R(x_mu) (d_mu W)^2 at the degree of core k
    (:func:`numpyro_hjb.tt.core.grad_norm_sq_core`; depends on core k of W only)."""
    return -C.grad_norm_sq_core(core, k, d, core.shape[1] - 1, cutoff=cutoff)


def dlra_step(w: C.TT, tau: float, cutoff: float = 0.0) -> C.TT:
    """Strang splitting e^{tau L/2} KSL_tau e^{tau L/2} of dW/dt = L W - N(W) on the manifold."""
    half = C.apply_ou_semigroup(w, 0.5 * tau)
    moved = symmetric_ksl(half, tau, lambda core, k, d: hjb_rhs_core(core, k, d, cutoff))
    return C.apply_ou_semigroup(moved, 0.5 * tau)


def dlra_step_pair(w: C.TT, tau: float, cutoff: float = 0.0) -> tuple[C.TT, C.TT, dict]:
    """(two steps of tau/2, one step of tau, norm information of the former): the pair whose
    difference estimates the local error (step doubling)."""
    one = dlra_step(w, tau, cutoff)
    two = dlra_step(dlra_step(w, 0.5 * tau, cutoff), 0.5 * tau, cutoff)
    info = C.round_tt(two, 0.0, None, True)[1]
    return two, one, info
