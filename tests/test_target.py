"""The target adapter against NumPyro's own log density (docs/design.md s.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import log_density

from numpyro_hjb.target import Target, make_target, whiten


def constrained_model(y):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    probs = numpyro.sample("probs", dist.Dirichlet(jnp.array([1.0, 2.0, 3.0])))
    with numpyro.plate("groups", 3):
        mu = numpyro.sample("mu", dist.Normal(0.0, sigma))
    numpyro.deterministic("weighted", jnp.sum(probs * mu))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu[jnp.arange(y.shape[0]) % 3], 1.0), obs=y)


Y = jnp.array([0.3, -1.2, 2.0, 0.7, 0.1])


def _reference_log_density(z_flat, target):
    """log p(y, theta(z)) + log|d theta / d z| from NumPyro's log_density and biject_to."""
    z = target.unravel(z_flat)
    trace = numpyro.handlers.trace(numpyro.handlers.seed(constrained_model, 0)).get_trace(Y)
    total, constrained = 0.0, {}
    for name, value in z.items():
        transform = biject_to(trace[name]["fn"].support)
        constrained[name] = transform(value)
        ldj = transform.log_abs_det_jacobian(value, constrained[name])
        total = total + jnp.sum(ldj)
    lp, _ = log_density(constrained_model, (Y,), {}, constrained)
    return lp + total, constrained


def test_adapter_matches_numpyro_log_density():
    target = make_target(constrained_model, Y)
    assert target.dim == 1 + 2 + 3  # sigma, simplex (3 -> 2 free), three group means
    assert set(target.site_names) == {"sigma", "probs", "mu"}
    key = jax.random.PRNGKey(0)
    for z in jax.random.normal(key, (5, target.dim)):
        ref, constrained = _reference_log_density(z, target)
        np.testing.assert_allclose(target.log_density(z), ref, rtol=1e-5, atol=1e-4)
        out = target.constrain(z)
        assert float(out["sigma"]) > 0
        np.testing.assert_allclose(jnp.sum(out["probs"]), 1.0, atol=1e-6)
        np.testing.assert_allclose(out["weighted"], jnp.sum(out["probs"] * out["mu"]), rtol=1e-5)
        np.testing.assert_allclose(out["mu"], constrained["mu"], rtol=1e-6)


def test_constrain_batch_and_gradient():
    target = make_target(constrained_model, Y)
    x = jax.random.normal(jax.random.PRNGKey(1), (7, target.dim))
    out = target.constrain_batch(x)
    assert out["probs"].shape == (7, 3) and out["weighted"].shape == (7,)
    g = jax.vmap(jax.grad(target.log_density))(x)
    assert g.shape == (7, target.dim) and bool(jnp.all(jnp.isfinite(g)))


def test_inputs_not_mutated():
    y = np.array(Y)
    kwargs = {"y": y}
    make_target(constrained_model, **kwargs)
    np.testing.assert_array_equal(kwargs["y"], np.array(Y))
    assert list(kwargs) == ["y"]


def test_discrete_latent_raises_naming_site():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))
        numpyro.sample("x", dist.Normal())

    with pytest.raises(ValueError, match="'k'"):
        make_target(model)


def test_no_latent_sites_raises():
    def model():
        numpyro.sample("y", dist.Normal(), obs=1.0)

    with pytest.raises(ValueError, match="no latent"):
        make_target(model)


def test_non_finite_potential_raises():
    def model():
        x = numpyro.sample("x", dist.Normal())
        numpyro.factor("bad", jnp.where(x > -100.0, jnp.nan, 0.0))

    with pytest.raises(RuntimeError, match="finite"):
        make_target(model)


def test_improper_site_detected():
    def model():
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), (2,)))
        numpyro.factor("f", -jnp.sum(x**2))

    target = make_target(model)
    assert target.improper_sites == ("x",)


@pytest.mark.parametrize("method", ["laplace", "advi"])
def test_whitening_keeps_the_normaliser(method):
    """Phi(x) = U(mu + L x) - log|det L| integrates to the same Z (Gaussian: exact)."""
    mean = jnp.array([1.0, -2.0])
    cov = jnp.array([[2.0, 0.9], [0.9, 0.6]])

    def model():
        numpyro.sample("x", dist.MultivariateNormal(mean, cov))

    target = make_target(model, whitening=method, prefit_steps=1500)
    assert target.whitening == method
    # Z = int exp(log rho) = 1: check by Gauss-Hermite quadrature in the whitened space,
    # where the density is close to N(0, I).
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / np.sqrt(2 * np.pi)
    xx, yy = np.meshgrid(nodes, nodes)
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    w = np.outer(weights, weights).ravel()
    log_ratio = jax.vmap(target.log_density)(pts) + 0.5 * jnp.sum(pts**2, 1) + jnp.log(2 * jnp.pi)
    z_hat = float(np.sum(w * np.exp(np.asarray(log_ratio, np.float64))))
    np.testing.assert_allclose(z_hat, 1.0, rtol=2e-3)
    if method == "laplace":  # exact for a Gaussian: the whitened density is N(0, I)
        np.testing.assert_allclose(np.asarray(log_ratio), 0.0, atol=1e-3)


def test_from_log_density_and_whiten_flat():
    target = Target.from_log_density(lambda x: -0.5 * jnp.sum((x - 3.0) ** 2 / 4.0), 3)
    white = whiten(target, "laplace")
    np.testing.assert_allclose(white.shift, 3.0, atol=1e-3)
    np.testing.assert_allclose(jnp.diag(white.scale_tril), 2.0, rtol=1e-3)
    with pytest.raises(ValueError, match="whitening"):
        whiten(target, "nope")
