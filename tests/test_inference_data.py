"""ArviZ conversion and evidence of MCMC(DDS(model)) (numpyro_hjb.inference_data,
numpyro_hjb.log_evidence)."""

import dataclasses
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

from numpyro_hjb import make_target
from numpyro_hjb.api import FitResult
from numpyro_hjb.evidence import EvidenceEstimate
from numpyro_hjb.inference_data import to_inference_data
from numpyro_hjb.mcmc import DDS
from numpyro_hjb import log_evidence

matplotlib.use("Agg")

Y = jnp.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6])


def model(y=None):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", 6):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def improper_model():
    numpyro.sample("a", dist.ImproperUniform(constraints.real, (), ()))
    numpyro.sample("b", dist.Normal(0.0, 1.0))


@pytest.fixture(scope="module")
def mcmc():
    kernel = DDS(model, whitening="laplace", num_iterations=50, batch_size=64,
                 num_steps=32, progress_bar=False)
    run = MCMC(kernel, num_warmup=10, num_samples=40, num_chains=2,
               chain_method="vectorized", progress_bar=False)
    run.run(jax.random.PRNGKey(0), y=Y)
    return run


def test_from_numpyro_works_unchanged(mcmc):
    idata = az.from_numpyro(mcmc)
    assert set(idata.posterior.data_vars) == {"mu", "sigma"}
    assert idata.posterior["mu"].shape == (2, 40)
    assert {"log_weight", "acceptance_rate", "diverging"} <= set(idata.sample_stats.data_vars)
    assert idata.log_likelihood["y"].shape == (2, 40, 6)
    assert "observed_data" in idata.groups()


def test_to_inference_data_adds_the_evidence(mcmc):
    key = jax.random.PRNGKey(7)
    idata = to_inference_data(mcmc, rng_key=key, num_evidence_samples=512)
    lml = idata.sample_stats["log_marginal_likelihood"]
    assert lml.dims == ("chain",) and lml.shape == (2,)
    ev = log_evidence(mcmc, rng_key=key, num_samples=512)
    assert isinstance(ev, EvidenceEstimate)
    np.testing.assert_allclose(lml.values, ev.log_z)
    attrs = idata.sample_stats.attrs
    assert attrs["log_marginal_likelihood"] == pytest.approx(ev.log_z)
    for name in ("se", "ess", "khat", "method", "num_samples"):
        assert f"log_marginal_likelihood_{name}" in attrs
    assert attrs["numpyro_hjb_engine"] == "dds"
    assert idata.posterior.attrs["log_marginal_likelihood_se"] == pytest.approx(ev.log_z_se)
    # the evidence comes from fresh proposals of the fit, the same as FitResult's
    ev_fit = log_evidence(mcmc.sampler.fit_result, rng_key=key, num_samples=512)
    assert ev_fit.log_z == ev.log_z
    # Gaussian-ish posterior, 50 iterations: a loose sanity check only
    assert np.isfinite(ev.log_z) and ev.log_z_se > 0


def test_arviz_functions_run(mcmc):
    import matplotlib.pyplot as plt

    idata = to_inference_data(mcmc, evidence=False)
    assert "log_marginal_likelihood" not in idata.sample_stats
    summary = az.summary(idata)
    assert {"mu", "sigma"} <= set(summary.index)
    ess = az.ess(idata)
    assert float(ess["mu"]) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    axes = az.plot_trace(idata)
    assert axes.shape[0] == 2
    plt.close("all")


def test_evidence_raises_for_improper_priors(mcmc):
    target = make_target(improper_model)
    assert target.improper_sites == ("a",)
    # Reuse the fitted 2-d network: only the error is under test here.
    fitted = mcmc.sampler.fit_result
    fake = FitResult("dds", target, fitted.state, fitted.settings)
    with pytest.raises(ValueError, match=r"\['a'\] is improper"):
        log_evidence(fake, rng_key=jax.random.PRNGKey(0), num_samples=64)


def test_evidence_warns_for_large_khat(mcmc):
    fitted = mcmc.sampler.fit_result
    # A target much wider than the fitted proposal (N(0, 25 I) against roughly N(0, I))
    # gives weights with infinite variance: their Pareto tail index is about 1 - 1/25.
    wide = dataclasses.replace(fitted.target, log_density=lambda x: -0.5 * jnp.sum(x**2) / 25.0)
    bad = FitResult("dds", wide, fitted.state, fitted.settings)
    with pytest.warns(UserWarning, match="k-hat"):
        log_evidence(bad, rng_key=jax.random.PRNGKey(0), num_samples=4096)


def test_bad_inputs():
    def tiny():
        numpyro.sample("x", dist.Normal())

    nuts = MCMC(NUTS(tiny), num_warmup=5, num_samples=5, progress_bar=False)
    with pytest.raises(TypeError, match="mcmc_or_fit"):
        log_evidence(nuts)
    with pytest.raises(TypeError, match="mcmc_or_fit"):
        to_inference_data(nuts)
    with pytest.raises(ValueError, match="not been fitted"):
        log_evidence(DDS(tiny))
