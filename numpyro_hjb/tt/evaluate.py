"""Batch evaluation of functional tensor trains at points (docs/design.md s.4).

For cores G_k of shape (r_{k-1}, p_k + 1, r_k) and points x of shape (n, d), the mode
matrices A_k(x) = sum_i G_k[:, i, :] h_i(x_k) (n, r_{k-1}, r_k) give

    f(x) = A_1(x) A_2(x) ... A_d(x)                          (n,)
    d_mu f(x) = L_{mu-1}(x) A'_mu(x) R_{mu+1}(x)              (n, d)
    d_mu^2 f(x) = L_{mu-1}(x) A''_mu(x) R_{mu+1}(x)           (n, d)

with L_k = A_1 ... A_k, R_k = A_k ... A_d the interface products and A', A'' the mode
matrices of h', h''. Written in jax.numpy with a Python loop over the d cores and none over
the points, so it runs inside ``jax.jit``; call it under ``jax.enable_x64(True)`` for float64.
:func:`value` also has a numpy path for host arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .basis import eval_basis, eval_basis_np

__all__ = ["value", "value_grad_lap", "value_grad_hess_diag", "gradient"]


def _mode_matrices(core, phi_k):
    """A[b] = sum_i G[:, i, :] phi_k[b, i]: (n, r0, r1) (phi_k: basis values, (n, >= p+1))."""
    return jnp.einsum("bi,aic->bac", phi_k[:, : core.shape[1]], core)


def _basis_all(x, pmax: int, deriv: int):
    """h_i^{(deriv)}(x[:, k]) for all modes at once: (n, d, pmax + 1)."""
    return eval_basis(x, pmax, deriv, xp=jnp)


def value(cores: Sequence, x) -> jax.Array:
    """f(x) for x of shape (n, d) -> (n,) (numpy float64 on the host when x and the cores
    are numpy arrays, jax.numpy otherwise)."""
    if isinstance(x, np.ndarray) and all(isinstance(c, np.ndarray) for c in cores):
        x = x.astype(np.float64)
        phi = eval_basis_np(x, max(c.shape[1] for c in cores) - 1)
        left = np.ones((x.shape[0], 1))
        for k, core in enumerate(cores):
            mode = np.einsum("bi,aic->bac", phi[:, k, : core.shape[1]], core)
            left = np.einsum("ba,bac->bc", left, mode)
        return left[:, 0]
    x = jnp.asarray(x)
    cores = [jnp.asarray(c) for c in cores]
    phi = _basis_all(x, max(c.shape[1] for c in cores) - 1, 0)
    left = jnp.ones((x.shape[0], 1), x.dtype)
    for k, core in enumerate(cores):
        left = jnp.einsum("ba,bac->bc", left, _mode_matrices(core, phi[:, k]))
    return left[:, 0]


def _interface_stacks(a0: list, n: int, dtype) -> tuple[list, list]:
    """Left and right interface products of the evaluated cores A_k (n, r_{k-1}, r_k):
    lefts[k] = A_1 ... A_k (lefts[0] = 1), rights[k] = A_{k+1} ... A_d (rights[d] = 1)."""
    lefts = [jnp.ones((n, 1), dtype)]
    for a in a0:
        lefts.append(jnp.einsum("ba,bac->bc", lefts[-1], a))
    rights = [jnp.ones((n, 1), dtype)]
    for a in reversed(a0):
        rights.append(jnp.einsum("bac,bc->ba", a, rights[-1]))
    return lefts, rights[::-1]


def value_grad_lap(cores: Sequence, x, laplacian: bool = True):
    """(f(x) (n,), grad f(x) (n, d), Laplacian f(x) (n,)) through left/right interface stacks.

    With A_k, A'_k, A''_k the mode matrices of h, h', h'' at x_k and
    L_k = A_1 ... A_k, R_k = A_k ... A_d:  d_mu f = L_{mu-1} A'_mu R_{mu+1},
    Delta f = sum_mu L_{mu-1} A''_mu R_{mu+1}. (Without ``laplacian`` the third output is 0.)
    """
    x = jnp.asarray(x)
    n, d = x.shape
    cores = [jnp.asarray(c) for c in cores]
    pmax = max(c.shape[1] for c in cores) - 1
    phi0 = _basis_all(x, pmax, 0)
    phi1 = _basis_all(x, pmax, 1)
    a0 = [_mode_matrices(c, phi0[:, k]) for k, c in enumerate(cores)]
    a1 = [_mode_matrices(c, phi1[:, k]) for k, c in enumerate(cores)]
    lefts, rights = _interface_stacks(a0, n, x.dtype)
    val = lefts[d][:, 0]
    grads = []
    lap = jnp.zeros((n,), x.dtype)
    phi2 = _basis_all(x, pmax, 2) if laplacian else None
    for k in range(d):
        grads.append(jnp.einsum("ba,bac,bc->b", lefts[k], a1[k], rights[k + 1]))
        if laplacian:
            a2 = _mode_matrices(cores[k], phi2[:, k])
            lap = lap + jnp.einsum("ba,bac,bc->b", lefts[k], a2, rights[k + 1])
    return val, jnp.stack(grads, axis=-1), lap


def value_grad_hess_diag(cores: Sequence, x):
    """(f(x) (n,), grad f(x) (n, d), diag of the Hessian d^2 f / d x_mu^2 (n, d)).

    Same interface stacks as :func:`value_grad_lap`: d_mu^2 f = L_{mu-1} A''_mu R_{mu+1}
    (the Laplacian is the sum of the last output over mu).
    """
    x = jnp.asarray(x)
    n, d = x.shape
    cores = [jnp.asarray(c) for c in cores]
    pmax = max(c.shape[1] for c in cores) - 1
    phis = [_basis_all(x, pmax, m) for m in (0, 1, 2)]
    a0 = [_mode_matrices(c, phis[0][:, k]) for k, c in enumerate(cores)]
    lefts, rights = _interface_stacks(a0, n, x.dtype)
    grads, diag2 = [], []
    for k in range(d):
        a1 = _mode_matrices(cores[k], phis[1][:, k])
        a2 = _mode_matrices(cores[k], phis[2][:, k])
        grads.append(jnp.einsum("ba,bac,bc->b", lefts[k], a1, rights[k + 1]))
        diag2.append(jnp.einsum("ba,bac,bc->b", lefts[k], a2, rights[k + 1]))
    return lefts[d][:, 0], jnp.stack(grads, axis=-1), jnp.stack(diag2, axis=-1)


def gradient(cores: Sequence, x) -> jax.Array:
    """grad f(x): (n, d)."""
    return value_grad_lap(cores, x, laplacian=False)[1]
