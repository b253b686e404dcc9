"""Log weights -> evidence, its uncertainty and diagnostics; resampling and IMH (DESIGN.md s.5).

For proposals X_i ~ q with log weights log w_i = log rho(X_i) - log q(X_i) (path-space
weights for the diffusion samplers), E_q[w] = Z, so

    log Z_hat = logmeanexp(log w),   SE(log Z_hat) ~ sd(w) / (sqrt(N) mean(w))   (delta method),
    ELBO = mean(log w) <= log Z,     ESS = 1 / (N sum_i wbar_i^2) in (0, 1],

and the Pareto k-hat of the weights (ArviZ's PSIS) says whether the variance is finite.
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
    "estimate_evidence",
    "normalised_ess",
    "pareto_khat",
    "resample",
    "independence_mh",
]


class EvidenceEstimate(NamedTuple):
    """log Z with its standard error and diagnostics.

    Attributes:
        log_z: logmeanexp of the finite log weights.
        log_z_se: delta-method standard error of ``log_z``.
        elbo: mean log weight (a lower bound on log Z in expectation).
        ess: normalised effective sample size of the weights, in (0, 1].
        khat: Pareto k-hat of the weights (> 0.7: unreliable estimate).
        num_samples: number of proposals used.
        num_dropped: proposals dropped for NaN / +inf log weights.
        method: how the weights were obtained.
    """

    log_z: float
    log_z_se: float
    elbo: float
    ess: float
    khat: float
    num_samples: int
    num_dropped: int = 0
    method: str = "importance sampling"

    def __str__(self) -> str:
        return (
            f"log Z = {self.log_z:.4f} ± {self.log_z_se:.4f} (ELBO {self.elbo:.4f}, "
            f"ESS {self.ess:.3f}, k̂ {self.khat:.2f}, n={self.num_samples}, {self.method})"
        )


def normalised_ess(log_w) -> float:
    """1 / (N sum_i wbar_i^2) with wbar the self-normalised weights."""
    lw = np.asarray(log_w, dtype=np.float64)
    lw = lw[np.isfinite(lw) | (lw == -np.inf)]
    if lw.size == 0 or not np.any(np.isfinite(lw)):
        return 0.0
    p = np.exp(lw - np.max(lw))
    p /= p.sum()
    return float(1.0 / (lw.size * np.sum(p**2)))


def pareto_khat(log_w) -> float:
    """Pareto k-hat of the importance weights, from ArviZ's PSIS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

    lw = np.asarray(log_w, dtype=np.float64)
    lw = lw[np.isfinite(lw)]
    if lw.size < 10:
        return float("nan")
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

    -inf log weights are valid zero weights and are kept. NaN or +inf weights are a failure
    of the sampler: they are dropped with a warning that says how many; if all are dropped a
    ValueError is raised instead of returning NaN.
    """
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    n_total = lw.size
    if n_total == 0:
        raise ValueError("log_w is empty: no proposals to estimate the evidence from")
    bad = np.isnan(lw) | (lw == np.inf)
    num_dropped = int(bad.sum())
    if num_dropped:
        warnings.warn(
            f"{num_dropped} of {n_total} log weights are NaN or +inf and were dropped from the "
            "evidence estimate; the proposal produced invalid points (check the target's "
            "support or the training run)."
        )
    lw = lw[~bad]
    if lw.size == 0 or not np.any(np.isfinite(lw)):
        raise ValueError(
            "No proposal has a finite log weight: the sampler puts no mass where the target "
            "density is positive. log Z cannot be estimated."
        )
    n = lw.size
    m = np.max(lw)
    w = np.exp(lw - m)
    mean_w = w.mean()
    log_z = float(m + np.log(mean_w))
    se = float(np.std(w, ddof=1) / (math.sqrt(n) * mean_w)) if n > 1 else float("inf")
    finite = lw[np.isfinite(lw)]
    elbo = float(finite.mean()) if finite.size == n else float("-inf")
    return EvidenceEstimate(
        log_z=log_z,
        log_z_se=se,
        elbo=elbo,
        ess=normalised_ess(lw),
        khat=pareto_khat(lw),
        num_samples=n,
        num_dropped=num_dropped,
        method=method,
    )


def resample(rng_key: jax.Array, log_w: jax.Array, num: int | None = None) -> jax.Array:
    """Indices of a multinomial (sampling-importance) resample of size ``num``."""
    # weights of a float64 engine (TT) may arrive here outside its x64 context: convert to the
    # default float type explicitly (enough for drawing indices) instead of a silent truncation
    log_w = jnp.asarray(log_w, dtype=jax.dtypes.canonicalize_dtype(jnp.float64))
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    num = log_w.shape[0] if num is None else num
    return jax.random.categorical(rng_key, log_w, shape=(num,))


def independence_mh(
    rng_key: jax.Array, log_w: jax.Array, init_log_w: jax.Array | float = -jnp.inf
) -> tuple[jax.Array, jax.Array]:
    """Independence Metropolis-Hastings over a stream of proposals with weights w_i.

    State i is accepted with probability min(1, w_i / w_current); an initial state with
    weight ``init_log_w`` (default: none, so the first finite proposal is accepted) precedes
    the stream. Returns (index of the current state after each step, -1 for the initial
    state; accepted flags). Exact for the target in the limit (DESIGN.md s.5).
    """
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    log_u = jnp.log(jax.random.uniform(rng_key, log_w.shape))

    def step(carry, inp):
        idx, cur = carry
        i, lw, lu = inp
        accept = (lu < lw - cur) | (jnp.isinf(cur) & (cur < 0) & jnp.isfinite(lw))
        idx = jnp.where(accept, i, idx)
        cur = jnp.where(accept, lw, cur)
        return (idx, cur), (idx, accept)

    init = (jnp.array(-1), jnp.asarray(init_log_w, dtype=log_w.dtype))
    _, (idx, accepted) = jax.lax.scan(
        step, init, (jnp.arange(log_w.shape[0]), log_w, log_u)
    )
    return idx, accepted
