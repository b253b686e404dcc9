"""Warm start of the learned control from particles of the target (docs/design.md s.2, s.3).

Given particles x0 ~ rho (here from adaptive tempered SMC, :mod:`numpyro_hjb.smc`), the
network u_theta is regressed on an unbiased estimate of the optimal control of the OU
schemes, u* = grad log p_t(y) + y (reference N(0, I); for a reference N(0, s^2 I) the last
term is y / s^2 and sigma^2 below is s^2 (1 - a^2)). With y = a x0 + sigma eps (a = e^{-t},
sigma^2 = 1 - a^2)

    grad log p_t(y) = E[kappa grad log rho(X_0) / a - (1 - kappa) eps / sigma | X_t = y]

for any kappa in [0, 1]: the target score identity (kappa = 1) and denoising score matching
(kappa = 0). kappa = a^2 keeps the variance bounded at both ends of the time range. Times are
drawn from the step times of the grid, and the squared error of step k is weighted by its
path-KL rate c_k^2 / vF_k (normalised to mean 1). The LV loss then starts from this network
instead of from the reference process.

PIS (Brownian reference sigma B_s from 0, horizon T, t = T - s the time left) has the optimal
control u* = grad log h_t, h_t(y) = E[f(y + sigma sqrt(t) xi)], f = rho / N(0, sigma^2 T I).
Under the optimal path measure X_T ~ rho / Z and X_s given X_T is the Brownian bridge from 0,
y = (s / T) x0 + sigma sqrt(s t / T) eps, and the law of X_T given X_s = y is proportional to
f(z) N(z; y, sigma^2 t), so

    u*(y, t) = E[kappa (grad log rho(X_T) + X_T / (sigma^2 T)) + (1 - kappa) (X_T - y) / (sigma^2 t) | X_s = y]

(target score identity through the convolution, and Tweedie's formula). kappa = s / T makes
the second term (X_T - y) / (sigma^2 T), bounded at both ends.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from ..diffusion import ou_transition
from ..optim import adam_cosine
from .problem import Problem

__all__ = [
    "brownian_control_targets",
    "control_regression_loss",
    "control_targets",
    "regress_control",
    "regress_on_particles",
]


def _draw(rng_key: jax.Array, step_times: jax.Array, log_density, particles: jax.Array,
          batch_size: int):
    """Step indices k, their times t_k (B, 1), particles x, noise eps and the (finite) target
    score at x: the ingredients of both estimators."""
    k_t, k_x, k_e = jax.random.split(rng_key, 3)
    ks = jax.random.randint(k_t, (batch_size,), 0, step_times.shape[0])
    x = particles[jax.random.randint(k_x, (batch_size,), 0, particles.shape[0])]
    eps = jax.random.normal(k_e, x.shape, x.dtype)
    score = jax.vmap(jax.grad(log_density))(x)
    return ks, step_times[ks][:, None], x, eps, jnp.where(jnp.isfinite(score), score, 0.0)


def control_targets(rng_key: jax.Array, step_times: jax.Array, log_density, particles: jax.Array,
                    batch_size: int, stationary_var: float = 1.0
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A batch of (step index k, y ~ p_{t_k}, unbiased estimate of u*(y, t_k)) from particles,
    for the OU reference with stationary law N(0, stationary_var I): y = a x0 + sigma eps with
    sigma^2 = stationary_var (1 - a^2), and u* = grad log p_t(y) + y / stationary_var."""
    ks, t, x0, eps, score0 = _draw(rng_key, step_times, log_density, particles, batch_size)
    a, var = ou_transition(t)
    sigma = jnp.sqrt(stationary_var * var)
    y = a * x0 + sigma * eps
    kappa = a**2
    return ks, y, kappa * score0 / a - (1.0 - kappa) * eps / sigma + y / stationary_var


def brownian_control_targets(rng_key: jax.Array, step_times: jax.Array, log_density,
                             particles: jax.Array, batch_size: int, sigma: float,
                             horizon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same as :func:`control_targets` for the PIS reference (sigma, horizon): a batch of
    (k, y ~ optimal marginal at t_k, unbiased estimate of u*(y, t_k)) from particles."""
    ks, t, x_end, eps, score = _draw(rng_key, step_times, log_density, particles, batch_size)
    s = horizon - t
    y = (s / horizon) * x_end + sigma * jnp.sqrt(s * t / horizon) * eps
    var_end = sigma**2 * horizon
    kappa = s / horizon
    return ks, y, kappa * (score + x_end / var_end) + (x_end - y) / var_end


def control_regression_loss(params, rng_key: jax.Array, problem: Problem, sample_targets,
                            batch_size: int) -> jax.Array:
    """Path-KL-weighted squared error of u_theta against regression targets
    ``sample_targets(key, batch_size) -> (step indices k, y, u*)``."""
    times = problem.scheme.times[:-1]
    kl_rate = problem.scheme.gen_control**2 / problem.scheme.gen_var
    kl_rate = kl_rate / jnp.mean(kl_rate)
    ks, y, u_star = sample_targets(rng_key, batch_size)

    def control(yi, ti):
        yi = yi[None]
        return problem.net_fn(params, yi, ti, problem.base_fn(yi, ti))[0]

    u = jax.vmap(control)(y, times[ks])
    return jnp.mean(kl_rate[ks] * jnp.sum((u - u_star) ** 2, axis=-1))


def regress_control(params, rng_key: jax.Array, problem: Problem, sample_targets,
                    num_iterations: int, batch_size: int = 512, learning_rate: float = 3e-3,
                    final_learning_rate: float = 1e-4, grad_clip: float = 1.0):
    """Adam (cosine-decayed, global-norm clipped) on :func:`control_regression_loss`, one
    jit-compiled ``lax.scan``; returns (params, loss curve)."""
    optimizer = adam_cosine(learning_rate, final_learning_rate, num_iterations, grad_clip)

    def step(carry, key):
        params, opt_state = carry
        value, grads = jax.value_and_grad(control_regression_loss)(
            params, key, problem, sample_targets, batch_size)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    @jax.jit
    def run(params, key):
        keys = jax.random.split(key, num_iterations)
        (params, _), curve = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return params, curve

    return run(params, rng_key)


def regress_on_particles(params, rng_key: jax.Array, problem: Problem, particles: jax.Array,
                         num_iterations: int, batch_size: int = 512,
                         pis_sigma: float | None = None, **optimizer_settings):
    """:func:`regress_control` on the unbiased control estimates of :func:`control_targets`
    (OU schemes), or of :func:`brownian_control_targets` when ``pis_sigma`` is given (PIS)."""
    particles = jax.lax.stop_gradient(jnp.asarray(particles, jnp.float32))
    step_times = problem.scheme.times[:-1]
    if pis_sigma is None:
        targets = partial(control_targets, stationary_var=float(problem.scheme.final_var))
    else:
        targets = partial(brownian_control_targets, sigma=float(pis_sigma),
                          horizon=float(problem.scheme.times[0]))

    def sample_targets(key, n):
        return targets(key, step_times, problem.log_density, particles, n)

    return regress_control(params, rng_key, problem, sample_targets, num_iterations, batch_size,
                           **optimizer_settings)
