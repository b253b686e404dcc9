"""The compiled programs of the sequential engine and their bookkeeping on the host.

A program runs R replicate particle systems from one kind of base ("prior" or "gaussian",
the latter taking any :mod:`.reference` base as a pytree argument), so that every pilot and
final call with the same particle count reuses one compilation. Programs are compiled ahead
of time (:func:`call`), so a call's time is its run time and the compilation is counted
apart. :func:`combine_log_z` turns the replicates' estimates into log Z_hat and its SE.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..cache import IdentityCache
from ..sharding import current_devices, to_host
from ..target import Target
from .reference import prior_base
from .sampler import PathParams, TemperedOutput, make_tempered_program
from .settings import SCLDSettings
from .smc import KernelParams

__all__ = [
    "MAX_PARTICLES",
    "MIN_PARTICLES",
    "Run",
    "advance",
    "base_functions",
    "call",
    "choose_num_particles",
    "combine_log_z",
    "make_program",
]


def combine_log_z(log_z) -> tuple[float, float]:
    """(log of the mean of exp(log_z), delta-method SE) over independent replicate estimates."""
    lz = np.asarray(log_z, np.float64)
    lz = lz[~np.isnan(lz)]
    if lz.size == 0 or not np.any(np.isfinite(lz)):
        return -math.inf, math.inf
    m = lz.max()
    z = np.exp(lz - m)
    mean = z.mean()
    se = float(np.std(z, ddof=1) / (math.sqrt(z.size) * mean)) if z.size > 1 else math.inf
    return float(m + math.log(mean)), se



#: compiled replicate programs per target, base kind and settings
_PROGRAMS = IdentityCache(16)


#: particles per system chosen from the budget lie in [MIN_PARTICLES, MAX_PARTICLES]
MIN_PARTICLES, MAX_PARTICLES = 512, 2048
#: each pilot call should take about this fraction of the time budget
PILOT_FRACTION = 0.05



def choose_num_particles(target: Target, settings: SCLDSettings) -> tuple[int, float]:
    """Particles per system from the budget: the time of one batched value-and-gradient of
    the target is measured, and N (a power of 2) is the largest for which a pilot call (R
    systems, ~16 temperatures of M HMC steps of L + 1 gradients, times 2 for the base and
    the bookkeeping) takes at most ``PILOT_FRACTION`` of the budget. Returns (N, seconds per
    particle gradient)."""
    b, r = settings.budget, settings.rejuvenation
    batch = 256
    x = jnp.broadcast_to(jnp.asarray(target.init, jnp.float32), (batch, target.dim))
    x = x + 0.01 * jax.random.normal(jax.random.PRNGKey(0), x.shape)
    f = jax.jit(jax.vmap(jax.value_and_grad(target.log_density)))
    jax.block_until_ready(f(x))
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(f(x))
    per_grad = max((time.perf_counter() - t0) / (3 * batch), 1e-9)
    if b.num_particles is not None:
        return b.num_particles, per_grad
    cost = b.num_replicates * 16 * r.num_mcmc_steps * (r.num_leapfrog + 1) * per_grad * 2.0
    n = PILOT_FRACTION * b.time_budget / cost
    n = 2 ** int(math.floor(math.log2(max(n, 1.0))))
    return int(min(max(n, MIN_PARTICLES), MAX_PARTICLES)), per_grad


def make_program(target: Target, settings: SCLDSettings, kind: str):
    """The compiled replicate program for a base kind: "gaussian" (its parameters a
    :class:`GaussianBase` or :class:`DiagonalBase`, each compiled once) or "prior"; cached
    per target and settings (so that fit, propose and repeated calls compile once)."""
    key = (kind, settings.budget, settings.path, settings.rejuvenation, current_devices())
    hit = _PROGRAMS.get(target, key)
    if hit is not None:
        return hit
    d = target.dim
    b, p, r = settings.budget, settings.path, settings.rejuvenation
    kernel = KernelParams(r.num_mcmc_steps, r.num_leapfrog, r.target_acceptance, r.step_jitter)
    path = PathParams(b.num_particles, b.num_replicates, p.cess_target, p.resample_ess,
                      p.max_steps)
    parts, base_sample = base_functions(target, kind)
    program = make_tempered_program(parts, base_sample, path, kernel, d)
    return _PROGRAMS.put(target, key, program)


def base_functions(target: Target, kind: str):
    """``(parts(params, x) -> (log b, ell), sample(params, key, n))`` of a base kind."""
    if kind == "prior":
        prior = prior_base(target)
        if prior is None:
            raise ValueError("the model's prior cannot be the base: a latent site has an "
                             "improper prior (or the target has no model); use base='fitted'")
        return (lambda params, x: prior.parts(x)), (lambda params, k, n: prior.sample(k, n))
    log_rho = target.log_density

    def parts(params, x):
        log_b = params.log_density(x)
        return log_b, log_rho(x) - log_b

    return parts, (lambda params, k, n: params.sample(k, n))


class Run(NamedTuple):
    """A batch of replicate systems from one base, summarised on the host."""

    out: TemperedOutput
    log_z: float
    se: float
    steps: float
    seconds: float
    compile_s: float = 0.0


#: executables compiled ahead of time per program and argument signature
_COMPILED = IdentityCache(64)


def compiled(program, params, mass, key, *extra):
    """The program compiled ahead of time for these argument structures, shapes and dtypes
    (cached; a user's global x64 flag can change the dtypes between calls), so that
    a call's time is its run time, and the compilation time is known apart."""
    args = (params, mass, *extra)
    sig = (jax.tree_util.tree_structure(args),
           tuple((jnp.shape(v), jnp.result_type(v)) for v in jax.tree_util.tree_leaves(args)))
    hit = _COMPILED.get(program, sig)
    if hit is not None:
        return hit, 0.0
    t0 = time.perf_counter()
    fn = _COMPILED.put(program, sig, program.lower(params, mass, key, *extra).compile())
    return fn, time.perf_counter() - t0


def call(program, params, mass, key, *extra) -> Run:
    """One call of a compiled program (``extra``: e.g. a frozen schedule), summarised."""
    fn, compile_s = compiled(program, params, mass, key, *extra)
    t0 = time.perf_counter()
    out = to_host(fn(params, mass, key, *extra))
    lz, se = combine_log_z(out.log_z)
    return Run(out, lz, se, float(np.mean(np.asarray(out.num_steps))),
                time.perf_counter() - t0, compile_s)


def advance(bar, run: Run, stage: str, total: tuple[float, float] | None = None) -> None:
    if bar is None:
        return
    bar.n = min(round(time.perf_counter() - bar.start_t, 1), bar.total)
    lz, se = total if total is not None else (run.log_z, run.se)
    ess = float(np.mean([1.0 / (np.exp(2 * np.asarray(w)).sum() * w.shape[0])
                         for w in np.asarray(run.out.log_w)]))
    bar.set_postfix_str(
        f"{stage}: log Z {lz:.4f} ± {se:.4f}, ESS {ess:.2f}, "
        f"acc {float(np.mean(np.asarray(run.out.acceptance))):.2f}, {run.steps:.0f} steps"
    )
    bar.refresh()
