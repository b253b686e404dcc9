"""The training loop of the learned control: one compiled ``lax.scan`` per chunk of iterations.

Adam with global-norm clipping and a cosine-decayed learning rate (:func:`numpyro_hjb.optim.
adam_cosine`); a step whose gradients are not finite is skipped, and a run whose parameters
become non-finite raises :class:`TrainingDivergedError`. A tqdm bar shows the loss, the
running ELBO and the batch ESS.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..evidence import ess_fraction
from ..optim import adam_cosine
from .losses import LOSSES, masked_mean
from .problem import Problem
from .settings import ControlSettings

__all__ = ["TrainingDivergedError", "train", "all_finite"]


class TrainingDivergedError(RuntimeError):
    """Raised when training produces non-finite parameters."""


def all_finite(params) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(params))


def _progress(total: int, enabled: bool, label: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label)


def train(params, problem: Problem, settings: ControlSettings, rng_key: jax.Array,
          progress_bar: bool = True) -> tuple[dict, dict, dict]:
    """Minimise the loss of ``settings.objective`` from ``params``.

    Returns (params, history {loss, elbo, ess, masked_fraction: (num_iterations,)},
    stats {compile_s, train_s, num_iterations}); the iteration count is rounded up to a whole
    number of chunks of ``log_every`` (one compilation).
    """
    opt_s, obj = settings.optimiser, settings.objective
    loss_fn = LOSSES[obj.loss]
    if obj.loss == "lv":
        loss_fn = partial(loss_fn, target_weight=obj.lv_target_weight)
    n_iter = opt_s.num_iterations
    optimizer = adam_cosine(
        opt_s.learning_rate, opt_s.final_learning_rate, n_iter, opt_s.grad_clip, skip_nonfinite=True
    )
    opt_state = optimizer.init(params)

    def one_step(carry, key):
        params, opt_state = carry
        (loss, (log_w, mask)), grads = jax.value_and_grad(
            partial(loss_fn, problem=problem), has_aux=True
        )(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        stats = (loss, masked_mean(log_w, mask), ess_fraction(log_w, mask), jnp.mean(~mask))
        return (params, opt_state), stats

    @partial(jax.jit, static_argnums=3)
    def run_chunk(params, opt_state, key, length):
        return jax.lax.scan(one_step, (params, opt_state), jax.random.split(key, length))

    chunk = min(settings.runtime.log_every, n_iter)
    n_chunks = math.ceil(n_iter / chunk)
    history = {"loss": [], "elbo": [], "ess": [], "masked_fraction": []}
    t0 = time.perf_counter()
    run_chunk.lower(params, opt_state, rng_key, chunk).compile()  # compile apart from training
    compile_s = time.perf_counter() - t0
    label = f"{settings.scheme.upper()}-{obj.loss.upper()}"
    bar = _progress(n_chunks * chunk, progress_bar, label)
    t_train = time.perf_counter()
    try:
        for c in range(n_chunks):
            rng_key, key_chunk = jax.random.split(rng_key)
            (params, opt_state), stats = run_chunk(params, opt_state, key_chunk, chunk)
            stats = [np.asarray(s) for s in stats]
            for name, s in zip(history, stats):
                history[name].append(s)
            if not all_finite(params):
                raise TrainingDivergedError(
                    f"training diverged: non-finite network parameters after iteration "
                    f"{(c + 1) * chunk} (loss {stats[0][-1]:.3g}). Try a smaller learning_rate, "
                    "a smaller score_clip, whitening='advi', or more num_steps."
                )
            if bar is not None:
                bar.update(chunk)
                bar.set_postfix(
                    loss=f"{stats[0][-1]:.3g}", elbo=f"{stats[1][-1]:.3f}", ess=f"{stats[2][-1]:.2f}"
                )
    finally:
        if bar is not None:
            bar.close()
    jax.block_until_ready(params)
    stats = {
        "compile_s": compile_s,
        "train_s": time.perf_counter() - t_train,
        "num_iterations": n_chunks * chunk,
    }
    return params, {k: np.concatenate(v) for k, v in history.items()}, stats
