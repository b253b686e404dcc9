"""Evidence estimator, ESS, k-hat, resampling and independence MH (DESIGN.md s.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from numpyro_hjb.evidence import (
    estimate_evidence,
    independence_mh,
    normalised_ess,
    pareto_khat,
    resample,
)


def gaussian_is_log_weights(n, proposal_sd, log_z=1.3, seed=0):
    """Target exp(log_z) N(0, 1), proposal N(0, proposal_sd^2)."""
    x = np.random.default_rng(seed).normal(0.0, proposal_sd, n)
    return log_z + stats.norm.logpdf(x) - stats.norm.logpdf(x, scale=proposal_sd)


def test_log_z_within_its_standard_error():
    errors = []
    for seed in range(20):
        est = estimate_evidence(gaussian_is_log_weights(2000, 1.5, seed=seed))
        errors.append((est.log_z - 1.3) / est.log_z_se)
    errors = np.array(errors)
    # standardised errors: mean ~ 0, sd ~ 1 if the delta-method SE is right
    assert abs(errors.mean()) < 0.8 and 0.5 < errors.std() < 1.6, errors


def test_ess_matches_closed_form():
    # proposal sd s for target N(0,1): E[w^2]/E[w]^2 = s^2 / sqrt(2 s^2 - 1)
    s = 1.5
    ess_exact = np.sqrt(2 * s**2 - 1) / s**2
    est = estimate_evidence(gaussian_is_log_weights(200_000, s))
    assert abs(est.ess - ess_exact) < 0.01
    assert est.elbo < est.log_z


def test_constant_weights():
    est = estimate_evidence(np.full(100, -2.0))
    assert est.log_z == pytest.approx(-2.0)
    assert est.log_z_se == pytest.approx(0.0)
    assert est.ess == pytest.approx(1.0)


def test_khat_flags_heavy_tails():
    assert pareto_khat(gaussian_is_log_weights(4000, 1.5)) < 0.5
    # a proposal narrower than the target: infinite variance weights
    assert pareto_khat(gaussian_is_log_weights(4000, 0.4)) > 0.7


def test_nan_weights_are_dropped_with_warning_and_all_nan_raises():
    lw = gaussian_is_log_weights(1000, 1.5)
    lw[:10] = np.nan
    with pytest.warns(UserWarning, match="10 of 1000"):
        est = estimate_evidence(lw)
    assert est.num_dropped == 10 and np.isfinite(est.log_z)
    with pytest.raises(ValueError, match="finite"):
        estimate_evidence(np.full(5, -np.inf))
    with pytest.raises(ValueError, match="empty"):
        estimate_evidence(np.array([]))


def test_minus_inf_weights_count_as_zero():
    est = estimate_evidence(np.array([0.0, -np.inf]))
    assert est.log_z == pytest.approx(np.log(0.5))
    assert normalised_ess(np.array([0.0, -np.inf])) == pytest.approx(0.5)


def test_resample_frequencies():
    log_w = jnp.log(jnp.array([1.0, 3.0]))
    idx = resample(jax.random.PRNGKey(0), log_w, 20_000)
    assert abs(float(jnp.mean(idx == 1)) - 0.75) < 0.015


def test_independence_mh_targets_the_weighted_law():
    key_prop, key_mh = jax.random.split(jax.random.PRNGKey(1))
    states = jax.random.bernoulli(key_prop, 0.5, (40_000,)).astype(jnp.int32)
    log_w = jnp.log(jnp.where(states == 1, 3.0, 1.0))
    idx, accepted = independence_mh(key_mh, log_w)
    chain = states[idx]
    assert abs(float(jnp.mean(chain == 1)) - 0.75) < 0.02
    assert 0.0 < float(jnp.mean(accepted)) < 1.0
