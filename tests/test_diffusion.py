"""Path weights of the diffusion samplers: unbiasedness and the optimal control (DESIGN.md s.2-3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.diffusion import (
    brownian_scheme,
    control_from_score,
    gaussian_ou_marginal,
    ou_scheme,
    path_log_weights,
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
    [ou_scheme(3.0, 8, "ei"), ou_scheme(3.0, 8, "em"), brownian_scheme(1.0, 8, 2.0)],
    ids=["ei", "em", "pis"],
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
