"""NumPyro ``MCMCKernel`` classes over the pure IMH functions: ``MCMC(DDS(model))`` and friends.

The split follows NumPyro's ``hmc()`` / ``HMC``: :mod:`numpyro_hjb.mcmc.imh` holds pure
``init`` / ``step`` functions over an explicit state, and :class:`DiffusionKernel` only plugs
them into :class:`numpyro.infer.MCMC`.

* **Warmup = fit.** ``init`` fits the engine once (:func:`numpyro_hjb.fit`) and keeps the
  :class:`~numpyro_hjb.api.FitResult`; the ``num_warmup`` steps that follow are IMH steps.
  The fit is reused while the model's data are unchanged (compared by content, so data
  changed in place trigger a refit, as NUTS re-reads them), and shared by all chains.
* **Sampling = IMH on path space** from a pool of proposals drawn ahead in batches
  (:func:`~numpyro_hjb.mcmc.imh.imh_step`). An engine whose ``propose`` cannot be traced
  (the float64 TT engine) refills the pool through one host callback per batch.
* **Chains.** ``sequential`` chains reuse the fit; ``vectorized`` chains refill their pools
  together; under ``parallel`` (pmap) the fit runs outside the trace, keyed by
  ``fit_rng_key``.
* **Local moves** (``refine_steps=k``, ``refine="mala" | "hmc"``): after each IMH step, k
  BlackJAX moves of the end point; for the learned-control engines the moved point becomes
  the state with the weight of a fresh reference bridge (exact on path space), for the others
  it is only reported.

Extra fields collected by default: ``log_weight``, ``accept_prob`` (ArviZ:
``acceptance_rate``), ``accepted`` and ``diverging`` (a proposal had a NaN / +inf weight).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from ..api import FitResult, _count, _reject_unknown, fit
from ..base import get_engine
from ..settings import EngineSettings
from .imh import imh_init, imh_refill, imh_step
from .refine import make_refine_fn

__all__ = ["DiffusionKernel", "DIS", "DDS", "PIS", "TTHJB", "data_fingerprint"]

Array = jax.Array


def data_fingerprint(args: tuple, kwargs: dict) -> str:
    """A hash of the model's arguments by content (array bytes, shapes, dtypes, reprs)."""
    h = hashlib.sha1()
    leaves, tree = jax.tree_util.tree_flatten((tuple(args), dict(kwargs or {})))
    h.update(str(tree).encode())
    for leaf in leaves:
        if isinstance(leaf, (np.ndarray, jax.Array, np.generic)) or np.isscalar(leaf):
            arr = np.asarray(leaf)
            h.update(f"{arr.shape}{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


def _is_traced(x: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def host_batch_propose(fit_result: FitResult) -> Callable[[Array, int], tuple[Array, Array]]:
    """``propose(key, n)`` for an engine whose ``propose`` cannot be traced: one
    ``jax.pure_callback`` per batch of n proposals, in the default float type."""
    dtype = jnp.zeros(()).dtype
    dim = fit_result.target.dim

    def propose(key, n):
        shapes = (jax.ShapeDtypeStruct((n, dim), dtype), jax.ShapeDtypeStruct((n,), dtype))

        def host(raw_key):
            x, log_w = fit_result.propose(jnp.asarray(raw_key, jnp.uint32), n)
            return np.asarray(x, dtype), np.asarray(log_w, dtype)

        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        return jax.pure_callback(host, shapes, key, vmap_method="sequential")

    return propose


class DiffusionKernel(MCMCKernel):
    """A fitted sampler as a NumPyro MCMC kernel (IMH on path space).

    Args:
        model: a NumPyro model (may be None when ``fit_result`` is given).
        engine: an engine name (the subclasses fix it).
        settings: a settings object of the engine; ``**overrides`` apply on top.
        whitening: None, "laplace" or "advi", passed to :func:`numpyro_hjb.fit`.
        progress_bar: show the fit's progress bar during ``init``.
        fit_rng_key: PRNG key of the fit (default: folded from the first chain's key;
            ``PRNGKey(0)`` under ``chain_method="parallel"``).
        fit_result: an existing :class:`~numpyro_hjb.api.FitResult`: no fit is run.
        num_init_proposals: proposals behind the resampled initial state.
        proposals_per_step: 1 is IMH, N > 1 i-SIR among N proposals and the current state.
        pool_size: proposals drawn per batch (at least ``proposals_per_step``).
        refine_steps, refine, refine_step_size, refine_integration_steps: local moves.
        strict: raise instead of warn when a result cannot be trusted.
        **overrides: engine settings by name, checked at once.
    """

    engine: str = "dds"

    def __init__(
        self,
        model: Callable | None = None,
        *,
        engine: str | None = None,
        settings: EngineSettings | None = None,
        whitening: str | None = None,
        progress_bar: bool = True,
        fit_rng_key: Array | None = None,
        fit_result: FitResult | None = None,
        num_init_proposals: int = 64,
        proposals_per_step: int = 1,
        pool_size: int = 256,
        refine_steps: int = 0,
        refine: str = "mala",
        refine_step_size: float = 0.1,
        refine_integration_steps: int = 5,
        strict: bool = False,
        **overrides: Any,
    ):
        eng = get_engine(self.engine if engine is None else engine)
        self.engine = eng.name
        if fit_result is not None:
            if not isinstance(fit_result, FitResult):
                raise TypeError(f"fit_result must be a FitResult, got {type(fit_result).__name__}")
            if fit_result.engine != eng.name:
                raise ValueError(
                    f"fit_result comes from engine {fit_result.engine!r}, not {eng.name!r}"
                )
            if overrides or settings is not None or whitening is not None:
                raise ValueError("engine settings / whitening cannot be combined with a fit_result")
            model = fit_result.target.model if model is None else model
        elif model is None or not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        self._num_init = _count(num_init_proposals, "num_init_proposals")
        self._num_proposals = _count(proposals_per_step, "proposals_per_step")
        self._pool_size = max(_count(pool_size, "pool_size"), self._num_proposals)
        if refine not in ("mala", "hmc"):
            raise ValueError(f"refine must be 'mala' or 'hmc', got {refine!r}")
        steps = _count(refine_steps, "refine_steps", minimum=0)
        if not refine_step_size > 0:
            raise ValueError(f"refine_step_size must be > 0, got {refine_step_size}")
        self._refine = (refine, steps, float(refine_step_size), int(refine_integration_steps))
        if fit_result is None:
            _reject_unknown(eng, overrides, model)
            self._settings = eng.make_settings(settings, **overrides)  # validated now
        self._model = model
        self._whitening = whitening
        self._progress_bar = bool(progress_bar)
        self._fit_rng_key = fit_rng_key
        self._strict = bool(strict)
        self._fit_result = fit_result
        self._fixed_fit = fit_result is not None
        self._fingerprint: str | None = None
        self._sample_fn = None
        self._imh_cache = None  # (fit_result, jitted init, step) reused across chains

    # -- NumPyro MCMCKernel interface ------------------------------------------------

    @property
    def model(self):
        return self._model

    @property
    def sample_field(self):
        return "z"

    @property
    def default_fields(self):
        return ("z", "log_weight", "accept_prob", "accepted", "diverging")

    @property
    def fit_result(self) -> FitResult | None:
        """The fitted sampler (None before the first ``init``)."""
        return self._fit_result

    def get_diagnostics_str(self, state):
        return "acc. prob={:.2f}".format(float(np.mean(state.mean_accept_prob)))

    def _fit(self, rng_key: Array, model_args: tuple, model_kwargs: dict) -> FitResult:
        traced_key = _is_traced(rng_key)
        if self._fit_rng_key is not None:
            key_fit = self._fit_rng_key
        elif traced_key:
            key_fit = None  # PRNGKey(0), made in the fitting thread (outside the trace)
        else:
            first = rng_key if is_prng_key(rng_key) else rng_key[0]
            key_fit = jax.random.fold_in(first, 0x5EED)

        def run_fit():
            return fit(
                self._model, *model_args, engine=self.engine, settings=self._settings,
                rng_key=jax.random.PRNGKey(0) if key_fit is None else key_fit,
                whitening=self._whitening, progress_bar=self._progress_bar,
                model_kwargs=dict(model_kwargs or {}), strict=self._strict,
            )

        if traced_key or _is_traced((model_args, model_kwargs)):
            if _is_traced((model_args, model_kwargs)):
                raise ValueError(
                    "the model arguments are traced in init (e.g. a callable chain_method "
                    "with batched arguments); fit first with numpyro_hjb.fit and pass "
                    "fit_result="
                )
            # init runs under pmap (chain_method="parallel"): fit outside that trace; JAX's
            # trace state is thread local, so a fresh thread evaluates eagerly.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(run_fit).result()
        return run_fit()

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        """Fit (once per data), then the initial IMH state(s). A batch of keys (vectorized
        chains) gives a batch of states, refilled together."""
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if init_params is not None:
            warnings.warn(
                "init_params is ignored: the IMH chain starts from a resampled proposal of "
                "the fitted sampler",
                stacklevel=2,
            )
        if not self._fixed_fit:
            fingerprint = None if _is_traced((model_args, model_kwargs)) else data_fingerprint(
                model_args, model_kwargs)
            if self._fit_result is None or fingerprint != self._fingerprint:
                self._fit_result = self._fit(rng_key, model_args, model_kwargs)
                self._fingerprint = fingerprint
        if self._imh_cache is None or self._imh_cache[0] is not self._fit_result:
            self._imh_cache = (self._fit_result, *self._imh_fns())
        _, init_fn, step_fn, refill_fn = self._imh_cache
        if is_prng_key(rng_key):
            self._sample_fn = step_fn
            return init_fn(rng_key)
        step_one = jax.vmap(partial(step_fn, refill=False))

        def step_batch(states):
            # one predicate for all chains (they step together), so the refill runs only
            # when needed instead of on every step, as a vmapped cond would
            states = jax.lax.cond(self._batch_needs_refill(states), jax.vmap(refill_fn),
                                  lambda s: s, states)
            return step_one(states)

        self._sample_fn = step_batch
        return jax.vmap(init_fn)(rng_key)

    def _batch_needs_refill(self, states) -> Array:
        """Whether a batch of chains (stepping together) has used up its proposal pool."""
        return states.pool_pos[0] + self._num_proposals > states.pool_x.shape[1]

    def _imh_fns(self):
        fit_result = self._fit_result
        target = fit_result.target
        if fit_result.engine_def.traceable:
            propose_fn = fit_result.propose
        else:
            propose_fn = host_batch_propose(fit_result)

        def to_z(x):
            return target.unravel(target.to_unconstrained(x))

        method, steps, step_size, n_int = self._refine
        refine_fn = (
            make_refine_fn(target.log_density, target.dim, method, steps, step_size, n_int)
            if steps > 0 else None
        )
        bridge_fn = None
        if refine_fn is not None and fit_result.can_bridge:

            def bridge_fn(key, x):
                return fit_result.bridge_log_weight(key, x[None])[0]

        init_fn = partial(
            imh_init, propose_fn, to_z, num_init=self._num_init, pool_size=self._pool_size,
            refine_fn=refine_fn, bridge_fn=bridge_fn,
        )

        def step_fn(state, refill=True):
            return imh_step(
                propose_fn if refill else None, to_z, state, refine_fn=refine_fn,
                bridge_fn=bridge_fn, num_proposals=self._num_proposals,
            )

        return jax.jit(init_fn), step_fn, partial(imh_refill, propose_fn)

    def sample(self, state, model_args, model_kwargs):
        """One IMH step (the fit is fixed, so the model arguments are not used)."""
        if self._sample_fn is None:
            raise RuntimeError("`init` must be called before `sample`")
        return self._sample_fn(state)

    def postprocess_fn(self, model_args, model_kwargs):
        """Unconstrained site dict -> constrained sites, deterministic sites included."""
        if self._model is not None:
            from numpyro.infer.util import constrain_fn

            model, kwargs = self._model, dict(model_kwargs or {})
            return lambda z: constrain_fn(
                model, tuple(model_args), kwargs, z, return_deterministic=True
            )
        if self._fit_result is None:
            raise RuntimeError("`init` must be called before `postprocess_fn`")
        target = self._fit_result.target
        return lambda z: target.constrain(ravel_pytree(z)[0])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        state["_imh_cache"] = None
        return state


class DIS(DiffusionKernel):
    """Time-reversed diffusion sampler (learned control, Euler-Maruyama), docs/design.md s.3."""

    engine = "dis"


class DDS(DiffusionKernel):
    """Denoising diffusion sampler (learned control, exponential integrator), docs/design.md s.3."""

    engine = "dds"


class PIS(DiffusionKernel):
    """Path integral sampler (Brownian reference from a point), docs/design.md s.3."""

    engine = "pis"


class TTHJB(DiffusionKernel):
    """Tensor-train HJB engine (docs/design.md s.4) as an MCMC kernel."""

    engine = "tt"
