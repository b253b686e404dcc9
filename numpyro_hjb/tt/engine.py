"""Engine 2: tensor-train HJB (docs/design.md s.4), registered as the engine "tt".

    fit(target, rng_key, settings, progress_bar, init_state) -> (TTState, FitInfo)
    propose(target, settings, state, rng_key, num) -> (x (num, d), log_w (num,))

:func:`fit`: (1) the diagonal pre-scaling xi = x / s (``scale``; "auto", the default: s = 1
for a Gaussian target, else :func:`numpyro_hjb.tt.w0.choose_scale`), rho~(xi) = rho(s xi)
prod s with the same Z;
(2) W_0 = -log rho~ - |xi|^2 / 2 into FTT form and the route (the exact HJB for a
polynomial W_0, else Cole-Hopf; the cutoff HJB under ``formulation="hjb"``) to the
snapshots W_{t_j} (or h_{t_j}) on the sampler's grid
(:func:`numpyro_hjb.tt.formulations.run_route`); (3) the snapshots, stacked, in a
:class:`TTState`. :func:`propose` runs the sampler on them (:mod:`numpyro_hjb.tt.samplers`).

The engine computes in float64: :func:`fit` and :func:`propose` enable x64 themselves
(``jax.enable_x64(True)``; the global flag is never changed), evaluate the target on float64
points with a float64 result (:func:`numpyro_hjb.tt.w0.engine_log_density`), and return
host numpy arrays, so a caller needs no x64 and a float32 model works. The TT algebra runs
on the host, so :func:`propose` cannot be traced (``traceable=False``).
"""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..base import Engine, FitInfo, host_arrays, register_engine
from ..cache import IdentityCache
from ..target import Target
from . import core as C
from .formulations import polynomial_check, run_route, stack_snapshots
from .samplers import (
    degree_segments,
    propose_chunk,
    quadratic_snapshots,
    sampler_for,
    score_fn,
)
from .settings import TTSettings
from .w0 import choose_scale, engine_log_density, scale_vector, w0_functions

__all__ = ["TTState", "TT_ENGINE", "fit", "propose", "score_fn", "migrate_flat_config"]


class TTState(NamedTuple):
    """A fitted TT-HJB sampler.

    Attributes:
        times: (J,) ascending forward times of the snapshots.
        cores: d arrays (J, R_{k-1}, P_k + 1, R_k), the zero-padded snapshots W_{t_j}
            (h_{t_j} on the Cole-Hopf route), core by core.
        scale: (d,) the pre-scaling s of xi = x / s.
        cole_hopf: whether the snapshots are of h = e^{-(W - c)} instead of W.
        final_jump: whether the tweedie sampler ends with the exact-target jump from
            times[1] to 0.
        h_eps: the guard of grad W = -grad h h / (h^2 + h_eps^2) (0 for W).
        quadratic: whether every W-snapshot is quadratic, so that the ODE sampler takes
            affine steps (:func:`numpyro_hjb.tt.samplers.quadratic_snapshots`; False for
            h-snapshots and for fits saved before it was recorded).
    """

    times: np.ndarray
    cores: tuple
    scale: np.ndarray
    cole_hopf: bool
    final_jump: bool
    h_eps: float
    quadratic: bool = False


def _seed(rng_key) -> int:
    """The integer seed of the host-side fits (int32, so the same with and without x64)."""
    return int(np.asarray(jax.random.randint(rng_key, (), 0, 2**31 - 1, dtype=jnp.int32)))


def _pre_scaling(target: Target, d: int, settings: TTSettings, seed: int):
    """The pre-scaling s (d,) and what deciding it produced: (s, scale_search, its target
    evaluations, the fit of h_0 at s or None, the polynomial check of W_0 at s or None).

    ``scale="auto"`` (the default): the route's own polynomial check runs first at s = 1;
    a polynomial W_0 (a Gaussian target) keeps s = 1 and the exact HJB, so does
    ``formulation="hjb"``; any other W_0 goes to Cole-Hopf with s from the truncation-indicator
    search (:func:`numpyro_hjb.tt.w0.choose_scale`).
    """
    scale = settings.scaling.scale
    if scale != "auto":
        return scale_vector(scale, d), {}, 0, None, None
    check = None
    if settings.route.formulation == "auto":
        check = polynomial_check(*w0_functions(engine_log_density(target, jnp.ones(d))), d,
                                 settings, seed)
    if settings.route.formulation == "hjb" or (check is not None and check.polynomial):
        return np.ones(d), {}, 0, None, check
    s, search, evals, h0_fit = choose_scale(target, d, settings, seed)
    return scale_vector(s, d), search, evals, h0_fit, check  # the route counts the check


def fit(target: Target, rng_key: jax.Array, settings: TTSettings, progress_bar: bool = True,
        init_state: TTState | None = None) -> tuple[TTState, FitInfo]:
    """Fit W_0 (or h_0), evolve it, store W_t (or h_t) on the sampler's grid.

    Returns:
        state: the :class:`TTState`.
        info: ``history`` per accepted HJB step: time, step, max_rank, max_degree, residual
            (||W - E W||), error (local error estimate); empty on the Cole-Hopf route.
            ``stats``: compile_s, train_s, num_target_evals, formulation, hjb_failure
            (messages of the stages that failed, or ""), scale_search (scale="auto":
            {scale: truncation indicator}), log_z_readoff, readoff_residual,
            cross_holdout_error, cross_rank, final_max_rank, final_ranks, final_degree,
            max_rank_used, max_degree_used, num_steps, num_rejected, final_time, t_switch;
            after an HJB stage also w0_fit ("cross" or "least_squares"), w0_holdout_cross,
            w0_holdout_ls (nan when the least-squares fallback did not run).

    Raises:
        RuntimeError: the log density is not finite at the origin, or the route failed
            (:func:`numpyro_hjb.tt.formulations.run_route`).
    """
    if init_state is not None:
        warnings.warn("engine 'tt' has no warm start; init_state is ignored")
    settings = settings.resolve()
    d = int(target.dim)
    seed = _seed(rng_key)
    with jax.enable_x64(True):
        t0 = time.perf_counter()
        scale, scale_search, scale_evals, h0_fit, check = _pre_scaling(target, d, settings,
                                                                         seed)
        w0_fun, w0_grad_fun = w0_functions(engine_log_density(target, jnp.asarray(scale)))
        scale_s = time.perf_counter() - t0  # counted as training time
        t0 = time.perf_counter()
        if not np.all(np.isfinite(w0_fun(np.zeros((1, d))))):
            raise RuntimeError("The target's log density is not finite at the origin.")
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        route = run_route(w0_fun, w0_grad_fun, d, settings, seed, progress_bar, h0_fit, check)
        train_s = time.perf_counter() - t1 + scale_s
    cores = stack_snapshots(route.snapshots)
    state = TTState(
        times=np.asarray(route.times, dtype=np.float64),
        cores=cores,
        scale=np.asarray(scale, dtype=np.float64),
        cole_hopf=bool(route.cole_hopf),
        final_jump=bool(route.final_jump),
        h_eps=float(route.h_eps),
        quadratic=not route.cole_hopf and quadratic_snapshots(cores),
    )
    res, final = route.hjb, route.final
    history = dict(res.history) if res is not None else {}
    stats = {
        "compile_s": compile_s,
        "train_s": train_s,
        "formulation": route.formulation,
        "hjb_failure": route.hjb_failure,
        "num_target_evals": int(route.num_evals + scale_evals),
        "scale_search": scale_search,
        "log_z_readoff": float(route.log_z),
        "readoff_residual": float(route.readoff_residual),
        "cross_holdout_error": float(route.holdout_error),
        "cross_rank": route.cross_rank,
        "final_max_rank": int(max(C.ranks(final))),
        "final_ranks": tuple(C.ranks(final)),
        "final_degree": int(max(C.degrees(final))),
        "max_rank_used": int(np.max(history.get("max_rank", [max(C.ranks(final))]))),
        "max_degree_used": int(np.max(history.get("max_degree", [max(C.degrees(final))]))),
        "num_steps": int(res.num_steps) if res is not None else 0,
        "num_rejected": int(res.num_rejected) if res is not None else 0,
        "final_time": float(res.final_time) if res is not None else float(route.times[-1]),
        "t_switch": float(route.t_switch),
        **route.w0_info,
    }
    return state, FitInfo(history, stats)


class _LogDensityCache:
    """One log-density closure per (target, scale): the jitted chunk proposer takes it as a
    static argument, so the same closure reuses its compilation."""

    _cache = IdentityCache(16)

    @classmethod
    def get(cls, target: Target, scale: tuple):
        hit = cls._cache.get(target, scale)
        if hit is None:
            hit = cls._cache.put(target, scale,
                                 engine_log_density(target, jnp.asarray(scale, jnp.float64)))
        return hit


_SEGMENTS = IdentityCache(4)  # it holds the cores: few entries


def _segments(state: TTState) -> tuple:
    """The tweedie sampler's degree segments of a fitted state (host work of ~0.1 s on
    manywell20), computed once per state's stacked cores: MCMC refills call
    :func:`propose` many times on one state."""
    hit = _SEGMENTS.get(state.cores)
    if hit is None:
        hit = _SEGMENTS.put(state.cores, (),
                            degree_segments(state.cores, state.times, bool(state.final_jump)))
    return hit


def propose(target: Target, settings: TTSettings, state: TTState, rng_key: jax.Array,
            num: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` proposals x (num, d) in the target's coordinates and log w = log rho(x) -
    log q(x) (num,) for the proposal actually used, as host float64 arrays, in chunks of
    ``batch_size``."""
    settings = settings.resolve()
    with jax.enable_x64(True):
        cores = tuple(jnp.asarray(c, jnp.float64) for c in state.cores)
        times = jnp.asarray(state.times, jnp.float64)
        scale = jnp.asarray(state.scale, jnp.float64)
        h_eps = jnp.asarray(state.h_eps, jnp.float64)
        log_density = _LogDensityCache.get(target, tuple(np.asarray(state.scale).tolist()))
        # every chunk has the same size (one compilation): num is drawn in the fewest
        # chunks of at most batch_size, all of ceil(num / chunks), and cut to num
        num_chunks = -(-num // settings.runtime.batch_size)
        size = -(-num // num_chunks)
        keys = jax.random.split(rng_key, num_chunks)
        sampler = sampler_for(settings.sampling, state.cole_hopf)
        affine = sampler == "ode" and bool(state.quadratic)
        segments = None
        if sampler == "tweedie" and state.cole_hopf:
            segments = _segments(state)
        chunks = [
            propose_chunk(
                cores, times, scale, h_eps, key, num=size,
                sampler=sampler, sampling=settings.sampling, log_density=log_density,
                cole_hopf=bool(state.cole_hopf), jump=bool(state.final_jump), affine=affine,
                segments=segments,
            )
            for key in keys
        ]
        x, log_w = host_arrays(jnp.concatenate([c[0] for c in chunks])[:num],
                               jnp.concatenate([c[1] for c in chunks])[:num])
    return x, log_w


# ------------------------------------------------------------ fits saved in the flat format

#: settings of flat-format fits that no longer exist, and the only value under which such a
#: fit can be loaded unchanged
_RETIRED = {"viscosity": 0.0}


def _flag(value) -> bool:
    return bool(np.asarray(value) > 0)


def migrate_flat_config(config: dict, state) -> tuple[TTSettings, TTState]:
    """A fit saved in the flat-dict format (format versions 1 and 2: flat settings, a dict
    state with float flags) -> typed settings and a :class:`TTState`. A fit made with
    ``viscosity`` != 0 cannot be loaded (that stabilisation was retired)."""
    config = dict(config)
    config.pop("scheme", None)
    for name, loadable in _RETIRED.items():
        value = config.pop(name, loadable)
        if value != loadable:
            raise ValueError(
                f"this fit was made with {name}={value}, a setting retired in numpyro_hjb "
                f"0.2 (only {name}={loadable} can be loaded); refit it"
            )
    settings = TT_ENGINE.settings.with_overrides(config, engine="tt")
    if not isinstance(state, TTState):
        state = TTState(
            times=np.asarray(state["times"], np.float64),
            cores=tuple(np.asarray(c, np.float64) for c in state["cores"]),
            scale=np.asarray(state["scale"], np.float64),
            cole_hopf=_flag(state.get("cole_hopf", 0.0)),
            final_jump=_flag(state.get("final_jump", 0.0)),
            h_eps=float(np.asarray(state.get("h_eps", 0.0))),
        )
    return settings, state


TT_ENGINE = register_engine(Engine(
    name="tt",
    settings=TTSettings(),
    fit=fit,
    propose=propose,
    state_type=TTState,
    precision="float64",
    traceable=False,
    description="tensor-train HJB: the HJB equation of the log density integrated in time",
    migrate=migrate_flat_config,
))
