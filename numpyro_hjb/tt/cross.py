"""W_0 = U - |x|^2/2 into FTT form from black-box calls of the potential (docs/design.md s.4).

TT-cross by alternating maxvol sweeps (Oseledets & Tyrtyshnikov's cross interpolation, no
DMRG supercores) on the tensor-product Gauss-Hermite grid  x_{i_1} x ... x x_{i_d}  with
n_k = p_k + 1 nodes per mode: each sweep evaluates f on the fibres
(I_{k-1} x {all i_k} x J_{k+1}) of the current left/right pivot sets, QR-orthogonalises the
fibre matrix and picks the next pivots with maxvol. The result interpolates f at the pivots;
the nodal cores are then turned into Hermite coefficients mode by mode with the
(p_k+1) x n_k grid transform c_i = sum_j w_j h_i(x_j) f(x_j) (interpolation at the nodes).
Rank adaptivity: the rank cap doubles while the rounded cross uses more than half of it and
the hold-out error is above tolerance. Finally the TT is rounded.

The fit is reported by its hold-out relative error on fresh N(0, I) points
(:func:`holdout_error`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from . import core as C
from .basis import nodal_to_coeff

__all__ = ["maxvol", "tt_cross", "CrossResult", "holdout_error", "cross_potential"]


class CrossResult(NamedTuple):
    """The FTT of f, with the number of f evaluations and the hold-out relative error."""

    tt: C.TT
    num_evals: int
    holdout_error: float
    rank_cap: int
    sweeps: int


def maxvol(a: np.ndarray, tol: float = 1.02, max_iters: int = 200) -> np.ndarray:
    """Row indices of a quasi-maximal-volume r x r submatrix of a (n, r), n >= r.

    Start from the pivots of a column-pivoted QR of a^T, then swap rows while some entry of
    B = a a[I]^{-1} exceeds ``tol`` in modulus (each swap multiplies the volume by |B_ij|).
    """
    n, r = a.shape
    if r == 0:
        return np.zeros(0, dtype=int)
    if n == r:
        return np.arange(n)
    _, _, piv = scipy.linalg.qr(a.T, mode="economic", pivoting=True)
    rows = np.array(piv[:r])
    for _ in range(max_iters):
        sub = a[rows]
        try:
            b = np.linalg.solve(sub.T, a.T).T  # a sub^{-1}
        except np.linalg.LinAlgError:
            break
        i, j = np.unravel_index(np.argmax(np.abs(b)), b.shape)
        if abs(b[i, j]) <= tol:
            break
        rows[j] = i
    return rows


def _range_basis(m: np.ndarray, tol: float) -> np.ndarray:
    """Orthonormal basis of the (numerical, for tol > 0) range of m; at least one column."""
    if tol <= 0:
        return np.linalg.qr(m)[0]
    u, sv, _ = np.linalg.svd(m, full_matrices=False)
    r = max(1, int(np.sum(sv > tol * (sv[0] if sv.size else 0.0))))
    return u[:, :r]


def _fibre_points(
    left: np.ndarray, nodes_k: np.ndarray, right: np.ndarray, k: int, grids: list[np.ndarray]
) -> np.ndarray:
    """Points (r_l * n_k * r_r, d) of the fibre I_{k-1} x {i_k} x J_{k+1}, C order."""
    rl, rr, nk = left.shape[0], right.shape[0], nodes_k.shape[0]
    d = len(grids)
    pts = np.empty((rl, nk, rr, d))
    for j in range(k):
        pts[:, :, :, j] = grids[j][left[:, j]][:, None, None]
    pts[:, :, :, k] = nodes_k[None, :, None]
    for j in range(k + 1, d):
        pts[:, :, :, j] = grids[j][right[:, j - k - 1]][None, None, :]
    return pts.reshape(-1, d)


def tt_cross(
    fun: Callable[[np.ndarray], np.ndarray],
    grids: list[np.ndarray],
    rank: int,
    rng: np.random.Generator,
    num_sweeps: int = 6,
    tol: float = 1e-10,
    weights: list[np.ndarray] | None = None,
    svd_tol: float = 0.0,
) -> tuple[list[np.ndarray], int, int]:
    """Fixed-rank-cap alternating maxvol cross of the grid tensor f(grid points).

    Args:
        fun: vectorised f, points (m, d) -> (m,).
        grids: nodes per mode.
        rank: rank cap r (bond ranks min(r, prod of mode sizes on each side)).
        rng: numpy generator for the initial right pivots.
        num_sweeps: maximal number of (left-right + right-left) sweep pairs.
        tol: stop when the relative change of the pivot values between sweeps is below tol.
        weights: per-mode probabilities for drawing initial pivots (default uniform).
        svd_tol: > 0 truncates fibre matrices to their numerical rank (singular values above
            svd_tol * largest); 0 (default) keeps the full QR basis (a rank lost to duplicate
            initial pivots could not be recovered otherwise).

    Returns:
        (nodal cores V_k (r_{k-1}, n_k, r_k) with f ~ V_1[i_1] ... V_d[i_d], number of f
        evaluations, sweeps done).
    """
    d = len(grids)
    n = [g.shape[0] for g in grids]
    evals = 0
    # bond ranks
    rk = [1]
    for k in range(1, d):
        rk.append(int(min(rank, np.prod(n[:k], dtype=float), np.prod(n[k:], dtype=float))))
    rk.append(1)
    # initial right pivot sets J_k (modes k..d-1), k = 1..d-1
    rights: list[np.ndarray] = [None] * (d + 1)
    rights[d] = np.zeros((1, 0), dtype=int)
    for k in range(d - 1, 0, -1):
        cols = []
        for j in range(k, d):
            pw = None if weights is None else weights[j] / weights[j].sum()
            cols.append(rng.choice(n[j], size=rk[k], p=pw))
        rights[k] = np.stack(cols, axis=1)
    lefts: list[np.ndarray] = [None] * (d + 1)
    lefts[0] = np.zeros((1, 0), dtype=int)
    cores: list[np.ndarray] = [None] * d
    prev_norm = None
    sweeps = 0

    def fibre(k):
        nonlocal evals
        pts = _fibre_points(lefts[k], grids[k], rights[k + 1], k, grids)
        evals += pts.shape[0]
        vals = np.asarray(fun(pts), dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            raise RuntimeError(
                "TT-cross: the potential is not finite at some Gauss-Hermite grid points "
                f"(mode {k}); the target must have full support on R^d (whiten/scale it)."
            )
        return vals.reshape(lefts[k].shape[0], n[k], rights[k + 1].shape[0])

    if d == 1:
        cores[0] = fibre(0)
        return cores, evals, 1

    for sweep in range(num_sweeps):
        sweeps = sweep + 1
        # left-to-right
        for k in range(d - 1):
            f = fibre(k)
            rl, nk, rr = f.shape
            q = _range_basis(f.reshape(rl * nk, rr), svd_tol)
            rows = maxvol(q)
            cores[k] = np.linalg.solve(q[rows].T, q.T).T.reshape(rl, nk, -1)
            a_idx, i_idx = np.divmod(rows, nk)
            lefts[k + 1] = np.concatenate([lefts[k][a_idx], i_idx[:, None]], axis=1)
        cores[d - 1] = fibre(d - 1)
        # right-to-left
        for k in range(d - 1, 0, -1):
            f = fibre(k)
            rl, nk, rr = f.shape
            q = _range_basis(f.reshape(rl, nk * rr).T, svd_tol)
            rows = maxvol(q)
            cores[k] = np.linalg.solve(q[rows].T, q.T).reshape(-1, nk, rr)
            i_idx, b_idx = np.divmod(rows, rr)
            rights[k] = np.concatenate([i_idx[:, None], rights[k + 1][b_idx]], axis=1)
        cores[0] = fibre(0)
        nrm = float(np.linalg.norm(cores[0]))
        if prev_norm is not None and abs(nrm - prev_norm) <= tol * max(nrm, 1e-300):
            break
        prev_norm = nrm
    return cores, evals, sweeps


def nodal_to_hermite(cores: list[np.ndarray], degs: list[int]) -> C.TT:
    """Nodal cores on n_k = p_k + 1 Gauss-Hermite nodes -> Hermite coefficient cores."""
    out = []
    for v, p in zip(cores, degs):
        _, t = nodal_to_coeff(p, v.shape[1])
        out.append(np.einsum("ij,ajb->aib", t, v))
    return C.TT(tuple(out))


def holdout_error(
    tt: C.TT, fun: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator, num: int = 2000
) -> float:
    """Relative L2(gamma) error ||f - tt|| / ||f|| on ``num`` fresh N(0, I) points."""
    x = rng.standard_normal((num, tt.dim))
    exact = np.asarray(fun(x), dtype=np.float64)
    with jax.enable_x64(True):
        approx = np.asarray(_value_jit(tuple(jnp.asarray(c) for c in tt.cores), jnp.asarray(x)))
    ok = np.isfinite(exact)
    den = np.sqrt(np.mean(exact[ok] ** 2))
    return float(np.sqrt(np.mean((exact[ok] - approx[ok]) ** 2)) / max(den, 1e-300))


_value_jit = jax.jit(C.value)


def cross_potential(
    fun: Callable[[np.ndarray], np.ndarray],
    dim: int,
    degree: int,
    rank: int = 8,
    max_rank: int = 32,
    num_sweeps: int = 6,
    round_tol: float = 1e-12,
    holdout_tol: float = 1e-8,
    seed: int = 0,
    num_nodes: int | None = None,
    noise_rel: float = 0.0,
) -> CrossResult:
    """FTT of f (e.g. W_0 = U - |x|^2/2) on the degree-``degree`` Gauss-Hermite grid, with a
    rank cap r that doubles (up to ``max_rank``) while the rounded result has a rank above
    r / 2 and the hold-out relative error exceeds ``holdout_tol``. ``num_nodes`` (default
    degree + 1, i.e. interpolation) > degree + 1 gives the discrete L2(gamma) projection on a finer grid,
    which avoids interpolation blow-up between nodes for non-polynomial f.

    ``noise_rel`` > 0 ties the rounding tolerance to the computed degree-truncation error:
    with eps_p = max_k ||degrees p_k - 1, p_k of f in x_k|| / ||f|| (the top Hermite
    coefficient mass, :func:`core.top_degree_mass`), the TT is rounded with

        tol = max(round_tol, noise_rel * eps_p),

    so singular values far below the error the degree already makes (cross / round-off
    noise, e.g. spurious rank > 1 for a product f) are dropped; the added L2(gamma) error is
    <= noise_rel * eps_p ||f||. The rank is judged after this rounding."""
    from .basis import gauss_hermite

    rng = np.random.default_rng(seed)
    degs = [int(degree)] * dim
    nn = [p + 1 if num_nodes is None else max(int(num_nodes), p + 1) for p in degs]
    grids = [np.array(gauss_hermite(n)[0]) for n in nn]
    wts = [np.array(gauss_hermite(n)[1]) for n in nn]
    total = 0
    r = int(min(rank, max_rank))
    while True:
        cores, ev, sweeps = tt_cross(fun, grids, r, rng, num_sweeps=num_sweeps, weights=wts)
        total += ev
        tt = C.round_tt(nodal_to_hermite(cores, degs), round_tol)
        if noise_rel > 0:
            eps_p = float(np.max(C.top_degree_mass(tt)))
            tol = max(round_tol, noise_rel * eps_p)
            if tol > round_tol:
                tt = C.round_tt(tt, tol)
        err = holdout_error(tt, fun, rng)
        # more than half the cap used: the cap may be what limits the fit (a cross at cap r
        # can return fewer than r useful pivots for a function of rank just above r)
        near_saturated = 2 * max(C.ranks(tt)) > r
        if err <= holdout_tol or not near_saturated or r >= max_rank:
            return CrossResult(tt, total, err, r, sweeps)
        r = min(2 * r, max_rank)
