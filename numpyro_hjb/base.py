"""The engine protocol and the engine registry (docs/design.md, "Architecture").

An engine is an object (:class:`Engine`) with pure functions over explicit state, in the
shape of BlackJAX's algorithms and NumPyro's ``hmc()``:

* ``fit(target, rng_key, settings, progress_bar, init_state) -> (state, FitInfo)``: fit the
  sampler to a :class:`~numpyro_hjb.target.Target`; ``state`` is the engine's own typed
  pytree (a NamedTuple of arrays), everything a saved fit stores.
* ``propose(target, settings, state, rng_key, num) -> (x (num, d), log_w (num,))``: fresh
  proposals in the target's coordinates and their log weights log rho(x) - log q(x) (path
  weights for the diffusion samplers), so that E_q[w] = Z.
* optionally ``evidence(target, settings, state, rng_key, num) -> EvidenceEstimate``: an
  engine whose estimate of Z is not an average of independent proposal weights (a particle
  system) gives its own estimator, with its own standard error.
* optionally ``draws(target, settings, state, rng_key, num) -> (x (M, d), log_w (M,))``: a
  weighted sample of the posterior the fit already holds (an engine's final particles),
  which ``FitResult.sample`` resamples instead of drawing fresh proposals.
* optionally ``bridge_log_weight(target, settings, state, rng_key, x) -> log_w (num,)``: the
  path weight of a fresh reference bridge ending at x (what an MCMC move of an end point
  needs to rejoin path space).

The engine runs in its own precision (``precision``): a float64 engine enables x64 inside
its own ``fit`` and ``propose`` and returns host (numpy) arrays, so no caller has to know.
``traceable`` says whether ``propose`` can be traced under an outer ``jax.jit`` (a float64
engine's cannot: the MCMC kernel then refills its proposal buffer through a host callback).

Engines register themselves by name (:func:`register_engine`); :func:`get_engine` looks one
up and suggests the closest name for a typo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from .settings import EngineSettings, suggest

__all__ = ["Engine", "FitInfo", "ENGINES", "register_engine", "get_engine", "engine_names"]


class FitInfo(NamedTuple):
    """What a fit reports besides its state.

    Attributes:
        history: {name: (num_iterations,) array} training curves (empty when nothing is
            trained).
        stats: {name: plain Python value} timings and counts, e.g. ``compile_s``,
            ``train_s``, ``num_target_evals``, ``num_target_grad_evals``, and the engine's
            own diagnostics.
    """

    history: dict
    stats: dict


FitFn = Callable[..., tuple[Any, FitInfo]]
ProposeFn = Callable[..., tuple[Any, Any]]
BridgeFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine: its name, typed settings, pure functions and precision.

    Attributes:
        name: the ``engine=`` name.
        settings: the default settings (an :class:`EngineSettings`); ``fit(**overrides)``
            maps keywords onto a copy.
        fit, propose, bridge_log_weight, evidence, draws: see the module docstring.
        precision: "float32" or "float64", the precision the engine computes in.
        traceable: whether ``propose`` can run inside an outer ``jax.jit``.
        description: one line for the docs and error messages.
        state_type: the NamedTuple type of the engine state (for save/load).
        migrate: optional ``(flat_config, state) -> (settings, state)`` for fits saved in the
            old flat-dict format (:mod:`numpyro_hjb.io`).
    """

    name: str
    settings: EngineSettings
    fit: FitFn
    propose: ProposeFn
    state_type: type
    bridge_log_weight: BridgeFn | None = None
    evidence: Callable | None = None
    draws: Callable | None = None
    precision: Literal["float32", "float64"] = "float32"
    traceable: bool = True
    description: str = ""
    migrate: Callable | None = None

    @property
    def can_bridge(self) -> bool:
        return self.bridge_log_weight is not None

    def make_settings(self, settings: EngineSettings | None = None, **overrides) -> EngineSettings:
        """Validated settings from a settings object (default: the engine's) and overrides."""
        base = self.settings if settings is None else settings
        if not isinstance(base, type(self.settings)):
            raise TypeError(
                f"settings for engine {self.name!r} must be a {type(self.settings).__name__}, "
                f"got {type(base).__name__}"
            )
        fixed = {k: getattr(self.settings, k) for k in type(base).FIXED}
        if any(getattr(base, k) != v for k, v in fixed.items()):
            base = dataclasses.replace(base, **fixed)
        return base.with_overrides(overrides, engine=self.name) if overrides else base


#: name -> Engine; filled by the engine modules when the package is imported
ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    """Add ``engine`` to the registry (a name can be registered once)."""
    if engine.name in ENGINES and ENGINES[engine.name] is not engine:
        raise ValueError(f"an engine named {engine.name!r} is already registered")
    ENGINES[engine.name] = engine
    return engine


def engine_names() -> list[str]:
    return sorted(ENGINES)


def get_engine(name: str | Engine) -> Engine:
    """The registered engine called ``name`` (an :class:`Engine` is returned as is)."""
    if isinstance(name, Engine):
        return name
    if not isinstance(name, str) or name not in ENGINES:
        hint = suggest(name, ENGINES) if isinstance(name, str) else ""
        raise ValueError(f"engine must be one of {engine_names()}, got {name!r}{hint}")
    return ENGINES[name]


def in_precision(engine: Engine):
    """The context an engine's functions run in: x64 on for a float64 engine, off for a
    float32 one, whatever the caller's global ``jax_enable_x64`` flag (a float32 engine run
    under a user's x64 would mix its float32 pre-fit with float64 particles)."""
    import jax

    return jax.enable_x64(engine.precision == "float64")


def host_arrays(*arrays) -> tuple[np.ndarray, ...]:
    """Arrays as numpy (what a float64 engine returns from inside its x64 context)."""
    return tuple(np.asarray(a) for a in arrays)
