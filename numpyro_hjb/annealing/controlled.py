"""The learned-control stage of the sequential engine (CMCD, docs/design.md s.3b).

After the base is chosen, a control is trained on a fixed schedule taken from the chosen
pilot (:func:`fixed_schedule`) when ``control="on"``, or, with ``"auto"``, when one particle
system's spread of log Z_hat exceeds ``control_threshold``. A fresh controlled call is then
compared with the adaptive pilot by SE^2 x seconds; the control is kept only if it pays, so
the final runs never get worse for having tried it.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..cache import IdentityCache
from ..sharding import current_devices
from .programs import Run, advance, base_functions, call
from .smc import KernelParams

__all__ = ["MAX_CONTROL_ITERATIONS", "controlled_program", "controlled_stage", "fixed_schedule"]


#: controlled programs (the control an argument) per target, base kind and settings
_CONTROLLED = IdentityCache(16)


def controlled_program(target, settings, kind, control, betas, h, keep_trajectories=False):
    """The fixed-schedule CMCD program with a given control bound in: ``run(params, mass,
    key)`` (cached per target, settings and control)."""
    from .cmcd import make_controlled_program

    b, p, r = settings.budget, settings.path, settings.rejuvenation
    key = (kind, b, p, r, keep_trajectories, current_devices())
    raw = _CONTROLLED.get(target, key)
    if raw is None:
        kernel = KernelParams(r.num_mcmc_steps, r.num_leapfrog, r.target_acceptance, r.step_jitter)
        parts, sample = base_functions(target, kind)
        raw = _CONTROLLED.put(target, key, make_controlled_program(
            parts, sample, b.num_particles, b.num_replicates, p.resample_ess, kernel,
            target.dim, keep_trajectories))
    if keep_trajectories:
        return raw
    ctrl = jax.tree_util.tree_map(jnp.asarray, control)
    betas, h = jnp.asarray(betas, jnp.float32), jnp.asarray(h, jnp.float32)
    return jax.jit(lambda params, mass, key: raw(params, mass, ctrl, betas, h, key))


def fixed_schedule(run: Run, refine: int = 2, minimum: int = 8) -> np.ndarray:
    """A fixed schedule from an adaptive pilot: the betas of its median replicate, with
    ``refine`` - 1 points inserted in every interval (at least ``minimum`` steps)."""
    steps = np.asarray(run.out.num_steps)
    r = int(np.argsort(steps)[len(steps) // 2])
    betas = np.asarray(run.out.betas[r][: steps[r] + 1], np.float64)
    k = max(minimum, refine * (len(betas) - 1))
    grid = np.linspace(0.0, len(betas) - 1, k + 1)
    return np.interp(grid, np.arange(len(betas)), betas).astype(np.float32)


#: training runs at most this many iterations
MAX_CONTROL_ITERATIONS = 2000


def controlled_stage(target, settings, chosen, kind, params, mass, post_prec, key, t_start,
                      bar, dense) -> dict | None:
    """Train the CMCD control when the rule says so, and compare the controlled runs with
    the adaptive ones on a fresh call; returns None when not tried."""
    from .training import train_control

    lrn = settings.learning
    spread = chosen.run.se * math.sqrt(settings.budget.num_replicates)
    if lrn.control == "auto" and not spread > lrn.control_threshold:
        return None
    budget = settings.budget.time_budget
    seconds = lrn.control_fraction * budget
    betas = fixed_schedule(chosen.run)
    h = float(np.mean(np.asarray(chosen.run.out.step_size)) ** 2 / 4.0)
    traj_program = controlled_program(target, settings, kind, None, None, None, True)
    parts, _ = base_functions(target, kind)
    t0 = time.perf_counter()
    ctrl, history = train_control(
        traj_program, parts, params, mass, jnp.asarray(betas), h, jax.random.fold_in(key, 7),
        target.dim, seconds=seconds, loss=lrn.loss, hidden=lrn.control_hidden,
        max_iterations=MAX_CONTROL_ITERATIONS,
    )
    train_s = time.perf_counter() - t0
    program = controlled_program(target, settings, kind, ctrl, betas, h)
    run = call(program, params, mass, jax.random.fold_in(key, 8))
    advance(bar, run, "controlled pilot")
    pays = run.se**2 * run.seconds < chosen.run.se**2 * chosen.run.seconds
    info = {"control_trained": True, "control_pays": bool(pays), "control_train_s": train_s,
            "control_iterations": len(history["loss"]),
            "control_pilot_log_z": run.log_z, "control_pilot_se": run.se,
            "control_steps": int(len(betas) - 1), "langevin_step": h}
    return {"program": program, "control": ctrl, "betas": betas, "h": h, "run": run,
            "pays": bool(pays), "info": info}
