"""Training losses of the learned control (docs/design.md s.3).

Both take the path log weight log w = log dP_target / dP_F of :mod:`numpyro_hjb.diffusion`:

* ``kl_loss``: -E_F[log w] (reverse KL up to log Z; the ELBO with the sign flipped),
  gradients through the simulated trajectory (reparametrisation).
* ``lv_loss``: Var(log w) over trajectories from a stop-gradient copy of the current policy;
  states are detached and log w is re-evaluated with gradients through the F_k densities
  only, so nothing is backpropagated through the solver. Zero at the optimum, for any
  sampling policy.

Non-finite log weights, and those further than ``max_log_weight_dev`` from the batch
median, are masked out of the loss (and counted).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..diffusion import path_log_weights, simulate_log_weights, simulate_paths
from .problem import Problem

__all__ = ["kl_loss", "lv_loss", "LOSSES", "masked_mean"]

Array = jax.Array


def _mask(log_w: Array, max_dev: float) -> Array:
    finite = jnp.isfinite(log_w)
    med = jnp.nanmedian(jnp.where(finite, log_w, jnp.nan))
    return finite & (jnp.abs(log_w - med) < max_dev)


def masked_mean(x: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def kl_loss(params, rng_key: Array, problem: Problem) -> tuple[Array, tuple[Array, Array]]:
    """-mean(log w) over fresh trajectories of F_theta; returns (loss, (log_w, mask))."""

    _, log_w = simulate_log_weights(
        rng_key, problem.scheme, problem.control(params), problem.log_density,
        problem.batch_size, problem.dim,
    )
    mask = _mask(log_w, problem.max_log_weight_dev)
    return -masked_mean(log_w, mask) / problem.dim, (jax.lax.stop_gradient(log_w), mask)


def lv_loss(
    params,
    rng_key: Array,
    problem: Problem,
    target_weight: Array | float = 0.0,
) -> tuple[Array, tuple[Array, Array]]:
    """Var_Q(log w) on detached trajectories of the stop-gradient policy; (loss, (log_w, mask)).

    The log-variance divergence holds for any reference path measure Q (Richter & Berner):
    Var_Q(log dP/dF) = 0 iff F = P on the support of Q. ``target_weight`` = lambda picks
    Q = (1 - lambda) F + lambda P, estimated from the F-paths with the detached weights
    v_i = (1 - lambda) / N + lambda w_i / sum_j w_j. lambda = 0 is the plain on-policy loss;
    lambda > 0 moves the loss's attention from the paths F over-samples (very low log w,
    irrelevant to the ESS) to those it under-samples (high log w, which set the ESS).
    """
    ref_params = jax.lax.stop_gradient(params)

    def ref_control(y, t):
        base = problem.base_fn(y, t)
        return problem.net_fn(ref_params, y, t, base), base

    ys, _, bases = simulate_paths(
        rng_key,
        problem.scheme,
        ref_control,
        problem.batch_size,
        problem.dim,
        has_aux=True,
    )
    ys, bases = jax.lax.stop_gradient((ys, bases))
    # Paths that left the floating-point range are zeroed and masked: a NaN anywhere in the
    # re-evaluation would poison the gradient even under a zero cotangent.
    ok = jnp.all(jnp.isfinite(ys), axis=(0, 2)) & jnp.all(jnp.isfinite(bases), axis=(0, 2))
    ys = jnp.where(ok[None, :, None], ys, 0.0)
    bases = jnp.where(ok[None, :, None], bases, 0.0)
    us = jax.vmap(lambda y, t, b: problem.net_fn(params, y, t, b))(
        ys[:-1], problem.scheme.times[:-1], bases
    )
    log_w, _ = path_log_weights(problem.scheme, ys, us, problem.log_density)
    log_w = jnp.where(ok, log_w, jnp.nan)
    mask = _mask(log_w, problem.max_log_weight_dev)
    log_w_safe = jnp.where(mask, log_w, 0.0)
    lw_det = jax.lax.stop_gradient(jnp.where(mask, log_w, -jnp.inf))
    snis = jax.nn.softmax(lw_det)
    n_ok = jnp.maximum(jnp.sum(mask), 1)
    v = jnp.where(mask, (1.0 - target_weight) / n_ok + target_weight * snis, 0.0)
    mean = jnp.sum(v * log_w_safe)
    var = jnp.sum(v * (log_w_safe - mean) ** 2)
    return var / problem.dim, (jax.lax.stop_gradient(log_w), mask)


LOSSES = {"kl": kl_loss, "lv": lv_loss}
