"""Engine 1: learned control (DIS, DDS, PIS) with the KL or log-variance loss (DESIGN.md s.3).

The engine protocol of :mod:`numpyro_hjb.api`: ``fit(target, key, config, progress_bar)``
and ``propose(target, config, state, key, num)``.

Schemes (see :mod:`numpyro_hjb.diffusion`):

* ``dis``: time reversal of the OU process, Euler–Maruyama of the reversed SDE (Berner,
  Richter, Ullrich) — or ``integrator="ei"``;
* ``dds``: the same reversal with the exponential integrator (Vargas, Grathwohl, Doucet);
* ``pis``: Brownian reference from a point (Zhang, Chen).

Training: Adam with global-norm clipping and a cosine-decayed learning rate (optax), one
jit-compiled ``lax.scan`` over ``log_every`` iterations at a time, a tqdm bar with the loss,
the running ELBO and ESS. A run whose parameters become non-finite raises
:class:`TrainingDivergedError`; a step with non-finite gradients is skipped
(``optax.apply_if_finite``).

The LV loss's reference path measure is (1 - lambda) F + lambda P with lambda =
``lv_target_weight`` (0.5 by default; see :func:`~numpyro_hjb.control.losses.lv_loss`).
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..diffusion import (
    PathScheme,
    bridge_log_weights,
    brownian_scheme,
    ou_scheme,
    ou_transition,
    simulate_log_weights,
)
from ..target import Target
from .losses import LOSSES, Problem
from .network import apply_control, init_control

__all__ = [
    "DEFAULTS",
    "fit",
    "propose",
    "bridge_log_weight",
    "TrainingDivergedError",
    "build_problem",
]

#: Default settings (the same for every target; see docs/benchmarks.md).
DEFAULTS: dict = {
    "loss": "lv",
    "num_iterations": 2000,
    "batch_size": 256,
    "num_steps": 192,
    "horizon": None,  # OU: 4.0; PIS: 1.0
    "grid_power": 2.0,  # t_k = T (1 - k/K)^power, every scheme (fit format 1: PIS uniform)
    "integrator": None,  # dis: "em", dds: "ei"
    "pis_sigma": 2.0,
    "ou_sigma": 1.0,  # dis, dds: the reference's stationary law is N(0, ou_sigma^2 I)
    "hidden": (64, 64),
    "coordinate_hidden": 0,  # > 0: add a network of (y_i, t) per coordinate i (its width)
    "score_gate": "time",  # gate on the score feature: "time" g(t), or "state" g(t) + G(y, t)
    "num_time_features": 16,
    "conditioning": "time",  # "time": features of t / T; "noise": of log sigma_t, MLP / sigma_t
    "learning_rate": 3e-3,
    "final_learning_rate": 1e-4,
    "grad_clip": 1.0,
    "score_clip": 1e3,
    "exploration": 0.0,  # LV: extra noise scale of the reference policy, decayed to 0
    "lv_target_weight": 0.5,  # LV: reference measure (1 - lambda) F + lambda P (self-normalised)
    "warm_start": None,  # None, or "smc": regress on tempered-SMC particles before training
    # (skipped when fit is given init_state)
    "warm_start_iterations": 3000,
    "warm_start_batch_size": 512,
    "smc_particles": 2000,
    "smc_init_scale": 5.0,  # std of the N(0, s^2 I) the SMC path starts from
    "max_log_weight_dev": 1e4,
    "log_every": 50,
    "sample_chunk": 4096,
}


class TrainingDivergedError(RuntimeError):
    """Raised when training produces non-finite parameters."""


def _horizon(config: dict) -> float:
    if config["horizon"] is not None:
        return float(config["horizon"])
    return 1.0 if config["scheme"] == "pis" else 4.0


def make_scheme(config: dict) -> PathScheme:
    scheme = config["scheme"]
    power = float(config["grid_power"])
    if scheme == "pis":
        return brownian_scheme(_horizon(config), config["num_steps"], config["pis_sigma"], power)
    if scheme not in ("dis", "dds"):
        raise ValueError(f"scheme must be 'dis', 'dds' or 'pis', got {scheme!r}")
    integrator = config["integrator"] or ("em" if scheme == "dis" else "ei")
    return ou_scheme(_horizon(config), config["num_steps"], integrator, power, _ou_sigma(config))


def _ou_sigma(config: dict) -> float:
    # .get: fits saved before the setting existed ran with sigma = 1
    return float(config.get("ou_sigma", 1.0))


def build_problem(target: Target, config: dict, batch_size: int | None = None) -> Problem:
    """The static part of the loss: scheme, target, clipped target term, network."""
    scheme = make_scheme(config)
    scheme = jax.tree_util.tree_map(
        lambda v: jnp.asarray(v, jnp.float32) if isinstance(v, jax.Array) else v, scheme
    )
    clip = float(config["score_clip"])
    grad_log_rho = jax.vmap(jax.grad(target.log_density))
    # Taming (Hutzenthaler-Jentzen-Kloeden): the score term enters a step as c_k * s, with c_k
    # the step's control coefficient; s / (1 + c_k |s|) keeps that increment below one in
    # magnitude, so stiff or super-linear scores (many-well, funnel neck) cannot make the
    # explicit step overshoot and blow up. The factor -> 1 as the step size -> 0, and the
    # importance weights are exact for any control, so nothing is biased.
    step_times = scheme.times[:-1]
    step_coef = scheme.gen_control

    def base_fn(y, t):
        c = _interp_ascending(t, step_times[::-1], step_coef[::-1])
        g = grad_log_rho(y)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        g = jnp.clip(g, -clip, clip)
        return g / (1.0 + c * jnp.abs(g))

    horizon = _horizon(config)
    net_fn = partial(
        _net,
        horizon=horizon,
        num_time_features=int(config["num_time_features"]),
        # .get: fits saved before the setting existed load as "time"
        noise_fn=_noise_level_fn(config) if config.get("conditioning") == "noise" else None,
    )
    return Problem(
        scheme=scheme,
        log_density=target.log_density,
        base_fn=base_fn,
        net_fn=net_fn,
        dim=target.dim,
        batch_size=int(batch_size or config["batch_size"]),
        max_log_weight_dev=float(config["max_log_weight_dev"]),
    )


def _noise_level_fn(config: dict):
    """sigma_t, the reference's noise between time t and the data end: ou_sigma sqrt(1 -
    e^{-2t}) for the OU schemes, pis_sigma sqrt(t) for PIS (the std of X_0 given X_t under the
    reference)."""
    if config["scheme"] == "pis":
        sigma = float(config["pis_sigma"])
        return lambda t: sigma * jnp.sqrt(t)
    sigma = _ou_sigma(config)
    return lambda t: sigma * jnp.sqrt(ou_transition(t)[1])


def _interp_ascending(t: jax.Array, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Piecewise-linear interpolation on ascending knots xs, clamped at the ends.

    ``jnp.interp`` does the same through a ``searchsorted`` loop; inside the sampler's
    ``lax.scan`` that loop fails to compile on GPU (jax 0.11.2: "Failed to evaluate
    instruction ... depends on ... parameters"), so the interval is found by a comparison
    count instead.
    """
    i = jnp.clip(jnp.sum(xs <= t) - 1, 0, xs.shape[0] - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    w = jnp.clip((t - x0) / (x1 - x0), 0.0, 1.0)
    return y0 + w * (y1 - y0)


def _net(params, y, t, base, *, horizon, num_time_features, noise_fn):
    noise = None if noise_fn is None else noise_fn(t)
    return apply_control(params, y, t, base, horizon, num_time_features, noise)


def _validate(config: dict) -> None:
    if config["loss"] not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {config['loss']!r}")
    for name in ("num_iterations", "batch_size", "num_steps", "log_every"):
        if int(config[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {config[name]}")
    for name in ("grid_power", "ou_sigma", "pis_sigma"):
        if not float(config[name]) > 0:
            raise ValueError(f"{name} must be > 0, got {config[name]}")
    if config["conditioning"] not in ("time", "noise"):
        raise ValueError(
            f"conditioning must be 'time' or 'noise', got {config['conditioning']!r}"
        )
    if config["score_gate"] not in ("time", "state"):
        raise ValueError(
            f"score_gate must be 'time' or 'state', got {config['score_gate']!r}"
        )
    if config["warm_start"] not in (None, "smc"):
        raise ValueError(f"warm_start must be None or 'smc', got {config['warm_start']!r}")
    if int(config["coordinate_hidden"]) < 0:
        raise ValueError(f"coordinate_hidden must be >= 0, got {config['coordinate_hidden']}")
    for name in ("warm_start_iterations", "warm_start_batch_size", "smc_particles"):
        if int(config[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {config[name]}")
    if config["exploration"] < 0:
        raise ValueError(f"exploration must be >= 0, got {config['exploration']}")
    if not 0.0 <= float(config["lv_target_weight"]) <= 1.0:
        raise ValueError(f"lv_target_weight must be in [0, 1], got {config['lv_target_weight']}")


def _all_finite(params) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(params))


def _ess(log_w: jax.Array, mask: jax.Array) -> jax.Array:
    lw = jnp.where(mask, log_w, -jnp.inf)
    p = jax.nn.softmax(lw)
    return 1.0 / (jnp.sum(mask) * jnp.sum(p**2))


def fit(
    target: Target,
    rng_key: jax.Array,
    config: dict,
    progress_bar: bool = True,
    init_state: dict | None = None,
):
    """Train u_theta (from ``init_state["params"]`` when given: a warm start);
    returns (state = {"params": ...}, history, info)."""
    _validate(config)
    problem = build_problem(target, config)
    loss_fn = LOSSES[config["loss"]]
    n_iter = int(config["num_iterations"])
    schedule = optax.cosine_decay_schedule(
        config["learning_rate"], n_iter, alpha=config["final_learning_rate"] / config["learning_rate"]
    )
    optimizer = optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(config["grad_clip"]), optax.adam(schedule)),
        max_consecutive_errors=20,
    )
    key_init, key_train = jax.random.split(rng_key)
    params = init_control(
        key_init, target.dim, tuple(config["hidden"]), int(config["num_time_features"]),
        int(config["coordinate_hidden"]), state_gate=config["score_gate"] == "state",
    )
    if init_state is not None:
        init_params = init_state["params"]
        if jax.tree_util.tree_structure(init_params) != jax.tree_util.tree_structure(params) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree_util.tree_leaves(init_params), jax.tree_util.tree_leaves(params))
        ):
            raise ValueError(
                "init_state does not match this target and network (dimension or hidden sizes)"
            )
        params = jax.tree_util.tree_map(jnp.asarray, init_params)
    warm_info = {}
    if config["warm_start"] == "smc" and init_state is None:
        params, warm_info = _warm_start_from_smc(
            target, problem, params, jax.random.fold_in(rng_key, 2), config
        )
    opt_state = optimizer.init(params)
    explore = float(config["exploration"])
    target_weight = float(config["lv_target_weight"])

    def one_step(carry, inp):
        params, opt_state = carry
        key, it = inp
        if config["loss"] == "lv":
            # Exploration noise decays linearly to none at half of the run.
            scale = 1.0 + explore * jnp.clip(1.0 - 2.0 * it / n_iter, 0.0, 1.0)
            fn = partial(
                loss_fn, problem=problem, noise_scale=scale, target_weight=target_weight
            )
        else:
            fn = partial(loss_fn, problem=problem)
        (loss, (log_w, mask)), grads = jax.value_and_grad(fn, has_aux=True)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        elbo = jnp.sum(jnp.where(mask, log_w, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        stats = (loss, elbo, _ess(log_w, mask), jnp.mean(~mask))
        return (params, opt_state), stats

    @partial(jax.jit, static_argnums=3)
    def run_chunk(params, opt_state, key, length, start):
        keys = jax.random.split(key, length)
        its = start + jnp.arange(length)
        return jax.lax.scan(one_step, (params, opt_state), (keys, its))

    # Every chunk has the same length (one compilation); the iteration count is rounded up.
    chunk = min(int(config["log_every"]), n_iter)
    n_chunks = math.ceil(n_iter / chunk)
    history = {"loss": [], "elbo": [], "ess": [], "masked_fraction": []}
    t0 = time.perf_counter()
    # Compile once, apart from training time (the first chunk's compile is measured here).
    run_chunk.lower(params, opt_state, key_train, chunk, 0).compile()
    compile_s = time.perf_counter() - t0
    bar = _progress(n_chunks * chunk, progress_bar, config)
    t_train = time.perf_counter()
    try:
        for c in range(n_chunks):
            length = chunk
            key_train, key_chunk = jax.random.split(key_train)
            (params, opt_state), stats = run_chunk(params, opt_state, key_chunk, length, c * chunk)
            stats = [np.asarray(s) for s in stats]
            for name, s in zip(history, stats):
                history[name].append(s)
            if not _all_finite(params):
                raise TrainingDivergedError(
                    f"training diverged: non-finite network parameters after iteration "
                    f"{(c + 1) * chunk} (loss {stats[0][-1]:.3g}). Try a smaller learning_rate, "
                    "a smaller score_clip, whitening='advi', or more num_steps."
                )
            if bar is not None:
                bar.update(length)
                bar.set_postfix(
                    loss=f"{stats[0][-1]:.3g}", elbo=f"{stats[1][-1]:.3f}", ess=f"{stats[2][-1]:.2f}"
                )
    finally:
        if bar is not None:
            bar.close()
    jax.block_until_ready(params)
    # The warm start (SMC and regression, compilation included) counts as training time.
    train_s = time.perf_counter() - t_train + warm_info.get("warm_start_s", 0.0)
    history = {k: np.concatenate(v) for k, v in history.items()}
    k = problem.scheme.num_steps
    info = {
        "compile_s": compile_s,
        "train_s": train_s,
        # one target gradient per step and path, plus the value at the end of each path
        "num_iterations": n_chunks * chunk,
        "num_target_grad_evals": n_chunks * chunk * problem.batch_size * k
        + warm_info.get("warm_start_grad_evals", 0),
        "num_target_evals": n_chunks * chunk * problem.batch_size,
        **warm_info,
    }
    return {"params": params}, history, info


def _warm_start_from_smc(target: Target, problem: Problem, params, rng_key, config: dict):
    """Particles of the target by adaptive tempered SMC, then the network regressed on
    them (:mod:`numpyro_hjb.control.warm_start`); returns (params, info)."""
    from ..smc import SMC_DEFAULTS, tempered_smc_program
    from .warm_start import regress_on_particles

    k_smc, k_reg = jax.random.split(rng_key)
    t0 = time.perf_counter()
    run = tempered_smc_program(
        target.log_density, target.dim, float(config["smc_init_scale"]),
        {"num_particles": int(config["smc_particles"])},
    )
    particles, smc_log_z, num_temps = run(k_smc)
    if not bool(jnp.all(jnp.isfinite(particles))):
        raise TrainingDivergedError(
            "warm_start='smc': the SMC particles are not finite; try a different "
            "smc_init_scale or warm_start=None"
        )
    params, curve = regress_on_particles(
        params, k_reg, problem, particles, int(config["warm_start_iterations"]),
        batch_size=int(config["warm_start_batch_size"]),
        pis_sigma=float(config["pis_sigma"]) if config["scheme"] == "pis" else None,
        learning_rate=config["learning_rate"], final_learning_rate=config["final_learning_rate"],
        grad_clip=config["grad_clip"],
    )
    jax.block_until_ready(params)
    if not _all_finite(params):
        raise TrainingDivergedError("warm_start='smc': the regression diverged (non-finite "
                                    "parameters); try a smaller learning_rate")
    curve = np.asarray(curve)
    return params, {
        "warm_start_s": time.perf_counter() - t0,
        "smc_log_z": float(smc_log_z),
        "smc_num_temperatures": int(num_temps),
        # HMC: (L + 1) gradients per move; the regression: one per draw
        "warm_start_grad_evals": int(num_temps) * SMC_DEFAULTS["num_mcmc_steps"]
        * int(config["smc_particles"]) * (SMC_DEFAULTS["num_integration_steps"] + 1)
        + int(config["warm_start_iterations"]) * int(config["warm_start_batch_size"]),
        "warm_start_loss_first": float(curve[: max(1, len(curve) // 20)].mean()),
        "warm_start_loss_last": float(curve[-max(1, len(curve) // 20):].mean()),
    }


def _progress(total: int, enabled: bool, config: dict):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{config['scheme'].upper()}-{config['loss'].upper()}")


def propose(target: Target, config: dict, state: dict, rng_key: jax.Array, num: int):
    """``num`` proposals y_K ~ F_theta with their path log weights (chunked, jit-able)."""
    chunk = min(int(config["sample_chunk"]), num)
    problem = build_problem(target, config, batch_size=chunk)
    params = state["params"]

    def control(y, t):
        return problem.net_fn(params, y, t, problem.base_fn(y, t))

    def one(key):
        return simulate_log_weights(
            key, problem.scheme, control, problem.log_density, chunk, problem.dim
        )

    n_chunks = -(-num // chunk)
    ys, log_w = jax.lax.map(one, jax.random.split(rng_key, n_chunks))
    return ys.reshape(-1, problem.dim)[:num], log_w.reshape(-1)[:num]


def bridge_log_weight(target: Target, config: dict, state: dict, rng_key: jax.Array, x: jax.Array):
    """Path log weights (num,) of fresh reference bridges ending at the points x (num, d).

    What an MCMC move of the end point needs to rejoin path space
    (:func:`numpyro_hjb.diffusion.bridge_log_weights`); jit-able.
    """
    problem = build_problem(target, config, batch_size=x.shape[0])
    params = state["params"]

    def control(y, t):
        return problem.net_fn(params, y, t, problem.base_fn(y, t))

    return bridge_log_weights(rng_key, problem.scheme, control, problem.log_density, x)
