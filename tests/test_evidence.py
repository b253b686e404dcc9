"""Evidence estimator, ESS, k-hat and resampling (docs/design.md s.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from numpyro_hjb.evidence import (
    UnreliableResultError,
    UnreliableResultWarning,
    check_reliability,
    ess_fraction,
    estimate_evidence,
    pareto_khat,
    resample,
)
from numpyro_hjb.mcmc import imh_init, imh_step


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


def test_nan_weights_count_as_zero_with_a_warning_and_all_nan_raises():
    """A NaN weight is a zero weight that still counts in N: dropping it would bias log Z
    upward by log(N / N_finite)."""
    lw = gaussian_is_log_weights(1000, 1.5)
    full = estimate_evidence(lw)
    lw[:10] = np.nan
    with pytest.warns(UserWarning, match="10 of 1000"):
        est = estimate_evidence(lw)
    assert est.num_nonfinite == 10 and np.isfinite(est.log_z)
    dropped = estimate_evidence(gaussian_is_log_weights(1000, 1.5)[10:])
    zeroed = np.log(np.exp(dropped.log_z) * 990 / 1000)
    assert est.log_z == pytest.approx(zeroed, abs=1e-12) and est.log_z < full.log_z
    with pytest.raises(ValueError, match="finite"):
        estimate_evidence(np.full(5, -np.inf))
    with pytest.raises(ValueError, match="empty"):
        estimate_evidence(np.array([]))


def test_minus_inf_weights_count_as_zero():
    est = estimate_evidence(np.array([0.0, -np.inf]))
    assert est.log_z == pytest.approx(np.log(0.5))
    assert float(ess_fraction(np.array([0.0, -np.inf]))) == pytest.approx(0.5)
    assert float(ess_fraction(np.array([0.0, 0.0, 5.0]), mask=np.array([1, 1, 0], bool))) == (
        pytest.approx(1.0))


def test_resample_frequencies():
    log_w = jnp.log(jnp.array([1.0, 3.0]))
    idx = resample(jax.random.PRNGKey(0), log_w, 20_000)
    assert abs(float(jnp.mean(idx == 1)) - 0.75) < 0.015


def test_resample_is_systematic_in_a_random_order():
    """Each proposal is drawn floor(num W_i) or ceil(num W_i) times; equal weights give
    distinct proposals; the order is shuffled (not sorted as systematic indices are)."""
    w = np.array([0.1, 0.2, 0.3, 0.4])
    idx = np.asarray(resample(jax.random.PRNGKey(3), np.log(w), 1001))
    counts = np.bincount(idx, minlength=4)
    assert np.all(np.abs(counts - 1001 * w) < 1.0)
    idx = np.asarray(resample(jax.random.PRNGKey(4), np.zeros(8192), 2000))
    assert len(np.unique(idx)) == 2000
    assert np.any(np.diff(idx) < 0)


def test_independence_mh_targets_the_weighted_law():
    """IMH over a stream of independent proposals: states 0/1 proposed with probability 1/2 and
    weights 1/3 -> the chain spends 3/4 of its time in state 1."""

    def propose(key, n):
        states = jax.random.bernoulli(key, 0.5, (n, 1)).astype(jnp.float32)
        return states, jnp.log(jnp.where(states[:, 0] == 1, 3.0, 1.0))

    to_z = lambda x: {"x": x}  # noqa: E731
    state = imh_init(propose, to_z, jax.random.PRNGKey(1), num_init=1, pool_size=512)

    def body(s, _):
        s = imh_step(propose, to_z, s)
        return s, (s.x[0], s.accepted)

    _, (chain, accepted) = jax.jit(lambda s: jax.lax.scan(body, s, None, length=40_000))(state)
    assert abs(float(jnp.mean(chain == 1)) - 0.75) < 0.02
    assert 0.0 < float(jnp.mean(accepted)) < 1.0


def test_reliability_checks_name_the_cause_and_strict_raises():
    good = estimate_evidence(gaussian_is_log_weights(4000, 1.5))
    assert check_reliability(good) == []
    heavy = estimate_evidence(gaussian_is_log_weights(4000, 0.4))
    with pytest.warns(UnreliableResultWarning, match="k-hat"):
        check_reliability(heavy)
    with pytest.raises(UnreliableResultError, match="distinct"):
        check_reliability(good, unique_fraction=0.01, strict=True)
    collapsed = estimate_evidence(np.r_[0.0, np.full(999, -50.0)])
    with pytest.warns(UnreliableResultWarning, match="ESS"):
        check_reliability(collapsed)
