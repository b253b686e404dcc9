"""Engine 2: the moment-matched ("tweedie") sampler, its exact-target final jump, the Hessian
diagonal of a TT, the top-degree mass indicator and the noise-tied rounding of the cross."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.evidence import estimate_evidence
from numpyro_hjb.target import Target
from numpyro_hjb.tt import core as C
from numpyro_hjb.tt import engine, samplers
from numpyro_hjb.tt.basis import gauss_hermite
from numpyro_hjb.tt.cross import cross_potential
from numpyro_hjb.tt.settings import Sampling, TTSettings


def _random_tt(d=3, r=2, p=4, seed=0):
    rng = np.random.default_rng(seed)
    ranks = [1] + [r] * (d - 1) + [1]
    return C.from_cores([rng.normal(size=(ranks[k], p + 1, ranks[k + 1])) for k in range(d)])


def test_value_grad_hess_diag_matches_autodiff():
    tt = _random_tt()
    x = np.random.default_rng(1).normal(size=(7, 3))
    with jax.enable_x64(True):
        cores = [jnp.asarray(c) for c in tt.cores]
        val, grad, diag2 = C.value_grad_hess_diag(cores, jnp.asarray(x))
        f = lambda z: C.value(cores, z[None])[0]  # noqa: E731
        hess = jax.vmap(jax.hessian(f))(jnp.asarray(x))
        np.testing.assert_allclose(val, C.value(cores, jnp.asarray(x)), rtol=1e-12)
        np.testing.assert_allclose(grad, jax.vmap(jax.grad(f))(jnp.asarray(x)), rtol=1e-10)
        np.testing.assert_allclose(diag2, jnp.diagonal(hess, axis1=1, axis2=2), rtol=1e-10)


def test_top_degree_mass_of_a_product():
    """f = g(x1) g(x2), g = sum_n c_n h_n: mass of degrees {p-1, p} in x1 is
    ||c[p-1:]|| / ||c|| (orthonormal basis)."""
    c = np.array([1.0, 0.5, 0.25, 0.1, 0.05])
    tt = C.from_cores([c[None, :, None], 2.0 * c[None, :, None]])
    expect = np.linalg.norm(c[-2:]) / np.linalg.norm(c)
    np.testing.assert_allclose(C.top_degree_mass(tt), [expect, expect], rtol=1e-12)
    np.testing.assert_allclose(C.top_degree_mass(tt, width=1), [0.05 / np.linalg.norm(c)] * 2)


def test_cross_noise_rounding_keeps_a_product_at_rank_one():
    """A product (rank 1) of bumps that the degree resolves only to ~1e-3: the rounding
    tied to the top-degree mass removes every spurious rank."""
    d = 5

    def f(pts):
        return np.exp(-np.sum((pts**2 - 2.0) ** 2, axis=-1) + 0.5 * np.sum(pts**2, axis=-1))

    cr = cross_potential(f, d, 24, rank=4, num_nodes=50, noise_rel=1e-2, seed=3)
    assert max(C.ranks(cr.tt)) == 1
    # the constant coefficient is the d-th power of the same 1-D Gauss-Hermite sum
    x, w = gauss_hermite(50)
    one = float(np.sum(w * f(x[:, None])))
    assert C.constant_coefficient(cr.tt) == pytest.approx(one**d, rel=1e-8)


def _diag_gauss(d=3, log_z=0.3):
    m = np.linspace(-1.0, 1.5, d)
    s2 = np.geomspace(0.3, 2.0, d)

    def log_density(x):
        return (
            -0.5 * jnp.sum((x - m) ** 2 / s2)
            - 0.5 * np.sum(np.log(2 * np.pi * s2))
            + log_z
        )

    return Target.from_log_density(log_density, d), m, s2, log_z


def test_tweedie_sampler_is_exact_for_a_diagonal_gaussian():
    """For a product Gaussian the reverse kernels are Gaussian with the Tweedie moments, so
    every path weight equals Z up to the HJB time stepping and log h_T(y_0) = O(e^{-T})
    (the sampler starts from gamma, not p_T)."""
    target, _, _, log_z = _diag_gauss()
    cfg = engine.TT_ENGINE.make_settings(sampler="tweedie", num_sampling_steps=10, horizon=14.0)
    state, info = engine.fit(target, jax.random.PRNGKey(0), cfg, False)
    assert info.stats["formulation"] == "hjb"
    _, lw = engine.propose(target, cfg, state, jax.random.PRNGKey(1), 400)
    assert isinstance(lw, np.ndarray) and lw.dtype == np.float64
    assert np.std(lw) < 1e-4
    assert np.mean(lw) == pytest.approx(log_z, abs=1e-4)


def test_final_jump_is_exact_for_a_gaussian_target():
    """p(x | y) prop. to N(x; a y, v) rho(x) / gamma(x) is Gaussian for Gaussian rho: the
    Laplace proposal is that kernel, so increment + log rho - log gamma is constant in x."""
    target, _, _, _ = _diag_gauss(d=2)
    y = jnp.tile(jnp.asarray([[0.7, -0.4]]), (300, 1))
    with jax.enable_x64(True):
        x, inc = samplers.final_jump(
            jax.random.PRNGKey(0), y.astype(jnp.float64), jnp.asarray(0.05), target.log_density, 6
        )
        tot = np.asarray(inc + jax.vmap(target.log_density)(x) + 0.5 * jnp.sum(x**2, axis=-1))
        x = np.asarray(x)
    assert np.std(tot) < 1e-9
    assert np.std(x[:, 0]) > 0.05  # it does sample


def test_cole_hopf_tweedie_bimodal_product():
    """1-D double well -(x^2 - 2)^2 on the Cole-Hopf route with the final exact jump."""

    def log_density(x):
        return -jnp.sum((x**2 - 2.0) ** 2)

    ys = np.linspace(-6, 6, 200001)
    log_z = math.log(np.trapezoid(np.exp(-((ys**2 - 2.0) ** 2)), ys))
    target = Target.from_log_density(log_density, 1)
    cfg = engine.TT_ENGINE.make_settings(
        formulation="cole_hopf", sampler="tweedie", ch_degree=48, num_sampling_steps=40
    )
    state, fit_info = engine.fit(target, jax.random.PRNGKey(0), cfg, False)
    info = fit_info.stats
    assert info["t_switch"] > 0 and state.final_jump is True and state.cole_hopf is True
    assert state.times[0] == 0.0 and state.times[1] == pytest.approx(info["t_switch"])
    _, lw = engine.propose(target, cfg, state, jax.random.PRNGKey(1), 2000)
    ev = estimate_evidence(lw)
    assert np.all(np.isfinite(np.asarray(lw)))
    assert ev.log_z == pytest.approx(log_z, abs=5 * ev.log_z_se + 2e-3)
    assert ev.ess > 0.9
    # the steps at large t run at cut degrees, with the same proposals as at the full degree
    segments = samplers.degree_segments(state.cores, state.times, state.final_jump)
    degrees = [q for _, q in segments]
    assert len(segments) > 1 and degrees == sorted(degrees) and degrees[-1] == 48
    assert segments[-1][0] == len(state.times) - 2
    with jax.enable_x64(True):
        cores = tuple(jnp.asarray(c) for c in state.cores)
        runs = [samplers.tweedie_paths(cores, jnp.asarray(state.times), jax.random.PRNGKey(2),
                                       256, 1, target.log_density, True,
                                       jnp.asarray(state.h_eps), True, 6, seg)
                for seg in (None, segments)]
    # each cut moves h_t by <= 1e-7 of its norm; over the ~40 steps the draws move by ~1e-6
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=0, atol=1e-4)


def test_auto_sampler_follows_the_route():
    """"auto": the ODE where W is integrated (exact for Gaussians), tweedie on Cole-Hopf."""
    sampling = TTSettings().sampling
    assert sampling.sampler == "auto"
    assert samplers.sampler_for(sampling, cole_hopf=False) == "ode"
    assert samplers.sampler_for(sampling, cole_hopf=True) == "tweedie"
    assert samplers.sampler_for(Sampling(sampler="sde"), cole_hopf=True) == "sde"


def test_ode_sampler_affine_steps_on_a_quadratic_w():
    """A quadratic W (total degree 2, rank 2 in its TT) passes the quadratic check and its
    affine steps equal the per-particle Heun maps and Jacobians; a multi-quadratic W
    (h_2(x_1) h_2(x_2), total degree 4) fails the check."""
    d = 3
    rng = np.random.default_rng(4)
    a = rng.normal(size=(d, d))
    prec = 0.3 * (a @ a.T) / d + 0.2 * np.eye(d)
    b = 0.2 * rng.normal(size=d)
    grid = np.linspace(-2, 2, 4)
    pts = np.stack(np.meshgrid(*[grid] * d, indexing="ij"), -1).reshape(-1, d)

    def w(x):
        return 0.5 * np.einsum("ni,ij,nj->n", x, prec, x) + x @ b

    cr = cross_potential(w, d, 2, rank=4, seed=0)
    np.testing.assert_allclose(C.value(cr.tt.cores, pts), w(pts), atol=1e-10)
    with jax.enable_x64(True):
        cores = tuple(jnp.stack([jnp.asarray(c) * s for s in (1.0, 0.6, 0.3)])
                      for c in cr.tt.cores)
        assert samplers.quadratic_snapshots(tuple(np.asarray(c) for c in cores))
        times = jnp.asarray([0.0, 0.5, 1.0])

        def run(affine):
            return samplers.ode_paths(cores, times, jax.random.PRNGKey(0), 64, d,
                                      lambda x: -0.5 * jnp.sum(x**2), C.gradient, affine)

        (y1, w1), (y2, w2) = run(True), run(False)
        np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(w1, w2, rtol=1e-10, atol=1e-10)
    c2 = np.zeros((1, 3, 1))
    c2[0, 2, 0] = 1.0
    product = C.from_cores([c2, c2])
    assert not samplers.quadratic_snapshots(tuple(c[None] for c in product.cores))
    np.testing.assert_allclose(C.total_degree_norms(product), [0, 0, 0, 1])
