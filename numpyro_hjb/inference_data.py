"""ArviZ conversion of our MCMC runs (docs/design.md s.5).

``az.from_numpyro(mcmc)`` works unchanged on ``MCMC(DIS(model))``: the posterior group holds
the IMH draws per site (constrained, deterministic sites included; never raw weighted
proposals), ``sample_stats`` the kernel's default fields (``log_weight``,
``acceptance_rate`` — NumPyro's ``accept_prob`` renamed by ArviZ —, ``accepted``,
``diverging``), and ``log_likelihood`` is computed from the model when it has observed
sites. :func:`to_inference_data` adds the evidence.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from .evidence import EvidenceEstimate
from .api import fit_result_of, log_evidence

__all__ = ["to_inference_data", "evidence_attrs"]


def evidence_attrs(estimate: EvidenceEstimate, engine: str | None = None) -> dict:
    """Plain-Python attributes (netCDF-safe) describing an evidence estimate."""
    attrs = {
        "log_marginal_likelihood": float(estimate.log_z),
        "log_marginal_likelihood_se": float(estimate.log_z_se),
        "log_marginal_likelihood_elbo": float(estimate.elbo),
        "log_marginal_likelihood_ess": float(estimate.ess),
        "log_marginal_likelihood_khat": float(estimate.khat),
        "log_marginal_likelihood_num_samples": int(estimate.num_samples),
        "log_marginal_likelihood_method": str(estimate.method),
    }
    if engine is not None:
        attrs["numpyro_hjb_engine"] = str(engine)
    return attrs


def to_inference_data(
    mcmc: Any,
    *,
    evidence: EvidenceEstimate | bool | None = None,
    rng_key: jax.Array | None = None,
    num_evidence_samples: int = 4096,
    **kwargs: Any,
):
    """``az.from_numpyro(mcmc, **kwargs)`` plus the evidence.

    Adds to ``sample_stats``: ``log_weight`` and ``acceptance_rate`` (when the run did not
    already collect them) and ``log_marginal_likelihood`` (dims ``chain``, the same
    estimate for every chain, since all chains share one fitted sampler); and to the
    attributes of ``posterior`` and ``sample_stats``: log Z, its SE, ELBO, ESS, k-hat,
    number of proposals and method (:func:`evidence_attrs`).

    Args:
        mcmc: a ``numpyro.infer.MCMC`` running one of our kernels, after ``run``.
        evidence: an :class:`EvidenceEstimate` to store; None (default) computes one from
            ``num_evidence_samples`` fresh proposals (:func:`numpyro_hjb.log_evidence`, which
            raises for improper priors and warns for unreliable weights); False skips it.
        rng_key: PRNG key of the evidence proposals.
        **kwargs: passed to ``az.from_numpyro`` (``coords``, ``dims``, ``posterior_predictive``...).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    import xarray as xr

    fit_result = fit_result_of(mcmc)  # TypeError for a non-numpyro_hjb run
    if evidence is None:
        evidence = log_evidence(mcmc, rng_key=rng_key, num_samples=num_evidence_samples)
    elif evidence is not False and not isinstance(evidence, EvidenceEstimate):
        raise TypeError(
            f"evidence must be an EvidenceEstimate, None or False, got {type(evidence).__name__}"
        )
    idata = az.from_numpyro(mcmc, **kwargs)
    stats = idata.sample_stats
    extra = mcmc.get_extra_fields(group_by_chain=True)
    new_vars = {}
    for field, name in (("log_weight", "log_weight"), ("accept_prob", "acceptance_rate")):
        if name not in stats and field in extra:
            new_vars[name] = (("chain", "draw"), np.asarray(extra[field]))
    attrs = {}
    if evidence is not False:
        n_chains = stats.sizes["chain"]
        new_vars["log_marginal_likelihood"] = (
            ("chain",),
            np.full(n_chains, float(evidence.log_z)),
        )
        attrs = evidence_attrs(evidence, fit_result.engine)
    stats = stats.assign({k: xr.Variable(*v) for k, v in new_vars.items()})
    stats.attrs.update(attrs)
    idata.sample_stats = stats
    idata.posterior.attrs.update(attrs)
    return idata
