"""log Z (the model evidence p(y)) from a fitted sampler or from our MCMC run (DESIGN.md s.5).

The estimate always comes from *fresh* proposals of the fitted sampler, never from the
accepted MCMC states: for X_i ~ q with path weights w_i, E_q[w] = Z, so
log Z_hat = logmeanexp(log w_i) is consistent (and Z_hat unbiased). Accepted IMH states are
distributed by the posterior, where the weights are no longer an unbiased estimate of Z.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax

from .api import FitResult
from .evidence import EvidenceEstimate

__all__ = ["log_evidence", "fit_result_of"]

#: PSIS k-hat above which the importance-sampling estimate is unreliable (Vehtari et al.).
KHAT_THRESHOLD = 0.7


def fit_result_of(obj: Any) -> FitResult:
    """The :class:`FitResult` behind a FitResult, one of our kernels, or an ``MCMC`` object
    running one of our kernels (reached through ``mcmc.sampler``)."""
    from .kernel import DiffusionKernel

    if isinstance(obj, FitResult):
        return obj
    kernel = obj if isinstance(obj, DiffusionKernel) else getattr(obj, "sampler", None)
    if not isinstance(kernel, DiffusionKernel):
        raise TypeError(
            "mcmc_or_fit must be a numpyro_hjb FitResult, a numpyro_hjb kernel, or a "
            "numpyro.infer.MCMC running one (DIS, DDS, PIS, TTHJB); got "
            f"{type(obj).__name__}" + (
                f" with sampler {type(kernel).__name__}" if kernel is not None else ""
            )
        )
    if kernel.fit_result is None:
        raise ValueError("the kernel has not been fitted yet: call mcmc.run(...) first")
    return kernel.fit_result


def log_evidence(
    mcmc_or_fit: Any, rng_key: jax.Array | None = None, num_samples: int = 4096
) -> EvidenceEstimate:
    """log Z with its standard error, ELBO, ESS and PSIS k-hat from ``num_samples`` fresh
    proposals (:func:`numpyro_hjb.evidence.estimate_evidence`).

    Args:
        mcmc_or_fit: a :class:`~numpyro_hjb.api.FitResult` or a ``numpyro.infer.MCMC`` whose
            sampler is one of our kernels (after ``run``).
        rng_key: PRNG key of the proposals (default ``PRNGKey(12345)``, as
            :meth:`FitResult.log_evidence`).
        num_samples: number of fresh proposals.

    Warns:
        UserWarning: the model has improper prior sites (the evidence is undefined; the
            number returned is the log integral of the unnormalised density), or k-hat > 0.7
            (the weights have too heavy a tail for a reliable estimate).
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    fit_result = fit_result_of(mcmc_or_fit)
    improper = tuple(fit_result.target.improper_sites)
    if improper:
        warnings.warn(
            f"the prior of site(s) {list(improper)} is improper, so the model evidence p(y) "
            "is undefined; the value returned is the log integral of the unnormalised "
            "density and is not comparable between models.",
            UserWarning,
            stacklevel=2,
        )
    estimate = fit_result.log_evidence(rng_key, num_samples)
    if estimate.khat > KHAT_THRESHOLD:
        warnings.warn(
            f"Pareto k-hat of the importance weights is {estimate.khat:.2f} > "
            f"{KHAT_THRESHOLD}: the log Z estimate ({estimate.log_z:.3f} ± "
            f"{estimate.log_z_se:.3f}) is unreliable. Fit longer, use whitening, or draw "
            "more proposals.",
            UserWarning,
            stacklevel=2,
        )
    return estimate
