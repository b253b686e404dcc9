"""Functional tensor trains (FTT) over the orthonormal Hermite basis (docs/design.md s.4).

    f(x) = sum_{i_1..i_d} G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :] h_{i_1}(x_1) ... h_{i_d}(x_d),
    G_k of shape (r_{k-1}, p_k + 1, r_k),  r_0 = r_d = 1.

Because the basis is orthonormal in L2(gamma), the L2(gamma) inner product of two FTTs is the
Frobenius inner product of their coefficient tensors, and TT rounding in coefficient space is
rounding in L2(gamma).

This module is the algebra (addition, scaling, Hadamard product, |grad f|^2, the OU
semigroup, orthogonalisation, rounding, norms), on the host in numpy float64: ranks change
at every step, and numpy avoids a recompile per shape. A :class:`TT` is nevertheless a JAX
pytree (its cores are the leaves), so it can be passed to jitted code. The batch evaluation
at points (value, gradient, Laplacian, Hessian diagonal) is jax.numpy code in
:mod:`numpyro_hjb.tt.evaluate`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np

from .basis import derivative_matrix, eval_basis_np, gauss_hermite
from .evaluate import gradient, value, value_grad_hess_diag, value_grad_lap

__all__ = [
    "TT",
    "from_cores",
    "constant_tt",
    "ranks",
    "degrees",
    "value",
    "value_grad_lap",
    "value_grad_hess_diag",
    "top_degree_mass",
    "total_degree_norms",
    "gradient",
    "add",
    "scale",
    "sub",
    "hadamard",
    "partial_derivative",
    "grad_norm_sq",
    "grad_norm_sq_core",
    "pad_degrees",
    "project_degrees",
    "apply_ou_semigroup",
    "orthogonalize_right",
    "orthogonalize_left",
    "round_tt",
    "inner",
    "norm",
    "constant_coefficient",
    "nonconstant_norm",
    "to_full",
    "pad_ranks",
    "is_finite",
]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class TT:
    """A functional tensor train: ``cores[k]`` has shape (r_{k-1}, p_k + 1, r_k)."""

    cores: tuple

    def tree_flatten(self):
        return tuple(self.cores), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(tuple(children))

    @property
    def dim(self) -> int:
        return len(self.cores)

    def __repr__(self) -> str:
        return f"TT(d={self.dim}, ranks={ranks(self)}, degrees={degrees(self)})"


def from_cores(cores: Sequence) -> TT:
    """Build a TT from cores, checking the rank chain; converts to numpy float64."""
    cs = tuple(np.asarray(c, dtype=np.float64) for c in cores)
    if not cs:
        raise ValueError("a TT needs at least one core")
    if cs[0].shape[0] != 1 or cs[-1].shape[2] != 1:
        raise ValueError("boundary ranks must be 1")
    for k in range(len(cs) - 1):
        if cs[k].ndim != 3 or cs[k].shape[2] != cs[k + 1].shape[0]:
            raise ValueError(f"rank mismatch between cores {k} and {k + 1}")
    return TT(cs)


def constant_tt(value_: float, dim: int, degree: int | Sequence[int] = 0) -> TT:
    """The constant function ``value_`` (rank 1)."""
    degs = [degree] * dim if np.isscalar(degree) else list(degree)
    cores = []
    for k in range(dim):
        c = np.zeros((1, degs[k] + 1, 1))
        c[0, 0, 0] = value_ if k == 0 else 1.0
        cores.append(c)
    return TT(tuple(cores))


def ranks(tt: TT) -> tuple[int, ...]:
    """(r_0, ..., r_d)."""
    return (1,) + tuple(int(c.shape[2]) for c in tt.cores)


def degrees(tt: TT) -> tuple[int, ...]:
    """(p_1, ..., p_d)."""
    return tuple(int(c.shape[1]) - 1 for c in tt.cores)


def is_finite(tt: TT) -> bool:
    return all(bool(np.all(np.isfinite(c))) for c in tt.cores)


# ----------------------------------------------------------------------------------------
# algebra (numpy float64, host)


def _np_cores(tt: TT) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float64) for c in tt.cores]


def pad_degrees(tt: TT, degs: Sequence[int] | int) -> TT:
    """Zero-pad (never truncate) each core to degree ``degs[k]`` (exact)."""
    cores = _np_cores(tt)
    degs = [degs] * len(cores) if np.isscalar(degs) else list(degs)
    out = []
    for c, p in zip(cores, degs):
        q = c.shape[1] - 1
        out.append(np.pad(c, ((0, 0), (0, max(p - q, 0)), (0, 0))))
    return TT(tuple(out))


def project_degrees(tt: TT, degs: Sequence[int] | int) -> TT:
    """P_p: L2(gamma)-orthogonal projection onto degree <= degs[k] in mode k (pads if lower)."""
    cores = _np_cores(tt)
    degs = [degs] * len(cores) if np.isscalar(degs) else list(degs)
    out = []
    for c, p in zip(cores, degs):
        q = c.shape[1] - 1
        out.append(c[:, : p + 1, :] if q >= p else np.pad(c, ((0, 0), (0, p - q), (0, 0))))
    return TT(tuple(out))


def scale(tt: TT, alpha: float) -> TT:
    """alpha f (scales the first core; ranks unchanged)."""
    cores = _np_cores(tt)
    cores[0] = cores[0] * alpha
    return TT(tuple(cores))


def add(a: TT, b: TT) -> TT:
    """a + b: block cores, ranks r_a + r_b (first/last cores concatenated), degrees max."""
    if a.dim != b.dim:
        raise ValueError(f"dimension mismatch {a.dim} vs {b.dim}")
    degs = [max(pa, pb) for pa, pb in zip(degrees(a), degrees(b))]
    ca, cb = _np_cores(pad_degrees(a, degs)), _np_cores(pad_degrees(b, degs))
    d = a.dim
    if d == 1:
        return TT((ca[0] + cb[0],))
    out = []
    for k in range(d):
        ga, gb = ca[k], cb[k]
        if k == 0:
            out.append(np.concatenate([ga, gb], axis=2))
        elif k == d - 1:
            out.append(np.concatenate([ga, gb], axis=0))
        else:
            r0a, n, r1a = ga.shape
            r0b, _, r1b = gb.shape
            g = np.zeros((r0a + r0b, n, r1a + r1b))
            g[:r0a, :, :r1a] = ga
            g[r0a:, :, r1a:] = gb
            out.append(g)
    return TT(tuple(out))


def sub(a: TT, b: TT) -> TT:
    """a - b."""
    return add(a, scale(b, -1.0))


def _core_values(core: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """V[a, q, b] = sum_i G[a, i, b] h_i(nodes_q)."""
    return np.einsum("qi,aib->aqb", eval_basis_np(nodes, core.shape[1] - 1), core)


def _hadamard_core(ga: np.ndarray, gb: np.ndarray, p: int, cutoff: float = 0.0) -> np.ndarray:
    """Core of P_p(a * b) in one mode,

        C[(a,a'), l, (b,b')] = sum_{ij} c_{ijl} Ga[a,i,b] Gb[a',j,b'],

    computed exactly by Gauss-Hermite quadrature with n_q >= (pa + pb + p + 1) / 2 nodes.

    ``cutoff`` R > 0 projects chi_R a b instead, chi_R(x) = exp(-(x / R)^8) (damped outside
    |x| ~ R), on n_q >= 2 p + 2 nodes."""
    pa, pb = ga.shape[1] - 1, gb.shape[1] - 1
    nq = (pa + pb + p + 2) // 2 + 1
    if cutoff > 0:
        nq = max(nq, 2 * p + 2)
    x, w = gauss_hermite(nq)
    prod = np.einsum("aqb,cqd->acqbd", _core_values(ga, x), _core_values(gb, x))
    prod = prod.reshape(ga.shape[0] * gb.shape[0], nq, ga.shape[2] * gb.shape[2])
    if cutoff > 0:
        prod = prod * np.exp(-((x / cutoff) ** 8))[None, :, None]
    t = eval_basis_np(x, p) * w[:, None]  # (nq, p+1)
    return np.einsum("ql,aqb->alb", t, prod)


def hadamard(a: TT, b: TT, degs: Sequence[int] | int | None = None) -> TT:
    """P_p(a * b): pointwise product projected onto degrees ``degs`` (default max(p_a, p_b));
    ranks r_a r_b (Kronecker structure), computed mode-wise in coefficient space."""
    if a.dim != b.dim:
        raise ValueError(f"dimension mismatch {a.dim} vs {b.dim}")
    if degs is None:
        degs = [max(pa, pb) for pa, pb in zip(degrees(a), degrees(b))]
    elif np.isscalar(degs):
        degs = [int(degs)] * a.dim
    ca, cb = _np_cores(a), _np_cores(b)
    return TT(tuple(_hadamard_core(x, y, p) for x, y, p in zip(ca, cb, degs)))


def _derivative_core(core: np.ndarray) -> np.ndarray:
    """Core of d/dx_k in mode k: G'[:, n-1, :] = sqrt(n) G[:, n, :] (same shape)."""
    dm = derivative_matrix(core.shape[1] - 1)
    return np.einsum("ij,ajb->aib", dm, core)


def partial_derivative(tt: TT, mu: int) -> TT:
    """d f / d x_mu (same ranks and degrees)."""
    cores = _np_cores(tt)
    cores[mu] = _derivative_core(cores[mu])
    return TT(tuple(cores))


def grad_norm_sq(tt: TT, degs: Sequence[int] | int | None = None, cutoff: float = 0.0) -> TT:
    """P_p |grad f|^2 = P_p sum_mu (d_mu f)^2 as one TT of rank <= 2 r^2 (before rounding).

    With A_k = P(G_k o G_k) and B_k = P(G'_k o G'_k) (mode-wise Hadamard cores), the sum over
    mu is the TT with cores [B_1, A_1], [[A_k, 0], [B_k, A_k]], [A_d; B_d]. ``cutoff`` R > 0
    computes P_p sum_mu chi_R(x_mu) (d_mu f)^2 with chi_R(x) = exp(-(x/R)^8) (the cutoff acts
    on the differentiated coordinate only, so sums of univariate functions stay rank 2).
    """
    cores = _np_cores(tt)
    d = len(cores)
    if degs is None:
        degs = degrees(tt)
    elif np.isscalar(degs):
        degs = [int(degs)] * d
    return TT(tuple(
        grad_norm_sq_core(c, k, d, p, cutoff) for k, (c, p) in enumerate(zip(cores, degs))
    ))


def grad_norm_sq_core(core: np.ndarray, k: int, d: int, p: int, cutoff: float = 0.0) -> np.ndarray:
    """Core k of :func:`grad_norm_sq` (it depends on core k of f only): [B, A] for k = 0,
    [[A, 0], [B, A]] inside, [A; B] for k = d - 1, B alone for d = 1."""
    b = _hadamard_core(_derivative_core(core), _derivative_core(core), p, cutoff)
    if d == 1:
        return b
    a = _hadamard_core(core, core, p)
    if k == 0:
        return np.concatenate([b, a], axis=2)
    if k == d - 1:
        return np.concatenate([a, b], axis=0)
    r0, n, r1 = a.shape
    g = np.zeros((2 * r0, n, 2 * r1))
    g[:r0, :, :r1] = a
    g[r0:, :, :r1] = b
    g[r0:, :, r1:] = a
    return g


def apply_ou_semigroup(tt: TT, tau: float) -> TT:
    """e^{tau L} f: the degree-n slice of core k is multiplied by e^{-tau n}
    (L h_alpha = -|alpha| h_alpha, e^{-tau |alpha|} = prod_k e^{-tau alpha_k}); ranks unchanged."""
    out = []
    for c in _np_cores(tt):
        fac = np.exp(-tau * np.arange(c.shape[1], dtype=np.float64))
        out.append(c * fac[None, :, None])
    return TT(tuple(out))


def orthogonalize_right(tt: TT) -> TT:
    """Right-orthogonalise cores 2..d by an RQ sweep (same function); returns the TT whose
    first core carries the norm."""
    cores = _np_cores(tt)
    for k in range(len(cores) - 1, 0, -1):
        r0, n, r1 = cores[k].shape
        q, r = np.linalg.qr(cores[k].reshape(r0, n * r1).T)  # G^T = Q R
        cores[k] = q.T.reshape(-1, n, r1)
        cores[k - 1] = np.einsum("aib,cb->aic", cores[k - 1], r)
    return TT(tuple(cores))


def orthogonalize_left(tt: TT) -> TT:
    """Left-orthogonalise cores 1..d-1 by a QR sweep; the last core carries the norm."""
    cores = _np_cores(tt)
    for k in range(len(cores) - 1):
        r0, n, r1 = cores[k].shape
        q, r = np.linalg.qr(cores[k].reshape(r0 * n, r1))
        cores[k] = q.reshape(r0, n, -1)
        cores[k + 1] = np.einsum("ab,bic->aic", r, cores[k + 1])
    return TT(tuple(cores))


def round_tt(
    tt: TT,
    tol: float = 1e-12,
    max_rank: int | None = None,
    return_info: bool = False,
):
    """TT rounding: right-orthogonalisation, then a left-to-right truncated-SVD sweep.

    Each SVD drops singular values with tail norm <= tol ||f|| / sqrt(d - 1), so without a
    rank cap ||f - round(f)|| <= tol ||f|| (L2(gamma) norm). ``max_rank`` caps every rank
    (the bound then no longer holds). With ``return_info`` also returns
    {"norm": ||f||, "top_degree_mass": (d,) ||component of f of degree exactly p_k in x_k||,
    "truncation": norm of what was cut}; the top-degree masses are read off the
    orthogonality centre at each step of the sweep.
    """
    cores = _np_cores(orthogonalize_right(tt))
    d = len(cores)
    nrm = float(np.linalg.norm(cores[0]))
    delta = tol * nrm / math.sqrt(max(d - 1, 1))
    top = np.zeros(d)
    cut_sq = 0.0
    for k in range(d - 1):
        r0, n, r1 = cores[k].shape
        top[k] = np.linalg.norm(cores[k][:, -1, :])
        try:
            u, s, vt = np.linalg.svd(cores[k].reshape(r0 * n, r1), full_matrices=False)
        except np.linalg.LinAlgError:  # pragma: no cover - rare LAPACK failure
            u, s, vt = _svd_fallback(cores[k].reshape(r0 * n, r1))
        tail = np.sqrt(np.cumsum((s**2)[::-1]))[::-1]  # tail[j] = ||s[j:]||
        r = int(np.sum(tail > delta)) if s.size else 0
        r = max(r, 1)
        if max_rank is not None:
            r = min(r, int(max_rank))
        cut_sq += float(np.sum(s[r:] ** 2))
        cores[k] = u[:, :r].reshape(r0, n, r)
        cores[k + 1] = np.einsum("ab,bic->aic", s[:r, None] * vt[:r], cores[k + 1])
    top[d - 1] = np.linalg.norm(cores[d - 1][:, -1, :])
    out = TT(tuple(cores))
    if return_info:
        return out, {"norm": nrm, "top_degree_mass": top, "truncation": math.sqrt(cut_sq)}
    return out


def total_degree_norms(tt: TT, max_degree: int = 2) -> np.ndarray:
    """(max_degree + 2,) squared L2(gamma) norms of the parts of f of total degree
    m = 0..max_degree, and of all total degrees above it in the last entry:
    sum over multi-indices alpha with |alpha| = m of c_alpha^2 (orthonormal basis).

    With L_alpha = G_1[alpha_1] ... G_k[alpha_k] (row vectors), the Gram sums
    S_k[m] = sum_{|alpha| = m} L_alpha^T L_alpha obey S_k[m] = sum_i G_k[i]^T S_{k-1}[m - i]
    G_k[i] (degrees above ``max_degree`` pooled), and the norms are S_d[m]."""
    top = max_degree + 1
    grams = [np.ones((1, 1))] + [np.zeros((1, 1)) for _ in range(top)]
    for core in _np_cores(tt):
        r1 = core.shape[2]
        new = [np.zeros((r1, r1)) for _ in range(top + 1)]
        for m, gram in enumerate(grams):
            if not np.any(gram):
                continue
            for i in range(core.shape[1]):
                g = core[:, i, :]
                new[min(m + i, top)] += g.T @ gram @ g
        grams = new
    return np.array([float(g[0, 0]) for g in grams])


def top_degree_mass(tt: TT, width: int = 2) -> np.ndarray:
    """(d,) relative norms ||Q_k f|| / ||f||, Q_k the L2(gamma) projection onto degrees
    > p_k - width in x_k (the top ``width`` Hermite slices of mode k): a computable
    indicator of the degree-truncation error. width = 2 sees both parities (the top
    coefficient alone vanishes for functions of the other parity).

    Read off the orthogonality centre: with cores 1..k-1 left- and k+1..d right-orthogonal,
    ||Q_k f|| = ||G_k[:, p_k - width + 1 :, :]||_F.
    """
    cores = _np_cores(orthogonalize_right(tt))
    d = len(cores)
    nrm = max(float(np.linalg.norm(cores[0])), 1e-300)
    out = np.zeros(d)
    for k in range(d):
        out[k] = float(np.linalg.norm(cores[k][:, -width:, :])) / nrm
        if k < d - 1:
            r0, n, r1 = cores[k].shape
            q, r = np.linalg.qr(cores[k].reshape(r0 * n, r1))
            cores[k] = q.reshape(r0, n, -1)
            cores[k + 1] = np.einsum("ab,bic->aic", r, cores[k + 1])
    return out


def _svd_fallback(m: np.ndarray):
    import scipy.linalg

    return scipy.linalg.svd(m, full_matrices=False, lapack_driver="gesvd")


def inner(a: TT, b: TT) -> float:
    """<a, b>_{L2(gamma)} = Frobenius inner product of the coefficient tensors."""
    degs = [max(pa, pb) for pa, pb in zip(degrees(a), degrees(b))]
    ca, cb = _np_cores(pad_degrees(a, degs)), _np_cores(pad_degrees(b, degs))
    m = np.ones((1, 1))
    for ga, gb in zip(ca, cb):
        m = np.einsum("ac,aib,cid->bd", m, ga, gb)
    return float(m[0, 0])


def norm(tt: TT) -> float:
    """||f||_{L2(gamma)} (via right-orthogonalisation: accurate also for differences)."""
    return float(np.linalg.norm(orthogonalize_right(tt).cores[0]))


def constant_coefficient(tt: TT) -> float:
    """E_gamma[f] = coefficient of h_0...h_0 = prod_k G_k[:, 0, :]."""
    m = np.ones((1, 1))
    for c in _np_cores(tt):
        m = m @ c[:, 0, :]
    return float(m[0, 0])


def nonconstant_norm(tt: TT) -> float:
    """||f - E_gamma f||: norm of all non-constant coefficients."""
    c0 = constant_coefficient(tt)
    return norm(add(tt, constant_tt(-c0, tt.dim)))


def to_full(tt: TT) -> np.ndarray:
    """Full coefficient tensor (p_1+1, ..., p_d+1) (small d only, for tests)."""
    cores = _np_cores(tt)
    full = cores[0][0]
    for c in cores[1:]:
        full = np.tensordot(full, c, axes=([-1], [0]))
    return full[..., 0]


def pad_ranks(tt: TT, rank_caps: Sequence[int], degs: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Cores zero-padded to ranks ``rank_caps`` (r_0..r_d) and degrees ``degs`` (exact; for
    stacking TTs of different ranks into fixed-shape arrays for jit)."""
    out = []
    for k, c in enumerate(_np_cores(tt)):
        r0, n, r1 = c.shape
        out.append(
            np.pad(c, ((0, rank_caps[k] - r0), (0, degs[k] + 1 - n), (0, rank_caps[k + 1] - r1)))
        )
    return tuple(out)
