"""Adaptive tempered SMC (BlackJAX): particles and log Z of an unnormalised density.

Used as a peer in the benchmarks and to warm-start the learned control
(:mod:`numpyro_hjb.control.warm_start`). The path runs from the prior N(0, sigma^2 I) to
rho through rho^beta N(0, sigma^2 I)^{1 - beta}; the temperatures beta come from BlackJAX's
ESS solver, the moves are HMC with the particles' variance as inverse mass matrix and the
step size rescaled by exp(mean acceptance - target) before each move. log Z is the sum of
the log-likelihood increments (likelihood rho / prior, normalised prior).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["SMC_DEFAULTS", "tempered_smc_program"]

#: Default settings (those of the benchmark peer in docs/lab/benchmarks.md).
SMC_DEFAULTS = {
    "num_particles": 2000,
    "target_ess": 0.5,
    "num_mcmc_steps": 10,
    "num_integration_steps": 5,
    "target_acceptance": 0.65,
}


def tempered_smc_program(
    log_density: Callable[[jax.Array], jax.Array], dim: int, init_scale: float,
    settings: dict | None = None,
    prior: tuple[Callable, Callable] | None = None,
) -> Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """A jit-compiled ``run(rng_key) -> (particles (N, d), log_z, num_temperatures)``; the
    particles are equally weighted (resampled by the final weights).

    The path starts from N(0, init_scale^2 I), or, with ``prior=(parts, sample)``, from a
    normalised prior: ``parts(x) -> (log prior, log likelihood)`` at one point and
    ``sample(key, n) -> (n, d)`` (the likelihood is then what is tempered)."""
    import blackjax
    from blackjax.smc import adaptive_tempered, resampling

    s = {**SMC_DEFAULTS, **(settings or {})}
    d, sigma = int(dim), float(init_scale)
    if sigma <= 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    log_norm = -d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)

    def log_prior(x):
        if prior is not None:
            return prior[0](x)[0]
        return -0.5 * jnp.sum(x**2) / sigma**2 + log_norm

    def log_lik(x):
        if prior is not None:
            return prior[0](x)[1]
        return log_density(x) - log_prior(x)

    kernel = adaptive_tempered.build_kernel(
        log_prior, log_lik, blackjax.hmc.build_kernel(), blackjax.hmc.init,
        resampling.systematic, s["target_ess"],
    )

    def run(rng_key):
        k_init, k_loop = jax.random.split(rng_key)
        if prior is not None:
            x0 = prior[1](k_init, s["num_particles"])
        else:
            x0 = sigma * jax.random.normal(k_init, (s["num_particles"], d))
        state0 = adaptive_tempered.init(x0)
        step0 = jnp.asarray(0.5 * sigma * d**-0.25)

        def cond(carry):
            return carry[0].tempering_param < 1.0

        def body(carry):
            state, step, key, log_z, n = carry
            key, k = jax.random.split(key)
            inv_mass = jnp.var(state.particles, axis=0) + 1e-6
            params = {
                "step_size": (step / jnp.sqrt(jnp.mean(inv_mass)))[None],
                "inverse_mass_matrix": inv_mass[None],
                "num_integration_steps": jnp.array([s["num_integration_steps"]]),
            }
            state, info = kernel(k, state, s["num_mcmc_steps"], params)
            acc = jnp.mean(info.update_info.acceptance_rate)
            step = step * jnp.exp(acc - s["target_acceptance"])
            return state, step, key, log_z + info.log_likelihood_increment, n + 1

        state, _, key, log_z, n = jax.lax.while_loop(
            cond, body, (state0, step0, k_loop, jnp.zeros(()), jnp.zeros((), jnp.int32))
        )
        # The last step reweights the moved particles to beta = 1; the weights are not
        # uniform, so resample before returning equally weighted draws.
        idx = resampling.systematic(key, state.weights, s["num_particles"])
        return state.particles[idx], log_z, n

    return jax.jit(run)
