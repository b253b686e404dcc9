"""Orthonormal probabilists' Hermite basis on (R, gamma = N(0, 1)) (docs/design.md s.4).

    h_n = He_n / sqrt(n!),   E_gamma[h_m h_n] = delta_mn,
    h_{n+1}(x) = (x h_n(x) - sqrt(n) h_{n-1}(x)) / sqrt(n + 1),   h_0 = 1,
    h_n'  = sqrt(n) h_{n-1},   h_n'' = sqrt(n (n - 1)) h_{n-2},
    L h_n = h_n'' - x h_n' = -n h_n   (the OU generator is diagonal).

Products: He_m He_n = sum_k C(m,k) C(n,k) k! He_{m+n-2k}, so
h_m h_n = sum_l c_{mnl} h_l with c_{mnl} = E_gamma[h_m h_n h_l] (:func:`product_table`).

Host-side helpers (numpy, float64) are used by the TT algebra; :func:`eval_basis` works on
numpy or JAX arrays (it is called inside jitted evaluation code).
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax.numpy as jnp
import numpy as np

__all__ = [
    "eval_basis",
    "eval_basis_np",
    "gauss_hermite",
    "product_table",
    "derivative_matrix",
    "nodal_to_coeff",
    "project_degree",
    "ou_semigroup_factors",
]


def eval_basis(x, p: int, deriv: int = 0, xp=None):
    """Values of h_0..h_p (or their first/second derivatives) at x.

    Args:
        x: points, any shape S.
        p: maximal degree.
        deriv: 0, 1 or 2 (h_n' = sqrt(n) h_{n-1}, h_n'' = sqrt(n(n-1)) h_{n-2}).
        xp: array namespace (numpy or jax.numpy); inferred from x when None.

    Returns:
        array of shape S + (p + 1,).
    """
    if xp is None:
        xp = np if isinstance(x, np.ndarray | float | int) else jnp
    vals = [xp.ones_like(x)]
    if p >= 1:
        vals.append(x * 1.0)
    for n in range(1, p):
        vals.append((x * vals[n] - math.sqrt(n) * vals[n - 1]) / math.sqrt(n + 1))
    if deriv == 0:
        return xp.stack(vals, axis=-1)
    zero = xp.zeros_like(x)
    if deriv == 1:
        out = [zero] + [math.sqrt(n) * vals[n - 1] for n in range(1, p + 1)]
    elif deriv == 2:
        out = [zero] * min(2, p + 1) + [
            math.sqrt(n * (n - 1)) * vals[n - 2] for n in range(2, p + 1)
        ]
    else:
        raise ValueError(f"deriv must be 0, 1 or 2, got {deriv}")
    return xp.stack(out, axis=-1)


def eval_basis_np(x: np.ndarray, p: int, deriv: int = 0) -> np.ndarray:
    """numpy float64 version of :func:`eval_basis`."""
    return eval_basis(np.asarray(x, dtype=np.float64), p, deriv, xp=np)


@lru_cache(maxsize=256)
def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-point Gauss quadrature for gamma = N(0, 1): sum_j w_j f(x_j) = E_gamma[f] exactly
    for polynomials of degree <= 2n - 1 (numpy's hermegauss, weights divided by sqrt(2 pi))."""
    if n > 200:
        raise ValueError(f"Gauss-Hermite rule with {n} > 200 nodes underflows in float64")
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2.0 * math.pi)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


@lru_cache(maxsize=64)
def product_table(p: int, q: int | None = None, out_degree: int | None = None) -> np.ndarray:
    """c[m, n, l] = E_gamma[h_m h_n h_l] for m <= p, n <= q, l <= out_degree (default p + q).

    h_m h_n = sum_l c[m, n, l] h_l; nonzero only for l = m + n - 2k, 0 <= k <= min(m, n),
    where c = C(m,k) C(n,k) k! sqrt(l!) / sqrt(m! n!)  (computed in log space).
    """
    q = p if q is None else q
    out_degree = p + q if out_degree is None else out_degree
    c = np.zeros((p + 1, q + 1, out_degree + 1))
    lg = math.lgamma
    for m in range(p + 1):
        for n in range(q + 1):
            for k in range(min(m, n) + 1):
                ll = m + n - 2 * k
                if ll > out_degree:
                    continue
                logc = (
                    lg(m + 1) - lg(k + 1) - lg(m - k + 1)
                    + lg(n + 1) - lg(k + 1) - lg(n - k + 1)
                    + lg(k + 1) + 0.5 * lg(ll + 1) - 0.5 * lg(m + 1) - 0.5 * lg(n + 1)
                )
                c[m, n, ll] = math.exp(logc)
    c.setflags(write=False)
    return c


def derivative_matrix(p: int) -> np.ndarray:
    """D (p+1, p+1) with (D c)_{n-1} = sqrt(n) c_n: coefficients of f' from those of f."""
    d = np.zeros((p + 1, p + 1))
    for n in range(1, p + 1):
        d[n - 1, n] = math.sqrt(n)
    return d


@lru_cache(maxsize=128)
def nodal_to_coeff(p: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(nodes (n,), T (p+1, n)) with c = T f(nodes) the discrete L2(gamma) projection
    c_i = sum_j w_j h_i(x_j) f(x_j) on n >= p + 1 Gauss-Hermite nodes (interpolation for
    n = p + 1; exact for polynomials of degree <= 2n - 1 - p)."""
    n = p + 1 if n is None else n
    if n < p + 1:
        raise ValueError(f"need at least p + 1 = {p + 1} nodes, got {n}")
    x, w = gauss_hermite(n)
    t = (eval_basis_np(x, p) * w[:, None]).T
    t.setflags(write=False)
    return x, t


def project_degree(core: np.ndarray, p: int) -> np.ndarray:
    """P_p on a core (r0, q+1, r1): keep degrees <= p (zero-pad if q < p)."""
    q = core.shape[1] - 1
    if q >= p:
        return core[:, : p + 1, :]
    return np.pad(core, ((0, 0), (0, p - q), (0, 0)))


def ou_semigroup_factors(p: int, tau: float) -> np.ndarray:
    """e^{tau L} on one mode: degree n scaled by e^{-tau n}, n = 0..p."""
    return np.exp(-tau * np.arange(p + 1, dtype=np.float64))
