"""The public entry points: ``fit(model, ...)`` -> :class:`FitResult`, and :func:`log_evidence`.

Data flows one way (docs/design.md, "Architecture"): model -> :class:`~numpyro_hjb.target.
Target` -> engine fit -> proposals with log weights -> evidence / resampling -> draws per
site. The engines are :class:`~numpyro_hjb.base.Engine` objects (:func:`~numpyro_hjb.base.
get_engine`); their settings are typed (:mod:`numpyro_hjb.settings`).

Model arguments follow NumPyro's ``MCMC.run``: positional arguments after the model, keyword
arguments of the model in ``model_kwargs=``; every other keyword is an engine setting. A
keyword that is not a setting but is a parameter of the model raises at once and points to
``model_kwargs=``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from .base import Engine, get_engine, in_precision
from .evidence import EvidenceEstimate, check_reliability, estimate_evidence, resample
from .settings import EngineSettings, UnknownSettingError
from .sharding import resolve_devices, sharding_for, use_devices
from .target import Target, make_target

__all__ = ["DEFAULT_ENGINE", "Draws", "FitResult", "fit", "fit_result_of", "log_evidence"]

#: the engine ``fit`` uses when none is named
DEFAULT_ENGINE = "scld"


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


def _count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError that names the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted sampler: draws, log weights and evidence without refitting.

    Attributes:
        engine: the engine's name.
        target: the flat target the engine was fitted to.
        state: the engine's typed state (a NamedTuple of arrays).
        settings: the resolved, typed settings of the fit.
        history: {name: (num_iterations,)} training curves.
        info: {name: value} timings, counts and the engine's diagnostics.
        strict: raise instead of warn when a result cannot be trusted.
        devices: the devices the particle axis is partitioned over (:mod:`numpyro_hjb.
            sharding`); None: every device of the default backend.
    """

    engine: str
    target: Target
    state: Any
    settings: EngineSettings
    history: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    strict: bool = False
    devices: tuple | None = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def engine_def(self) -> Engine:
        return get_engine(self.engine)

    @property
    def config(self) -> dict:
        """The settings as a flat {option: value} dict (read-only view)."""
        return self.settings.flat()

    def propose(self, rng_key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
        """``num`` fresh proposals x (num, d) in engine coordinates and their log weights
        log rho(x) - log q(x) (path weights for the diffusion samplers)."""
        num = _count(num, "num")
        eng = self.engine_def
        with use_devices(self.devices), in_precision(eng):
            if not eng.traceable:
                return eng.propose(self.target, self.settings, self.state, rng_key, num)
            sharding = sharding_for(num)
            fn = self._cache.get(("propose", num))
            if fn is None:
                fn = jax.jit(
                    lambda state, key: eng.propose(self.target, self.settings, state, key, num),
                    **({} if sharding is None else {"out_shardings": sharding}),
                )
                self._cache[("propose", num)] = fn
            return fn(self.state, rng_key)

    @property
    def can_bridge(self) -> bool:
        """Whether the engine weighs paths through given end points (:meth:`bridge_log_weight`)."""
        return self.engine_def.can_bridge

    def bridge_log_weight(self, rng_key: jax.Array, x: jax.Array) -> jax.Array:
        """Path log weights (num,) of fresh reference bridges ending at x (num, d).

        With this an MCMC move of a proposal's end point rejoins path space exactly
        (:func:`numpyro_hjb.diffusion.bridge_log_weights`). Learned-control engines only.
        """
        if not self.can_bridge:
            raise NotImplementedError(f"engine {self.engine!r} cannot weigh bridges")
        with in_precision(self.engine_def):
            return self.engine_def.bridge_log_weight(self.target, self.settings, self.state,
                                                     rng_key, x)

    def log_evidence(self, rng_key: jax.Array | None = None, num_samples: int = 4096) -> EvidenceEstimate:
        """log Z from ``num_samples`` fresh proposals: :func:`numpyro_hjb.log_evidence`."""
        return log_evidence(self, rng_key=rng_key, num_samples=num_samples)

    def sample(self, rng_key: jax.Array, num: int, num_proposals: int | None = None) -> Draws:
        """``num`` posterior draws by sampling-importance-resampling from ``num_proposals``
        (default ``4 * num``, at least ``num``) fresh proposals. Raw weighted proposals are
        never returned as draws. Warns (``strict``: raises) when the weights cannot be
        trusted or the draws are copies of a few points."""
        num = _count(num, "num")
        num_proposals = 4 * num if num_proposals is None else _count(num_proposals, "num_proposals")
        if num_proposals < num:
            raise ValueError(
                f"num_proposals ({num_proposals}) must be >= num ({num}): resampling fewer "
                "proposals than draws returns copies"
            )
        key_prop, key_res = jax.random.split(rng_key)
        eng = self.engine_def
        if eng.draws is not None:  # the fit holds a weighted sample already
            with use_devices(self.devices), in_precision(eng):
                x, log_w = eng.draws(self.target, self.settings, self.state, key_prop,
                                     num_proposals)
            ev = _estimate(self, key_prop, num_proposals)
        else:
            x, log_w = self.propose(key_prop, num_proposals)
            ev = estimate_evidence(log_w, method=f"{self.engine} importance sampling")
        idx = resample(key_res, log_w, num)
        unique = len(np.unique(np.asarray(idx))) / num
        check_reliability(
            ev, unique_fraction=unique, what=f"the draws of engine {self.engine!r}",
            strict=self.strict,
        )
        x_draw = jax.numpy.asarray(np.asarray(x)[np.asarray(idx)])
        samples = self.target.constrain_batch(x_draw)
        return Draws(samples, x_draw, log_w, idx, ev)


def fit_result_of(obj: Any) -> FitResult:
    """The :class:`FitResult` behind a FitResult, one of our kernels, or an ``MCMC`` running
    one of our kernels (reached through ``mcmc.sampler``)."""
    from .mcmc.kernel import DiffusionKernel

    if isinstance(obj, FitResult):
        return obj
    kernel = obj if isinstance(obj, DiffusionKernel) else getattr(obj, "sampler", None)
    if not isinstance(kernel, DiffusionKernel):
        raise TypeError(
            "mcmc_or_fit must be a numpyro_hjb FitResult, a numpyro_hjb kernel, or a "
            "numpyro.infer.MCMC running one; got " + type(obj).__name__
            + (f" with sampler {type(kernel).__name__}" if kernel is not None else "")
        )
    if kernel.fit_result is None:
        raise ValueError("the kernel has not been fitted yet: call mcmc.run(...) first")
    return kernel.fit_result


def log_evidence(
    mcmc_or_fit: Any, rng_key: jax.Array | None = None, num_samples: int = 4096
) -> EvidenceEstimate:
    """log Z with its standard error, ELBO, ESS and PSIS k-hat (docs/design.md s.5).

    The one evidence entry point, for a :class:`FitResult`, one of our kernels, or a
    ``numpyro.infer.MCMC`` running one (after ``run``). The estimate comes from
    ``num_samples`` fresh proposals of the fitted sampler, never from accepted MCMC states.

    Raises:
        ValueError: the model has improper prior sites (the evidence p(y) is undefined; the
            error names them), or ``num_samples`` < 2.
    Warns:
        UnreliableResultWarning: low ESS, k-hat > 0.7, non-finite weights or log Z
            (raised instead when the fit was made with ``strict=True``).
    """
    num_samples = _count(num_samples, "num_samples", minimum=2)
    fit_result = fit_result_of(mcmc_or_fit)
    improper = tuple(fit_result.target.improper_sites)
    if improper:
        raise ValueError(
            f"the prior of site(s) {list(improper)} is improper, so the model evidence p(y) "
            "is undefined. Give these sites proper priors to compare models by evidence."
        )
    rng_key = jax.random.PRNGKey(12345) if rng_key is None else rng_key
    estimate = _estimate(fit_result, rng_key, num_samples)
    check_reliability(estimate, what="the log Z estimate", strict=fit_result.strict)
    return estimate


def _estimate(fit_result: FitResult, rng_key: jax.Array, num_samples: int) -> EvidenceEstimate:
    """The estimate of log int rho (the evidence when every prior is proper), unchecked."""
    eng = fit_result.engine_def
    if eng.evidence is not None:  # an engine with its own estimator (particle systems)
        with use_devices(fit_result.devices), in_precision(eng):
            return eng.evidence(
                fit_result.target, fit_result.settings, fit_result.state, rng_key, num_samples
            )
    _, log_w = fit_result.propose(rng_key, num_samples)
    return estimate_evidence(log_w, method=f"{fit_result.engine} importance sampling")


def _reject_unknown(eng: Engine, overrides: dict, model: Any) -> None:
    """Unknown setting names fail before any work; a model parameter gets a pointer to
    ``model_kwargs=``."""
    names = set(eng.settings.option_names()) | set(eng.settings.groups())
    unknown = [k for k in overrides if k not in names]
    if not unknown or not callable(model):
        return
    try:
        params = set(inspect.signature(model).parameters)
    except (TypeError, ValueError):
        params = set()
    for key in unknown:
        if key in params:
            raise UnknownSettingError(
                f"{key!r} is not a setting of engine {eng.name!r}; it is a parameter of the "
                f"model. Pass model keyword arguments as fit(model, *args, model_kwargs="
                f"{{{key!r}: ...}}), as with numpyro's MCMC.run."
            )


def fit(
    model: Callable | Target,
    *model_args: Any,
    engine: str | Engine = DEFAULT_ENGINE,
    settings: EngineSettings | None = None,
    rng_key: jax.Array | None = None,
    whitening: str | None = None,
    progress_bar: bool = True,
    model_kwargs: dict | None = None,
    init_state: Any = None,
    strict: bool = False,
    devices: int | Any | None = None,
    **overrides: Any,
) -> FitResult:
    """Fit a diffusion sampler to a NumPyro model (or a prepared :class:`Target`).

    Args:
        model: NumPyro model, or a :class:`Target`.
        *model_args: positional arguments of the model.
        engine: an engine name (``numpyro_hjb.base.engine_names()``) or object.
        settings: a settings object of that engine (e.g. ``ControlSettings()``); keyword
            overrides are applied on top of it.
        rng_key: PRNG key (default key 0).
        whitening: None, "laplace" or "advi" (docs/design.md s.1).
        progress_bar: show a tqdm bar while fitting.
        model_kwargs: keyword arguments of the model.
        init_state: a previous fit's ``state`` (or a :class:`FitResult`) to warm-start from.
        strict: raise :class:`~numpyro_hjb.evidence.UnreliableResultError` instead of
            warning when a result cannot be trusted.
        devices: the devices the particle axis (training batches, proposals, particle
            systems) is partitioned over: None (default) for every device of the default
            backend, an int for the first that many, or a sequence of ``jax.Device``
            (:mod:`numpyro_hjb.sharding`).
        **overrides: engine settings by name, e.g. ``num_iterations=500``; a misspelt name
            raises at once and suggests the closest valid one.

    Returns:
        :class:`FitResult` with ``.sample``, ``.log_evidence`` and ``.propose``.
    """
    eng = get_engine(engine)
    _reject_unknown(eng, overrides, model)
    devices = resolve_devices(devices)
    resolved = eng.make_settings(settings, **overrides)
    resolved = resolved.resolve() if hasattr(resolved, "resolve") else resolved
    if isinstance(init_state, FitResult):
        if init_state.engine != eng.name:
            raise ValueError(
                f"init_state comes from engine {init_state.engine!r}, not {eng.name!r}"
            )
        init_state = init_state.state
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    key_target, key_fit = jax.random.split(rng_key)
    if isinstance(model, Target):
        if model_args or model_kwargs:
            raise ValueError("model arguments given with a prepared Target")
        if whitening not in (None, "none"):
            raise ValueError("whitening= applies to a model; whiten a prepared Target with whiten()")
        target = model
    else:
        target = make_target(
            model, *model_args, rng_key=key_target, whitening=whitening,
            precision=eng.precision, **(model_kwargs or {}),
        )
    with use_devices(devices), in_precision(eng):
        state, info = eng.fit(target, key_fit, resolved, progress_bar, init_state)
    history = {k: np.asarray(v) for k, v in info.history.items()}
    return FitResult(eng.name, target, state, resolved, history, dict(info.stats), bool(strict),
                     devices)
