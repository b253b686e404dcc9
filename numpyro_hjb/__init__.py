"""numpyro_hjb: diffusion samplers and evidence estimators for NumPyro models.

Two engines share one idea (DESIGN.md): the log density of an OU process started at the
posterior solves an HJB equation, and its gradient drives a reverse-time SDE from N(0, I)
to the posterior.

* learned control (``engine="dis" | "dds" | "pis"``): a network drift trained on simulated
  paths with the KL or log-variance loss;
* tensor-train HJB (``engine="tt"``): the HJB equation integrated directly in time.
"""

from .api import Draws, FitResult, fit
from .evidence import EvidenceEstimate, estimate_evidence
from .inference_data import to_inference_data
from .io import load_fit, save_fit
from .kernel import DDS, DIS, PIS, TTHJB
from .model_evidence import log_evidence
from .target import Target, make_target, whiten

__all__ = [
    "fit",
    "DIS",
    "DDS",
    "PIS",
    "TTHJB",
    "log_evidence",
    "to_inference_data",
    "save_fit",
    "load_fit",
    "FitResult",
    "Draws",
    "EvidenceEstimate",
    "estimate_evidence",
    "Target",
    "make_target",
    "whiten",
]
__version__ = "0.1.0"
