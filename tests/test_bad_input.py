"""Bad input fails at once with a message that names the site, the argument or the model;
mis-scaled posteriors are fitted or reported, never silently wrong; nothing the user passed
is mutated. Property-based where the inputs vary (hypothesis)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpyro.infer.util import log_density

import numpyro_hjb
from numpyro_hjb.target import ModelError, make_target

#: the default engine at a size independent of timings (and small)
SMALL = dict(num_particles=64, num_replicates=4, num_systems=8, refinements=1, control="off")


def scaled_model(s, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0 * s))
    numpyro.sample("y", dist.Normal(mu, s), obs=y)


def test_a_model_that_raises_names_the_model_and_the_last_site():
    def model(data):
        mu = numpyro.sample("mu", dist.Normal())
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data["age"])

    with pytest.raises(ModelError, match=r"'model' raised KeyError after site 'mu'.*'age'"):
        numpyro_hjb.fit(model, {"height": 1.0}, progress_bar=False)


@pytest.mark.parametrize("s", [1e6, 1e-6])
def test_a_posterior_mis_scaled_by_1e6_is_fitted(s):
    """Posterior sd ~ s: the default engine starts from the prior, so the scale is the
    model's; log Z and the posterior sd come out right at either end."""
    y = np.array(0.5 * s)
    fit = numpyro_hjb.fit(scaled_model, s, model_kwargs={"y": y}, progress_bar=False,
                          rng_key=jax.random.PRNGKey(0), **SMALL)
    ev = numpyro_hjb.log_evidence(fit)
    exact = float(dist.Normal(0.0, s * np.sqrt(101.0)).log_prob(0.5 * s))
    assert abs(ev.log_z - exact) < 4 * ev.log_z_se + 0.02, (ev.log_z, ev.log_z_se, exact)
    sd = float(np.std(np.asarray(fit.sample(jax.random.PRNGKey(1), 500).samples["mu"])))
    assert 0.7 < sd / (10.0 * s / np.sqrt(101.0)) < 1.3


def test_nothing_the_user_passed_is_mutated():
    y = np.array([0.3, -0.1, 0.8], np.float32)
    kwargs = {"y": y}
    overrides = dict(SMALL)
    before = (y.copy(), copy.deepcopy(kwargs), copy.deepcopy(overrides))

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        with numpyro.plate("n", 3):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    fit = numpyro_hjb.fit(model, model_kwargs=kwargs, progress_bar=False, **overrides)
    fit.sample(jax.random.PRNGKey(1), 100)
    numpyro_hjb.log_evidence(fit)
    np.testing.assert_array_equal(y, before[0])
    assert kwargs.keys() == before[1].keys() and kwargs["y"] is y
    assert overrides == before[2]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dim=st.integers(1, 6), loc=st.floats(-5, 5), log_scale=st.floats(-3, 3),
       seed=st.integers(0, 2**16))
def test_target_log_density_is_the_model_log_joint(dim, loc, log_scale, seed):
    """For any shape and scale, the flat target is NumPyro's log joint in the unconstrained
    coordinates, with the log-Jacobian of the transform (here: of exp for a positive site)."""
    scale = float(np.exp(log_scale))

    def model():
        x = numpyro.sample("x", dist.Normal(loc, scale).expand([dim]))
        numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        numpyro.factor("f", -0.5 * (x**2).sum() / scale**2)

    target = make_target(model)
    z = np.random.default_rng(seed).normal(size=target.dim).astype(np.float32)
    sites = target.constrain(z)
    expected = log_density(model, (), {}, {"x": sites["x"], "s": sites["s"]})[0]
    expected = expected + z[0]  # the flat vector lists the sites sorted: s first (log s)
    assert target.dim == dim + 1
    np.testing.assert_allclose(target.log_density(z), expected, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def small_fit():
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return numpyro_hjb.fit(model, model_kwargs={"y": np.array(0.4)}, progress_bar=False,
                           **SMALL)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num=st.one_of(st.integers(-10**6, 0), st.floats(allow_nan=True), st.booleans(),
                     st.text(max_size=3), st.none()))
def test_sample_rejects_any_bad_count_naming_it(small_fit, num):
    with pytest.raises((TypeError, ValueError), match=r"^num must be an integer"):
        small_fit.sample(jax.random.PRNGKey(0), num)


def test_a_masked_latent_site_raises_naming_it():
    y = np.array([0.1, np.nan, 0.3])

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 3):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=np.nan_to_num(y),
                           obs_mask=~np.isnan(y))

    with pytest.raises(ValueError, match="'y_unobserved' has masked entries"):
        make_target(model, y)


def test_a_nan_region_is_outside_the_support_and_reported():
    """log density NaN for x > 1.5: treated as -inf (Z = Phi(1.5)), never a NaN draw, and
    the fit warns that it met NaN."""
    from scipy.stats import norm

    from numpyro_hjb.evidence import UnreliableResultWarning

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jnp.where(x > 1.5, jnp.nan, 0.0))

    with pytest.warns(UnreliableResultWarning, match="NaN at"):
        fit = numpyro_hjb.fit(model, progress_bar=False, **{**SMALL, "num_particles": 256})
    assert fit.info["num_nan_log_density"] > 0
    ev = numpyro_hjb.log_evidence(fit)
    assert abs(ev.log_z - np.log(norm.cdf(1.5))) < 4 * ev.log_z_se + 0.01
    x = np.asarray(fit.sample(jax.random.PRNGKey(0), 500).samples["x"])
    assert np.all(np.isfinite(x)) and x.max() <= 1.5
