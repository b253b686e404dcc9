"""MCMC(SCLD(model)): particle independent Metropolis-Hastings over the sequential engine's
particle systems (numpyro_hjb.mcmc.particle_kernel), checked against a conjugate model with
a closed-form posterior and evidence."""

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from scipy import stats

import numpyro_hjb
from numpyro_hjb import SCLD

Y = np.array([0.9, 1.4, 0.2, 1.1, 0.7, 1.6, 0.4, 1.0], np.float32)
PRIOR_SD, NOISE_SD = 2.0, 0.5
#: a small fit whose size does not depend on timings
SMALL = dict(num_particles=128, num_replicates=4, num_systems=32, refinements=1,
             control="off", progress_bar=False)


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.deterministic("mu_twice", 2.0 * mu)
    with numpyro.plate("n", len(Y)):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def exact():
    """Posterior mean and sd of mu, and log p(y)."""
    n = len(Y)
    prec = 1 / PRIOR_SD**2 + n / NOISE_SD**2
    mean = (Y.sum() / NOISE_SD**2) / prec
    cov = NOISE_SD**2 * np.eye(n) + PRIOR_SD**2 * np.ones((n, n))
    log_z = stats.multivariate_normal.logpdf(Y.astype(np.float64), np.zeros(n), cov)
    return mean, prec**-0.5, float(log_z)


@pytest.fixture(scope="module")
def mcmc():
    m = MCMC(SCLD(model, **SMALL), num_warmup=20, num_samples=400, progress_bar=False)
    m.run(jax.random.PRNGKey(0), y=Y)
    return m


def test_draws_match_the_exact_posterior(mcmc):
    mean, sd, _ = exact()
    samples = mcmc.get_samples()
    mu = np.asarray(samples["mu"])
    assert mu.shape == (400,)
    np.testing.assert_allclose(np.asarray(samples["mu_twice"]), 2 * mu, rtol=1e-6)
    # draws of one system are correlated: allow 6 sd of the mean over ~400/16 systems
    assert abs(mu.mean() - mean) < 6 * sd / np.sqrt(400 / 16)
    assert 0.7 * sd < mu.std() < 1.3 * sd
    extra = mcmc.get_extra_fields()
    assert {"accept_prob", "log_weight"} <= set(extra)
    assert 0.0 <= float(np.min(extra["accept_prob"])) <= 1.0


def test_evidence_and_arviz(mcmc):
    _, _, log_z = exact()
    ev = numpyro_hjb.log_evidence(mcmc)
    assert np.isfinite(ev.log_z_se) and ev.log_z_se > 0
    assert abs(ev.log_z - log_z) < 4 * ev.log_z_se + 0.01
    idata = az.from_numpyro(mcmc)
    assert "mu" in idata.posterior
    idata2 = numpyro_hjb.to_inference_data(mcmc)
    assert "mu" in idata2.posterior


def test_sample_arguments_are_checked():
    fit = numpyro_hjb.fit(model, model_kwargs={"y": Y}, **SMALL)
    with pytest.raises(ValueError, match="num must be an integer >= 1, got -3"):
        fit.sample(jax.random.PRNGKey(1), -3)
    with pytest.raises(TypeError, match="num must be an integer"):
        fit.sample(jax.random.PRNGKey(1), 10.7)
    with pytest.raises(TypeError, match="draws_per_system"):
        SCLD(model, draws_per_system=2.5)
