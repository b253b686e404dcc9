"""Local moves of the current point: BlackJAX MALA or HMC on the target's flat log density."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["make_refine_fn"]


def make_refine_fn(
    log_density: Callable[[jax.Array], jax.Array],
    dim: int,
    method: str = "mala",
    num_steps: int = 1,
    step_size: float = 0.1,
    num_integration_steps: int = 5,
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """``refine(key, x) -> (x~, mean acceptance)``: ``num_steps`` BlackJAX MALA or HMC steps
    (identity mass matrix) on the flat log density, which they leave invariant."""
    import blackjax

    if method == "mala":
        algo = blackjax.mala(log_density, step_size)
    elif method == "hmc":
        algo = blackjax.hmc(log_density, step_size, jnp.ones(dim), int(num_integration_steps))
    else:
        raise ValueError(f"refine must be 'mala' or 'hmc', got {method!r}")
    if num_steps < 1:
        raise ValueError(f"refine_steps must be >= 1 when refining, got {num_steps}")

    def refine(key, x):
        def body(st, k):
            st, info = algo.step(k, st)
            return st, info.acceptance_rate

        st, acc = jax.lax.scan(body, algo.init(x), jax.random.split(key, num_steps))
        return st.position, jnp.mean(acc)

    return refine
