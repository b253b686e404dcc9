"""Training the CMCD control on a fixed schedule (docs/design.md s.3b).

Each iteration runs R replicate particle systems with the current control (states and
resampling detached), and takes one Adam step on the loss of :func:`.cmcd.step_losses` over
their recorded transports. The replicate estimates log Z_r of the same runs give the spread
that the stopping rule follows: training stops when the standard error of log Z_hat over the
replicates, averaged over a window of iterations, has not fallen for ``patience`` windows,
or when the time is up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..optim import adam_cosine
from .cmcd import init_cmcd_control, step_losses

__all__ = ["train_control"]


def _se(log_z) -> float:
    from .programs import combine_log_z

    return combine_log_z(log_z)[1]


def train_control(
    program: Callable,
    parts: Callable,
    base_params,
    mass,
    betas: jax.Array,
    h: float,
    rng_key: jax.Array,
    dim: int,
    *,
    seconds: float,
    loss: str = "lv",
    learning_rate: float = 3e-3,
    hidden: tuple[int, ...] = (32, 32),
    window: int = 10,
    patience: int = 3,
    max_iterations: int = 2000,
) -> tuple[dict, dict]:
    """Train a control for ``program`` (a :func:`.cmcd.make_controlled_program` with
    trajectories kept) within ``seconds``; returns (the parameters with the smallest
    windowed SE, history {"loss", "se"} per iteration)."""
    ctrl = init_cmcd_control(rng_key, dim, hidden)
    opt = adam_cosine(learning_rate, learning_rate / 30.0, max_iterations, 1.0, skip_nonfinite=True)
    opt_state = opt.init(ctrl)
    h = jnp.asarray(h, jnp.float32)
    pf = lambda v: parts(base_params, v)  # noqa: E731

    @jax.jit
    def update(ctrl, opt_state, out):
        value, grads = jax.value_and_grad(step_losses)(ctrl, out, betas, h, mass, pf, loss)
        updates, opt_state = opt.update(grads, opt_state, ctrl)
        return optax.apply_updates(ctrl, updates), opt_state, value

    t0 = time.perf_counter()
    history = {"loss": [], "se": []}
    best, best_se, stale, it = ctrl, math.inf, 0, 0
    window_se = []
    while it < max_iterations and time.perf_counter() - t0 < seconds:
        out = program(base_params, mass, ctrl, betas, h, jax.random.fold_in(rng_key, it))
        se = _se(np.asarray(out.log_z))
        new, opt_state, value = update(ctrl, opt_state, out)
        history["loss"].append(float(value))
        history["se"].append(se)
        window_se.append(se)
        if len(window_se) == window:
            mean_se = float(np.mean(window_se))
            window_se = []
            if mean_se < 0.95 * best_se:
                best, best_se, stale = ctrl, mean_se, 0
            else:
                stale += 1
                if stale >= patience:
                    break
        if all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(new)):
            ctrl = new
        it += 1
    return best, {k: np.asarray(v) for k, v in history.items()}
