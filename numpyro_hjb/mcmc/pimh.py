"""Particle independent Metropolis-Hastings (Andrieu, Doucet and Holenstein 2010), as pure
functions over an explicit state (docs/design.md s.5).

A particle system (N weighted particles and its unbiased estimate Z_hat) is an independent
proposal on the extended space of systems; accepting a fresh system with probability
min(1, Z_hat' / Z_hat) leaves invariant the law whose marginal, for one particle drawn from
the current system by its weight, is exactly the posterior. The chain draws
``draws_per_system`` particles from the current system (each one marginally exact) before it
proposes the next system. Systems are produced in batches (a pool refilled by one call of the
engine's compiled program) and used in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PIMHState", "pimh_init", "pimh_step", "pimh_refill"]

Array = jax.Array
#: key -> (x (P, N, d), log_w (P, N) normalised per system, log_z (P,))
SystemsFn = Callable[[Array], tuple[Array, Array, Array]]


class PIMHState(NamedTuple):
    """State of one particle IMH chain.

    Attributes:
        i: () iteration counter; z: {site: unconstrained value} of the reported draw;
        x: (d,) the reported particle.
        log_weight: () log Z_hat of the current system.
        accept_prob, accepted: the last proposal of a system (min(1, Z'/Z), and whether it
            was taken); mean_accept_prob: () running mean over proposed systems.
        diverging: () whether the last proposed system had a non-finite log Z_hat.
        rng_key: the chain's key.
        system_x (N, d), system_log_w (N,): the current system; draws_left: () draws before
        the next proposal.
        pool_x (P, N, d), pool_log_w (P, N), pool_log_z (P,), pool_pos (): systems drawn
        ahead.
        num_proposed: () systems proposed so far.
    """

    i: Array
    z: dict
    x: Array
    log_weight: Array
    accept_prob: Array
    accepted: Array
    mean_accept_prob: Array
    diverging: Array
    rng_key: Array
    system_x: Array
    system_log_w: Array
    draws_left: Array
    pool_x: Array
    pool_log_w: Array
    pool_log_z: Array
    pool_pos: Array
    num_proposed: Array


def pimh_refill(systems_fn: SystemsFn, state: PIMHState) -> PIMHState:
    """A fresh pool of systems, position reset. Pure."""
    key_chain, key_sys = jax.random.split(state.rng_key)
    x, log_w, log_z = systems_fn(key_sys)
    return state._replace(rng_key=key_chain, pool_x=x.astype(state.pool_x.dtype),
                          pool_log_w=log_w.astype(state.pool_log_w.dtype),
                          pool_log_z=log_z.astype(state.pool_log_z.dtype),
                          pool_pos=jnp.zeros((), jnp.int32))


def _draw(state: PIMHState, key: Array, to_z) -> PIMHState:
    j = jax.random.categorical(key, state.system_log_w)
    x = state.system_x[j]
    return state._replace(x=x, z=to_z(x), draws_left=state.draws_left - 1)


def pimh_init(systems_fn: SystemsFn, to_z: Callable[[Array], dict], rng_key: Array,
              draws_per_system: int) -> PIMHState:
    """The first pool; the chain starts from its system with the largest Z_hat (any start is
    valid; this one needs little burn-in), and reports a particle of it. Pure."""
    key_chain, key_sys, key_draw = jax.random.split(rng_key, 3)
    x, log_w, log_z = systems_fn(key_sys)
    lz = jnp.where(jnp.isnan(log_z), -jnp.inf, log_z)
    first = jnp.argmax(lz)
    state = PIMHState(
        i=jnp.zeros((), jnp.int32), z=to_z(x[first, 0]), x=x[first, 0], log_weight=lz[first],
        accept_prob=jnp.ones((), jnp.float32), accepted=jnp.ones((), bool),
        mean_accept_prob=jnp.zeros((), jnp.float32), diverging=jnp.zeros((), bool),
        rng_key=key_chain, system_x=x[first], system_log_w=log_w[first],
        draws_left=jnp.asarray(draws_per_system, jnp.int32),
        pool_x=x, pool_log_w=log_w, pool_log_z=lz, pool_pos=jnp.asarray(x.shape[0], jnp.int32),
        num_proposed=jnp.zeros((), jnp.int32),
    )
    return _draw(state, key_draw, to_z)


def pimh_step(systems_fn: SystemsFn | None, to_z: Callable[[Array], dict], state: PIMHState,
              draws_per_system: int) -> PIMHState:
    """One draw; when the current system's draws are used up, first propose the next system
    from the pool (refilled by ``systems_fn`` when empty; None when the caller refills, as
    for a batch of chains) and accept it with probability min(1, Z'/Z). Pure."""
    key_chain, key_acc, key_draw = jax.random.split(state.rng_key, 3)
    state = state._replace(rng_key=key_chain)
    switch = state.draws_left <= 0

    def propose(s):
        if systems_fn is not None:
            s = jax.lax.cond(s.pool_pos >= s.pool_x.shape[0], lambda t: pimh_refill(systems_fn, t),
                             lambda t: t, s)
        k = s.pool_pos
        lz_new = s.pool_log_z[k]
        bad = ~jnp.isfinite(lz_new)
        cur = s.log_weight
        prob = jnp.where(bad, 0.0, jnp.where(jnp.isfinite(cur),
                                            jnp.exp(jnp.minimum(lz_new - cur, 0.0)), 1.0))
        acc = jax.random.uniform(key_acc) < prob
        n = (s.num_proposed + 1).astype(jnp.float32)
        return s._replace(
            system_x=jnp.where(acc, s.pool_x[k], s.system_x),
            system_log_w=jnp.where(acc, s.pool_log_w[k], s.system_log_w),
            log_weight=jnp.where(acc, lz_new, cur),
            accept_prob=prob.astype(jnp.float32), accepted=acc, diverging=bad,
            mean_accept_prob=(s.mean_accept_prob + (prob - s.mean_accept_prob) / n).astype(
                s.mean_accept_prob.dtype),
            pool_pos=k + 1, num_proposed=s.num_proposed + 1,
            draws_left=jnp.asarray(draws_per_system, jnp.int32),
        )

    state = jax.lax.cond(switch, propose, lambda s: s._replace(accepted=jnp.zeros((), bool)), state)
    state = _draw(state, key_draw, to_z)
    return state._replace(i=state.i + 1)
