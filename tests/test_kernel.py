"""NumPyro MCMC drop-in: MCMC(DIS(model, ...)) (numpyro_hjb.mcmc)."""


import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from numpyro_hjb.api import FitResult
from numpyro_hjb.diffusion import bridge_log_weights, ou_scheme, simulate_log_weights
from numpyro_hjb.mcmc import DDS, DIS, TTHJB, DiffusionKernel, IMHState, imh_init, imh_step, make_refine_fn


def batched(propose_one):
    """A one-proposal function (key -> (x, log_w)) as the batch proposal the IMH pool uses."""
    return lambda key, n: jax.vmap(propose_one)(jax.random.split(key, n))

# Identical computations (e.g. the IMH step of each sequential chain) compile once.

Y = jnp.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6])
TINY = dict(num_iterations=50, batch_size=64, num_steps=32, progress_bar=False)


def model(y=None):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    numpyro.deterministic("mu_twice", 2.0 * mu)
    with numpyro.plate("n", 6):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture(scope="module")
def vectorized():
    kernel = DIS(model, whitening="laplace", **TINY)
    mcmc = MCMC(
        kernel, num_warmup=10, num_samples=40, num_chains=2,
        chain_method="vectorized", progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), y=Y)
    return kernel, mcmc


def test_samples_are_constrained_with_deterministic_sites(vectorized):
    _, mcmc = vectorized
    samples = mcmc.get_samples()
    assert set(samples) == {"sigma", "mu", "mu_twice"}
    assert all(v.shape == (80,) for v in samples.values())
    assert bool(jnp.all(samples["sigma"] > 0))
    np.testing.assert_allclose(samples["mu_twice"], 2 * samples["mu"], rtol=1e-6)
    grouped = mcmc.get_samples(group_by_chain=True)
    assert grouped["mu"].shape == (2, 40)


def test_extra_fields_and_acceptance(vectorized):
    _, mcmc = vectorized
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert {"log_weight", "accept_prob", "accepted", "diverging"} <= set(extra)
    acc = np.asarray(extra["accept_prob"])
    assert acc.shape == (2, 40)
    assert np.all((acc >= 0) & (acc <= 1))
    assert np.all(np.isfinite(np.asarray(extra["log_weight"])))
    # a rejected step keeps the weight of the current state
    lw, accepted = np.asarray(extra["log_weight"]), np.asarray(extra["accepted"])
    stay = ~accepted[:, 1:]
    assert np.all(lw[:, 1:][stay] == lw[:, :-1][stay])


def test_print_summary(vectorized, capsys):
    _, mcmc = vectorized
    mcmc.print_summary()
    out = capsys.readouterr().out
    assert "sigma" in out and "mu" in out and "Number of divergences: 0" in out


def test_sequential_chains_reuse_the_fit(vectorized):
    kernel, _ = vectorized
    fitted = kernel.fit_result
    assert isinstance(fitted, FitResult)
    mcmc = MCMC(kernel, num_warmup=5, num_samples=20, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), y=Y)  # same data object: no refit
    assert kernel.fit_result is fitted
    assert mcmc.get_samples(group_by_chain=True)["sigma"].shape == (2, 20)


def test_prefitted_kernel_jit_model_args_and_refinement(vectorized):
    kernel, _ = vectorized
    refined = DIS(fit_result=kernel.fit_result, refine_steps=2, refine="mala",
                  refine_step_size=0.05)
    mcmc = MCMC(refined, num_warmup=5, num_samples=30, progress_bar=False,
                jit_model_args=True)
    mcmc.run(jax.random.PRNGKey(2), y=Y, extra_fields=("refine_accept_prob",))
    samples = mcmc.get_samples()
    assert samples["mu_twice"].shape == (30,)
    assert bool(jnp.all(samples["sigma"] > 0))
    racc = np.asarray(mcmc.get_extra_fields()["refine_accept_prob"])
    assert np.all((racc >= 0) & (racc <= 1))


def test_imh_exact_proposal_always_accepts():
    """With q = pi the path weights are all equal to Z, so min(1, w'/w) = 1."""
    def propose(key):
        x = jax.random.normal(key, (2,))
        return x, jnp.asarray(0.3)

    to_z = lambda x: {"x": x}  # noqa: E731
    propose = batched(propose)
    state = imh_init(propose, to_z, jax.random.PRNGKey(0), num_init=4, pool_size=3)
    assert isinstance(state, IMHState)
    step = jax.jit(lambda s: imh_step(propose, to_z, s))
    for _ in range(5):
        state = step(state)
        assert float(state.accept_prob) == 1.0 and bool(state.accepted)
    assert int(state.i) == 5


@pytest.mark.parametrize("num_proposals", [1, 4])
def test_imh_is_exact_for_a_mismatched_proposal(num_proposals):
    """Proposal N(0, 1.5^2), target N(1, 1): the IMH (1) and i-SIR (4) chain mean and
    variance match."""
    def propose(key):
        x = 1.5 * jax.random.normal(key, ())
        log_w = -0.5 * (x - 1.0) ** 2 + 0.5 * (x / 1.5) ** 2 + jnp.log(1.5)
        return x[None], log_w

    def nan_propose(key):  # a failing sampler: flagged and rejected
        x, lw = propose(key)
        return x, jnp.where(jax.random.uniform(key) < 0.1, jnp.nan, lw)

    to_z = lambda x: {"x": x}  # noqa: E731
    nan_propose = batched(nan_propose)

    def run(key):
        s0 = imh_init(nan_propose, to_z, key, num_init=8, pool_size=64)
        def body(s, _):
            s = imh_step(nan_propose, to_z, s, num_proposals=num_proposals)
            return s, (s.x[0], s.diverging, s.accepted, s.log_weight)
        return jax.lax.scan(body, s0, None, length=4000)[1]

    xs, div, acc, lw = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(3), 4))
    xs = np.asarray(xs)[:, 100:]
    assert abs(xs.mean() - 1.0) < 0.1 and abs(xs.var() - 1.0) < 0.15
    assert np.asarray(div).any() and np.all(np.isfinite(np.asarray(lw)))  # never chosen
    if num_proposals == 1:
        assert not np.asarray(acc)[np.asarray(div)].any()
    else:  # i-SIR moves more often than IMH (0.56 here) on the same proposal
        assert float(np.mean(acc)) > 0.65, float(np.mean(acc))


def test_local_moves_with_bridge_weights_keep_the_chain_exact():
    """IMH from an untrained diffusion proposal, alternated with MALA moves of the end point
    and a fresh bridge (Metropolis-within-Gibbs on path space), on 0.25 N(-2, 0.3^2) +
    0.75 N(2, 0.3^2). MALA cannot cross between the modes, so the mode weights come from the
    IMH part; keeping the old path weight after a MALA move biases them (0.79)."""

    def log_rho(x):
        comp = jnp.stack([jnp.log(0.25) - 0.5 * ((x[0] + 2) / 0.3) ** 2,
                          jnp.log(0.75) - 0.5 * ((x[0] - 2) / 0.3) ** 2])
        return jax.scipy.special.logsumexp(comp)

    def control(y, t):
        return 0.5 * jnp.tanh(y) + 0.2 * y

    scheme = ou_scheme(3.0, 8, "ei")

    def propose(key, n):
        return simulate_log_weights(key, scheme, control, log_rho, n, 1)

    def bridge(key, x):
        return bridge_log_weights(key, scheme, control, log_rho, x[None])[0]

    refine = make_refine_fn(log_rho, 1, "mala", num_steps=3, step_size=0.2)
    to_z = lambda x: {"x": x}  # noqa: E731

    def run(key):
        s0 = imh_init(propose, to_z, key, num_init=8, refine_fn=refine, bridge_fn=bridge)

        def body(s, _):
            s = imh_step(propose, to_z, s, refine_fn=refine, bridge_fn=bridge)
            return s, (s.x[0], s.accepted)

        return jax.lax.scan(body, s0, None, length=3000)[1]

    xs, acc = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(4), 8))
    xs = np.asarray(xs)[:, 100:]
    assert 0.05 < float(np.mean(acc)) < 0.95  # both kinds of move are active
    assert abs(float(np.mean(xs > 0)) - 0.75) < 0.03
    np.testing.assert_allclose(xs[xs > 0].std(), 0.3, atol=0.02)


def test_bad_arguments():
    with pytest.raises(TypeError, match="unknown settings"):
        DIS(model, num_iteration=5)
    with pytest.raises(TypeError, match="num_iterations"):
        DIS(model, num_iterations=5.5)
    with pytest.raises(TypeError, match="model_kwargs"):
        DIS(model, y=Y)
    with pytest.raises(ValueError, match="refine"):
        DIS(model, refine="nuts")
    with pytest.raises(ValueError, match="refine_steps"):
        DDS(model, refine_steps=-1)
    with pytest.raises(ValueError, match="proposals_per_step"):
        DDS(model, proposals_per_step=0)
    with pytest.raises(TypeError, match="model"):
        DIS("not a model")
    with pytest.raises(TypeError, match="fit_result"):
        DIS(model, fit_result={"params": None})
    assert TTHJB(model).engine == "tt" and DDS(model).engine == "dds"


def test_wrong_engine_fit_result(vectorized):
    kernel, _ = vectorized
    with pytest.raises(ValueError, match="engine"):
        DDS(fit_result=kernel.fit_result)


PARALLEL_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC
from numpyro_hjb.mcmc import DIS

def model():
    numpyro.sample("x", dist.Normal(jnp.array([1.0, -1.0]), 0.5).to_event(1))

kernel = DIS(model, num_iterations=50, batch_size=64, num_steps=32, progress_bar=False)
mcmc = MCMC(kernel, num_warmup=10, num_samples=50, num_chains=2, chain_method="parallel",
            progress_bar=False)
mcmc.run(jax.random.PRNGKey(0))
assert jax.device_count() == 2
assert mcmc.get_samples(group_by_chain=True)["x"].shape == (2, 50, 2)
print("OK")
"""


@pytest.mark.slow
def test_parallel_chains_fit_outside_pmap():
    """chain_method="parallel": init is traced under pmap; the fit runs outside the trace."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK" in out.stdout


def test_engine_without_traceable_propose_uses_a_host_callback(vectorized):
    """An engine whose propose cannot be traced (e.g. the float64 tt engine) still runs: the
    proposal pool is refilled through a host callback."""
    import dataclasses

    from numpyro_hjb.base import ENGINES, get_engine, register_engine

    kernel, _ = vectorized
    host_engine = dataclasses.replace(get_engine("dis"), name="dis-host", traceable=False)
    register_engine(host_engine)
    try:
        fitted = kernel.fit_result
        fresh = FitResult("dis-host", fitted.target, fitted.state, fitted.settings)
        mcmc = MCMC(DiffusionKernel(engine="dis-host", fit_result=fresh, num_init_proposals=1,
                                    pool_size=4),
                    num_warmup=0, num_samples=6, num_chains=2, chain_method="vectorized",
                    progress_bar=False)
        mcmc.run(jax.random.PRNGKey(4), y=Y)
    finally:
        ENGINES.pop("dis-host")
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["sigma"].shape == (2, 6) and bool(jnp.all(samples["sigma"] > 0))


def test_changed_data_trigger_a_refit():
    """Data changed in place are seen (compared by content, as NUTS re-reads them)."""
    y = np.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6])
    kernel = DIS(model, **TINY)
    mcmc = MCMC(kernel, num_warmup=0, num_samples=5, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), y=y)
    first = kernel.fit_result
    mcmc.run(jax.random.PRNGKey(0), y=y)
    assert kernel.fit_result is first
    y += 10.0
    mcmc.run(jax.random.PRNGKey(0), y=y)
    assert kernel.fit_result is not first
