"""Engine 2 through the public API: numpyro_hjb.fit(..., engine="tt")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_hjb
import numpyro_hjb.tt.engine as engine  # registers the engine "tt"
from numpyro_hjb.target import Target
from numpyro_hjb.tt.settings import TTSettings


def _gauss_target(d, log_z=0.4, seed=0):
    """exp(log_z) N(m, S) with S = Q diag(geomspace(0.2, 5)) Q^T, Q a random rotation, and
    m ~ N(0, I / 4); returns (target, m, S, log_z)."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    cov = (rotation * np.geomspace(0.2, 5.0, d)) @ rotation.T
    mean = 0.5 * rng.normal(size=d)

    def log_density(x):
        return jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov) + log_z

    return Target.from_log_density(log_density, d), mean, cov, log_z


FAST = dict(num_sampling_steps=20, horizon=5.0, step_tol=1e-5, t_max=20.0)


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_fit_gaussian_log_z_and_weights(sampler):
    target, m, s, log_z = _gauss_target(2)
    res = numpyro_hjb.fit(target, engine="tt", progress_bar=False, sampler=sampler, **FAST)
    assert res.info["formulation"] == "hjb"
    assert res.info["log_z_readoff"] == pytest.approx(log_z, abs=1e-4)
    assert res.state.cores[0].dtype == np.float64
    ev = res.log_evidence(jax.random.PRNGKey(1), num_samples=1000)
    assert ev.log_z == pytest.approx(log_z, abs=5 * ev.log_z_se + 1e-3)
    if sampler == "ode":
        assert ev.ess > 0.99
    x, log_w = res.propose(jax.random.PRNGKey(2), 500)
    assert x.shape == (500, 2) and log_w.shape == (500,)
    assert np.all(np.isfinite(np.asarray(log_w)))
    assert set(res.history) >= {"time", "step", "max_rank", "max_degree", "residual"}


def test_score_fn_matches_closed_form():
    from numpyro_hjb.diffusion import gaussian_ou_marginal

    target, m, s, _ = _gauss_target(2, seed=3)
    settings = engine.TT_ENGINE.make_settings(**FAST)
    state, _ = engine.fit(target, jax.random.PRNGKey(0), settings, False)
    x = np.random.default_rng(0).normal(size=(50, 2))
    with jax.enable_x64(True):
        for j in (0, 5, 20):
            t = float(state.times[j])
            mt, st = gaussian_ou_marginal(jnp.asarray(m), jnp.asarray(s), t)
            exact = -(x - np.asarray(mt)) @ np.linalg.inv(np.asarray(st))
            got = np.asarray(engine.score_fn(state, jnp.asarray(x), t))
            np.testing.assert_allclose(got, exact, atol=1e-4)


def test_scaled_non_gaussian_target_weights_are_consistent():
    """A bimodal 1-D target through the cutoff HJB (``formulation="hjb"``), with a diagonal
    pre-scale: exact weights."""

    def log_density(x):
        return jnp.logaddexp(-((x[0] - 1.5) ** 2) / 0.5, -((x[0] + 1.5) ** 2) / 0.5)

    ys = np.linspace(-10, 10, 40001)
    log_z = np.log(np.sum(np.exp(np.logaddexp(-((ys - 1.5) ** 2) / 0.5, -((ys + 1.5) ** 2) / 0.5))) * (ys[1] - ys[0]))
    target = Target.from_log_density(log_density, 1)
    res = numpyro_hjb.fit(
        target, engine="tt", progress_bar=False, formulation="hjb", scale=1.5, cutoff_degree=24,
        **FAST
    )
    assert res.info["formulation"].startswith("hjb(cutoff")
    ev = res.log_evidence(jax.random.PRNGKey(3), num_samples=1000)
    assert ev.log_z == pytest.approx(log_z, abs=5 * ev.log_z_se + 0.01)
    assert ev.ess > 0.5
    assert res.info["log_z_readoff"] == pytest.approx(log_z, abs=0.15)  # cutoff: approximate


def test_bad_settings_raise():
    target, *_ = _gauss_target(2)
    with pytest.raises(ValueError, match="sampler"):
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, sampler="x")
    with pytest.raises(TypeError, match="unknown settings"):
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, not_a_setting=1)
    bad = Target.from_log_density(lambda x: jnp.where(x[0] > 0, 0.0, jnp.nan), 1)
    with pytest.raises(RuntimeError):
        engine.fit(bad, jax.random.PRNGKey(0), engine.TT_ENGINE.make_settings(**FAST), False)


def test_auto_scale_moves_toward_an_accurate_fit():
    """scale='auto' on 1-D targets (Cole-Hopf, degree 48): a Gaussian of sd 2, whose h_0 is not
    in L2(gamma) at s = 1, makes the search go up; the double well exp(-(x^2 - 4)^2) (sd ~ 2,
    narrow wells) makes it go down. Both end with the log Z read-off right."""
    cfg = {"formulation": "cole_hopf", "ch_degree": 48, "num_sampling_steps": 20}
    wide = Target.from_log_density(lambda x: jnp.sum(-0.5 * (x / 2.0) ** 2) + 0.3, 1)
    res = numpyro_hjb.fit(wide, engine="tt", progress_bar=False, scale="auto", **cfg)
    assert float(res.state.scale[0]) >= 1.5
    assert res.info["log_z_readoff"] == pytest.approx(0.3 + 0.5 * np.log(2 * np.pi * 4), abs=1e-6)
    assert min(res.info["scale_search"].values()) <= TTSettings().scaling.scale_tol

    well = Target.from_log_density(lambda x: -jnp.sum((x**2 - 4.0) ** 2), 1)
    ys = np.linspace(-5, 5, 200001)
    log_z = np.log(np.trapezoid(np.exp(-((ys**2 - 4.0) ** 2)), ys))
    res = numpyro_hjb.fit(well, engine="tt", progress_bar=False, scale="auto", **cfg)
    chosen = float(res.state.scale[0])
    assert chosen < 1.0
    # at this degree no scale reaches scale_tol: the search stops at the smallest indicator
    assert res.info["scale_search"][f"{chosen:.4g}"] == min(res.info["scale_search"].values())
    assert res.info["log_z_readoff"] == pytest.approx(log_z, abs=1e-3)
    # the default route: the polynomial check fails, so Cole-Hopf with the same search
    res_default = numpyro_hjb.fit(well, engine="tt", progress_bar=False, ch_degree=48,
                                  num_sampling_steps=20)
    assert res_default.info["formulation"] == "cole_hopf"
    assert float(res_default.state.scale[0]) == chosen


def test_a_float32_model():
    """A NumPyro model written the usual way, float32 data and constants, fitted by the float64
    engine: the evidence against its closed form, and draws per site."""
    import numpyro
    import numpyro.distributions as dist
    from scipy import stats

    y = np.array([[0.3, -1.2], [0.8, -0.4], [0.1, -0.9]], np.float32)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2, jnp.float32), 2.0).to_event(1))
        numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

    n = len(y)
    cov = 4.0 * np.ones((n, n)) + np.eye(n)
    log_z = sum(stats.multivariate_normal.logpdf(y[:, j], np.zeros(n), cov) for j in range(2))
    result = numpyro_hjb.fit(model, y, engine="tt", progress_bar=False, **FAST)
    ev = numpyro_hjb.log_evidence(result)
    assert abs(ev.log_z - log_z) < 4 * ev.log_z_se + 1e-3, (ev, log_z)
    draws = result.sample(jax.random.PRNGKey(1), 200)
    assert draws.samples["mu"].shape == (200, 2)
    np.testing.assert_allclose(np.mean(np.asarray(draws.samples["mu"]), 0),
                               4.0 * y.sum(0) / (4.0 * n + 1.0), atol=0.15)


def test_a_coupled_mixture_against_quadrature():
    """A 2-D mixture of two correlated Gaussians (not a product: the TT needs rank > 1), with
    the default route (Cole-Hopf after the polynomial check fails, scale from the search):
    log Z against 2-D quadrature."""
    means = np.array([[1.5, 1.0], [-1.5, -0.5]])
    covs = np.array([[[0.5, 0.35], [0.35, 0.5]], [[0.4, -0.2], [-0.2, 0.6]]])
    precs = np.linalg.inv(covs)
    log_w = np.log([0.6, 0.4]) - 0.5 * np.linalg.slogdet(2 * np.pi * covs)[1] + 0.4

    def log_density(x):
        r = x[None] - means
        return jax.scipy.special.logsumexp(log_w - 0.5 * jnp.einsum("ki,kij,kj->k", r, precs, r))

    grid = np.linspace(-8.0, 8.0, 801)
    pts = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    r = pts[:, None, :] - means[None]
    log_terms = log_w - 0.5 * np.einsum("nki,kij,nkj->nk", r, precs, r)
    log_z = float(np.log(np.exp(log_terms).sum()) + 2 * np.log(grid[1] - grid[0]))

    res = numpyro_hjb.fit(Target.from_log_density(log_density, 2), engine="tt",
                          progress_bar=False, num_sampling_steps=30)
    assert res.info["formulation"] == "cole_hopf" and max(res.info["final_ranks"]) > 1
    assert res.info["log_z_readoff"] == pytest.approx(log_z, abs=0.01)
    ev = res.log_evidence(jax.random.PRNGKey(3), num_samples=2000)
    assert ev.log_z == pytest.approx(log_z, abs=4 * ev.log_z_se + 0.01)
    assert ev.ess > 0.7
