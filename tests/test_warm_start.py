"""Warm start of the learned control from SMC particles (numpyro_hjb.smc, control.warm_start)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb import Target, fit
from numpyro_hjb.control.warm_start import brownian_control_targets, control_targets
from numpyro_hjb.smc import tempered_smc_program

MEAN = jnp.array([2.0, -1.0])
SD = jnp.array([0.5, 1.5])
LOG_Z = 0.4


def log_rho(x):
    return LOG_Z + jnp.sum(jax.scipy.stats.norm.logpdf(x, MEAN, SD))


def test_tempered_smc_gets_a_gaussian_right():
    particles, log_z, n_temps = tempered_smc_program(log_rho, 2, 5.0, {"num_particles": 2000})(
        jax.random.PRNGKey(0)
    )
    assert int(n_temps) >= 2
    assert abs(float(log_z) - LOG_Z) < 0.1
    np.testing.assert_allclose(np.mean(particles, 0), MEAN, atol=0.1)
    np.testing.assert_allclose(np.std(particles, 0), SD, rtol=0.1)


@pytest.mark.parametrize("stationary_var", [1.0, 4.0])
def test_control_targets_are_unbiased(stationary_var):
    """With exact draws as particles, u* - y / sigma^2 estimates the score of p_t under the OU
    reference N(0, sigma^2 I): Stein's identity E[s(y)] = 0 and E[s(y) y] = -1 per coordinate
    hold for the estimate, and its mean given the time matches the closed-form Gaussian
    score."""
    x0 = MEAN + SD * jax.random.normal(jax.random.PRNGKey(1), (200_000, 2))
    times = jnp.array([0.05, 0.5, 2.0])
    ks, y, u_star = control_targets(jax.random.PRNGKey(2), times, log_rho, x0, 200_000,
                                    stationary_var=stationary_var)
    s = np.asarray(u_star - y / stationary_var)
    y = np.asarray(y)
    n = len(s)
    assert np.all(np.abs(s.mean(0)) < 5 * s.std(0) / np.sqrt(n))
    assert np.all(np.abs((s * y).mean(0) + 1) < 5 * (s * y).std(0) / np.sqrt(n))
    # regression on y within each time: the exact score is affine,
    # -(y - a m) / (a^2 s^2 + sigma^2 (1 - a^2))
    for k in range(3):
        sel = np.asarray(ks) == k
        a = float(np.exp(-times[k]))
        slope_exact = -1.0 / (a**2 * np.asarray(SD) ** 2 + stationary_var * (1 - a**2))
        for j in range(2):
            slope = np.polyfit(y[sel, j], s[sel, j], 1)[0]
            assert abs(slope / slope_exact[j] - 1) < 0.05, (k, j, slope, slope_exact[j])


def test_brownian_control_targets_match_the_closed_form_pis_control():
    """PIS with sigma, T: f = rho / N(0, sigma^2 T) is Gaussian with precision
    P = 1/S - 1/(sigma^2 T) and mean mu = m / (S P), so u*(y, t) = -(y - mu) / (1/P + sigma^2 t).
    The estimates, regressed on y within each time, recover that slope and intercept."""
    sigma, horizon = 2.0, 1.0
    x_end = MEAN + SD * jax.random.normal(jax.random.PRNGKey(4), (200_000, 2))
    times = jnp.array([0.02, 0.4, 1.0])
    ks, y, u_star = brownian_control_targets(jax.random.PRNGKey(5), times, log_rho, x_end,
                                             200_000, sigma, horizon)
    y, u_star, ks = np.asarray(y), np.asarray(u_star), np.asarray(ks)
    prec = 1.0 / np.asarray(SD) ** 2 - 1.0 / (sigma**2 * horizon)
    mu = np.asarray(MEAN) / np.asarray(SD) ** 2 / prec
    for k in range(3):
        sel = ks == k
        for j in range(2):
            var = 1.0 / prec[j] + sigma**2 * float(times[k])
            if float(times[k]) == horizon:  # s = 0: y = 0, the control is the constant mu / var
                assert np.allclose(y[sel, j], 0.0)
                m, se = u_star[sel, j].mean(), u_star[sel, j].std() / np.sqrt(sel.sum())
                assert abs(m - mu[j] / var) < 5 * se, (k, j, m, mu[j] / var)
                continue
            slope, intercept = np.polyfit(y[sel, j], u_star[sel, j], 1)
            assert abs(slope * var + 1) < 0.05, (k, j, slope, -1 / var)
            assert abs(intercept - mu[j] / var) < 0.05 * max(1.0, abs(mu[j] / var)), (k, j)


@pytest.mark.parametrize("engine", ["dds", "pis"])
def test_fit_with_smc_warm_start_stays_unbiased(engine):
    target = Target.from_log_density(log_rho, 2)
    result = fit(target, engine=engine, loss="lv", progress_bar=False, num_iterations=100,
                 batch_size=64, num_steps=16, log_every=50, hidden=(32, 32),
                 warm_start="smc", warm_start_iterations=300, smc_particles=500)
    info = result.info
    assert info["warm_start_loss_last"] < info["warm_start_loss_first"]
    assert abs(info["smc_log_z"] - LOG_Z) < 0.2
    assert info["train_s"] >= info["warm_start_s"]
    est = result.log_evidence(jax.random.PRNGKey(3), num_samples=20_000)
    assert abs(est.log_z - LOG_Z) < 4 * est.log_z_se + 1e-3, est


def test_warm_start_settings_are_checked():
    target = Target.from_log_density(log_rho, 2)
    with pytest.raises(ValueError, match="warm_start"):
        fit(target, engine="dds", warm_start="nuts", progress_bar=False)
    with pytest.raises(ValueError, match="smc_particles"):
        fit(target, engine="pis", warm_start="smc", smc_particles=0, progress_bar=False)
