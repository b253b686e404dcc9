"""Engine 3: sequential annealing with replicate particle systems (``engine="scld"``).

The fit tunes itself from the model and a time budget (docs/design.md s.3b,
docs/choices.md):

1. **A broad pilot.** From the model's prior when every latent site has a proper prior
   (the path then tempers the likelihood), otherwise from N(0, s^2 I) with s doubled from
   ``broad_scale`` while log Z_hat still grows by more than twice its standard error (a
   narrower base that misses mass estimates log Z low).
2. **Refined pilots.** A base fitted to the previous pilot's weighted particles (the
   moment Gaussian or a diagonal mixture, by BIC, with a defensive Gaussian), standard
   deviations widened by ``widen``, and a pilot from it; at most ``refinements`` times, and
   only while it pays. The base of the final runs is the pilot whose log Z_hat is not
   significantly below the most precise pilot's (a base that misses mass estimates it low)
   and whose estimate is cheapest for the same error (SE^2 times seconds).
   With ``control`` on (or "auto" on a hard target), a CMCD control is then trained on a
   fixed schedule and kept only if its runs pay (:mod:`.controlled`).
3. **Final runs.** Batches of R independent particle systems from the chosen base until
   the time budget is spent (or the SE of log Z falls below ``target_se``), each following
   the temperatures and step sizes of one scout call (``schedule="frozen"``, so each Z_r is
   exactly unbiased; ``"adaptive"`` lets each system choose its own). log Z_hat is
   the log of the mean of their estimates, with the delta-method SE over the systems; the
   draws are their weighted particles, each system weighted by its Z_r.

Every particle system is the adaptive tempered SMC of :mod:`.sampler`: conditional-ESS
steps, systematic resampling, HMC rejuvenation with a particle-estimated mass matrix and an
acceptance-adapted, jittered step size.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..base import Engine, FitInfo, register_engine
from ..evidence import EvidenceEstimate, UnreliableResultWarning, pareto_khat
from ..sharding import to_host
from ..target import Target
from .reference import (
    DefensiveBase,
    DiagonalBase,
    GaussianBase,
    gaussian_from_particles,
    gaussian_only,
    components_for,
    prior_base,
    refined_base,
)
from .controlled import controlled_program, controlled_stage
from .programs import Run, advance, call, choose_num_particles, combine_log_z
from .programs import make_program
from .sampler import FrozenSchedule, TemperedOutput
from .settings import SCLDSettings
from .smc import MassPath, systematic_indices

__all__ = ["SCLDState", "fit", "propose", "evidence", "draws", "SCLD_ENGINE", "combine_log_z"]


class SCLDState(NamedTuple):
    """A fitted sequential sampler.

    Attributes:
        base: the base of the path: a :class:`~.reference.DefensiveBase` (fitted) or
            :class:`~.reference.DiagonalBase` (broad), or None for the model's prior.
        mass_prec0, mass_prec1: the :class:`~.smc.MassPath` of the rejuvenation moves.
        control: the trained CMCD control's parameters, or None (adaptive tempering).
        betas: (K+1,) the fixed schedule of the controlled runs (empty without a control).
        langevin_step: () h of the controlled transports.
        log_z: (S,) log Z_r of the final particle systems.
        ess: (S,) ESS fraction of each system's final weights.
        x: (M, d) particles of the final systems, resampled by weight (equally weighted).
        num_particles: particles per system.
    """

    base: object
    mass_prec0: np.ndarray
    mass_prec1: np.ndarray
    control: object
    betas: np.ndarray
    langevin_step: float
    log_z: np.ndarray
    ess: np.ndarray
    x: np.ndarray
    num_particles: int


# ------------------------------------------------------------------ compiled programs

#: the refinement of the base stops when the elapsed time passes this fraction of the budget
REFINE_FRACTION = 0.35


class _Candidate(NamedTuple):
    """A base tried in a pilot: its kind, parameters, mass path (None: to be built), the
    pilot's run, and what the base fit reported."""

    kind: str
    params: object
    mass: object
    run: Run
    info: dict


def _cost(run: Run, timed: bool) -> float:
    """The cost of a pilot's estimate: its seconds, or, for a fit that must not depend on
    timings (``num_systems`` set), its number of temperatures."""
    return run.seconds if timed else run.steps


def _choose(candidates: list, want: str, timed: bool = True) -> "_Candidate":
    """The base for the final runs: among the pilots whose log Z_hat is within 3 combined
    standard errors of the most precise pilot's (a base that misses mass estimates it low),
    the one with the smallest SE^2 x seconds; ``base="prior"`` / ``"fitted"`` restrict the
    choice."""
    pool = [c for c in candidates if math.isfinite(c.run.log_z) and math.isfinite(c.run.se)]
    if want == "prior":
        pool = [c for c in pool if c.kind == "prior"] or pool
    elif want == "fitted":
        pool = [c for c in pool if c.mass is not None] or pool
    if not pool:
        return candidates[-1]
    ref = min(pool, key=lambda c: c.run.se)
    ok = [c for c in pool if c.run.log_z >= ref.run.log_z - 3.0 * math.hypot(c.run.se, ref.run.se)]
    return min(ok, key=lambda c: c.run.se**2 * _cost(c.run, timed))


def _frozen_schedule(out: TemperedOutput) -> FrozenSchedule:
    """The temperatures and step sizes of the replicate (of a scout call) with the median
    number of steps, for the final systems to follow."""
    steps = np.asarray(out.num_steps)
    r = int(np.argsort(steps)[len(steps) // 2])
    return FrozenSchedule(jnp.asarray(np.asarray(out.betas)[r]),
                          jnp.asarray(np.asarray(out.step_sizes)[r]))


def _weighted_particles(out: TemperedOutput) -> tuple[np.ndarray, np.ndarray]:
    """All particles of a batch (R N, d) and their log weights log Z_r + log W_ri."""
    x = np.asarray(out.x, np.float64)
    r, n, d = x.shape
    lw = np.asarray(out.log_w, np.float64) + np.asarray(out.log_z, np.float64)[:, None]
    return x.reshape(r * n, d), lw.reshape(r * n)


def _gaussian_from(run: Run, widen: float, dense: bool | None = None) -> GaussianBase | DiagonalBase:
    x, lw = _weighted_particles(run.out)
    return gaussian_from_particles(x, lw, widen=widen, dense=dense)


def _precision(g: GaussianBase | DiagonalBase) -> np.ndarray:
    """The precision of a Gaussian: (d,) for a diagonal one, (d, d) for a dense one."""
    if isinstance(g, DiagonalBase):
        return 1.0 / np.asarray(g.scale, np.float64) ** 2
    inv = np.asarray(g.chol_inv, np.float64)
    return inv.T @ inv


def _mass_path(prec0: np.ndarray, prec1: np.ndarray) -> MassPath:
    """A :class:`MassPath` of two precisions, both dense if either is."""
    prec0, prec1 = (np.diag(p) if p.ndim == 1 else p for p in (prec0, prec1))
    return MassPath(jnp.asarray(prec0, jnp.float32), jnp.asarray(prec1, jnp.float32),
                    jnp.zeros((), jnp.float32))


def _mass_rule(settings: SCLDSettings) -> bool | None:
    return {"auto": None, "dense": True, "diagonal": False}[settings.rejuvenation.mass]


def _prior_precision(target: Target, rng_key, dense: bool | None) -> np.ndarray:
    """The precision of a Gaussian with the moments of 4096 prior draws."""
    from .reference import prior_base as _prior

    x = np.asarray(_prior(target).sample(rng_key, 4096), np.float64)
    return _precision(gaussian_from_particles(x, None, widen=1.0, dense=dense))


def _broad_gaussian(target, settings, program, key, bar) -> tuple[Run, DefensiveBase, float]:
    """N(0, s^2 I) with s doubled while log Z_hat grows significantly (improper priors);
    returns the run, its base and the compilation seconds."""
    d = target.dim
    scale = settings.path.broad_scale
    best, compile_s = None, 0.0
    k = components_for(d, settings.path.max_components)
    for i in range(5):
        g = gaussian_only(DiagonalBase(jnp.zeros(d), jnp.full((d,), scale)), k)
        run = call(program, g, MassPath.particles(d), jax.random.fold_in(key, i))
        compile_s += run.compile_s
        advance(bar, run, f"pilot N(0, {scale:g}² I)")
        if best is not None and not (
            run.log_z > best[0].log_z + 2.0 * math.hypot(run.se, best[0].se)
        ):
            break
        best = (run, g)
        scale *= 2.0
    return best[0], best[1], compile_s


def fit(target: Target, rng_key: jax.Array, settings: SCLDSettings, progress_bar: bool = True,
        init_state: SCLDState | None = None) -> tuple[SCLDState, FitInfo]:
    """Pilots, base choice and final runs within ``time_budget`` seconds (module docstring)."""
    if init_state is not None:
        raise ValueError("engine 'scld' has no warm start: pass init_state=None")
    if jax.process_count() > 1 and (None in (settings.budget.num_particles,
                                             settings.budget.num_systems)
                                    or settings.learning.control != "off"):
        raise ValueError(
            "with several processes (jax.distributed) every process must take the same "
            "decisions, and the time budget's depend on each process's own clock: set "
            "num_particles=, num_systems= and control='off' (see examples/multi_host.py)")
    t_start = time.perf_counter()
    budget = settings.budget.time_budget
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(budget, 1), desc="SCLD", unit="s",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}")
    keys = jax.random.split(rng_key, 4)
    want = settings.path.base
    num_particles, per_grad = choose_num_particles(target, settings)
    settings = settings.with_overrides({"num_particles": num_particles})
    gauss_program = make_program(target, settings, "gaussian")
    t0 = time.perf_counter()
    use_prior = want in ("auto", "prior") and prior_base(target) is not None
    if want == "prior" and not use_prior:
        raise ValueError("base='prior' needs proper priors on every latent site")
    try:
        dense = _mass_rule(settings)
        if use_prior:
            prior_program = make_program(target, settings, "prior")
            broad = call(prior_program, (), MassPath.particles(target.dim), keys[0])
            broad_compile = broad.compile_s
            advance(bar, broad, "pilot from the prior")
            broad_params, broad_kind = (), "prior"
        else:
            broad, g, broad_compile = _broad_gaussian(target, settings, gauss_program, keys[0], bar)
            broad_params, broad_kind = g, "gaussian"
        compile_total = broad_compile
        # refinement: a base fitted to the last pilot's particles (Gaussian or mixture), and a
        # pilot from it; the mass path of each run takes its beta = 1 precision from the
        # previous pilot, so it is independent of the run it drives
        post_prec = _precision(_gaussian_from(broad, 1.0, dense))
        candidates = [_Candidate(broad_kind, broad_params, None, broad, {"components": -1})]
        current = broad
        timed = settings.budget.num_systems is None
        for it in range(settings.path.refinements):
            if timed and time.perf_counter() - t_start > REFINE_FRACTION * budget and it > 0:
                break
            x, lw = _weighted_particles(current.out)
            base, base_info = refined_base(
                x, lw, settings.path.widen, dense if dense is not None else None,
                settings.path.max_components, settings.path.defensive, seed=it,
            )
            mass = _mass_path(_precision(base.gaussian), post_prec)
            run = call(gauss_program, base, mass, jax.random.fold_in(keys[1], it))
            compile_total += run.compile_s
            advance(bar, run, f"pilot {it + 1} from a fitted base "
                               f"({base_info['components'] or 'Gaussian'} components)")
            candidates.append(_Candidate("gaussian", base, mass, run, base_info))
            post_prec = _precision(_gaussian_from(run, 1.0, isinstance(base.gaussian, GaussianBase)))
            current = run
            best = min(c.run.se**2 * _cost(c.run, timed) for c in candidates[1:])
            if it >= 2 and run.se**2 * _cost(run, timed) > 1.25 * best:
                break  # the refinement no longer pays
        pilot_s = time.perf_counter() - t0
        chosen = _choose(candidates, want, settings.budget.num_systems is None)
        kind, params, mass = chosen.kind, chosen.params, chosen.mass
        controlled = None
        if settings.learning.control != "off":
            controlled = controlled_stage(target, settings, chosen, kind, params, mass, post_prec,
                                           keys[3], t_start, bar, dense)
        # the final runs use the pilots' particle count (no further compilation)
        if kind == "prior":
            program = make_program(target, settings, "prior")
            mass = _mass_path(_prior_precision(target, keys[3], dense), post_prec)
        elif mass is None:  # the broad Gaussian itself
            program = make_program(target, settings, "gaussian")
            mass = _mass_path(_precision(params.gaussian), post_prec)
        else:
            program = make_program(target, settings, "gaussian")
        control_info = {}
        if controlled is not None:
            control_info = controlled["info"]
            if controlled["pays"]:
                program = controlled["program"]
                chosen = chosen._replace(run=controlled["run"])
        # final runs until the budget is spent
        frozen = ()
        if settings.path.schedule == "frozen" and not (controlled is not None
                                                       and controlled["pays"]):
            # one adaptive call with the final program and mass sets the schedule; its own
            # estimate is not used (it chose its schedule from its particles)
            scout = call(program, params, mass, jax.random.fold_in(keys[2], 1 << 20))
            compile_total += scout.compile_s
            frozen = (_frozen_schedule(scout.out),)
        t_final = time.perf_counter()
        log_zs, esss, kept_x, kept_mass, num_nan = [], [], [], [], 0
        per_call = max(chosen.run.seconds, 1e-3)
        i = 0
        while True:
            run = call(program, params, mass, jax.random.fold_in(keys[2], i), *frozen)
            compile_total += run.compile_s
            i += 1
            log_zs.append(np.asarray(run.out.log_z, np.float64))
            num_nan += int(np.sum(getattr(run.out, "num_nan", 0)))
            esss.append(1.0 / (np.exp(2 * np.asarray(run.out.log_w, np.float64)).sum(-1)
                               * num_particles))
            x, lw = _weighted_particles(run.out)
            keep = max(settings.budget.keep_particles // 8, 16)
            idx = np.asarray(systematic_indices(jax.random.fold_in(keys[3], i), jnp.asarray(lw), keep))
            kept_x.append(x[idx])
            kept_mass.append(float(np.log(np.mean(np.exp(lw - lw.max()))) + lw.max()))
            lz, se = combine_log_z(np.concatenate(log_zs))
            advance(bar, run, "final", (lz, se))
            per_call = 0.5 * (per_call + run.seconds)
            elapsed = time.perf_counter() - t_start
            if settings.budget.target_se > 0 and se < settings.budget.target_se:
                break
            if settings.budget.num_systems is not None:
                if len(log_zs) * settings.budget.num_replicates >= settings.budget.num_systems:
                    break
            elif elapsed + per_call > budget:
                break
    finally:
        if bar is not None:
            bar.close()
    log_z_all = np.concatenate(log_zs)
    ess_all = np.concatenate(esss)
    # particles: each call's resampled set weighted by the call's mass, then resampled
    call_w = np.repeat(np.asarray(kept_mass), [len(k) for k in kept_x])
    pool = np.concatenate(kept_x)
    idx = np.asarray(systematic_indices(jax.random.fold_in(keys[3], 0), jnp.asarray(call_w),
                                        min(settings.budget.keep_particles, pool.shape[0])))
    use_ctrl = controlled is not None and controlled["pays"]
    state = SCLDState(
        base=None if kind == "prior" else jax.tree_util.tree_map(np.asarray, params),
        mass_prec0=np.asarray(mass.prec0), mass_prec1=np.asarray(mass.prec1),
        control=jax.tree_util.tree_map(np.asarray, controlled["control"]) if use_ctrl else None,
        betas=np.asarray(controlled["betas"]) if use_ctrl else np.zeros(0, np.float32),
        langevin_step=float(controlled["h"]) if use_ctrl else 0.0,
        log_z=log_z_all, ess=ess_all, x=pool[idx].astype(np.float32),
        num_particles=int(num_particles),
    )
    lz, se = combine_log_z(log_z_all)
    n_sys = log_z_all.size
    if num_nan:
        warnings.warn(
            f"the model's log density is NaN at {num_nan} of {n_sys * num_particles} draws of "
            "the final systems' base: these points count as outside the support (density 0), "
            "which is right only if the model is undefined there. Check the model for a NaN "
            "(e.g. log of a negative number, a sqrt of a negative variance) in that region.",
            UnreliableResultWarning, stacklevel=3)
    stats = {
        "train_s": time.perf_counter() - t_start,
        "compile_s": compile_total,
        "pilot_s": pilot_s,
        "final_s": time.perf_counter() - t_final,
        "base": "prior" if kind == "prior" else ("broad" if chosen.mass is None else "fitted"),
        "broad_base": broad_kind,
        "pilots": [{"base": c.kind if c.mass is None else "fitted",
                    "components": c.info["components"], "log_z": c.run.log_z, "se": c.run.se,
                    "temperatures": c.run.steps, "seconds": c.run.seconds}
                   for c in candidates],
        "chosen_pilot": next((i for i, c in enumerate(candidates) if c.params is chosen.params), -1),
        **control_info,
        "num_systems": int(n_sys),
        "num_particles": int(num_particles),
        "seconds_per_gradient": per_grad,
        "num_temperatures": float(run.steps),
        "log_z": lz, "log_z_se": se, "num_nan_log_density": num_nan,
        "num_target_grad_evals": int(n_sys * num_particles * run.steps
                                     * settings.rejuvenation.num_mcmc_steps
                                     * (settings.rejuvenation.num_leapfrog + 1)),
    }
    return state, FitInfo({}, stats)


# ------------------------------------------------------------------ after the fit


def _state_program(target, settings, state: SCLDState):
    """(program, base params, mass path) of a fitted state."""
    settings = settings.with_overrides({"num_particles": int(state.num_particles)})
    mass = MassPath(jnp.asarray(state.mass_prec0), jnp.asarray(state.mass_prec1),
                    jnp.zeros((), jnp.float32))
    kind = "prior" if state.base is None else "gaussian"
    base = () if state.base is None else jax.tree_util.tree_map(jnp.asarray, state.base)
    if state.control is not None:
        program = controlled_program(target, settings, kind, state.control, state.betas,
                                      state.langevin_step)
        return program, base, mass
    return make_program(target, settings, kind), base, mass


def propose(target: Target, settings: SCLDSettings, state: SCLDState, rng_key, num: int):
    """``num`` particles of fresh particle systems and their weights log Z_r + log(N W_ri):
    the mean of exp(log w) over all particles is the mean of the systems' Z_r (unbiased);
    particles of one system are dependent, so use :func:`evidence` for the SE."""
    program, params, mass = _state_program(target, settings, state)
    xs, lws, i = [], [], 0
    while sum(len(v) for v in lws) < num:
        out = to_host(program(params, mass, jax.random.fold_in(rng_key, i)))
        i += 1
        x, lw = _weighted_particles(out)
        xs.append(x)
        lws.append(lw + math.log(state.num_particles))
    return np.concatenate(xs)[:num], np.concatenate(lws)[:num]


def evidence(target: Target, settings: SCLDSettings, state: SCLDState, rng_key, num: int) -> EvidenceEstimate:
    """The fit's own estimate: log of the mean Z_r over its final particle systems, with the
    delta-method SE over the systems (``rng_key`` and ``num`` are not used)."""
    lz, se = combine_log_z(state.log_z)
    khat = pareto_khat(state.log_z) if state.log_z.size >= 30 else float("nan")
    return EvidenceEstimate(
        log_z=lz, log_z_se=se, elbo=float(np.mean(state.log_z)), ess=float(np.mean(state.ess)),
        khat=khat, num_samples=int(state.log_z.size * state.num_particles),
        method=f"scld: {state.log_z.size} independent particle systems",
    )


def draws(target: Target, settings: SCLDSettings, state: SCLDState, rng_key, num: int):
    """The fit's final particles (equally weighted after resampling) as a weighted sample."""
    x = np.asarray(state.x)
    return x, np.zeros(x.shape[0])


SCLD_ENGINE = register_engine(Engine(
    name="scld",
    settings=SCLDSettings(),
    fit=fit,
    propose=propose,
    state_type=SCLDState,
    evidence=evidence,
    draws=draws,
    precision="float32",
    traceable=False,
    description="sequential annealing: replicate tempered particle systems, self-tuning",
))
