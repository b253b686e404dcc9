"""Controlled Langevin transitions along the annealing path (CMCD: Vargas, Padhy, Blessing and
Nuesken 2024), their incremental weights, and the fixed-schedule particle system that uses
them (docs/design.md s.3b).

On the path pi_k = b e^{beta_k ell} with step size h and a diagonal preconditioner M (the
diagonal of the step's inverse mass matrix; M = I is the plain form), the transport from beta_k to
beta_{k+1} and its weight are

    F_k(x' | x) = N(x';  x  + h M (grad log pi_k(x)      + u(x, beta_k)),     2 h M)
    B_k(x | x') = N(x ;  x' + h M (grad log pi_{k+1}(x') - u(x', beta_{k+1})), 2 h M)
    log w_k     = log pi~_{k+1}(x') - log pi~_k(x) + log B_k(x | x') - log F_k(x' | x),

and E[prod_k w_k] = Z_K / Z_0 for every control u, schedule and step sizes, because
pi~_k(x) F_k(x' | x) w_k = pi~_{k+1}(x') B_k(x | x') integrates to Z_{k+1} over (x, x').
With u = 0 these are unadjusted Langevin moves (annealed importance sampling); with h = 0
the transport is the identity and log w_k = (beta_{k+1} - beta_k) ell(x) (tempered SMC).

The control u_theta(x, beta) is the network of :mod:`numpyro_hjb.control.network` with the
time feature beta and the score feature grad log pi_k (zero output layers: u = 0 at start).
Training minimises, over trajectories of the current policy with states held fixed, the
weighted variance of each step's log w_k (log-variance loss), or the reverse KL through the
log-derivative trick; nothing is differentiated through resampling or the MCMC moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..control.network import apply_control, init_control
from ..sharding import jit_over_particles
from .smc import (
    KernelParams,
    MassPath,
    init_particles,
    rejuvenate,
    resample_if_needed,
    reweight,
)

__all__ = [
    "ControlledOutput",
    "init_cmcd_control",
    "make_controlled_program",
    "step_losses",
    "transport_log_weight",
]

Array = jax.Array
NUM_TIME_FEATURES = 8


def init_cmcd_control(rng_key: Array, dim: int, hidden: tuple[int, ...] = (32, 32)) -> dict:
    """Zero-output control network parameters (the untrained control is u = 0)."""
    return init_control(rng_key, dim, hidden, NUM_TIME_FEATURES)


def control_fn(params: dict | None, x: Array, beta: Array, score: Array) -> Array:
    """u_theta(x, beta) for a batch x (N, d), with the score feature (N, d); 0 without
    parameters."""
    if params is None:
        return jnp.zeros_like(x)
    tamed = score / (1.0 + jnp.abs(score))
    return apply_control(params, x, beta, tamed, 1.0, NUM_TIME_FEATURES)


def _gauss(x: Array, mean: Array, chol_2hm: Array, log_det: Array) -> Array:
    """log N(x; mean, 2hM) per row, given the square root of the diagonal 2hM."""
    z = (x - mean) / chol_2hm
    d = x.shape[-1]
    return -0.5 * jnp.sum(z**2, -1) - log_det - 0.5 * d * jnp.log(2 * jnp.pi)


def transport_log_weight(
    params: dict | None, x: Array, x_new: Array, beta: Array, beta_next: Array, h: Array,
    inv_mass: Array, parts: Callable[[Array], tuple[Array, Array]],
) -> Array:
    """log w_k (N,) of the CMCD transport x -> x_new (module docstring), differentiable in
    the control parameters with the states fixed."""
    def log_pi(v, b):
        lb, ell = parts(v)
        return lb + b * ell

    lp_x, g_x = jax.vmap(jax.value_and_grad(lambda v: log_pi(v, beta)))(x)
    lp_y, g_y = jax.vmap(jax.value_and_grad(lambda v: log_pi(v, beta_next)))(x_new)
    g_x = jnp.where(jnp.isfinite(g_x), g_x, 0.0)
    g_y = jnp.where(jnp.isfinite(g_y), g_y, 0.0)
    inv_mass = diagonal(inv_mass)
    u_x = control_fn(params, x, beta, g_x)
    u_y = control_fn(params, x_new, beta_next, g_y)
    chol, log_det = _noise_factor(h, inv_mass)
    mean_f = x + h * inv_mass * (g_x + u_x)
    mean_b = x_new + h * inv_mass * (g_y - u_y)
    return lp_y - lp_x + _gauss(x, mean_b, chol, log_det) - _gauss(x_new, mean_f, chol, log_det)


def _noise_factor(h: Array, inv_mass: Array) -> tuple[Array, Array]:
    """The (diagonal) square root of 2 h M and its log determinant's half."""
    c = jnp.sqrt(2.0 * h * inv_mass)
    return c, jnp.sum(jnp.log(c))


def diagonal(inv_mass: Array) -> Array:
    """The transports precondition with the diagonal of the inverse mass matrix: any M gives
    exact weights, and a diagonal one keeps the transports' densities O(d) (batched dense
    triangular solves made the training gradient impractically slow to compile on CPU)."""
    return inv_mass if inv_mass.ndim == 1 else jnp.diag(inv_mass)


def _forward_kernel(params, x, beta, h, inv_mass, parts):
    """(mean, diagonal noise factor, its log det) of F_k(. | x) for a batch x (N, d)."""
    def log_pi(v):
        lb, ell = parts(v)
        return lb + beta * ell

    g = jax.vmap(jax.grad(log_pi))(x)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    u = control_fn(params, x, beta, g)
    inv_mass = diagonal(inv_mass)
    chol, log_det = _noise_factor(h, inv_mass)
    return x + h * inv_mass * (g + u), chol, log_det


def _forward(params, x, beta, h, inv_mass, parts, key):
    """x' ~ F_k(. | x)."""
    mean, chol, _ = _forward_kernel(params, x, beta, h, inv_mass, parts)
    return mean + jax.random.normal(key, x.shape, x.dtype) * chol


class ControlledOutput(NamedTuple):
    """R replicate systems on a fixed schedule of K steps.

    Attributes:
        log_z (R,), x (R, N, d), log_w (R, N): as for the adaptive sampler.
        acceptance: (R,) mean HMC acceptance.
        num_steps: (R,) the K steps of the schedule.
        traj_x, traj_x_new: (R, K, N, d) the states before and after each transport;
        traj_log_w: (R, K, N) the normalised weights before each step (the reference
        measure of the losses).
    """

    log_z: Array
    x: Array
    log_w: Array
    acceptance: Array
    num_steps: Array
    traj_x: Array
    traj_x_new: Array
    traj_log_w: Array


def make_controlled_program(
    parts: Callable[[Any, Array], tuple[Array, Array]],
    base_sample: Callable[[Any, Array, int], Array],
    num_particles: int,
    num_replicates: int,
    resample_ess: float,
    kernel: KernelParams,
    dim: int,
    keep_trajectories: bool = False,
):
    """A jitted ``run(base_params, mass, control_params, betas (K+1,), h, rng_key)``: R
    replicate systems along the fixed schedule ``betas`` with CMCD transports of step size
    ``h`` (h = 0: none) and control ``control_params`` (None: u = 0), each step followed by
    resampling when the ESS is low and HMC moves at the new temperature."""

    def one(params, mass, ctrl, betas, h, key):
        pf = lambda v: parts(params, v)  # noqa: E731
        k0, key = jax.random.split(key)
        x0 = base_sample(params, k0, num_particles)
        ell0 = jax.vmap(lambda v: pf(v)[1])(x0)
        state = init_particles(x0, ell0, 0.5 * dim**-0.25)

        def step(s, inp):
            beta, beta_next, k = inp
            k_t, k_r, k_m = jax.random.split(k, 3)
            inv_mass = mass.inverse_mass(beta, s.x, s.log_w)
            x_new = jnp.where(h > 0, _forward(ctrl, s.x, beta, jnp.maximum(h, 1e-12), inv_mass, pf, k_t), s.x)
            lw_t = transport_log_weight(ctrl, s.x, x_new, beta, beta_next, jnp.maximum(h, 1e-12),
                                        inv_mass, pf)
            log_inc = jnp.where(h > 0, lw_t, (beta_next - beta) * s.ell)
            log_w_before = s.log_w
            x_before = s.x
            ell_new = jax.vmap(lambda v: pf(v)[1])(x_new)
            s = s._replace(x=x_new, ell=jnp.where(jnp.isnan(ell_new), -jnp.inf, ell_new))
            s = reweight(s, log_inc, beta_next)
            s = resample_if_needed(k_r, s, resample_ess)
            s, acc = rejuvenate(k_m, s, pf, kernel, mass.inverse_mass(beta_next, s.x, s.log_w))
            out = (x_before, x_new, log_w_before) if keep_trajectories else ()
            return s, (acc, out)

        keys = jax.random.split(key, betas.shape[0] - 1)
        s, (acc, traj) = jax.lax.scan(step, state, (betas[:-1], betas[1:], keys))
        return s, jnp.mean(acc), traj

    def run(params, mass, ctrl, betas, h, rng_key):
        keys = jax.random.split(rng_key, num_replicates)
        s, acc, traj = jax.vmap(one, in_axes=(None, None, None, None, None, 0))(
            params, mass, ctrl, betas, h, keys)
        tx, txn, tlw = traj if keep_trajectories else (None, None, None)
        steps = jnp.full((num_replicates,), betas.shape[0] - 1, jnp.int32)
        return ControlledOutput(s.log_z, s.x, s.log_w, acc, steps, tx, txn, tlw)

    return jit_over_particles(run, num_replicates)


def step_losses(ctrl: dict, out: ControlledOutput, betas: Array, h: Array, mass: MassPath,
                parts: Callable[[Array], tuple[Array, Array]], loss: str = "lv") -> Array:
    """The training loss over recorded trajectories (states fixed): for each step, the
    weighted variance of log w_k ("lv"), or the reverse-KL surrogate with the log-derivative
    term ("kl"); summed over steps, averaged over replicates, divided by d."""
    d = out.traj_x.shape[-1]

    def one_replicate(tx, txn, tlw):
        def one_step(x, x_new, log_w, beta, beta_next):
            inv_mass = mass.inverse_mass(beta)
            lw = transport_log_weight(ctrl, x, x_new, beta, beta_next, h, inv_mass, parts)
            lw = jnp.where(jnp.isfinite(lw), lw, 0.0)
            w = jnp.exp(log_w - jax.nn.logsumexp(log_w))
            mean = jnp.sum(w * lw)
            if loss == "lv":
                return jnp.sum(w * (lw - mean) ** 2)
            # reverse KL: -E[log w] with the score-function term of F_theta's density
            log_f = _log_forward_density(ctrl, x, x_new, beta, h, inv_mass, parts)
            centred = jax.lax.stop_gradient(lw - mean)
            return -jnp.sum(w * (lw + centred * log_f))

        per = jax.vmap(one_step)(tx, txn, tlw, betas[:-1], betas[1:])
        return jnp.sum(per)

    return jnp.mean(jax.vmap(one_replicate)(out.traj_x, out.traj_x_new, out.traj_log_w)) / d


def _log_forward_density(ctrl, x, x_new, beta, h, inv_mass, parts):
    mean, chol, log_det = _forward_kernel(ctrl, x, beta, h, inv_mass, parts)
    return _gauss(x_new, mean, chol, log_det)
