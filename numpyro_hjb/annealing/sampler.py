"""Independent replicate particle systems along an adaptive annealing path, as one compiled
program (:func:`make_tempered_program`).

Each replicate starts from N exact draws of the base and runs the steps of :mod:`.smc` with
the increment delta chosen by the conditional-ESS rule, until beta = 1 (or ``max_steps``).
The R replicates run side by side (``vmap``); their estimates Z_r are independent and
unbiased, so

    Z_hat = (1/R) sum_r Z_r,   SE(log Z_hat) ~ sd(Z_r) / (sqrt(R) Z_hat)   (delta method),

and the weighted particles of all replicates, each replicate's weights multiplied by
Z_r / sum_s Z_s, are a consistent weighted sample of the posterior (docs/design.md s.3b).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..sharding import map_over_devices
from .smc import (
    KernelParams,
    init_particles,
    next_increment,
    particle_variance,
    rejuvenate,
    resample_if_needed,
    reweight,
)

__all__ = ["FrozenSchedule", "PathParams", "TemperedOutput", "make_tempered_program"]

Array = jax.Array


class PathParams(NamedTuple):
    """Settings of the adaptive path (static under jit)."""

    num_particles: int
    num_replicates: int
    cess_target: float
    resample_ess: float
    max_steps: int


class FrozenSchedule(NamedTuple):
    """Temperatures and HMC step sizes fixed before a run (from a pilot's replicate):
    betas (max_steps + 1,) padded with 1, step_sizes (max_steps,). With the schedule and the
    kernels fixed in advance each replicate's Z_r is unbiased (:mod:`.smc`)."""

    betas: Array
    step_sizes: Array


class TemperedOutput(NamedTuple):
    """R replicate particle systems at beta = 1.

    Attributes:
        log_z: (R,) log Z_r of each replicate.
        x: (R, N, d) particles; log_w: (R, N) their normalised log weights.
        num_steps: (R,) temperatures used; betas: (R, max_steps + 1) the schedule (padded
            with 1).
        acceptance: (R,) mean HMC acceptance; num_resampled: (R,) resampling events.
        step_size: (R,) the HMC step size at the end.
        step_sizes: (R, max_steps) the HMC step size at the start of each step's moves.
        num_nan: (R,) base draws at which the target's log density is NaN (they count as
            outside the support, log density -inf).
    """

    log_z: Array
    x: Array
    log_w: Array
    num_steps: Array
    betas: Array
    acceptance: Array
    num_resampled: Array
    step_size: Array
    step_sizes: Array
    num_nan: Array


def _default_float(tree):
    """The floating leaves of ``tree`` as the context's default float (float32, or float64
    under x64); other leaves as they are."""
    ftype = jax.dtypes.canonicalize_dtype(jnp.float64)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, ftype) if jnp.issubdtype(jnp.result_type(a), jnp.floating)
        else a, tree)


def make_tempered_program(
    parts: Callable[[Any, Array], tuple[Array, Array]],
    base_sample: Callable[[Any, Array, int], Array],
    path: PathParams,
    kernel: KernelParams,
    dim: int,
) -> Callable[..., TemperedOutput]:
    """A jitted ``run(base_params, mass, rng_key, schedule=None) -> TemperedOutput`` of R
    replicates; with a :class:`FrozenSchedule` the replicates follow its temperatures and
    step sizes instead of choosing them from their particles.

    ``parts(params, x) -> (log b(x), ell(x))`` with ell = log rho - log b, and
    ``base_sample(params, key, n)`` define the base; ``params`` is a pytree of arrays (a
    :class:`~.reference.GaussianBase`, or ``()`` for a base without parameters), so one
    compiled program serves every base of the same kind.
    ``mass``: the :class:`~.smc.MassPath` of the inverse mass matrices, or None for the
    particles' diagonal variance (a pilot's fallback, see :mod:`.smc`).
    """

    def one(params, mass, schedule, key):
        pf = lambda v: parts(params, v)  # noqa: E731
        k0, k = jax.random.split(key)
        x0 = base_sample(params, k0, path.num_particles)
        ell0 = jax.vmap(lambda v: pf(v)[1])(x0)
        state = init_particles(x0, ell0, 0.5 * dim**-0.25)
        num_nan = jnp.sum(jnp.isnan(ell0))
        betas = jnp.ones((path.max_steps + 1,), x0.dtype).at[0].set(0.0)
        steps = jnp.zeros((path.max_steps,), x0.dtype)

        def cond(carry):
            s, _, n, _, _, _ = carry
            return (s.beta < 1.0) & (n < path.max_steps)

        def body(carry):
            s, key, n, acc, betas, steps = carry
            key, k1, k2 = jax.random.split(key, 3)
            if schedule is None:
                delta = next_increment(s.log_w, s.ell, s.beta, path.cess_target)
                new_beta = jnp.where(n == path.max_steps - 1, 1.0, s.beta + delta)
            else:
                new_beta = schedule.betas[n + 1]
                s = s._replace(step_size=schedule.step_sizes[n])
            s = reweight(s, (new_beta - s.beta) * s.ell, new_beta)
            s = resample_if_needed(k1, s, path.resample_ess)
            inv_mass = (particle_variance(s.x, s.log_w) if mass is None
                        else mass.inverse_mass(s.beta, s.x, s.log_w))
            steps = steps.at[n].set(s.step_size)
            s, a = rejuvenate(k2, s, pf, kernel, inv_mass, adapt=schedule is None)
            return s, key, n + 1, acc + a, betas.at[n + 1].set(s.beta), steps

        s, _, n, acc, betas, steps = jax.lax.while_loop(
            cond, body, (state, k, jnp.zeros((), jnp.int32), jnp.zeros(()), betas, steps)
        )
        return s, n, acc / jnp.maximum(n, 1), betas, steps, num_nan

    def run(params, mass, rng_key, schedule=None):
        # one float type throughout (that of the context: a caller under x64 gets float64),
        # whatever precision the base parameters were made in
        params, mass, schedule = _default_float((params, mass, schedule))
        keys = jax.random.split(rng_key, path.num_replicates)
        batched = map_over_devices(jax.vmap(one, in_axes=(None, None, None, 0)),
                                   path.num_replicates, (False, False, False, True))
        s, n, acc, betas, steps, num_nan = batched(params, mass, schedule, keys)
        return TemperedOutput(s.log_z, s.x, s.log_w, n, betas, acc, s.num_resampled, s.step_size,
                              steps, num_nan)

    return jax.jit(run)
