"""``MCMC(SCLD(model))``: particle independent Metropolis-Hastings over the fitted sequential
engine's particle systems (:mod:`numpyro_hjb.mcmc.pimh`).

Warmup = fit, as for the other kernels (:class:`~numpyro_hjb.mcmc.kernel.DiffusionKernel`);
then every ``draws_per_system`` draws a fresh particle system from the fitted base is
proposed and accepted with probability min(1, Z_hat' / Z_hat), so the chain is exact for the
posterior. ``log_weight`` is log Z_hat of the current system and ``accept_prob`` the
acceptance probability of the last proposed system.
"""

from __future__ import annotations

from functools import partial

import jax

from .kernel import DiffusionKernel
from .pimh import pimh_init, pimh_refill, pimh_step

__all__ = ["SCLD"]


class SCLD(DiffusionKernel):
    """The sequential annealing engine (docs/design.md s.3b) as an MCMC kernel.

    Args:
        model: a NumPyro model.
        draws_per_system: draws taken from each accepted particle system before the next
            one is proposed (each draw is marginally exact; draws of one system are
            correlated).
        **kwargs: as for :class:`~numpyro_hjb.mcmc.kernel.DiffusionKernel` (engine
            settings such as ``time_budget=`` included).
    """

    engine = "scld"

    def __init__(self, model=None, *, draws_per_system: int = 16, **kwargs):
        from ..api import _count

        self._draws_per_system = _count(draws_per_system, "draws_per_system")
        super().__init__(model, **kwargs)

    def _batch_needs_refill(self, states):
        return (states.draws_left[0] <= 0) & (states.pool_pos[0] >= states.pool_x.shape[1])

    def _imh_fns(self):
        from ..annealing.engine import _state_program

        fit_result = self._fit_result
        target = fit_result.target
        program, params, mass = _state_program(target, fit_result.settings, fit_result.state)

        def systems_fn(key):
            out = program(params, mass, key)
            return out.x, out.log_w, out.log_z

        def to_z(x):
            return target.unravel(target.to_unconstrained(x))

        draws = self._draws_per_system
        init_fn = partial(pimh_init, systems_fn, to_z, draws_per_system=draws)

        def step_fn(state, refill=True):
            return pimh_step(systems_fn if refill else None, to_z, state, draws)

        return jax.jit(init_fn), step_fn, partial(pimh_refill, systems_fn)
