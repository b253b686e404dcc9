"""Engine 2 building blocks: Hermite basis and FTT algebra (numpyro_hjb.tt.basis / core)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.tt import basis as B
from numpyro_hjb.tt import core as C
from numpyro_hjb.tt import evaluate as E


def random_tt(rng, ranks, degs, scale=0.5):
    return C.from_cores(
        [scale * rng.normal(size=(ranks[k], degs[k] + 1, ranks[k + 1])) for k in range(len(degs))]
    )


def test_basis_orthonormal_and_matches_numpy():
    x, w = B.gauss_hermite(30)
    h = B.eval_basis_np(x, 12)
    np.testing.assert_allclose((h * w[:, None]).T @ h, np.eye(13), atol=1e-12)
    for n in range(8):
        coef = np.zeros(n + 1)
        coef[n] = 1.0
        he = np.polynomial.hermite_e.hermeval(x, coef) / math.sqrt(math.factorial(n))
        np.testing.assert_allclose(h[:, n], he, rtol=1e-10, atol=1e-10)


def test_basis_derivatives_and_ou_generator():
    x = np.linspace(-3, 3, 7)
    p = 9
    h, h1, h2 = (B.eval_basis_np(x, p, k) for k in range(3))
    eps = 1e-5
    fd = (B.eval_basis_np(x + eps, p) - B.eval_basis_np(x - eps, p)) / (2 * eps)
    np.testing.assert_allclose(h1, fd, atol=1e-6)
    # L h_n = h_n'' - x h_n' = -n h_n
    np.testing.assert_allclose(h2 - x[:, None] * h1, -np.arange(p + 1) * h, atol=1e-9)
    d = B.derivative_matrix(p)
    c = np.random.default_rng(0).normal(size=p + 1)
    np.testing.assert_allclose(h @ (d @ c), h1 @ c, atol=1e-10)


def test_product_table_matches_quadrature():
    p = 6
    tab = B.product_table(p)
    x, w = B.gauss_hermite(40)
    h = B.eval_basis_np(x, 2 * p)
    quad = np.einsum("q,qm,qn,ql->mnl", w, h[:, : p + 1], h[:, : p + 1], h)
    np.testing.assert_allclose(tab, quad, atol=1e-10)


def test_nodal_to_coeff_exact_for_polynomials():
    p = 7
    nodes, t = B.nodal_to_coeff(p)
    c = np.random.default_rng(1).normal(size=p + 1)
    vals = B.eval_basis_np(nodes, p) @ c
    np.testing.assert_allclose(t @ vals, c, atol=1e-11)
    nodes2, t2 = B.nodal_to_coeff(p, 2 * p + 2)
    np.testing.assert_allclose(t2 @ (B.eval_basis_np(nodes2, p) @ c), c, atol=1e-11)


@pytest.mark.parametrize("strategy", ["accumulate", "stored basis"])
def test_evaluation_value_grad_laplacian_against_autodiff(strategy, monkeypatch):
    # both ways of forming the mode matrices (sums inside the degree recurrence, or the
    # basis stored and contracted) give the same exact values
    threshold = 1e9 if strategy == "accumulate" else 0
    monkeypatch.setattr(E, "_ACCUMULATE_MAX_RANK_PRODUCT", threshold)
    rng = np.random.default_rng(0)
    tt = random_tt(rng, [1, 3, 4, 2, 1], [5, 3, 6, 4])
    x = rng.normal(size=(7, 4))
    with jax.enable_x64(True):
        v, g, lap = jax.jit(C.value_grad_lap)(tt.cores, jnp.asarray(x))
        v2, g2, diag2 = jax.jit(E.value_grad_hess_diag)(tt.cores, jnp.asarray(x))
        v3 = E.value(tt.cores, jnp.asarray(x))
    np.testing.assert_allclose(v2, v, atol=1e-13)
    np.testing.assert_allclose(v3, v, atol=1e-13)
    np.testing.assert_allclose(g2, g, atol=1e-13)
    np.testing.assert_allclose(np.asarray(diag2).sum(-1), lap, atol=1e-12)
    # central finite differences of the host (numpy float64) evaluation
    eps = 1e-4
    g_fd = np.zeros_like(x)
    lap_fd = np.zeros(x.shape[0])
    f0 = C.value(tt.cores, x)
    for k in range(4):
        e = np.zeros(4)
        e[k] = eps
        fp, fm = C.value(tt.cores, x + e), C.value(tt.cores, x - e)
        g_fd[:, k] = (fp - fm) / (2 * eps)
        lap_fd += (fp - 2 * f0 + fm) / eps**2
    full = C.to_full(tt)
    phis = [B.eval_basis_np(x[:, k], full.shape[k] - 1) for k in range(4)]
    v_full = np.einsum("ijkl,ni,nj,nk,nl->n", full, *phis)
    np.testing.assert_allclose(v, v_full, atol=1e-12)
    np.testing.assert_allclose(g, g_fd, atol=1e-7)
    np.testing.assert_allclose(lap, lap_fd, atol=1e-5)


def test_add_scale_hadamard_ranks_degrees_and_values():
    rng = np.random.default_rng(2)
    a = random_tt(rng, [1, 2, 3, 1], [3, 4, 2])
    b = random_tt(rng, [1, 3, 2, 1], [2, 2, 5])
    x = rng.normal(size=(11, 3))
    va, vb = C.value(a.cores, x), C.value(b.cores, x)
    s = C.add(a, C.scale(b, -2.0))
    assert C.ranks(s) == (1, 5, 5, 1)
    assert C.degrees(s) == (3, 4, 5)
    np.testing.assert_allclose(C.value(s.cores, x), va - 2 * vb, atol=1e-12)
    full_degs = [pa + pb for pa, pb in zip(C.degrees(a), C.degrees(b))]
    h = C.hadamard(a, b, full_degs)
    assert C.ranks(h) == (1, 6, 6, 1)  # r_a r_b
    assert C.degrees(h) == tuple(full_degs)
    np.testing.assert_allclose(C.value(h.cores, x), va * vb, atol=1e-11)
    # projected product = L2(gamma) projection of the exact product
    hp = C.hadamard(a, b)
    assert C.degrees(hp) == (3, 4, 5)
    np.testing.assert_allclose(
        C.to_full(hp), C.to_full(h)[:4, :5, :6], atol=1e-12
    )


def test_grad_norm_sq_rank_bound_and_values():
    rng = np.random.default_rng(3)
    tt = random_tt(rng, [1, 2, 3, 2, 1], [3, 4, 2, 3])
    degs = [2 * p for p in C.degrees(tt)]
    g2 = C.grad_norm_sq(tt, degs)
    r = C.ranks(tt)
    assert all(rk <= 2 * r[k] ** 2 for k, rk in enumerate(C.ranks(g2)))
    x = rng.normal(size=(9, 4))
    with jax.enable_x64(True):
        _, g, _ = jax.jit(C.value_grad_lap)(tt.cores, jnp.asarray(x))
    np.testing.assert_allclose(C.value(g2.cores, x), np.sum(np.asarray(g) ** 2, 1), atol=1e-10)


def test_rounding_error_bound_and_orthogonality():
    rng = np.random.default_rng(4)
    a = random_tt(rng, [1, 3, 4, 3, 1], [4, 4, 4, 4])
    noisy = C.add(C.add(a, a), C.scale(random_tt(rng, [1, 5, 5, 5, 1], [4] * 4), 1e-3))
    nrm = C.norm(noisy)
    for eps in (1e-1, 1e-2, 1e-4, 1e-8):
        r = C.round_tt(noisy, eps)
        err = C.norm(C.sub(noisy, r))
        assert err <= eps * nrm * (1 + 1e-8)
    # exact rank recovery
    r = C.round_tt(C.add(a, a), 1e-12)
    assert C.ranks(r) == C.ranks(a)
    assert C.norm(C.sub(r, C.scale(a, 2.0))) < 1e-10 * C.norm(a)
    # rank cap
    assert max(C.ranks(C.round_tt(noisy, 0.0, max_rank=2))) <= 2
    # right-orthogonal cores after orthogonalisation
    o = C.orthogonalize_right(noisy)
    for c in o.cores[1:]:
        m = c.reshape(c.shape[0], -1)
        np.testing.assert_allclose(m @ m.T, np.eye(c.shape[0]), atol=1e-12)


def test_inner_norm_constant_and_semigroup():
    rng = np.random.default_rng(5)
    a = random_tt(rng, [1, 2, 2, 1], [3, 2, 4])
    b = random_tt(rng, [1, 3, 1, 1], [2, 3, 3])
    fa = C.to_full(C.pad_degrees(a, [3, 3, 4]))
    fb = C.to_full(C.pad_degrees(b, [3, 3, 4]))
    assert C.inner(a, b) == pytest.approx(np.sum(fa * fb), rel=1e-12)
    assert C.norm(a) == pytest.approx(np.sqrt(np.sum(fa**2)), rel=1e-12)
    assert C.constant_coefficient(a) == pytest.approx(fa[0, 0, 0], rel=1e-12)
    # E_gamma[f] by tensor Gauss-Hermite quadrature
    x, w = B.gauss_hermite(10)
    grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    wts = np.einsum("i,j,k->ijk", w, w, w).ravel()
    assert np.sum(wts * C.value(a.cores, grid)) == pytest.approx(C.constant_coefficient(a), abs=1e-12)
    # e^{tau L}: degree alpha scaled by e^{-tau |alpha|}; ranks unchanged
    tau = 0.3
    e = C.apply_ou_semigroup(a, tau)
    assert C.ranks(e) == C.ranks(a)
    ia, ib, ic = np.meshgrid(*(np.arange(n) for n in fa.shape[:3]), indexing="ij")
    fa0 = C.to_full(a)
    np.testing.assert_allclose(
        C.to_full(e), fa0 * np.exp(-tau * (ia + ib + ic))[: fa0.shape[0], : fa0.shape[1], : fa0.shape[2]],
        atol=1e-12,
    )
    assert C.nonconstant_norm(C.constant_tt(2.5, 3, 4)) < 1e-14


def test_tt_is_a_pytree():
    rng = np.random.default_rng(6)
    a = random_tt(rng, [1, 2, 1], [2, 3])
    leaves, tree = jax.tree_util.tree_flatten(a)
    assert len(leaves) == 2
    b = jax.tree_util.tree_unflatten(tree, [2 * leaf for leaf in leaves])
    x = rng.normal(size=(3, 2))
    np.testing.assert_allclose(C.value(b.cores, x), 4 * C.value(a.cores, x), atol=1e-12)
