"""Independence Metropolis-Hastings on path space, as pure functions (docs/design.md s.5).

The proposal of a fitted sampler does not depend on the chain's state, so its draws can be
made ahead of time: the state carries a *pool* of fresh proposals, refilled ``pool_size`` at a
time (one batched call of the engine, or one host callback for an engine that cannot be
traced), and each step uses the next unused ones. The chain is the same Markov chain as
one with a fresh proposal per step.

A step with ``num_proposals = 1`` takes y' with path log weight log w' and accepts it with
probability min(1, w'/w), w the weight of the current path. The path weight is the ratio of
the extended target (posterior times the exact noising path) to the proposal on path space,
so the chain is exact for the posterior for any fitted sampler, and its acceptance rate
measures the fit. With ``num_proposals = N > 1`` a step takes N proposals and picks the next
state among them and the current one with probabilities proportional to their weights
(iterated sampling-importance-resampling; Andrieu, Lee and Vihola 2018), which moves more
often when the weights are uneven.

A proposal with a NaN or +inf weight (a numerical failure) is flagged ``diverging`` and never
chosen; a current state without a finite weight is left for any finite proposal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["IMHState", "imh_init", "imh_refill", "imh_step", "sanitise"]

Array = jax.Array
BatchProposeFn = Callable[[Array, int], tuple[Array, Array]]  # (key, n) -> (x (n, d), log_w (n,))
RefineFn = Callable[[Array, Array], tuple[Array, Array]]  # (key, x (d,)) -> (x~, acceptance)
BridgeFn = Callable[[Array, Array], Array]  # (key, x (d,)) -> path log weight ()


class IMHState(NamedTuple):
    """State of one independence Metropolis-Hastings chain.

    Attributes:
        i: () iteration counter (warmup steps included).
        z: {site: unconstrained value} of the reported draw (NumPyro's sample field).
        x: (d,) current state in engine coordinates.
        log_weight: () path log weight of the current state (-inf: none yet).
        accept_prob: () probability of moving in the last step.
        accepted: () whether the last step moved.
        diverging: () whether the last step's proposals had a NaN / +inf weight.
        mean_accept_prob: () running mean of ``accept_prob``.
        refine_accept_prob: () mean acceptance of the local moves (NaN without).
        rng_key: the chain's PRNG key.
        pool_x: (P, d) proposals drawn ahead; pool_log_w: (P,) their weights;
        pool_pos: () index of the next unused one.
    """

    i: Array
    z: dict
    x: Array
    log_weight: Array
    accept_prob: Array
    accepted: Array
    diverging: Array
    mean_accept_prob: Array
    refine_accept_prob: Array
    rng_key: Array
    pool_x: Array
    pool_log_w: Array
    pool_pos: Array


def sanitise(log_w: Array) -> tuple[Array, Array]:
    """NaN / +inf log weights (sampler failures) -> -inf, and the failure flags."""
    bad = jnp.isnan(log_w) | (log_w == jnp.inf)
    return jnp.where(bad, -jnp.inf, log_w), bad


def _local_move(x, log_w, key, to_z, refine_fn, bridge_fn):
    """(state x, its log w, reported draw z, refine acceptance) after the optional local move.

    With ``refine_fn``, x~ = P^k(x) (a posterior-invariant kernel). With a ``bridge_fn`` as
    well, x~ becomes the state and a fresh reference bridge ending at x~ gives its path
    weight (Metropolis-within-Gibbs on path space: the bridge is the exact conditional of
    the path given its end). Without one, x~ is only reported and the chain stays at x.
    """
    if refine_fn is None:
        return x, log_w, to_z(x), jnp.asarray(jnp.nan, jnp.float32)
    key_refine, key_bridge = jax.random.split(key)
    x_new, acc = refine_fn(key_refine, x)
    acc = jnp.asarray(acc, jnp.float32)
    if bridge_fn is None:
        return x, log_w, to_z(x_new), acc
    log_w_new, _ = sanitise(bridge_fn(key_bridge, x_new))
    return x_new, log_w_new.astype(log_w.dtype), to_z(x_new), acc


def imh_refill(propose_fn: BatchProposeFn, state: IMHState) -> IMHState:
    """A fresh pool of proposals (same size), position reset to 0. Pure."""
    key_chain, key_prop = jax.random.split(state.rng_key)
    xs, log_ws = propose_fn(key_prop, state.pool_x.shape[0])
    return state._replace(
        rng_key=key_chain,
        pool_x=jnp.asarray(xs, state.pool_x.dtype),
        pool_log_w=jnp.asarray(log_ws, state.pool_log_w.dtype),
        pool_pos=jnp.zeros((), jnp.int32),
    )


def imh_init(
    propose_fn: BatchProposeFn,
    to_z: Callable[[Array], dict],
    rng_key: Array,
    num_init: int = 64,
    pool_size: int = 256,
    refine_fn: RefineFn | None = None,
    bridge_fn: BridgeFn | None = None,
) -> IMHState:
    """Initial state: one of ``num_init`` fresh proposals picked by importance resampling
    (so little burn-in is needed), and a first pool of ``pool_size`` proposals. Pure."""
    if num_init < 1 or pool_size < 1:
        raise ValueError(f"num_init and pool_size must be >= 1, got {num_init}, {pool_size}")
    key_chain, key_prop, key_pick, key_ref = jax.random.split(rng_key, 4)
    xs, log_ws = propose_fn(key_prop, num_init)
    log_ws, bad = sanitise(log_ws)
    idx = jax.random.categorical(key_pick, log_ws)
    x, log_w, z, refine_acc = _local_move(xs[idx], log_ws[idx], key_ref, to_z, refine_fn, bridge_fn)
    state = IMHState(
        i=jnp.zeros((), jnp.int32),
        z=z,
        x=x,
        log_weight=log_w,
        accept_prob=jnp.ones((), jnp.float32),
        accepted=jnp.ones((), bool),
        diverging=bad[idx],
        mean_accept_prob=jnp.zeros((), jnp.float32),
        refine_accept_prob=refine_acc,
        rng_key=key_chain,
        pool_x=jnp.zeros((pool_size, xs.shape[-1]), xs.dtype),
        pool_log_w=jnp.zeros((pool_size,), log_ws.dtype),
        pool_pos=jnp.zeros((), jnp.int32),
    )
    return imh_refill(propose_fn, state)


def imh_step(
    propose_fn: BatchProposeFn | None,
    to_z: Callable[[Array], dict],
    state: IMHState,
    refine_fn: RefineFn | None = None,
    bridge_fn: BridgeFn | None = None,
    num_proposals: int = 1,
) -> IMHState:
    """One IMH (``num_proposals = 1``) or i-SIR (N > 1) step on path space. Pure.

    ``propose_fn`` refills the pool when fewer than ``num_proposals`` unused proposals are
    left; pass None when the caller has already made room (:func:`imh_refill`), e.g. for
    a batch of chains refilled together.
    """
    n = int(num_proposals)
    if n < 1 or n > state.pool_x.shape[0]:
        raise ValueError(
            f"num_proposals must be in [1, pool size {state.pool_x.shape[0]}], got {num_proposals}"
        )
    if propose_fn is not None:
        full = state.pool_pos + n > state.pool_x.shape[0]
        state = jax.lax.cond(full, lambda s: imh_refill(propose_fn, s), lambda s: s, state)
    key_chain, key_acc, key_ref = jax.random.split(state.rng_key, 3)
    xs = jax.lax.dynamic_slice_in_dim(state.pool_x, state.pool_pos, n)
    log_ws, bads = sanitise(jax.lax.dynamic_slice_in_dim(state.pool_log_w, state.pool_pos, n))
    cur = state.log_weight
    bad = jnp.any(bads)
    if n == 1:
        x_new, log_w_new = xs[0], log_ws[0]
        ratio = jnp.exp(jnp.minimum(log_w_new - jnp.where(jnp.isfinite(cur), cur, 0.0), 0.0))
        accept_prob = jnp.where(
            jnp.isfinite(log_w_new), jnp.where(jnp.isfinite(cur), ratio, 1.0), 0.0
        ).astype(jnp.float32)
        accepted = jax.random.uniform(key_acc) < accept_prob
    else:
        pool = jnp.concatenate([cur[None], log_ws])
        any_finite = jnp.any(jnp.isfinite(pool))
        logits = jnp.where(any_finite, pool, 0.0)
        pick = jnp.where(any_finite, jax.random.categorical(key_acc, logits), 0)
        stay = jax.nn.softmax(logits)[0]
        accept_prob = jnp.where(any_finite, 1.0 - stay, 0.0).astype(jnp.float32)
        accepted = pick > 0
        idx = jnp.maximum(pick - 1, 0)
        x_new, log_w_new = xs[idx], log_ws[idx]
    x = jnp.where(accepted, x_new, state.x)
    log_w = jnp.where(accepted, log_w_new, cur)
    x, log_w, z, refine_acc = _local_move(x, log_w, key_ref, to_z, refine_fn, bridge_fn)
    count = (state.i + 1).astype(jnp.float32)
    mean_acc = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / count
    return state._replace(
        i=state.i + 1,
        z=z,
        x=x,
        log_weight=log_w,
        accept_prob=accept_prob,
        accepted=accepted,
        diverging=bad,
        mean_accept_prob=mean_acc,
        refine_accept_prob=refine_acc,
        rng_key=key_chain,
        pool_pos=state.pool_pos + n,
    )
