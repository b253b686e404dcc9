"""The one optimiser builder of the package (optax): Adam, global-norm clipping, cosine decay.

    lr_i = final + (initial - final) (1 + cos(pi i / n)) / 2,   i = 0..n,

and, with ``skip_nonfinite``, a step whose gradients are not finite is skipped
(``optax.apply_if_finite``, at most 20 in a row).
"""

from __future__ import annotations

import optax

__all__ = ["adam_cosine"]


def adam_cosine(
    learning_rate: float,
    final_learning_rate: float,
    num_iterations: int,
    grad_clip: float,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformation:
    """Adam on a cosine-decayed learning rate after global-norm clipping."""
    schedule = optax.cosine_decay_schedule(
        learning_rate, max(int(num_iterations), 1), alpha=final_learning_rate / learning_rate
    )
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))
    return optax.apply_if_finite(opt, max_consecutive_errors=20) if skip_nonfinite else opt
