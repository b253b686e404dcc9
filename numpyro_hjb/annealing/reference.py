"""The base (reference) law of an annealing path: a Gaussian, or the model's own prior.

The path runs from a normalised base b to the unnormalised target rho (docs/design.md s.3b):

    log pi_beta(x) = log b(x) + beta ell(x),   ell = log rho - log b,   0 <= beta <= 1,

so every intermediate density is known up to its constant, and Z_1 / Z_0 = Z because b is
normalised. A base needs a normalised log density and exact draws:

* :class:`GaussianBase`: N(mean, L L^T) (``chol`` lower triangular); the default base is a
  Gaussian fitted to the particles of a pilot run, widened (:func:`gaussian_from_particles`).
* the prior of a NumPyro model whose latent sites all have proper priors, in unconstrained
  coordinates (:func:`prior_base`): ``ell`` is then the log likelihood, and the path tempers
  the likelihood as Bayesian SMC usually does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..target import Target

__all__ = ["GaussianBase", "DiagonalBase", "MixtureBase", "DefensiveBase", "fit_mixture",
           "widen_mixture", "refined_base", "gaussian_only", "components_for",
           "DENSE_CORRELATION", "Base", "gaussian_base", "gaussian_from_particles", "prior_base"]

Array = jax.Array


class GaussianBase(NamedTuple):
    """N(mean, chol chol^T): mean (d,), chol (d, d) lower triangular, and chol_inv = chol^{-1}
    (so that a density evaluation is a matrix product, not a triangular solve per point)."""

    mean: Array
    chol: Array
    chol_inv: Array

    @classmethod
    def from_chol(cls, mean, chol) -> "GaussianBase":
        chol = jnp.asarray(chol)
        inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(chol.shape[0], dtype=chol.dtype),
                                                lower=True)
        return cls(jnp.asarray(mean), chol, inv)

    def log_density(self, x: Array) -> Array:
        """log N(x; mean, chol chol^T) at one point x (d,)."""
        d = self.mean.shape[-1]
        z = self.chol_inv @ (x - self.mean)
        log_det = jnp.sum(jnp.log(jnp.abs(jnp.diag(self.chol))))
        return -0.5 * jnp.sum(z**2) - log_det - 0.5 * d * jnp.log(2 * jnp.pi)

    def sample(self, rng_key: Array, num: int) -> Array:
        eps = jax.random.normal(rng_key, (num, self.mean.shape[-1]), self.mean.dtype)
        return self.mean + eps @ self.chol.T


class DiagonalBase(NamedTuple):
    """N(mean, diag(scale^2)): mean (d,), scale (d,); an evaluation costs O(d), not O(d^2)."""

    mean: Array
    scale: Array

    def log_density(self, x: Array) -> Array:
        z = (x - self.mean) / self.scale
        d = self.mean.shape[-1]
        return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(self.scale)) - 0.5 * d * jnp.log(2 * jnp.pi)

    def sample(self, rng_key: Array, num: int) -> Array:
        eps = jax.random.normal(rng_key, (num, self.mean.shape[-1]), self.mean.dtype)
        return self.mean + eps * self.scale

    @property
    def chol(self) -> Array:
        return jnp.diag(self.scale)


class MixtureBase(NamedTuple):
    """sum_k w_k N(mean_k, diag(scale_k^2)): log_weights (K,), means (K, d), scales (K, d).
    An evaluation costs O(K d); draws pick a component, then its Gaussian."""

    log_weights: Array
    means: Array
    scales: Array

    def log_density(self, x: Array) -> Array:
        z = (x[None, :] - self.means) / self.scales
        d = self.means.shape[-1]
        comp = (-0.5 * jnp.sum(z**2, axis=-1) - jnp.sum(jnp.log(self.scales), axis=-1)
                - 0.5 * d * jnp.log(2 * jnp.pi))
        return jax.nn.logsumexp(self.log_weights + comp)

    def sample(self, rng_key: Array, num: int) -> Array:
        k_c, k_e = jax.random.split(rng_key)
        k = jax.random.categorical(k_c, self.log_weights, shape=(num,))
        eps = jax.random.normal(k_e, (num, self.means.shape[-1]), self.means.dtype)
        return self.means[k] + eps * self.scales[k]

    @property
    def mean(self) -> Array:
        return jnp.exp(self.log_weights) @ self.means


def fit_mixture(x, log_w=None, num_components: int = 4, num_iterations: int = 60,
                seed: int = 0) -> tuple[MixtureBase, float]:
    """A diagonal Gaussian mixture fitted to weighted particles x (N, d) by EM (host-side,
    float64), started from k-means++ seeds; returns (mixture, weighted mean log likelihood
    per particle). Variances are floored at 1e-4 of the particles' overall variance."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    w = np.full(n, 1.0 / n) if log_w is None else np.exp(np.asarray(log_w, np.float64) - np.max(log_w))
    w = w / w.sum()
    rng = np.random.default_rng(seed)
    floor = 1e-4 * np.maximum(x.var(0), 1e-12)
    k = int(num_components)
    centres = [x[rng.choice(n, p=w)]]
    for _ in range(1, k):  # k-means++ seeding
        d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        p = w * d2
        centres.append(x[rng.choice(n, p=p / p.sum())] if p.sum() > 0 else x[rng.choice(n, p=w)])
    means = np.asarray(centres)
    var = np.tile(np.maximum(x.var(0), floor), (k, 1))
    log_pi = np.full(k, -np.log(k))
    for _ in range(num_iterations):
        log_r = (log_pi[None] - 0.5 * (((x[:, None, :] - means[None]) ** 2) / var[None]).sum(-1)
                 - 0.5 * np.log(2 * np.pi * var).sum(-1)[None])
        log_norm = np.logaddexp.reduce(log_r, axis=1)
        r = np.exp(log_r - log_norm[:, None]) * w[:, None]
        nk = np.maximum(r.sum(0), 1e-12)
        means = (r.T @ x) / nk[:, None]
        var = np.maximum((r.T @ x**2) / nk[:, None] - means**2, floor)
        log_pi = np.log(nk / nk.sum())
    ll = float(w @ log_norm)
    return MixtureBase(jnp.asarray(log_pi, jnp.float32), jnp.asarray(means, jnp.float32),
                       jnp.asarray(np.sqrt(var), jnp.float32)), ll


def widen_mixture(m: MixtureBase, widen: float) -> MixtureBase:
    return m._replace(scales=m.scales * widen)


#: log weight of a mixture component that is switched off (finite, so that gradients of the
#: log-sum-exp stay finite)
_OFF = -1e4


class DefensiveBase(NamedTuple):
    """b = (1 - alpha) m + alpha g: a diagonal Gaussian mixture m and a Gaussian g (diagonal
    or dense) with weight alpha (defensive importance sampling, Hesterberg 1995: the weights
    rho / b are at most rho / (alpha g), so a mixture that misses a region cannot make them
    explode). ``log_alpha = 0`` is the Gaussian alone."""

    mixture: MixtureBase
    gaussian: GaussianBase | DiagonalBase
    log_alpha: Array

    def log_density(self, x: Array) -> Array:
        log_1m = jnp.log1p(-jnp.exp(jnp.minimum(self.log_alpha, -1e-7)))
        log_1m = jnp.where(self.log_alpha >= 0.0, _OFF, log_1m)
        return jnp.logaddexp(log_1m + self.mixture.log_density(x),
                             self.log_alpha + self.gaussian.log_density(x))

    def sample(self, rng_key: Array, num: int) -> Array:
        k_u, k_m, k_g = jax.random.split(rng_key, 3)
        use_g = jax.random.uniform(k_u, (num, 1)) < jnp.exp(self.log_alpha)
        return jnp.where(use_g, self.gaussian.sample(k_g, num), self.mixture.sample(k_m, num))

    @property
    def num_components(self) -> int:
        return int(np.sum(np.asarray(self.mixture.log_weights) > _OFF / 2))


def _padded(m: MixtureBase, k: int) -> MixtureBase:
    """The mixture with components appended (switched off) up to k, for a fixed shape."""
    extra = k - m.log_weights.shape[0]
    if extra <= 0:
        return m
    d = m.means.shape[1]
    return MixtureBase(
        jnp.concatenate([m.log_weights, jnp.full((extra,), _OFF, m.log_weights.dtype)]),
        jnp.concatenate([m.means, jnp.zeros((extra, d), m.means.dtype)]),
        jnp.concatenate([m.scales, jnp.ones((extra, d), m.scales.dtype)]),
    )


def components_for(dim: int, max_components: int) -> int:
    """The largest mixture size used in dimension d: min(max_components, 160 / d) rounded
    down to a power of 2 (at least 1). Mixtures of diagonal Gaussians pay off in low
    dimension (separated modes, a funnel); in high dimension their EM fit from a few
    thousand particles is poor and each component costs O(d) per evaluation."""
    k = max(1, min(int(max_components), int(160 // max(dim, 1))))
    return 2 ** int(math.floor(math.log2(k)))


def gaussian_only(g: GaussianBase | DiagonalBase, max_components: int) -> DefensiveBase:
    """A :class:`DefensiveBase` that is the Gaussian g alone (the mixture switched off)."""
    d = g.mean.shape[-1]
    mix = _padded(MixtureBase(jnp.zeros((1,)), jnp.zeros((1, d)), jnp.ones((1, d))), max_components)
    return DefensiveBase(mix, g, jnp.zeros(()))


def gaussian_log_likelihood(x, log_w, g: GaussianBase | DiagonalBase) -> float:
    lw = np.asarray(log_w, np.float64) if log_w is not None else np.zeros(len(x))
    w = np.exp(lw - lw.max())
    w /= w.sum()
    return float(w @ np.asarray(jax.vmap(g.log_density)(jnp.asarray(x, jnp.float32)), np.float64))


def refined_base(x, log_w, widen: float, dense: bool | None, max_components: int = 16,
                 defensive: float = 0.1, seed: int = 0) -> tuple[DefensiveBase, dict]:
    """The base fitted to weighted particles: the moment Gaussian (dense or diagonal by
    :func:`gaussian_from_particles`) or a diagonal mixture of 2, 4, ..., ``max_components``
    components (EM), whichever has the larger BIC on the particles; a mixture gets the
    widened moment Gaussian as its defensive component with weight ``defensive``. Standard
    deviations are widened by ``widen``. Returns the base (mixture padded to
    ``max_components``) and {"components": K (0: the Gaussian), "bic": {K: per-particle
    BIC}}."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    max_components = components_for(d, max_components)
    g1 = gaussian_from_particles(x, log_w, widen=1.0, dense=dense)
    n_g = d + (d * (d + 1) // 2 if isinstance(g1, GaussianBase) else d)
    best_k = 0
    bic = {0: gaussian_log_likelihood(x, log_w, g1) - 0.5 * n_g * np.log(n) / n}
    best_mix = None
    k = 2
    while k <= max_components:
        m, ll = fit_mixture(x, log_w, k, seed=seed)
        bic[k] = ll - 0.5 * (k * 2 * d + k - 1) * np.log(n) / n
        if bic[k] > bic[best_k]:
            best_k, best_mix = k, m
        k *= 2
    g = gaussian_from_particles(x, log_w, widen=widen, dense=isinstance(g1, GaussianBase))
    if best_mix is None:
        base = gaussian_only(g, max_components)
    else:
        mix = _padded(widen_mixture(best_mix, widen), max_components)
        base = DefensiveBase(mix, g, jnp.asarray(np.log(defensive), jnp.float32))
    return base, {"components": best_k, "bic": {int(k): float(v) for k, v in bic.items()}}


class Base(NamedTuple):
    """A base law as functions: ``log_density(x (d,)) -> ()`` (normalised) and
    ``sample(key, n) -> (n, d)``; ``kind`` names it, ``gaussian`` holds its parameters when
    it is Gaussian (what a saved fit stores)."""

    log_density: Callable[[Array], Array]
    sample: Callable[[Array, int], Array]
    kind: str
    gaussian: GaussianBase | None = None
    parts: Callable[[Array], tuple[Array, Array]] | None = None  # x -> (log b, ell) in one pass


def gaussian_base(g: GaussianBase) -> Base:
    return Base(g.log_density, g.sample, "gaussian", g)


#: the Gaussian base is dense when some correlation of the particles exceeds this
DENSE_CORRELATION = 0.3


def gaussian_from_particles(x: Array, log_w: Array | None = None, widen: float = 1.0,
                            jitter: float = 1e-6,
                            dense: bool | None = None) -> GaussianBase | DiagonalBase:
    """The Gaussian with the (weighted) mean and covariance of particles x (N, d), its
    covariance scaled by ``widen``^2, with a relative diagonal jitter. Host-side, float64.

    ``dense=None`` keeps the full covariance only when some correlation exceeds
    :data:`DENSE_CORRELATION` (a dense base costs O(d^2) per evaluation, a diagonal one
    O(d)); True / False force it."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if log_w is None:
        w = np.full(n, 1.0 / n)
    else:
        lw = np.asarray(log_w, np.float64)
        lw = np.where(np.isfinite(lw), lw, -np.inf)
        w = np.exp(lw - lw.max())
        w /= w.sum()
    mean = w @ x
    centred = x - mean
    cov = (centred * w[:, None]).T @ centred
    cov = 0.5 * (cov + cov.T)
    scale = np.maximum(np.diag(cov), 1e-12)
    cov = cov + jitter * np.diag(scale) + 1e-12 * np.eye(d)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    if dense is None:
        dense = d > 1 and float(np.max(np.abs(corr - np.diag(np.diag(corr))))) > DENSE_CORRELATION
    if not dense:
        return DiagonalBase(jnp.asarray(mean, jnp.float32), jnp.asarray(widen * sd, jnp.float32))
    chol = np.linalg.cholesky(widen**2 * cov)
    return GaussianBase(jnp.asarray(mean, jnp.float32), jnp.asarray(chol, jnp.float32),
                        jnp.asarray(np.linalg.inv(chol), jnp.float32))


def _is_jacobian_site(name: str, latent: set) -> bool:
    """NumPyro adds log|det J| of the constraining transform of a latent site ``x`` as an
    observed factor site ``_x_log_det``."""
    return name.startswith("_") and name.endswith("_log_det") and name[1:-8] in latent


def prior_parts_fn(target: Target):
    """``parts(x) -> (log prior, log likelihood)`` at a flat unconstrained point, from one
    trace of the model: the prior includes log|det J| of the constraining transforms and the
    likelihood holds every observed site (data and ``numpyro.factor`` terms), so that their
    sum is ``target.log_density``."""
    from numpyro.infer.util import _unconstrain_reparam, log_density
    from numpyro import handlers
    from functools import partial

    model, args, kwargs = target.model, target.model_args, target.model_kwargs
    latent = set(target.site_names)

    def parts(x):
        params = target.unravel(x)
        substituted = handlers.substitute(model, substitute_fn=partial(_unconstrain_reparam, params))
        log_joint, trace = log_density(substituted, args, kwargs, {})
        log_lik = jnp.zeros((), log_joint.dtype)
        for name, site in trace.items():
            if site["type"] == "sample" and site["is_observed"] and not _is_jacobian_site(name, latent):
                lp = jnp.sum(site["fn"].log_prob(site["value"]))
                scale = site.get("scale")
                log_lik = log_lik + (lp if scale is None else scale * lp)
        return log_joint - log_lik, log_lik

    return parts


def _latent_only(model):
    """The model with its observed sites hidden (for drawing the latent sites' prior)."""
    from numpyro import handlers

    def latent(*args, **kwargs):
        with handlers.block(hide_fn=lambda site: site.get("is_observed", False)):
            return model(*args, **kwargs)

    return latent


def prior_base(target: Target) -> Base | None:
    """The model's prior in the target's (unwhitened, unconstrained) coordinates, log|det J|
    of the constraining transforms included (:func:`prior_parts_fn`), so that ell = log rho
    - log b is exactly the log likelihood. None when a latent site's prior is improper, the
    target has no model, or it is whitened."""
    if target.model is None or target.improper_sites or target.whitening != "none":
        return None
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import Predictive
    from numpyro.infer.util import unconstrain_fn

    model, args, kwargs = target.model, target.model_args, target.model_kwargs
    names = list(target.site_names)
    parts = prior_parts_fn(target)

    def log_density(x):
        return parts(x)[0]

    latent = _latent_only(model)

    def sample(rng_key, num):
        draws = Predictive(latent, num_samples=num, return_sites=names)(rng_key, *args, **kwargs)
        unconstrained = jax.vmap(lambda p: unconstrain_fn(model, args, kwargs, p))(draws)
        return jax.vmap(lambda u: ravel_pytree(u)[0])(unconstrained)

    return Base(log_density, sample, "prior", parts=parts)
