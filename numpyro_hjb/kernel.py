"""NumPyro ``MCMCKernel`` adapters: ``MCMC(DIS(model, ...))``, ``DDS``, ``PIS``, ``TTHJB``.

The kernels follow NumPyro's own split (DESIGN.md s.8, ``numpyro/infer/hmc.py``): pure
functions :func:`imh_init` and :func:`imh_step` over an explicit :class:`IMHState`, wrapped
by a small class that plugs them into :class:`numpyro.infer.MCMC`.

* **Warmup = fit.** :meth:`DiffusionKernel.init` fits the engine once
  (:func:`numpyro_hjb.fit`) and keeps the :class:`~numpyro_hjb.api.FitResult`. The
  ``num_warmup`` MCMC steps that follow are ordinary IMH steps (burn-in).
* **Sampling = independence Metropolis–Hastings on path space** (DESIGN.md s.5). A step
  draws one fresh proposal y' ~ F_theta with path log weight log w' and accepts it with
  probability min(1, w'/w), w the weight of the current path. The path weight
  w = rho(y_K) B(y_{0:K-1} | y_K) / F(y_{0:K}) is the ratio of the extended target
  (posterior times the exact noising path) to the proposal on path space, so the chain is
  exact for the posterior for any fitted theta; its acceptance rate measures the fit.
  With ``proposals_per_step=N > 1`` a step draws N proposals and resamples among them and
  the current path (iterated SIR), which moves more often when the weights are uneven.
* **Chains.** With ``num_chains > 1`` the fit happens once and is shared by all chains
  (``sequential``: the first chain fits and the others reuse it; ``vectorized``: NumPyro
  passes a batch of keys and :func:`imh_init` / :func:`imh_step` are ``vmap``-ed;
  ``parallel``: ``init`` is traced under ``pmap``, so the fit runs outside that trace with
  ``fit_rng_key``).
* **Optional local moves** (``refine_steps=k``, ``refine="mala" | "hmc"``): after each
  IMH step, k BlackJAX MALA/HMC steps on the target's flat log density move the end point,
  x~ = P^k(x, .). For the learned-control engines x~ then becomes the chain's state, and a
  fresh reference bridge ending at x~ (the exact conditional of the path given its end,
  :func:`numpyro_hjb.diffusion.reference_bridge`) gives its path weight: a
  Metropolis-within-Gibbs move on path space, so local moves explore what the independence
  proposals visit rarely. For the TT engine, which has no bridge weight, x~ is only
  reported and the IMH chain continues from x; (x, w, x~) is then a Markov chain whose
  x~-marginal is still exactly the posterior. ``accept_prob`` / ``acceptance_rate`` refer
  to the IMH part only, ``refine_accept_prob`` (extra field) to the local moves.

Extra fields collected by default: ``log_weight`` (path log weight of the current IMH
state), ``accept_prob`` (ArviZ: ``acceptance_rate``), ``accepted`` and ``diverging``
(the fresh proposal had a NaN / +inf log weight, a numerical failure of the sampler; it is
always rejected).
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from .api import ENGINES, FitResult, engine_module, fit

__all__ = [
    "IMHState",
    "imh_init",
    "imh_step",
    "make_refine_fn",
    "DiffusionKernel",
    "DIS",
    "DDS",
    "PIS",
    "TTHJB",
]

Array = jax.Array


class IMHState(NamedTuple):
    """State of the independence Metropolis–Hastings chain (one chain).

    Attributes:
        i: () iteration counter (warmup steps included).
        z: {site: unconstrained value} of the reported draw (NumPyro's sample field).
        x: (d,) current IMH state in engine coordinates.
        log_weight: () path log weight log w of the current IMH state (-inf: none yet).
        accept_prob: () min(1, w'/w) of the last step.
        accepted: () whether the last proposal was accepted.
        diverging: () whether the last proposal had a NaN / +inf log weight.
        mean_accept_prob: () running mean of ``accept_prob``.
        refine_accept_prob: () mean acceptance of the refinement steps (NaN without).
        rng_key: the chain's PRNG key.
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


ProposeFn = Callable[[Array], tuple[Array, Array]]
RefineFn = Callable[[Array, Array], tuple[Array, Array]]
BridgeFn = Callable[[Array, Array], Array]  # (key, x (d,)) -> path log weight ()


def _sanitise(log_w: Array) -> tuple[Array, Array]:
    """NaN / +inf log weights (sampler failures) -> -inf, and the failure flag."""
    bad = jnp.isnan(log_w) | (log_w == jnp.inf)
    return jnp.where(bad, -jnp.inf, log_w), bad


def _move(
    x: Array,
    log_w: Array,
    key: Array,
    to_z: Callable[[Array], dict],
    refine_fn: RefineFn | None,
    bridge_fn: BridgeFn | None,
) -> tuple[Array, Array, dict, Array]:
    """The local part of a step: (state x, its log w, reported draw z, refine acceptance).

    Without ``refine_fn`` nothing moves. With it, x~ = P^k(x) (BlackJAX). With a
    ``bridge_fn`` as well, x~ becomes the state and a fresh reference bridge ending at x~
    gives its path weight (Metropolis-within-Gibbs on path space: P leaves the posterior
    invariant, and the bridge is the exact conditional of the path given its end). Without
    one, x~ is only reported and the chain stays at x.
    """
    if refine_fn is None:
        return x, log_w, to_z(x), jnp.asarray(jnp.nan, jnp.float32)
    key_refine, key_bridge = jax.random.split(key)
    x_new, acc = refine_fn(key_refine, x)
    acc = jnp.asarray(acc, jnp.float32)
    if bridge_fn is None:
        return x, log_w, to_z(x_new), acc
    log_w_new, _ = _sanitise(bridge_fn(key_bridge, x_new))
    return x_new, log_w_new.astype(log_w.dtype), to_z(x_new), acc


def imh_init(
    propose_fn: ProposeFn,
    to_z: Callable[[Array], dict],
    rng_key: Array,
    num_init: int = 64,
    refine_fn: RefineFn | None = None,
    bridge_fn: BridgeFn | None = None,
) -> IMHState:
    """Initial IMH state: one of ``num_init`` fresh proposals picked by importance resampling.

    Sampling-importance-resampling (DESIGN.md s.5) puts the start close to the posterior, so
    little burn-in is needed. Pure; ``propose_fn(key) -> (x (d,), log_w ())``.
    """
    if num_init < 1:
        raise ValueError(f"num_init must be >= 1, got {num_init}")
    key_chain, key_prop, key_pick, key_ref = jax.random.split(rng_key, 4)
    xs, log_ws = jax.vmap(propose_fn)(jax.random.split(key_prop, num_init))
    log_ws, bad = _sanitise(log_ws)
    idx = jax.random.categorical(key_pick, log_ws)
    x, log_w, z, refine_acc = _move(xs[idx], log_ws[idx], key_ref, to_z, refine_fn, bridge_fn)
    return IMHState(
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
    )


def imh_step(
    propose_fn: ProposeFn,
    to_z: Callable[[Array], dict],
    state: IMHState,
    refine_fn: RefineFn | None = None,
    bridge_fn: BridgeFn | None = None,
    num_proposals: int = 1,
) -> IMHState:
    """One independence Metropolis–Hastings step on path space (DESIGN.md s.5).

    ``num_proposals = 1``: draw y' ~ F_theta with path log weight log w' and accept it with
    probability alpha = min(1, w'/w). ``num_proposals = N > 1``: iterated
    sampling-importance-resampling (i-SIR; Andrieu, Lee and Vihola 2018): draw N fresh
    paths and pick the next state among them and the current one with probabilities
    proportional to their weights; it moves with probability 1 - w / (w + sum w'), more
    often than IMH when the weights are uneven. Either way the proposals are independent of
    the state, so the extended target rho(y_K) B(path | y_K) / Z is invariant and the
    y_K-marginal is the posterior. A current state without a finite weight (-inf) is left
    for any finite proposal; a proposal with a NaN / +inf weight is flagged ``diverging``
    and never chosen. Pure.
    """
    if num_proposals < 1:
        raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
    key_chain, key_prop, key_acc, key_ref = jax.random.split(state.rng_key, 4)
    cur = state.log_weight
    if num_proposals == 1:
        x_new, log_w_new = propose_fn(key_prop)
        log_w_new, bad = _sanitise(log_w_new)
        ratio = jnp.exp(jnp.minimum(log_w_new - jnp.where(jnp.isfinite(cur), cur, 0.0), 0.0))
        accept_prob = jnp.where(
            jnp.isfinite(log_w_new), jnp.where(jnp.isfinite(cur), ratio, 1.0), 0.0
        ).astype(jnp.float32)
        accepted = jax.random.uniform(key_acc) < accept_prob
    else:
        xs, log_ws = jax.vmap(propose_fn)(jax.random.split(key_prop, num_proposals))
        log_ws, bads = _sanitise(log_ws)
        bad = jnp.any(bads)
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
    x, log_w, z, refine_acc = _move(x, log_w, key_ref, to_z, refine_fn, bridge_fn)
    n = (state.i + 1).astype(jnp.float32)
    mean_acc = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n
    return IMHState(
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
    )


def make_refine_fn(
    log_density: Callable[[Array], Array],
    dim: int,
    method: str = "mala",
    num_steps: int = 1,
    step_size: float = 0.1,
    num_integration_steps: int = 5,
) -> RefineFn:
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


def _host_propose_fn(fit_result: FitResult) -> ProposeFn:
    """``propose_fn`` for an engine whose ``propose`` cannot be traced (``JIT_PROPOSE =
    False``, e.g. one that switches to float64 itself): a ``jax.pure_callback`` runs it on
    the host, so the IMH step still works under ``jit``, ``vmap`` and ``pmap``."""
    dtype = jnp.zeros(()).dtype  # the default float type (float32 unless x64 is on)
    shapes = (
        jax.ShapeDtypeStruct((fit_result.target.dim,), dtype),
        jax.ShapeDtypeStruct((), dtype),
    )

    def host(raw_key):
        x, log_w = fit_result.propose(jnp.asarray(raw_key, jnp.uint32), 1)
        return np.asarray(x[0], dtype), np.asarray(log_w[0], dtype)

    def propose_fn(key):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        return jax.pure_callback(host, shapes, key, vmap_method="sequential")

    return propose_fn


def _is_traced(x: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _leaf_ids(args: tuple, kwargs: dict) -> tuple:
    leaves = jax.tree_util.tree_leaves((args, dict(kwargs or {})))
    return tuple(id(leaf) for leaf in leaves) + (len(leaves),)


class DiffusionKernel(MCMCKernel):
    """A fitted diffusion sampler as a NumPyro MCMC kernel (IMH on path space).

    Args:
        model: a NumPyro model (may be None when ``fit_result`` is given).
        engine: "dis", "dds", "pis" or "tt" (the subclasses fix it).
        whitening: None, "laplace" or "advi", passed to :func:`numpyro_hjb.fit`.
        progress_bar: show the fit's progress bar during ``init`` (MCMC's own bar covers
            the IMH steps).
        fit_rng_key: PRNG key of the fit. Default: derived from the first chain's key
            (``fold_in``); under ``chain_method="parallel"`` (traced keys) ``PRNGKey(0)``.
        fit_result: an existing :class:`~numpyro_hjb.api.FitResult` (e.g. from
            :func:`numpyro_hjb.io.load_fit`): no fit is run.
        num_init_proposals: proposals behind the resampled initial state (:func:`imh_init`).
        proposals_per_step: fresh proposals per step: 1 is independence MH, N > 1 iterated
            SIR among the N and the current state (:func:`imh_step`); ``accept_prob`` is then
            the probability of moving.
        refine_steps: BlackJAX local moves per draw (0: none; see the module docstring);
            ``refine``: "mala" or "hmc"; ``refine_step_size`` (in engine coordinates,
            whitened when ``whitening`` is set); ``refine_integration_steps`` (HMC only).
        **engine_config: engine settings, e.g. ``loss="lv"``, ``num_iterations=500``.

    The fit is computed in the first ``init`` and reused while the model arguments are the
    same objects (so ``num_chains`` chains share one fit); new arguments trigger a refit.
    """

    engine: str = "dis"

    def __init__(
        self,
        model: Callable | None = None,
        *,
        engine: str | None = None,
        whitening: str | None = None,
        progress_bar: bool = True,
        fit_rng_key: Array | None = None,
        fit_result: FitResult | None = None,
        num_init_proposals: int = 64,
        proposals_per_step: int = 1,
        refine_steps: int = 0,
        refine: str = "mala",
        refine_step_size: float = 0.1,
        refine_integration_steps: int = 5,
        **engine_config: Any,
    ):
        engine = self.engine if engine is None else engine
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
        self.engine = engine
        if fit_result is not None:
            if not isinstance(fit_result, FitResult):
                raise TypeError(
                    f"fit_result must be a FitResult, got {type(fit_result).__name__}"
                )
            if fit_result.engine != engine:
                raise ValueError(
                    f"fit_result comes from engine {fit_result.engine!r}, not {engine!r}"
                )
            if engine_config or whitening is not None:
                raise ValueError(
                    "engine settings / whitening cannot be combined with a fit_result"
                )
            model = fit_result.target.model if model is None else model
        elif model is None or not callable(model):
            raise TypeError(
                f"model must be a callable NumPyro model, got {type(model).__name__}"
            )
        if int(num_init_proposals) < 1:
            raise ValueError(f"num_init_proposals must be >= 1, got {num_init_proposals}")
        if int(proposals_per_step) < 1:
            raise ValueError(f"proposals_per_step must be >= 1, got {proposals_per_step}")
        if int(refine_steps) < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        if refine not in ("mala", "hmc"):
            raise ValueError(f"refine must be 'mala' or 'hmc', got {refine!r}")
        if not refine_step_size > 0:
            raise ValueError(f"refine_step_size must be > 0, got {refine_step_size}")
        self._check_config(engine, engine_config)
        self._model = model
        self._whitening = whitening
        self._progress_bar = bool(progress_bar)
        self._fit_rng_key = fit_rng_key
        self._engine_config = dict(engine_config)
        self._num_init = int(num_init_proposals)
        self._num_proposals = int(proposals_per_step)
        self._refine = (refine, int(refine_steps), float(refine_step_size), int(refine_integration_steps))
        self._fit_result = fit_result
        self._fixed_fit = fit_result is not None
        self._fit_args_ids: tuple | None = None
        self._sample_fn = None
        self._imh_cache = None  # (fit_result, jitted init, step) reused across chains
        self._num_warmup = 0

    @staticmethod
    def _check_config(engine: str, config: dict) -> None:
        try:
            mod = engine_module(engine)
        except ImportError:  # engine not installed yet: fit() reports it
            return
        unknown = set(config) - set(mod.DEFAULTS)
        if unknown:
            raise TypeError(
                f"unknown settings for engine {engine!r}: {sorted(unknown)}; "
                f"valid: {sorted(mod.DEFAULTS)}"
            )

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
        return "acc. prob={:.2f}".format(float(state.mean_accept_prob))

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
                self._model,
                *model_args,
                engine=self.engine,
                rng_key=jax.random.PRNGKey(0) if key_fit is None else key_fit,
                whitening=self._whitening,
                progress_bar=self._progress_bar,
                model_kwargs=dict(model_kwargs or {}),
                **self._engine_config,
            )

        if traced_key or _is_traced((model_args, model_kwargs)):
            if _is_traced((model_args, model_kwargs)):
                raise ValueError(
                    "the model arguments are traced in init (e.g. a callable chain_method "
                    "with batched arguments); fit first with numpyro_hjb.fit and pass "
                    "fit_result="
                )
            # init runs under pmap (chain_method="parallel"): fit outside that trace. JAX's
            # trace state is thread local, so a fresh thread evaluates eagerly.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(run_fit).result()
        return run_fit()

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        """Fit (once), then the initial IMH state(s). A batch of keys (vectorized chains)
        gives a batch of states and a ``vmap``-ed step."""
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if init_params is not None:
            warnings.warn(
                "init_params is ignored: the IMH chain starts from a resampled proposal of "
                "the fitted sampler",
                stacklevel=2,
            )
        if not self._fixed_fit:
            ids = _leaf_ids(model_args, model_kwargs)
            if self._fit_result is None or ids != self._fit_args_ids:
                self._fit_result = self._fit(rng_key, model_args, model_kwargs)
                self._fit_args_ids = ids
        self._num_warmup = int(num_warmup)
        if self._imh_cache is None or self._imh_cache[0] is not self._fit_result:
            self._imh_cache = (self._fit_result, *self._imh_fns())
        _, init_fn, step_fn = self._imh_cache
        if is_prng_key(rng_key):
            self._sample_fn = step_fn
            return init_fn(rng_key)
        self._sample_fn = jax.vmap(step_fn)
        return jax.vmap(init_fn)(rng_key)

    def _imh_fns(self):
        fit_result = self._fit_result
        target = fit_result.target

        if getattr(engine_module(fit_result.engine), "JIT_PROPOSE", True):

            def propose_fn(key):
                x, log_w = fit_result.propose(key, 1)
                return x[0], log_w[0]

        else:
            propose_fn = _host_propose_fn(fit_result)

        def to_z(x):
            return target.unravel(target.to_unconstrained(x))

        method, steps, step_size, n_int = self._refine
        refine_fn = (
            make_refine_fn(target.log_density, target.dim, method, steps, step_size, n_int)
            if steps > 0
            else None
        )
        bridge_fn = None
        if refine_fn is not None and fit_result.can_bridge:

            def bridge_fn(key, x):
                return fit_result.bridge_log_weight(key, x[None])[0]

        init_fn = partial(
            imh_init,
            propose_fn,
            to_z,
            num_init=self._num_init,
            refine_fn=refine_fn,
            bridge_fn=bridge_fn,
        )
        step_fn = partial(
            imh_step,
            propose_fn,
            to_z,
            refine_fn=refine_fn,
            bridge_fn=bridge_fn,
            num_proposals=self._num_proposals,
        )
        return jax.jit(init_fn), step_fn

    def sample(self, state, model_args, model_kwargs):
        """One IMH step (the fit is fixed, so the model arguments are not used)."""
        if self._sample_fn is None:
            raise RuntimeError("`init` must be called before `sample`")
        return self._sample_fn(state)

    def postprocess_fn(self, model_args, model_kwargs):
        """Unconstrained site dict -> constrained sites, deterministic sites included."""
        target = self._fit_result.target if self._fit_result is not None else None
        if self._model is not None:
            from numpyro.infer.util import constrain_fn

            model, kwargs = self._model, dict(model_kwargs or {})
            return lambda z: constrain_fn(
                model, tuple(model_args), kwargs, z, return_deterministic=True
            )
        if target is None:
            raise RuntimeError("`init` must be called before `postprocess_fn`")
        return lambda z: target.constrain(ravel_pytree(z)[0])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        state["_imh_cache"] = None
        return state


class DIS(DiffusionKernel):
    """Time-reversed diffusion sampler (learned control, Euler–Maruyama), DESIGN.md s.3.

    ``MCMC(DIS(model, loss="lv", num_iterations=500), num_warmup=100, num_samples=1000)``.
    """

    engine = "dis"


class DDS(DiffusionKernel):
    """Denoising diffusion sampler (learned control, exponential integrator), DESIGN.md s.3."""

    engine = "dds"


class PIS(DiffusionKernel):
    """Path integral sampler (Brownian reference from a point), DESIGN.md s.3."""

    engine = "pis"


class TTHJB(DiffusionKernel):
    """Tensor-train HJB engine (DESIGN.md s.4) as an MCMC kernel."""

    engine = "tt"
