"""The static part of a learned-control fit: scheme, target, tamed score feature, network.

A :class:`Problem` is what the losses and the sampler need besides the parameters; it is
built once from the resolved :class:`~numpyro_hjb.control.settings.ControlSettings`.

Taming of the score feature (Hutzenthaler, Jentzen, Kloeden): the target score s enters a
step as c_k s, with c_k the step's control coefficient; the feature s / (1 + c_k |s|) keeps
that increment below one in magnitude, so stiff or super-linear scores (a many-well, a
funnel's neck) cannot make the explicit step overshoot. The factor -> 1 as the step -> 0,
and the path weights are exact for any control, so nothing is biased.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..diffusion import PathScheme, brownian_scheme, ou_scheme, ou_transition
from ..target import Target
from .network import apply_control
from .settings import ControlSettings

__all__ = ["Problem", "build_problem", "make_scheme", "interp_ascending"]

Array = jax.Array


class Problem(NamedTuple):
    """What a loss needs besides the parameters (static under jit)."""

    scheme: PathScheme
    log_density: Callable[[Array], Array]
    base_fn: Callable[[Array, Array], Array]  # (y (B, d), t) -> tamed score feature (B, d)
    net_fn: Callable  # (params, y (B, d), t, base (B, d)) -> u (B, d)
    dim: int
    batch_size: int
    max_log_weight_dev: float

    def control(self, params) -> Callable[[Array, Array], Array]:
        """u(y, t) with the given parameters."""

        def control(y, t):
            return self.net_fn(params, y, t, self.base_fn(y, t))

        return control


def make_scheme(settings: ControlSettings) -> PathScheme:
    """The path scheme of the (resolved) settings, in float32."""
    g = settings.grid
    if settings.scheme == "pis":
        scheme = brownian_scheme(g.horizon, g.num_steps, g.pis_sigma, g.grid_power)
    else:
        scheme = ou_scheme(g.horizon, g.num_steps, g.integrator, g.grid_power)
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(v, jnp.float32) if isinstance(v, jax.Array) else v, scheme
    )


def interp_ascending(t: Array, xs: Array, ys: Array) -> Array:
    """Piecewise-linear interpolation on ascending knots xs, clamped at the ends.

    ``jnp.interp`` does the same through a ``searchsorted`` loop, which inside the sampler's
    ``lax.scan`` failed to compile on GPU; the interval is found by a comparison count.
    """
    i = jnp.clip(jnp.sum(xs <= t) - 1, 0, xs.shape[0] - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    w = jnp.clip((t - x0) / (x1 - x0), 0.0, 1.0)
    return y0 + w * (y1 - y0)


def noise_level_fn(settings: ControlSettings) -> Callable[[Array], Array]:
    """sigma_t, the reference's noise between time t and the data end: sqrt(1 - e^{-2t}) for
    the OU schemes, pis_sigma sqrt(t) for PIS (the std of X_0 given X_t)."""
    if settings.scheme == "pis":
        sigma = settings.grid.pis_sigma
        return lambda t: sigma * jnp.sqrt(t)
    return lambda t: jnp.sqrt(ou_transition(t)[1])


def _net(params, y, t, base, *, horizon, num_time_features, noise_fn):
    noise = None if noise_fn is None else noise_fn(t)
    return apply_control(params, y, t, base, horizon, num_time_features, noise)


def build_problem(target: Target, settings: ControlSettings, batch_size: int | None = None) -> Problem:
    """The :class:`Problem` of a (resolved) setting on ``target``."""
    scheme = make_scheme(settings)
    clip = settings.network.score_clip
    grad_log_rho = jax.vmap(jax.grad(target.log_density))
    step_times = scheme.times[:-1]
    step_coef = scheme.gen_control

    def base_fn(y, t):
        c = interp_ascending(t, step_times[::-1], step_coef[::-1])
        g = grad_log_rho(y)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        g = jnp.clip(g, -clip, clip)
        return g / (1.0 + c * jnp.abs(g))

    net = settings.network
    net_fn = partial(
        _net,
        horizon=settings.grid.horizon,
        num_time_features=net.num_time_features,
        noise_fn=noise_level_fn(settings) if net.conditioning == "noise" else None,
    )
    return Problem(
        scheme=scheme,
        log_density=target.log_density,
        base_fn=base_fn,
        net_fn=net_fn,
        dim=target.dim,
        batch_size=int(batch_size or settings.optimiser.batch_size),
        max_log_weight_dev=settings.objective.max_log_weight_dev,
    )
