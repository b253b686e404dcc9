"""The sequential annealing engine (numpyro_hjb.annealing): unbiasedness, agreement with
BlackJAX's adaptive tempered SMC, the prior base, the fit and its draws (docs/design.md s.3b)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

import numpyro_hjb
from numpyro_hjb import SCLD, Target, fit, make_target
from numpyro_hjb.annealing.engine import combine_log_z
from numpyro_hjb.annealing.reference import GaussianBase, gaussian_from_particles, prior_base
from numpyro_hjb.annealing.sampler import PathParams, make_tempered_program
from numpyro_hjb.annealing.smc import KernelParams, next_increment, systematic_indices

MEAN = jnp.array([1.5, -1.0])
SD = jnp.array([0.4, 2.0])
LOG_Z = 0.7


def gaussian_log_rho(x):
    return LOG_Z + jnp.sum(jax.scipy.stats.norm.logpdf(x, MEAN, SD))


def gaussian_program(num_particles, num_replicates, log_rho=gaussian_log_rho, dim=2, **kernel):
    path = PathParams(num_particles, num_replicates, 0.8, 0.5, 200)
    params = KernelParams(**{"num_mcmc_steps": 2, "num_leapfrog": 3, "target_acceptance": 0.65,
                             "step_jitter": 5.0, **kernel})
    def parts(p, x):
        log_b = p.log_density(x)
        return log_b, log_rho(x) - log_b

    return make_tempered_program(parts, lambda p, k, n: p.sample(k, n), path, params, dim)


def test_replicate_estimates_are_unbiased_for_a_gaussian():
    """E[Z_r] = Z: the mean of many small systems' Z_r / Z is 1 within its standard error,
    from a base that is far from the target (a long path, resampling, moves)."""
    program = gaussian_program(64, 256)
    base = GaussianBase.from_chol(jnp.zeros(2), 3.0 * jnp.eye(2))
    out = program(base, None, jax.random.PRNGKey(0))
    z = np.exp(np.asarray(out.log_z, np.float64) - LOG_Z)
    assert np.all(np.asarray(out.num_steps) > 2)
    assert abs(z.mean() - 1.0) < 4 * z.std(ddof=1) / math.sqrt(z.size), (z.mean(), z.std())
    lz, se = combine_log_z(out.log_z)
    assert abs(lz - LOG_Z) < 4 * se


def test_a_frozen_schedule_is_followed_and_unbiased():
    """With the temperatures and step sizes of a FrozenSchedule, every replicate takes
    exactly those steps, and the mean of Z_r / Z is 1 within its standard error with only
    16 particles per system (an adaptive schedule's O(1/N) bias would be largest here)."""
    from numpyro_hjb.annealing.sampler import FrozenSchedule

    program = gaussian_program(16, 1024)
    base = GaussianBase.from_chol(jnp.zeros(2), 3.0 * jnp.eye(2))
    k = 12
    betas = jnp.ones(201).at[: k + 1].set(jnp.linspace(0.0, 1.0, k + 1) ** 2)
    schedule = FrozenSchedule(betas, jnp.full(200, 0.4))
    from numpyro_hjb.annealing.smc import MassPath

    fixed_mass = MassPath(jnp.ones(2), 1.0 / SD**2, jnp.zeros(()))  # not from the particles
    out = program(base, fixed_mass, jax.random.PRNGKey(1), schedule)
    np.testing.assert_array_equal(np.asarray(out.num_steps), k)
    np.testing.assert_allclose(np.asarray(out.betas)[0], np.asarray(betas), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.step_sizes)[:, :k], 0.4)
    z = np.exp(np.asarray(out.log_z, np.float64) - LOG_Z)
    assert abs(z.mean() - 1.0) < 4 * z.std(ddof=1) / math.sqrt(z.size), (z.mean(), z.std())


def test_matches_blackjax_adaptive_tempered_smc():
    """With no transport (u = 0) the engine's particle system is adaptive tempered SMC: on a
    Gaussian and on gmm9 its log Z_hat agrees with blackjax.adaptive_tempered_smc's."""
    import blackjax
    from blackjax.smc import resampling

    from benchmarks.targets import get_target

    gmm9 = get_target("gmm9")
    for log_rho, dim, log_z, scale in ((gaussian_log_rho, 2, LOG_Z, 3.0),
                                       (gmm9.log_density, 2, 0.0, 5.0)):
        base = GaussianBase.from_chol(jnp.zeros(dim), scale * jnp.eye(dim))
        ours = gaussian_program(256, 16, log_rho, dim, num_mcmc_steps=4)(base, None, jax.random.PRNGKey(1))

        def log_lik(x, log_rho=log_rho, base=base):
            return log_rho(x) - base.log_density(x)

        kernel = blackjax.adaptive_tempered_smc(
            base.log_density, log_lik, blackjax.hmc.build_kernel(), blackjax.hmc.init,
            {"step_size": jnp.array([0.3]), "inverse_mass_matrix": jnp.ones((1, dim)) * scale**2,
             "num_integration_steps": jnp.array([3])},
            resampling.systematic, 0.5, num_mcmc_steps=4,
        )

        def run(key, kernel=kernel, base=base):
            k0, k = jax.random.split(key)
            state = kernel.init(base.sample(k0, 256))

            def cond(c):
                return c[0].tempering_param < 1.0

            def body(c):
                s, key, lz = c
                key, sub = jax.random.split(key)
                s, info = kernel.step(sub, s)
                return s, key, lz + info.log_likelihood_increment

            return jax.lax.while_loop(cond, body, (state, k, 0.0))[2]

        theirs = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(2), 16))
        a, b = np.asarray(ours.log_z), np.asarray(theirs)
        se = math.hypot(a.std(ddof=1), b.std(ddof=1)) / 4.0
        assert abs(a.mean() - b.mean()) < 4 * se + 0.02, (a.mean(), b.mean(), se)
        assert abs(a.mean() - log_z) < 4 * a.std(ddof=1) / 4.0 + 0.02


def test_rejuvenation_keeps_exact_draws_exact():
    """HMC moves with a mass path fixed in advance leave exact draws of a correlated
    Gaussian exact (a mass matrix estimated from the moved particles themselves would
    contract them, see numpyro_hjb.annealing.smc)."""
    from numpyro_hjb.annealing.smc import MassPath, init_particles, rejuvenate

    d = 10
    a = jax.random.normal(jax.random.PRNGKey(0), (d, d)) / math.sqrt(d)
    cov = a @ a.T + 0.3 * jnp.eye(d)
    prec = jnp.linalg.inv(cov)

    def log_rho(x):
        return -0.5 * x @ prec @ x

    x0 = jax.random.normal(jax.random.PRNGKey(1), (4000, d)) @ jnp.linalg.cholesky(cov).T
    base = GaussianBase.from_chol(jnp.zeros(d), 2.0 * jnp.eye(d))
    mass = MassPath(jnp.eye(d) / 4.0, prec, jnp.zeros(()))
    state = init_particles(x0, jnp.zeros(4000), 0.3)._replace(beta=jnp.asarray(1.0))
    def parts(x):
        return base.log_density(x), log_rho(x) - base.log_density(x)

    step = jax.jit(lambda k, s: rejuvenate(k, s, parts, KernelParams(5, 5, 0.65, 5.0),
                                           mass.inverse_mass(s.beta)))
    for i in range(10):
        state, acc = step(jax.random.PRNGKey(i), state)
    emp = np.cov(np.asarray(state.x).T)
    assert 0.3 < float(acc) < 0.95
    log_det = np.linalg.slogdet(emp)[1] - np.linalg.slogdet(np.asarray(cov))[1]
    assert abs(log_det) < 0.15 and abs(np.trace(emp) / np.trace(np.asarray(cov)) - 1) < 0.05


@pytest.mark.parametrize("h, perturb", [(0.0, 0.0), (0.05, 0.0), (0.05, 0.05)])
def test_controlled_transitions_are_unbiased_for_any_control(h, perturb):
    """E[prod_k w_k] = Z for the CMCD transports with any control u, schedule and step size
    (here: none, u = 0, and a random control), on a Gaussian with closed-form Z."""
    from numpyro_hjb.annealing.cmcd import init_cmcd_control, make_controlled_program
    from numpyro_hjb.annealing.smc import MassPath

    def parts(p, x):
        log_b = p.log_density(x)
        return log_b, gaussian_log_rho(x) - log_b

    program = make_controlled_program(parts, lambda p, k, n: p.sample(k, n), 64, 256, 0.5,
                                      KernelParams(1, 3, 0.65, 1.0), 2)
    base = GaussianBase.from_chol(jnp.zeros(2), 2.0 * jnp.eye(2))
    mass = MassPath(jnp.ones(2) / 4.0, 1.0 / SD**2, jnp.zeros(()))
    ctrl = init_cmcd_control(jax.random.PRNGKey(3), 2, (16, 16))
    ctrl = jax.tree_util.tree_map(
        lambda p: p + perturb * jax.random.normal(jax.random.PRNGKey(4), p.shape), ctrl)
    betas = jnp.linspace(0.0, 1.0, 9) ** 2
    out = program(base, mass, ctrl, betas, jnp.asarray(h), jax.random.PRNGKey(5))
    z = np.exp(np.asarray(out.log_z, np.float64) - LOG_Z)
    assert np.all(np.isfinite(z))
    assert abs(z.mean() - 1.0) < 4 * z.std(ddof=1) / math.sqrt(z.size) + 1e-3, (z.mean(), z.std())


def test_increment_hits_the_conditional_ess():
    log_w = jnp.full((500,), -jnp.log(500.0))
    ell = jax.random.normal(jax.random.PRNGKey(0), (500,)) * 3.0
    delta = next_increment(log_w, ell, jnp.zeros(()), 0.9)
    w = jnp.exp(delta * ell)
    cess = float(jnp.sum(w) ** 2 / (500 * jnp.sum(w**2)))
    assert 0 < float(delta) < 1 and cess == pytest.approx(0.9, abs=1e-3)
    # the whole remaining step when it keeps the conditional ESS
    assert float(next_increment(log_w, 0.0 * ell + 1.0, jnp.asarray(0.3), 0.9)) == pytest.approx(0.7)


def test_systematic_resampling_frequencies():
    log_w = jnp.log(jnp.array([0.1, 0.6, 0.3]))
    idx = np.asarray(systematic_indices(jax.random.PRNGKey(0), log_w, 10_000))
    np.testing.assert_allclose(np.bincount(idx, minlength=3) / 10_000, [0.1, 0.6, 0.3], atol=1e-3)


def test_gaussian_from_weighted_particles():
    x = jax.random.normal(jax.random.PRNGKey(0), (20_000, 2)) * jnp.array([1.0, 3.0]) + 2.0
    g = gaussian_from_particles(x, None, widen=2.0)
    np.testing.assert_allclose(g.mean, [2.0, 2.0], atol=0.05)
    np.testing.assert_allclose(np.diag(np.asarray(g.chol) @ np.asarray(g.chol).T), [4.0, 36.0],
                               rtol=0.05)


Y = np.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6], np.float32)


def normal_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("n", 6):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_prior_base_is_the_normalised_prior():
    """log b = log prior (unconstrained, Jacobian included), so log rho - log b is the log
    likelihood, and its draws are the prior's."""
    target = make_target(normal_model, y=Y)
    base = prior_base(target)
    x = base.sample(jax.random.PRNGKey(0), 4000)
    z = jax.vmap(target.unravel)(x)
    assert abs(float(jnp.mean(z["mu"]))) < 0.1 and abs(float(jnp.std(z["mu"])) - 2.0) < 0.1
    zi = target.unravel(x[0])
    sigma = jnp.exp(zi["sigma"])
    lik = jnp.sum(dist.Normal(zi["mu"], sigma).log_prob(Y))
    np.testing.assert_allclose(float(target.log_density(x[0]) - base.log_density(x[0])),
                               float(lik), rtol=1e-5)
    log_b, ell = base.parts(x[0])
    np.testing.assert_allclose([float(log_b), float(ell)],
                               [float(base.log_density(x[0])), float(lik)], rtol=1e-5)
    assert prior_base(Target.from_log_density(gaussian_log_rho, 2)) is None


@pytest.fixture(scope="module")
def fitted():
    return fit(normal_model, engine="scld", model_kwargs={"y": Y}, progress_bar=False,
               time_budget=4.0, num_particles=256, num_mcmc_steps=2)


def quadrature_log_z() -> float:
    """log Z of ``normal_model`` with ``Y`` by 2-D trapezoidal quadrature."""
    from scipy import integrate, stats

    def joint(mu, sigma):
        return np.exp(stats.norm.logpdf(mu, 0, 2) + stats.halfnorm.logpdf(sigma, scale=1)
                      + stats.norm.logpdf(Y[:, None, None], mu, sigma).sum(0))

    mus = np.linspace(-3, 3, 601)
    sigmas = np.linspace(1e-3, 3, 600)
    grid = joint(mus[:, None], sigmas[None, :])
    return float(np.log(integrate.trapezoid(integrate.trapezoid(grid, sigmas, axis=1), mus)))


def test_fit_draws_and_evidence(fitted):
    """A conjugate-free model with a quadrature answer: log Z within error bars, draws per
    site with the right support."""
    log_z = quadrature_log_z()
    ev = numpyro_hjb.log_evidence(fitted)
    assert abs(ev.log_z - log_z) < 4 * ev.log_z_se + 0.01, (ev, log_z)
    assert "independent particle systems" in ev.method
    draws = fitted.sample(jax.random.PRNGKey(3), 500)
    assert set(draws.samples) == {"mu", "sigma"} and bool(jnp.all(draws.samples["sigma"] > 0))
    assert abs(float(jnp.mean(draws.samples["mu"])) - float(np.mean(Y))) < 0.2
    assert fitted.info["base"] in ("prior", "fitted") and fitted.info["broad_base"] == "prior"


def test_bad_settings():
    with pytest.raises(TypeError, match="time_budget"):
        fit(normal_model, engine="scld", model_kwargs={"y": Y}, time_budget="10")
    with pytest.raises(TypeError, match="cess_target"):
        fit(normal_model, engine="scld", model_kwargs={"y": Y}, cess_target=1.5)
    with pytest.raises(TypeError, match="time_budgt"):
        fit(normal_model, engine="scld", model_kwargs={"y": Y}, time_budgt=3.0)


def test_a_fit_under_x64_after_one_without():
    """A user who turns x64 on between two fits of the same model (float32 data) gets a
    second fit and an MCMC run (the programs are cached by dtypes as well as shapes, and the
    engine runs in one float type), not a dtype error."""
    settings = dict(num_particles=64, num_systems=4, control="off", num_mcmc_steps=1,
                    refinements=1, progress_bar=False, model_kwargs={"y": Y})
    first = fit(normal_model, engine="scld", rng_key=jax.random.PRNGKey(0), **settings)
    with jax.enable_x64(True):
        second = fit(normal_model, engine="scld", rng_key=jax.random.PRNGKey(0), **settings)
        settings.pop("model_kwargs")
        mcmc = MCMC(SCLD(normal_model, **settings), num_warmup=5, num_samples=20,
                    progress_bar=False)
        mcmc.run(jax.random.PRNGKey(1), y=Y)
    assert np.isfinite(first.info["log_z"]) and np.isfinite(second.info["log_z"])
    assert np.all(np.isfinite(mcmc.get_samples()["mu"]))


def test_a_fit_with_a_frozen_schedule():
    """schedule="frozen": the final systems follow one scout's temperatures (every system
    takes the same number of steps) and log Z agrees with quadrature."""
    result = fit(normal_model, engine="scld", model_kwargs={"y": Y}, progress_bar=False,
                 rng_key=jax.random.PRNGKey(2), num_particles=128, num_systems=32,
                 control="off", schedule="frozen")
    ev = numpyro_hjb.log_evidence(result)
    assert abs(ev.log_z - quadrature_log_z()) < 4 * ev.log_z_se + 0.01, ev
    # the mean number of temperatures over the last call's systems is a whole number
    assert float(result.info["num_temperatures"]).is_integer(), result.info["num_temperatures"]
