"""Engine 1: learned control (DIS, DDS, PIS) with the KL or log-variance loss (docs/design.md s.3).

Schemes (see :mod:`numpyro_hjb.diffusion`):

* ``dis``: time reversal of the OU process, Euler-Maruyama of the reversed SDE (Berner,
  Richter, Ullrich), or ``integrator="ei"``;
* ``dds``: the same reversal with the exponential integrator (Vargas, Grathwohl, Doucet);
* ``pis``: Brownian reference from a point (Zhang, Chen).

The three are registered as :class:`~numpyro_hjb.base.Engine` objects ("dis", "dds",
"pis") over the same pure functions: :func:`fit` trains u_theta (:mod:`.training`, optionally
after the SMC warm start of :mod:`.warm_start`), :func:`propose` simulates the fitted chain
with its path weights, :func:`bridge_log_weight` weighs reference bridges to given ends.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..base import Engine, FitInfo, register_engine
from ..diffusion import bridge_log_weights, simulate_log_weights
from ..target import Target
from .network import init_control
from .problem import Problem, build_problem
from .settings import ControlSettings
from .training import TrainingDivergedError, all_finite, train

__all__ = [
    "ControlState",
    "fit",
    "propose",
    "bridge_log_weight",
    "TrainingDivergedError",
    "DIS_ENGINE",
    "DDS_ENGINE",
    "PIS_ENGINE",
]


class ControlState(NamedTuple):
    """The fitted control: ``params``, the network's parameter pytree
    (:func:`numpyro_hjb.control.network.init_control`)."""

    params: dict


def _check_init(params, init_params) -> None:
    same = jax.tree_util.tree_structure(init_params) == jax.tree_util.tree_structure(params)
    if not same or any(
        np.shape(a) != np.shape(b)
        for a, b in zip(jax.tree_util.tree_leaves(init_params), jax.tree_util.tree_leaves(params))
    ):
        raise ValueError(
            "init_state does not match this target and network (dimension or hidden sizes)"
        )


def fit(
    target: Target,
    rng_key: jax.Array,
    settings: ControlSettings,
    progress_bar: bool = True,
    init_state: ControlState | None = None,
) -> tuple[ControlState, FitInfo]:
    """Train u_theta from the zero-initialised control (the reference process), from
    ``init_state.params`` (a warm start), or from the SMC warm start (``warm_start="smc"``)."""
    settings = settings.resolve()
    problem = build_problem(target, settings)
    net = settings.network
    key_init, key_train = jax.random.split(rng_key)
    params = init_control(
        key_init, target.dim, net.hidden, net.num_time_features, net.coordinate_hidden,
        state_gate=net.score_gate == "state",
    )
    if init_state is not None:
        init_params = init_state.params if isinstance(init_state, ControlState) else init_state["params"]
        _check_init(params, init_params)
        params = jax.tree_util.tree_map(jnp.asarray, init_params)
    warm_stats = {}
    if settings.start.warm_start == "smc" and init_state is None:
        params, warm_stats = _warm_start_from_smc(
            target, problem, params, jax.random.fold_in(rng_key, 2), settings
        )
    params, history, stats = train(params, problem, settings, key_train, progress_bar)
    n_it = stats["num_iterations"]
    b, k = problem.batch_size, problem.scheme.num_steps
    stats.update(
        # the warm start (SMC and regression, compilation included) counts as training time
        train_s=stats["train_s"] + warm_stats.get("warm_start_s", 0.0),
        # one target gradient per step and path, plus the value at the end of each path
        num_target_grad_evals=n_it * b * k + warm_stats.get("warm_start_grad_evals", 0),
        num_target_evals=n_it * b,
        **warm_stats,
    )
    return ControlState(params), FitInfo(history, stats)


def _warm_start_from_smc(target: Target, problem: Problem, params, rng_key, settings: ControlSettings):
    """Particles of the target by adaptive tempered SMC, then the network regressed on them
    (:mod:`numpyro_hjb.control.warm_start`); returns (params, stats)."""
    from ..smc import SMC_DEFAULTS, tempered_smc_program
    from .warm_start import regress_on_particles

    w, opt = settings.start, settings.optimiser
    k_smc, k_reg = jax.random.split(rng_key)
    t0 = time.perf_counter()
    run = tempered_smc_program(
        target.log_density, target.dim, w.smc_init_scale, {"num_particles": w.smc_particles}
    )
    particles, smc_log_z, num_temps = run(k_smc)
    if not bool(jnp.all(jnp.isfinite(particles))):
        raise TrainingDivergedError(
            "warm_start='smc': the SMC particles are not finite; try a different "
            "smc_init_scale or warm_start=None"
        )
    params, curve = regress_on_particles(
        params, k_reg, problem, particles, w.warm_start_iterations,
        batch_size=w.warm_start_batch_size,
        pis_sigma=settings.grid.pis_sigma if settings.scheme == "pis" else None,
        learning_rate=opt.learning_rate, final_learning_rate=opt.final_learning_rate,
        grad_clip=opt.grad_clip,
    )
    jax.block_until_ready(params)
    if not all_finite(params):
        raise TrainingDivergedError("warm_start='smc': the regression diverged (non-finite "
                                    "parameters); try a smaller learning_rate")
    curve = np.asarray(curve)
    return params, {
        "warm_start_s": time.perf_counter() - t0,
        "smc_log_z": float(smc_log_z),
        "smc_num_temperatures": int(num_temps),
        # HMC: (L + 1) gradients per move; the regression: one per draw
        "warm_start_grad_evals": int(num_temps) * SMC_DEFAULTS["num_mcmc_steps"]
        * w.smc_particles * (SMC_DEFAULTS["num_integration_steps"] + 1)
        + w.warm_start_iterations * w.warm_start_batch_size,
        "warm_start_loss_first": float(curve[: max(1, len(curve) // 20)].mean()),
        "warm_start_loss_last": float(curve[-max(1, len(curve) // 20):].mean()),
    }


def propose(target: Target, settings: ControlSettings, state: ControlState, rng_key: jax.Array,
            num: int):
    """``num`` proposals y_K ~ F_theta and their path log weights (chunked; jit-able)."""
    settings = settings.resolve()
    chunk = min(settings.runtime.sample_chunk, num)
    problem = build_problem(target, settings, batch_size=chunk)
    control = problem.control(state.params)

    def one(key):
        return simulate_log_weights(
            key, problem.scheme, control, problem.log_density, chunk, problem.dim
        )

    n_chunks = -(-num // chunk)
    ys, log_w = jax.lax.map(one, jax.random.split(rng_key, n_chunks))
    return ys.reshape(-1, problem.dim)[:num], log_w.reshape(-1)[:num]


def bridge_log_weight(target: Target, settings: ControlSettings, state: ControlState,
                      rng_key: jax.Array, x: jax.Array):
    """Path log weights (num,) of fresh reference bridges ending at the points x (num, d):
    what an MCMC move of the end point needs to rejoin path space
    (:func:`numpyro_hjb.diffusion.bridge_log_weights`); jit-able."""
    problem = build_problem(target, settings.resolve(), batch_size=x.shape[0])
    return bridge_log_weights(
        rng_key, problem.scheme, problem.control(state.params), problem.log_density, x
    )


# ------------------------------------------------------------------ fits saved before 0.2

#: settings of format-1/2 saved fits (flat dicts) that no longer exist, and the only value
#: under which such a fit can be loaded unchanged
_RETIRED = {"ou_sigma": 1.0, "exploration": None}


def migrate_flat_config(config: dict, state) -> tuple[ControlSettings, ControlState]:
    """A fit saved in the flat-dict format (format versions 1 and 2) -> typed settings and
    state. ``exploration`` only affected training and is dropped; a fit trained with
    ``ou_sigma`` != 1 cannot be loaded (that reference was retired)."""
    config = dict(config)
    scheme = config.pop("scheme")
    for name, loadable in _RETIRED.items():
        value = config.pop(name, loadable)
        if loadable is not None and value != loadable:
            raise ValueError(
                f"this fit was trained with {name}={value}, a setting retired in numpyro_hjb "
                f"0.2 (only {name}={loadable} can be loaded); refit it"
            )
    settings = _ENGINE_SETTINGS[scheme].with_overrides(config, engine=scheme)
    params = state.params if isinstance(state, ControlState) else state["params"]
    return settings, ControlState(params)


_ENGINE_SETTINGS = {s: ControlSettings(scheme=s) for s in ("dis", "dds", "pis")}

_DESCRIPTIONS = {
    "dis": "time-reversed diffusion sampler: OU reference, Euler-Maruyama",
    "dds": "denoising diffusion sampler: OU reference, exponential integrator",
    "pis": "path integral sampler: Brownian reference from a point",
}


def _engine(scheme: str) -> Engine:
    return register_engine(Engine(
        name=scheme,
        settings=_ENGINE_SETTINGS[scheme],
        fit=fit,
        propose=propose,
        state_type=ControlState,
        bridge_log_weight=bridge_log_weight,
        precision="float32",
        traceable=True,
        description=_DESCRIPTIONS[scheme],
        migrate=migrate_flat_config,
    ))


DIS_ENGINE = _engine("dis")
DDS_ENGINE = _engine("dds")
PIS_ENGINE = _engine("pis")
