"""The public entry point: ``fit(model, ...)`` -> :class:`FitResult`.

Data flows one way (DESIGN.md s.6): model -> :class:`~numpyro_hjb.target.Target` -> engine
fit -> proposals with log weights -> evidence / resampling -> draws per site.

An engine is a module with two pure functions::

    fit(target, rng_key, config, progress_bar) -> (state, history, info)
    propose(target, config, state, rng_key, num) -> (x (num, d), log_w (num,))

``state`` is a pytree of arrays (what save/load stores), ``config`` a dict of plain Python
values, ``history`` a dict of per-iteration numpy arrays, ``info`` a dict of scalars
(timings, counts).
"""

from __future__ import annotations

import dataclasses
import importlib
from contextlib import nullcontext
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from .evidence import EvidenceEstimate, estimate_evidence, resample
from .target import Target, make_target

__all__ = ["fit", "FitResult", "Draws", "ENGINES"]

#: engine name -> (module, fixed config entries)
ENGINES: dict[str, tuple[str, dict]] = {
    "dis": ("numpyro_hjb.control.engine", {"scheme": "dis"}),
    "dds": ("numpyro_hjb.control.engine", {"scheme": "dds"}),
    "pis": ("numpyro_hjb.control.engine", {"scheme": "pis"}),
    "tt": ("numpyro_hjb.tt.engine", {}),
}


def _engine_precision(mod):
    """jax.enable_x64(True) for a float64 engine (TT), else a no-op context."""
    return jax.enable_x64(True) if getattr(mod, "FLOAT64", False) else nullcontext()


def engine_module(name: str):
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {name!r}")
    return importlib.import_module(ENGINES[name][0])


class Draws(NamedTuple):
    """Posterior draws per site (resampled, so equally weighted) and the proposals behind them.

    Attributes:
        samples: {site: (num, ...)} constrained values, deterministic sites included.
        x: (num, d) the draws in engine coordinates.
        log_weight: (num_proposals,) log weights of all proposals drawn.
        index: (num,) which proposal each draw is.
        evidence: the evidence estimate from the same proposals.
    """

    samples: dict
    x: jax.Array
    log_weight: jax.Array
    index: jax.Array
    evidence: EvidenceEstimate


@dataclasses.dataclass
class FitResult:
    """A fitted sampler: draws, log-weights and evidence without refitting."""

    engine: str
    target: Target
    state: Any
    config: dict
    history: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    _propose_jit: Callable | None = dataclasses.field(default=None, repr=False)

    def propose(self, rng_key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
        """``num`` fresh proposals (engine coordinates) and their log weights log rho - log q."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if self._propose_jit is None:
            mod = engine_module(self.engine)
            fn = lambda state, key, n: mod.propose(  # noqa: E731
                self.target, self.config, state, key, n
            )
            # An engine that manages its own precision/jit (e.g. float64) opts out.
            self._propose_jit = jax.jit(fn, static_argnums=2) if getattr(
                mod, "JIT_PROPOSE", True
            ) else fn
        return self._propose_jit(self.state, rng_key, int(num))

    @property
    def can_bridge(self) -> bool:
        """Whether the engine weighs paths through given end points (:meth:`bridge_log_weight`)."""
        return hasattr(engine_module(self.engine), "bridge_log_weight")

    def bridge_log_weight(self, rng_key: jax.Array, x: jax.Array) -> jax.Array:
        """Path log weights (num,) of fresh reference bridges ending at x (num, d).

        With this an MCMC move of a proposal's end point rejoins path space exactly
        (:func:`numpyro_hjb.diffusion.bridge_log_weights`). Learned-control engines only.
        """
        if not self.can_bridge:
            raise NotImplementedError(f"engine {self.engine!r} cannot weigh bridges")
        mod = engine_module(self.engine)
        return mod.bridge_log_weight(self.target, self.config, self.state, rng_key, x)

    def log_evidence(
        self, rng_key: jax.Array | None = None, num_samples: int = 4096
    ) -> EvidenceEstimate:
        """log Z with standard error, ELBO, ESS and k-hat from ``num_samples`` fresh proposals."""
        rng_key = jax.random.PRNGKey(12345) if rng_key is None else rng_key
        _, log_w = self.propose(rng_key, num_samples)
        return estimate_evidence(log_w, method=f"{self.engine} importance sampling")

    def sample(
        self, rng_key: jax.Array, num: int, num_proposals: int | None = None
    ) -> Draws:
        """``num`` posterior draws by sampling-importance-resampling from ``num_proposals``
        (default ``4 * num``) fresh proposals. Raw weighted proposals are never returned as
        draws (DESIGN.md s.5)."""
        num_proposals = 4 * num if num_proposals is None else num_proposals
        key_prop, key_res = jax.random.split(rng_key)
        x, log_w = self.propose(key_prop, num_proposals)
        ev = estimate_evidence(log_w, method=f"{self.engine} importance sampling")
        idx = resample(key_res, log_w, num)
        x_draw = x[idx]
        # In the precision the target was built in: a float64 engine's whitening map is
        # float64, and applying it outside x64 made a mixed-precision GEMM that cuBLASLt
        # rejects on GPU (jax 0.11.2).
        with _engine_precision(engine_module(self.engine)):
            samples = self.target.constrain_batch(x_draw)
        return Draws(samples, x_draw, log_w, idx, ev)


def fit(
    model: Callable | Target,
    *model_args: Any,
    engine: str = "dds",
    rng_key: jax.Array | None = None,
    whitening: str | None = None,
    progress_bar: bool = True,
    model_kwargs: dict | None = None,
    init_state: Any = None,
    **config: Any,
) -> FitResult:
    """Fit a diffusion sampler to a NumPyro model (or a prepared :class:`Target`).

    Args:
        model: NumPyro model, or a :class:`Target`.
        *model_args: positional arguments of the model.
        engine: "dds" (default), "dis", "pis" (learned control) or "tt" (tensor-train HJB).
            DDS and DIS differ only in the integrator (exponential vs Euler–Maruyama); the
            Euler–Maruyama variance mismatch costs ESS in every Gaussian-like dimension
            (docs/benchmarks_notes.md), hence the default.
        rng_key: PRNG key (default key 0).
        whitening: None, "laplace" or "advi" (DESIGN.md s.1).
        progress_bar: show a tqdm bar while fitting.
        model_kwargs: keyword arguments of the model.
        init_state: a previous fit's ``state`` (or a :class:`FitResult`) to warm-start from.
        **config: engine settings (see ``numpyro_hjb.control.engine.DEFAULTS`` and
            ``numpyro_hjb.tt.engine.DEFAULTS``), e.g. ``loss="lv"``, ``num_iterations=2000``.

    Returns:
        :class:`FitResult` with ``.sample``, ``.log_evidence`` and ``.propose``.
    """
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    key_target, key_fit = jax.random.split(rng_key)
    if isinstance(model, Target):
        if model_args or model_kwargs:
            raise ValueError("model arguments given with a prepared Target")
        target = model
    mod = engine_module(engine)
    if not isinstance(model, Target):
        # A float64 engine (TT) gets its whitening pre-fit in float64 as well: in float32 the
        # whitened potential of a Gaussian is quadratic only up to round-off.
        with _engine_precision(mod):
            target = make_target(
                model, *model_args, rng_key=key_target, whitening=whitening, **(model_kwargs or {})
            )
    unknown = set(config) - set(mod.DEFAULTS) - set(ENGINES[engine][1])
    if unknown:
        raise TypeError(
            f"unknown settings for engine {engine!r}: {sorted(unknown)}; "
            f"valid: {sorted(mod.DEFAULTS)}"
        )
    full_config = {**mod.DEFAULTS, **config, **ENGINES[engine][1]}
    if isinstance(init_state, FitResult):
        if init_state.engine != engine:
            raise ValueError(
                f"init_state comes from engine {init_state.engine!r}, not {engine!r}"
            )
        init_state = init_state.state
    kwargs = {} if init_state is None else {"init_state": init_state}
    state, history, info = mod.fit(target, key_fit, full_config, progress_bar, **kwargs)
    history = {k: np.asarray(v) for k, v in history.items()}
    return FitResult(engine, target, state, full_config, history, dict(info))
