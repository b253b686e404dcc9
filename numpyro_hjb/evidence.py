"""Log weights -> evidence, its uncertainty and diagnostics; resampling (docs/design.md s.5).

For proposals X_i ~ q with log weights log w_i = log rho(X_i) - log q(X_i) (path-space
weights for the diffusion samplers), E_q[w] = Z, so

    log Z_hat = log( (1/N) sum_i w_i ),   SE(log Z_hat) ~ sd(w) / (sqrt(N) mean(w))  (delta method),
    ELBO = mean(log w) <= log Z,          ESS = 1 / (N sum_i wbar_i^2) in (0, 1],

and the Pareto k-hat of the weights (ArviZ's PSIS) says whether their variance is finite.

A weight that is NaN or +inf is a failure of the sampler (or of the target's density at a
point the sampler reached). It is not dropped: dropping it would divide the sum by the
number of *finite* weights and bias log Z upward. It is counted as a zero weight in N and
reported (``num_nonfinite``), with a warning that names the cause.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "EvidenceEstimate",
    "UnreliableResultWarning",
    "UnreliableResultError",
    "estimate_evidence",
    "ess_fraction",
    "pareto_khat",
    "resample",
    "systematic_indices",
    "check_reliability",
    "KHAT_THRESHOLD",
    "ESS_FLOOR",
    "UNIQUE_FLOOR",
]

#: PSIS k-hat above which an importance-sampling estimate is unreliable (Vehtari et al.).
KHAT_THRESHOLD = 0.7
#: normalised ESS below which the weights are too uneven to trust
ESS_FLOOR = 0.01
#: fraction of unique draws below which the returned draws are copies of a few points
UNIQUE_FLOOR = 0.1


class UnreliableResultWarning(UserWarning):
    """A result that cannot be trusted (low ESS, k-hat > 0.7, few unique draws, non-finite
    log Z, non-finite weights); the message names the cause and a remedy."""


class UnreliableResultError(RuntimeError):
    """The same, raised instead of warned with ``strict=True``."""


class EvidenceEstimate(NamedTuple):
    """log Z with its standard error and diagnostics.

    Attributes:
        log_z: log of the mean weight (non-finite weights count as zero).
        log_z_se: its standard error (delta method for importance sampling, or the spread of
            independent replicate particle systems for SMC; see ``method``).
        elbo: mean log weight (a lower bound on log Z in expectation); -inf if any weight is
            zero.
        ess: normalised effective sample size of the weights, in (0, 1].
        khat: Pareto k-hat of the weights (> 0.7: unreliable); NaN where undefined.
        num_samples: number of weights (proposals or particles) behind the estimate.
        num_nonfinite: weights that were NaN or +inf (counted as zero weights).
        method: how the weights were obtained.
    """

    log_z: float
    log_z_se: float
    elbo: float
    ess: float
    khat: float
    num_samples: int
    num_nonfinite: int = 0
    method: str = "importance sampling"

    def __str__(self) -> str:
        return (
            f"log Z = {self.log_z:.4f} ± {self.log_z_se:.4f} (ELBO {self.elbo:.4f}, "
            f"ESS {self.ess:.3f}, k̂ {self.khat:.2f}, n={self.num_samples}, {self.method})"
        )


def ess_fraction(log_w, mask=None):
    """1 / (N sum_i wbar_i^2) with wbar the self-normalised weights (jit-able).

    NaN and +inf weights count as zero weights; ``mask`` (bool, same shape) excludes entries
    from N altogether. Returns 0 when no weight is positive.
    """
    log_w = jnp.asarray(log_w)
    keep = jnp.ones(log_w.shape, bool) if mask is None else jnp.asarray(mask)
    lw = jnp.where(keep & jnp.isfinite(log_w), log_w, -jnp.inf)
    p = jax.nn.softmax(jnp.where(jnp.any(jnp.isfinite(lw)), lw, 0.0))
    ess = 1.0 / (jnp.maximum(jnp.sum(keep), 1) * jnp.sum(jnp.where(keep, p, 0.0) ** 2))
    return jnp.where(jnp.any(jnp.isfinite(lw)), ess, 0.0)


def pareto_khat(log_w) -> float:
    """Pareto k-hat of the importance weights, from ArviZ's PSIS (NaN for < 10 weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

    lw = np.asarray(log_w, dtype=np.float64)
    lw = lw[np.isfinite(lw)]
    if lw.size < 10 or np.ptp(lw) == 0:
        return float("nan") if lw.size < 10 else -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        psislw = getattr(az, "psislw", None)
        if psislw is None:  # arviz >= 1.0 moved PSIS to arviz_stats
            from arviz_stats.base import array_stats  # pragma: no cover

            _, khat = array_stats.psislw(lw)  # pragma: no cover
        else:
            _, khat = psislw(lw)
    return float(np.asarray(khat))


def estimate_evidence(log_w, method: str = "importance sampling") -> EvidenceEstimate:
    """log Z, its standard error, ELBO, ESS and k-hat from importance log weights.

    -inf log weights are valid zero weights. NaN or +inf weights are counted as zero
    weights too (so log Z is not biased upward by dropping them) and reported with a
    warning. Raises ValueError for no weights, or when no weight is positive.
    """
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    n = lw.size
    if n == 0:
        raise ValueError("log_w is empty: no proposals to estimate the evidence from")
    bad = np.isnan(lw) | (lw == np.inf)
    num_bad = int(bad.sum())
    if num_bad:
        warnings.warn(
            f"{num_bad} of {n} log weights are NaN or +inf: the target's log density is not "
            "finite at points the sampler reached, or the sampler produced invalid points. "
            "They count as zero weights. Check the model's support, or fit longer.",
            UnreliableResultWarning,
            stacklevel=2,
        )
    lw = np.where(bad, -np.inf, lw)
    if not np.any(np.isfinite(lw)):
        raise ValueError(
            "No proposal has a finite log weight: the sampler puts no mass where the target "
            "density is positive. log Z cannot be estimated."
        )
    m = np.max(lw)
    w = np.exp(lw - m)
    mean_w = w.mean()
    log_z = float(m + np.log(mean_w))
    se = float(np.std(w, ddof=1) / (math.sqrt(n) * mean_w)) if n > 1 else float("inf")
    elbo = float(lw.mean()) if np.all(np.isfinite(lw)) else float("-inf")
    return EvidenceEstimate(
        log_z=log_z,
        log_z_se=se,
        elbo=elbo,
        ess=float(ess_fraction(lw)),
        khat=pareto_khat(lw),
        num_samples=n,
        num_nonfinite=num_bad,
        method=method,
    )


def systematic_indices(rng_key: jax.Array, log_w: jax.Array, num: int) -> jax.Array:
    """Systematic resampling: indices (num,) with u_j = (U + j) / num, U ~ U(0, 1), against the
    CDF of the normalised weights. Each index i appears floor(num W_i) or ceil(num W_i) times,
    so the resampled mean usually varies less than after a multinomial resample. (A sort-based
    search: the default scan search of ``jnp.searchsorted``, which BlackJAX's resampler uses,
    is slow on CPU, and under ``vmap`` a ``cond`` around it runs on every step.)"""
    cdf = jnp.cumsum(jnp.exp(log_w - jax.nn.logsumexp(log_w)))
    u = (jax.random.uniform(rng_key, dtype=cdf.dtype) + jnp.arange(num, dtype=cdf.dtype)) / num
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="sort")
    return jnp.clip(idx, 0, log_w.shape[0] - 1)


def resample(rng_key: jax.Array, log_w, num: int | None = None) -> jax.Array:
    """Indices (num,) of a sampling-importance resample of the weights: systematic
    (:func:`systematic_indices`), then put in a random order.

    Systematic rather than multinomial: every proposal i is drawn floor(num W_i) or
    ceil(num W_i) times, so the draws repeat a proposal only as often as its weight asks. For
    equal weights and num <= N the draws are distinct proposals, and for proposals in no
    particular order the variance of their mean is about that of sampling without
    replacement, (1 - num / N) sd^2 / num, against sd^2 / num
    for a multinomial resample. The random order makes the draws exchangeable (consecutive
    systematic indices follow the proposals' order).

    The log weights are shifted by their maximum in float64 on the host first, so any
    precision (a float64 engine's weights) resamples correctly in the default float type.
    NaN and +inf weights have probability zero.
    """
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    lw = np.where(np.isnan(lw) | (lw == np.inf), -np.inf, lw)
    if not np.any(np.isfinite(lw)):
        raise ValueError("no proposal has a finite log weight: nothing to resample")
    num = lw.size if num is None else int(num)
    key_u, key_order = jax.random.split(rng_key)
    idx = systematic_indices(key_u, jnp.asarray(lw - lw.max()), num)
    return jax.random.permutation(key_order, idx)


def check_reliability(
    estimate: EvidenceEstimate,
    *,
    unique_fraction: float | None = None,
    what: str = "the result",
    remedy: str = "fit longer, raise the time budget, or try whitening='laplace'",
    strict: bool = False,
    ess_floor: float = ESS_FLOOR,
    stacklevel: int = 3,
) -> list[str]:
    """Warn (or, with ``strict``, raise :class:`UnreliableResultError`) when ``estimate`` (and
    the draws behind it) cannot be trusted; returns the causes found (empty: none).

    Causes: a non-finite log Z; non-finite weights; ESS below ``ess_floor``; k-hat above
    :data:`KHAT_THRESHOLD`; under :data:`UNIQUE_FLOOR` unique draws among those returned.
    """
    causes = []
    if not math.isfinite(estimate.log_z) or not math.isfinite(estimate.log_z_se):
        causes.append(f"log Z is not finite ({estimate.log_z} ± {estimate.log_z_se})")
    if estimate.num_nonfinite:
        causes.append(f"{estimate.num_nonfinite} of {estimate.num_samples} weights are not finite")
    if estimate.ess < ess_floor:
        causes.append(
            f"the ESS of the weights is {estimate.ess:.4f} (about "
            f"{estimate.ess * estimate.num_samples:.0f} of {estimate.num_samples}), below "
            f"{ess_floor}"
        )
    if estimate.khat > KHAT_THRESHOLD:
        causes.append(
            f"the Pareto k-hat of the weights is {estimate.khat:.2f} > {KHAT_THRESHOLD} "
            "(their variance may be infinite)"
        )
    if unique_fraction is not None and unique_fraction < UNIQUE_FLOOR:
        causes.append(
            f"only {100 * unique_fraction:.1f}% of the returned draws are distinct: they are "
            "copies of a few points"
        )
    if causes:
        message = (
            f"{what} cannot be trusted: " + "; ".join(causes) + f" ({estimate}). Remedy: "
            f"{remedy}."
        )
        if strict:
            raise UnreliableResultError(message)
        warnings.warn(message, UnreliableResultWarning, stacklevel=stacklevel)
    return causes
