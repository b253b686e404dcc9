"""Benchmark targets with exact ground truth (docs/benchmarks.md, docs/lab/benchmarks.md).

Each :class:`BenchmarkTarget` is a NumPyro model (so the benchmark goes through the same
``make_target(model)`` path as a user's model) together with its flat unnormalised log
density, the exact log normaliser, an exact sampler and the per-dimension true std. The
synthetic targets are given as a flat improper site plus ``numpyro.factor``
(:func:`density_model`): the engines see only the unnormalised density.

=============  ===  ==========================================================================
name           d    log rho(x)
=============  ===  ==========================================================================
gmm9           2    log of 1/9 sum_m N(x; m, 0.3 I), m in {-5, 0, 5}^2           (log Z = 0)
gmm9_rot30     2    gmm9 with its centres rotated by 30 degrees (not a product)   (log Z = 0)
funnel10       10   x1 ~ N(0, 3^2), x2..10 | x1 ~ N(0, e^{x1} I)                   (log Z = 0)
manywell5      5    -sum_i (x_i^2 - 4)^2                           (log Z = 5 log I(4))
manywell50     50   -sum_{i<=5} (x_i^2 - 2)^2 - 1/2 sum_{i>5} x_i^2 (5 log I(2) + 22.5 log 2pi)
manywell20     20   -sum_i (x_i^2 - 2)^2                             (log Z = 20 log I(2))
gauss{d}       d    N(x; m, S), S = Q diag(lambda) Q^T, lambda log-spaced in [0.1, 10]  (0)
=============  ===  ==========================================================================

with I(delta) = int exp(-(x^2 - delta)^2) dx computed by adaptive quadrature.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "BenchmarkTarget",
    "TARGETS",
    "get_target",
    "target_names",
    "double_well_log_norm",
    "gmm9",
    "funnel10",
    "manywell",
    "gauss",
]

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class BenchmarkTarget:
    """A benchmark density with exact ground truth.

    Attributes:
        name: registry name, e.g. "gmm9".
        dim: d.
        model: NumPyro model without arguments whose flat unconstrained density is
            ``log_density``.
        log_density: x (d,) -> log rho(x), unnormalised (jnp, jit/vmap/grad-able).
        log_z: exact log int rho.
        sample_exact: (rng_key, n) -> (n, d) exact samples, or None (real models: the
            reference is ``mean`` and ``true_std``).
        true_std: (d,) exact marginal standard deviations.
        mode_of: x (n, d) -> (n,) int mode index, or None when modes are not enumerated.
        mode_weights: (num_modes,) exact mode weights, or None.
        mode_centres: (num_modes, d) the mode locations (for plots), or None.
        num_wells: number of leading double-well coordinates (manywell), else 0; used by
            :func:`~benchmarks.metrics.well_balance`.
        init_scale: std sigma of an N(0, sigma^2 I) reference that covers the target (the
            initial distribution of the SMC peer).
        mean, cov: exact mean and covariance (Gaussian targets), else None.
    """

    name: str
    dim: int
    model: Callable[[], None]
    log_density: Callable[[Array], Array]
    log_z: float
    sample_exact: Callable[[Array, int], Array]
    true_std: np.ndarray
    mode_of: Callable[[Array], Array] | None = None
    mode_weights: np.ndarray | None = None
    mode_centres: np.ndarray | None = None
    num_wells: int = 0
    init_scale: float = 5.0
    mean: np.ndarray | None = None
    cov: np.ndarray | None = None

    @property
    def num_modes(self) -> int | None:
        return None if self.mode_weights is None else int(len(self.mode_weights))


def density_model(log_density: Callable[[Array], Array], dim: int) -> Callable[[], None]:
    """A NumPyro model whose flat unconstrained density is ``log_density``: one flat
    (improper) site "x" of shape (dim,) and a ``numpyro.factor``. Every synthetic target is
    given to the engines this way, so that no engine sees a prior it could sample from (a
    mixture or funnel written as a prior would be sampled exactly by a prior-based method)."""

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (dim,)))
        numpyro.factor("log_rho", log_density(x))

    return model


# --------------------------------------------------------------------------- gmm9

GMM9_VAR = 0.3
GMM9_CENTRES = np.array([[a, b] for a in (-5.0, 0.0, 5.0) for b in (-5.0, 0.0, 5.0)])


def gmm9(rotation_deg: float = 0.0) -> BenchmarkTarget:
    """Mixture of 9 equally weighted N(m, 0.3 I), m in {-5, 0, 5}^2 rotated by
    ``rotation_deg`` degrees about the origin (normalised). Rotated, it is not a product
    of 1-D densities."""
    angle = math.radians(rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centres_np = GMM9_CENTRES @ rotation.T
    centres = jnp.asarray(centres_np, dtype=jnp.float32)
    var = GMM9_VAR

    def log_density(x):
        sq = jnp.sum((x[None, :] - centres) ** 2, axis=-1)
        log_comp = -0.5 * sq / var - jnp.log(2.0 * jnp.pi * var)
        return jax.scipy.special.logsumexp(log_comp) - jnp.log(9.0)

    model = density_model(log_density, 2)

    def sample_exact(rng_key, n):
        k_mode, k_noise = jax.random.split(rng_key)
        idx = jax.random.randint(k_mode, (n,), 0, 9)
        return centres[idx] + math.sqrt(var) * jax.random.normal(k_noise, (n, 2))

    def mode_of(x):
        d2 = jnp.sum((jnp.asarray(x)[:, None, :] - centres[None]) ** 2, axis=-1)
        return jnp.argmin(d2, axis=-1)

    # the centres' covariance is (50/3) I, rotation-invariant
    std = math.sqrt(var + float(np.var([-5.0, 0.0, 5.0])))  # sqrt(0.3 + 50/3)
    return BenchmarkTarget(
        name="gmm9" if rotation_deg == 0 else f"gmm9_rot{rotation_deg:g}",
        dim=2,
        model=model,
        log_density=log_density,
        log_z=0.0,
        sample_exact=sample_exact,
        true_std=np.full(2, std),
        mode_of=mode_of,
        mode_weights=np.full(9, 1.0 / 9.0),
        mode_centres=centres_np,
        init_scale=6.0,
    )


# --------------------------------------------------------------------------- funnel10

FUNNEL_SCALE = 3.0


def funnel10(dim: int = 10) -> BenchmarkTarget:
    """Neal's funnel: x1 ~ N(0, 3^2), x2..d | x1 ~ N(0, e^{x1} I) (normalised).

    Sites "x1" and "x_rest": NumPyro flattens sorted site names, so the flat vector is
    (x1, x2, ..., xd).
    """
    s = FUNNEL_SCALE
    k = dim - 1

    def log_density(x):
        x1, rest = x[0], x[1:]
        lp1 = -0.5 * (x1 / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        lp_rest = -0.5 * jnp.sum(rest**2) * jnp.exp(-x1) - 0.5 * k * x1
        return lp1 + lp_rest - 0.5 * k * math.log(2 * math.pi)

    model = density_model(log_density, dim)

    def sample_exact(rng_key, n):
        k1, k2 = jax.random.split(rng_key)
        x1 = s * jax.random.normal(k1, (n, 1))
        rest = jnp.exp(0.5 * x1) * jax.random.normal(k2, (n, k))
        return jnp.concatenate([x1, rest], axis=1)

    # Var(x_i) = E[e^{x1}] = e^{s^2/2} for i >= 2.
    std = np.concatenate([[s], np.full(k, math.exp(s**2 / 4.0))])
    return BenchmarkTarget(
        name=f"funnel{dim}",
        dim=dim,
        model=model,
        log_density=log_density,
        log_z=0.0,
        sample_exact=sample_exact,
        true_std=std,
        init_scale=5.0,
    )


# --------------------------------------------------------------------------- manywell


@functools.lru_cache(maxsize=None)
def double_well_log_norm(delta: float) -> float:
    """log int exp(-(x^2 - delta)^2) dx by adaptive quadrature (scipy.integrate.quad)."""
    from scipy.integrate import quad

    val, _ = quad(lambda t: math.exp(-((t * t - delta) ** 2)), -np.inf, np.inf, epsabs=1e-13)
    return math.log(val)


@functools.lru_cache(maxsize=None)
def _double_well_table(delta: float, num: int = 40_001):
    """Grid, CDF and exact std of the 1-D density prop. to exp(-(x^2 - delta)^2)."""
    half = math.sqrt(delta) + 3.0  # exp(-(x^2 - delta)^2) < 1e-30 beyond this
    grid = np.linspace(-half, half, num)
    dens = np.exp(-((grid**2 - delta) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    from scipy.integrate import quad

    m2, _ = quad(lambda t: t * t * math.exp(-((t * t - delta) ** 2)), -np.inf, np.inf)
    std = math.sqrt(m2 / math.exp(double_well_log_norm(delta)))
    return grid, cdf, std


def manywell(dim: int, num_wells: int, delta: float, name: str | None = None) -> BenchmarkTarget:
    """log rho(x) = -sum_{i<=k} (x_i^2 - delta)^2 - 1/2 sum_{i>k} x_i^2, k = num_wells.

    Coordinates are independent: the first k have the double-well marginal (sampled
    exactly by inverse CDF on a 40,001-point grid), the rest are N(0, 1). The 2^k modes are
    the sign patterns of the first k coordinates, equally weighted; for k > 10 they are not
    enumerated (``mode_of`` is None; use ``metrics.well_balance``).
    """
    if not 1 <= num_wells <= dim:
        raise ValueError(f"num_wells must be in [1, dim={dim}], got {num_wells}")
    k, rest = num_wells, dim - num_wells
    log_i = double_well_log_norm(delta)
    log_z = k * log_i + 0.5 * rest * math.log(2 * math.pi)
    grid, cdf, well_std = _double_well_table(delta)
    grid_j, cdf_j = jnp.asarray(grid, jnp.float32), jnp.asarray(cdf, jnp.float32)

    def log_density(x):
        wells = -jnp.sum((x[:k] ** 2 - delta) ** 2)
        return wells - 0.5 * jnp.sum(x[k:] ** 2)

    model = density_model(log_density, dim)

    def sample_exact(rng_key, n):
        k1, k2 = jax.random.split(rng_key)
        u = jax.random.uniform(k1, (n, k))
        x_wells = jnp.interp(u, cdf_j, grid_j)
        return jnp.concatenate([x_wells, jax.random.normal(k2, (n, rest))], axis=1)

    enumerate_modes = k <= 10
    powers = jnp.asarray(2 ** np.arange(k)[::-1], dtype=jnp.int32) if enumerate_modes else None

    def mode_of(x):
        return jnp.sum((jnp.asarray(x)[:, :k] > 0).astype(jnp.int32) * powers, axis=-1)

    if enumerate_modes:
        bits = (np.arange(2**k)[:, None] >> np.arange(k)[::-1]) & 1
        centres = np.zeros((2**k, dim))
        centres[:, :k] = (2 * bits - 1) * math.sqrt(delta)
    return BenchmarkTarget(
        name=name or f"manywell{dim}",
        dim=dim,
        model=model,
        log_density=log_density,
        log_z=log_z,
        sample_exact=sample_exact,
        true_std=np.concatenate([np.full(k, well_std), np.ones(rest)]),
        mode_of=mode_of if enumerate_modes else None,
        mode_weights=np.full(2**k, 2.0**-k) if enumerate_modes else None,
        mode_centres=centres if enumerate_modes else None,
        num_wells=k,
        init_scale=math.sqrt(delta) + 1.0,
    )


# --------------------------------------------------------------------------- gauss{d}

GAUSS_EIG_RANGE = (0.1, 10.0)


def gauss(dim: int, seed: int = 0) -> BenchmarkTarget:
    """N(m, S) with S = Q diag(lambda) Q^T, Q a random orthogonal matrix, lambda log-spaced
    from 0.1 to 10 (condition number 100 for d >= 2), m ~ N(0, I). Seeded by (seed, dim)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    rng = np.random.default_rng([seed, dim])
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
    lam = np.geomspace(*GAUSS_EIG_RANGE, dim) if dim > 1 else np.array([1.0])
    cov = (q * lam) @ q.T
    cov = 0.5 * (cov + cov.T)
    mean = rng.standard_normal(dim)
    prec = (q / lam) @ q.T
    log_norm = -0.5 * (dim * math.log(2 * math.pi) + float(np.sum(np.log(lam))))
    chol = np.linalg.cholesky(cov)

    # the arrays are made at trace time, so that a float64 engine (TT-HJB) gets the float64
    # target: a float32 covariance alone shifts log Z by ~1e-6 at d = 20
    def log_density(x):
        dx = x - jnp.asarray(mean)
        return -0.5 * dx @ (jnp.asarray(prec) @ dx) + log_norm

    model = density_model(log_density, dim)

    def sample_exact(rng_key, n):
        return jnp.asarray(mean) + jax.random.normal(rng_key, (n, dim)) @ jnp.asarray(chol).T

    return BenchmarkTarget(
        name=f"gauss{dim}",
        dim=dim,
        model=model,
        log_density=log_density,
        log_z=0.0,
        sample_exact=sample_exact,
        true_std=np.sqrt(np.diag(cov)),
        init_scale=float(np.max(np.abs(mean)) + 3.0 * math.sqrt(lam[-1])),
        mean=mean,
        cov=cov,
    )


# --------------------------------------------------------------------------- registry

#: name -> constructor (no arguments); ``gauss{d}`` is matched by pattern in get_target.
TARGETS: dict[str, Callable[[], BenchmarkTarget]] = {
    "gmm9": gmm9,
    "gmm9_rot30": lambda: gmm9(30.0),
    "funnel10": lambda: funnel10(10),
    "manywell5": lambda: manywell(5, 5, 4.0, name="manywell5"),
    "manywell50": lambda: manywell(50, 5, 2.0, name="manywell50"),
    "manywell20": lambda: manywell(20, 20, 2.0, name="manywell20"),
}

_GAUSS = re.compile(r"gauss(\d+)")


def target_names() -> list[str]:
    """Registered names (``gauss{d}`` stands for any d >= 1)."""
    from .models import MODEL_TARGETS

    return [*TARGETS, *MODEL_TARGETS, "gauss{d}"]


@functools.lru_cache(maxsize=None)
def get_target(name: str) -> BenchmarkTarget:
    """The benchmark target called ``name`` (see :data:`TARGETS`; ``gauss{d}`` for any d)."""
    if name in TARGETS:
        return TARGETS[name]()
    from .models import MODEL_TARGETS

    if name in MODEL_TARGETS:
        return MODEL_TARGETS[name]()
    match = _GAUSS.fullmatch(str(name))
    if match and int(match.group(1)) >= 1:
        return gauss(int(match.group(1)))
    raise ValueError(f"target must be one of {target_names()}, got {name!r}")
