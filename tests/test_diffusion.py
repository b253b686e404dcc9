"""Path weights of the diffusion samplers: unbiasedness and the optimal control (docs/design.md s.2-3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.diffusion import (
    bridge_log_weights,
    brownian_scheme,
    control_from_score,
    gaussian_ou_marginal,
    ou_scheme,
    path_log_weights,
    reference_bridge,
    simulate_log_weights,
    simulate_paths,
    time_grid,
)

MEAN = jnp.array([1.0, -0.5])
COV = jnp.array([[1.5, 0.6], [0.6, 0.8]])
LOG_Z = 0.7  # the target is exp(LOG_Z) * N(MEAN, COV)


def log_rho(x):
    diff = x - MEAN
    quad = diff @ jnp.linalg.solve(COV, diff)
    return LOG_Z - 0.5 * quad - 0.5 * jnp.log(jnp.linalg.det(2 * jnp.pi * COV))


def arbitrary_control(y, t):
    """An untrained, non-zero control: E_F[w] = Z must hold for it as well."""
    return 0.3 * jnp.tanh(y[:, ::-1]) - 0.2 * t + 0.1 * y


@pytest.mark.parametrize(
    "scheme",
    [
        ou_scheme(3.0, 8, "ei"),
        ou_scheme(3.0, 8, "em"),
        ou_scheme(3.0, 8, "ei", sigma=2.0),
        ou_scheme(3.0, 8, "em", power=2.0, sigma=0.7),
        brownian_scheme(1.0, 8, 2.0),
        brownian_scheme(1.0, 8, 2.0, power=3.0),
    ],
    ids=["ei", "em", "ei-sigma", "em-sigma", "pis", "pis-power"],
)
def test_importance_weights_are_unbiased_for_any_control(scheme):
    _, log_w = simulate_log_weights(
        jax.random.PRNGKey(0), scheme, arbitrary_control, log_rho, 40_000, 2
    )
    w = np.exp(np.asarray(log_w, np.float64) - LOG_Z)
    se = w.std() / np.sqrt(w.size)
    assert abs(w.mean() - 1.0) < 4 * se + 1e-3, (w.mean(), se)


def exact_score(y, t):
    mean_t, cov_t = gaussian_ou_marginal(MEAN, COV, t)
    return -jnp.linalg.solve(cov_t, (y - mean_t).T).T


@pytest.mark.parametrize("integrator", ["ei", "em"])
def test_optimal_control_variance_shrinks_with_steps(integrator):
    control = control_from_score(exact_score)
    variances = []
    for k in (8, 32, 128):
        _, log_w = simulate_log_weights(
            jax.random.PRNGKey(1), ou_scheme(5.0, k, integrator), control, log_rho, 2000, 2
        )
        variances.append(float(jnp.var(log_w)))
    assert variances[0] > variances[1] > variances[2], variances
    assert variances[2] < variances[0] / 8, variances


def test_scaled_reference_is_exact_for_its_own_stationary_law():
    """With u = 0 the EI scheme of sigma is the reference itself: log w = log Z exactly for
    rho = N(0, sigma^2 I) (Var(log w) = 0, unlike Euler-Maruyama)."""
    sigma = 2.5
    log_rho_ref = lambda x: -0.5 * jnp.sum(x**2) / sigma**2 + 0.3  # noqa: E731
    log_z = 0.3 + 0.5 * 3 * np.log(2 * np.pi * sigma**2)
    zero = lambda y, t: jnp.zeros_like(y)  # noqa: E731
    y_end, log_w = simulate_log_weights(
        jax.random.PRNGKey(4), ou_scheme(2.0, 16, "ei", 2.0, sigma), zero, log_rho_ref, 512, 3
    )
    np.testing.assert_allclose(log_w, log_z, atol=1e-4)
    assert abs(float(jnp.std(y_end)) - sigma) < 0.15


def test_stored_and_accumulated_weights_agree():
    scheme = ou_scheme(3.0, 10, "ei")
    key = jax.random.PRNGKey(2)
    ys, us = simulate_paths(key, scheme, arbitrary_control, 64, 2)
    log_w, _ = path_log_weights(scheme, ys, us, log_rho)
    y_end, log_w2 = simulate_log_weights(key, scheme, arbitrary_control, log_rho, 64, 2)
    np.testing.assert_allclose(ys[-1], y_end, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_w, log_w2, rtol=1e-4, atol=1e-4)


def test_gaussian_ou_marginal_is_a_semigroup_limit():
    mean_t, cov_t = gaussian_ou_marginal(MEAN, COV, jnp.asarray(30.0))
    np.testing.assert_allclose(mean_t, 0.0, atol=1e-10)
    np.testing.assert_allclose(cov_t, jnp.eye(2), atol=1e-6)
    mean_0, cov_0 = gaussian_ou_marginal(MEAN, COV, jnp.asarray(0.0))
    np.testing.assert_allclose(cov_0, COV, atol=1e-7)


def test_grid_validation():
    grid = time_grid(2.0, 4, 2.0)
    assert float(grid[0]) == 2.0 and float(grid[-1]) == 0.0
    assert bool(jnp.all(jnp.diff(grid) < 0))
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(1.0, 0)
    with pytest.raises(ValueError, match="horizon"):
        time_grid(0.0, 3)
    with pytest.raises(ValueError, match="integrator"):
        ou_scheme(1.0, 3, "rk4")


@pytest.mark.parametrize("kind", ["ou", "pis"])
def test_reference_bridge_has_the_closed_form_conditionals(kind):
    """OU from gamma = N(0, s^2): y_k | y_K = x ~ N(e^{-t} x, s^2 (1 - e^{-2t})) at forward
    time t; PIS (Brownian from 0, time s = T - t): N(s/T x, sigma^2 s (T - s) / T)."""
    if kind == "ou":
        sigma = 1.5
        scheme = ou_scheme(3.0, 8, "ei", 2.0, sigma)
        t = np.asarray(scheme.times)
        mean_coef, var = np.exp(-t), sigma**2 * -np.expm1(-2 * t)
    else:
        sigma, horizon = 2.0, 1.0
        scheme = brownian_scheme(horizon, 8, sigma)
        s = horizon - np.asarray(scheme.times)
        mean_coef, var = s / horizon, sigma**2 * s * (horizon - s) / horizon
    x = jnp.array([1.0, -2.0])
    ys = reference_bridge(jax.random.PRNGKey(5), scheme, jnp.tile(x, (20_000, 1)))
    assert ys.shape == (9, 20_000, 2)
    np.testing.assert_array_equal(ys[-1], jnp.tile(x, (20_000, 1)))
    mean, sd = np.asarray(ys.mean(axis=1)), np.asarray(ys.std(axis=1))
    se = np.sqrt(var)[:, None] / np.sqrt(20_000)
    assert np.all(np.abs(mean - mean_coef[:, None] * np.asarray(x)) < 5 * se + 1e-6)
    np.testing.assert_allclose(sd, np.broadcast_to(np.sqrt(var)[:, None], sd.shape), rtol=0.03, atol=1e-6)


def test_bridge_weights_satisfy_the_reciprocal_identity():
    """For y_K ~ rho / Z and a bridge drawn given y_K, the path is a draw of the extended
    target, so E[1 / w] = 1 / Z for any control (a mild one: 1 / w is heavy-tailed)."""
    n = 40_000
    key_x, key_b = jax.random.split(jax.random.PRNGKey(6))
    x = MEAN + jax.random.normal(key_x, (n, 2)) @ jnp.linalg.cholesky(COV).T
    scheme = ou_scheme(3.0, 8, "ei")
    log_w = bridge_log_weights(key_b, scheme, arbitrary_control, log_rho, x)
    inv_w = np.exp(LOG_Z - np.asarray(log_w, np.float64))
    se = inv_w.std() / np.sqrt(n)
    assert abs(inv_w.mean() - 1.0) < 4 * se + 1e-3, (inv_w.mean(), se)
