"""Least-squares fit of a functional TT to samples (with gradients) by ALS (docs/design.md s.4).

The fallback of the TT-cross for W_0 = U - |x|^2/2: given samples x_b ~ N(0, I), values
f_b = f(x_b) and optionally gradients g_b = grad f(x_b), find the FTT

    f~(x) = G_1[x_1] ... G_d[x_d],   G_k[x_k] = sum_i G_k[:, i, :] h_i(x_k)

(orthonormal probabilists' Hermite basis, the core layout of :mod:`core`) that minimises

    J(G) = 1/n sum_b (f~(x_b) - f_b)^2 + w/n sum_b |grad f~(x_b) - g_b|^2 + reg ||G_k||_F^2   (*)

by alternating least squares: f~ is linear in the entries of one core G_k,

    f~(x)      = L_{k-1}(x) G_k[x_k] R_{k+1}(x),
    d_mu f~(x) = dL_{k-1}^mu(x) G_k[x_k] R_{k+1}(x)     (mu < k),
               = L_{k-1}(x) G'_k[x_k] R_{k+1}(x)         (mu = k, h_i -> h_i'),
               = L_{k-1}(x) G_k[x_k] dR_{k+1}^mu(x)     (mu > k),

with L, R the left/right interface products of the evaluated cores (as in
:func:`core.value_grad_lap`) and dL^mu, dR^mu the same products with core mu evaluated on
h'. Each sweep solves the regularised linear least-squares problem (*) for k = 1..d and back,
keeping the cores left of k left-orthogonal and those right of k right-orthogonal (QR), so
that the Tikhonov term acts on a well-conditioned parametrisation (||G_k||_F = ||f~||_{L2(gamma)}
at the orthogonality centre).

Host numpy float64 (like the TT algebra in :mod:`core`): the ranks and shapes are small and
fixed, each core solve is one dense ``lstsq``.
"""

from __future__ import annotations

import numpy as np

from . import core as C
from .basis import eval_basis_np

__all__ = ["tt_least_squares"]


def _bond_ranks(degs: list[int], rank: int) -> list[int]:
    """r_0..r_d with r_k = min(rank, dim of the left space, dim of the right space)."""
    sizes = [p + 1 for p in degs]
    d = len(sizes)
    out = [1]
    for k in range(1, d):
        out.append(int(min(rank, np.prod(sizes[:k], dtype=float), np.prod(sizes[k:], dtype=float))))
    return out + [1]


def _mode(core: np.ndarray, phi_k: np.ndarray) -> np.ndarray:
    """A[b] = sum_i G[:, i, :] phi_k[b, i]: (n, r0, r1)."""
    return np.einsum("bi,aic->bac", phi_k, core)


def _left_stacks(a0: list, a1: list | None, k: int, n: int):
    """L = A_1 ... A_k (n, r_k) and, with a1, dL (n, d, r_k): dL[:, mu] = d_mu L (zero for
    mu >= k)."""
    d = len(a0)
    left = np.ones((n, 1))
    dleft = np.zeros((n, d, 1)) if a1 is not None else None
    for j in range(k):
        if a1 is not None:
            dleft = np.einsum("bma,bac->bmc", dleft, a0[j])
            dleft[:, j] = np.einsum("ba,bac->bc", left, a1[j])
        left = np.einsum("ba,bac->bc", left, a0[j])
    return left, dleft


def _right_stacks(a0: list, a1: list | None, k: int, n: int):
    """R = A_{k+1} ... A_d (n, r_k) and, with a1, dR (n, d, r_k) (zero for mu <= k)."""
    d = len(a0)
    right = np.ones((n, 1))
    dright = np.zeros((n, d, 1)) if a1 is not None else None
    for j in range(d - 1, k, -1):
        if a1 is not None:
            dright = np.einsum("bac,bmc->bma", a0[j], dright)
            dright[:, j] = np.einsum("bac,bc->ba", a1[j], right)
        right = np.einsum("bac,bc->ba", a0[j], right)
    return right, dright


def _design(cores, k, phi0, phi1, with_grads: bool):
    """Rows of (*) for core k: values (n, m) and, with_grads, gradients (n, d, m),
    m = r_{k-1} (p_k + 1) r_k in the C order of the core."""
    n, d, _ = phi0.shape
    p1 = cores[k].shape[1]
    a0 = [_mode(c, phi0[:, j, : c.shape[1]]) for j, c in enumerate(cores)]
    a1 = [_mode(c, phi1[:, j, : c.shape[1]]) for j, c in enumerate(cores)] if with_grads else None
    left, dleft = _left_stacks(a0, a1, k, n)
    right, dright = _right_stacks(a0, a1, k, n)
    h0 = phi0[:, k, :p1]
    vals = np.einsum("ba,bi,bc->baic", left, h0, right).reshape(n, -1)
    if not with_grads:
        return vals, None
    grads = np.einsum("bma,bi,bc->bmaic", dleft, h0, right)
    grads = grads + np.einsum("ba,bi,bmc->bmaic", left, h0, dright)
    grads[:, k] = np.einsum("ba,bi,bc->baic", left, phi1[:, k, :p1], right)
    return vals, grads.reshape(n, d, -1)


def tt_least_squares(
    x: np.ndarray,
    values: np.ndarray,
    degrees: int | list[int],
    rank: int,
    grads: np.ndarray | None = None,
    num_sweeps: int = 8,
    reg: float = 1e-12,
    rng: np.random.Generator | None = None,
    grad_weight: float = 1.0,
    tol: float = 1e-12,
    init: C.TT | None = None,
) -> C.TT:
    """FTT of fixed rank cap ``rank`` fitted to samples by ALS, minimising (*) of the module
    docstring.

    Args:
        x: samples (n, d), meant to be drawn from N(0, I) (the measure the basis is
            orthonormal for, so that (*) estimates the L2(gamma) / H1(gamma) error).
        values: f(x) (n,).
        degrees: Hermite degree per mode (int or length-d list).
        rank: rank cap (bond ranks are also capped by the sizes of the left/right spaces).
        grads: optional grad f(x) (n, d), added as extra rows with weight ``grad_weight``.
        num_sweeps: maximal number of (left-right + right-left) sweep pairs.
        reg: Tikhonov weight on the core being solved (at the orthogonality centre, i.e. on
            ||f~||^2_{L2(gamma)}).
        rng: numpy generator for the random initial cores (default ``default_rng(0)``).
        tol: stop when the relative change of the training residual between sweeps is below.
        init: optional starting TT (e.g. a poor TT-cross), embedded into the leading block
            of the rank-``rank`` cores; the rest starts as small random entries. Default:
            random cores. (ALS from a random start can stall for many sweeps when the rank
            cap equals the exact rank; one spare rank or a good start avoids this.)

    Returns:
        the fitted :class:`core.TT` (numpy float64 cores).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    n, d = x.shape
    degs = [int(degrees)] * d if np.isscalar(degrees) else [int(p) for p in degrees]
    rng = np.random.default_rng(0) if rng is None else rng
    with_grads = grads is not None
    pmax = max(degs)
    phi0 = eval_basis_np(x, pmax)
    phi1 = eval_basis_np(x, pmax, 1) if with_grads else None
    target = y / np.sqrt(n)
    if with_grads:
        g = np.asarray(grads, dtype=np.float64).reshape(n, d)
        target = np.concatenate([target, np.sqrt(grad_weight / n) * g.reshape(-1)])

    rk = _bond_ranks(degs, rank)
    cores = [rng.standard_normal((rk[k], degs[k] + 1, rk[k + 1])) for k in range(d)]
    if init is not None:
        for k, c in enumerate(C.project_degrees(init, degs).cores):
            r0, r1 = min(c.shape[0], rk[k]), min(c.shape[2], rk[k + 1])
            cores[k] = 1e-3 * cores[k]
            cores[k][:r0, :, :r1] = c[:r0, :, :r1]
    cores = list(C.orthogonalize_right(C.TT(tuple(cores))).cores)

    def solve(k):
        vals, gr = _design(cores, k, phi0, phi1, with_grads)
        rows = [vals / np.sqrt(n)]
        if with_grads:
            rows.append(np.sqrt(grad_weight / n) * gr.reshape(n * d, -1))
        m = vals.shape[1]
        a = np.concatenate(rows + [np.sqrt(reg) * np.eye(m)])
        rhs = np.concatenate([target, np.zeros(m)])
        sol, *_ = np.linalg.lstsq(a, rhs, rcond=None)
        cores[k] = sol.reshape(cores[k].shape)
        return float(np.linalg.norm(a @ sol - rhs))

    prev = None
    # one sweep: k = 0..d-1, then d-2..0; it ends with cores 1..d-1 right-orthogonal again
    order = list(range(d)) + list(range(d - 2, -1, -1)) if d > 1 else [0]
    for _ in range(num_sweeps):
        for step, k in enumerate(order):
            res = solve(k)
            nxt = order[step + 1] if step + 1 < len(order) else None
            if nxt is None:
                continue
            r0, p1, r1 = cores[k].shape
            if nxt > k:  # move the orthogonality centre right: G_k = Q R, R into G_{k+1}
                q, r = np.linalg.qr(cores[k].reshape(r0 * p1, r1))
                cores[k] = q.reshape(r0, p1, -1)
                cores[nxt] = np.einsum("ab,bic->aic", r, cores[nxt])
            else:  # move it left: G_k^T = Q R, R^T into G_{k-1}
                q, r = np.linalg.qr(cores[k].reshape(r0, p1 * r1).T)
                cores[k] = q.T.reshape(-1, p1, r1)
                cores[nxt] = np.einsum("aib,cb->aic", cores[nxt], r)
        if prev is not None and abs(prev - res) <= tol * max(prev, 1e-300):
            break
        prev = res
    return C.from_cores(cores)
