"""numpyro_hjb: diffusion samplers and evidence estimators for NumPyro models.

Engines (``numpyro_hjb.base.engine_names()``), all sharing one idea (docs/design.md): the log
density of a diffusion started at the posterior solves an HJB equation, and its gradient
drives a reverse-time SDE from a Gaussian to the posterior.

* sequential annealing (``engine="scld"``, the default): replicate tempered particle
  systems with HMC moves from a base refitted to pilot particles, and a learned (CMCD)
  control where it pays; it tunes itself within a time budget;
* learned control (``engine="dis" | "dds" | "pis"``): a network drift trained on simulated
  paths with the KL or log-variance loss;
* tensor-train HJB (``engine="tt"``): the HJB equation integrated directly in time.
"""

from . import annealing, control, tt  # noqa: F401  (register the engines)
from .api import DEFAULT_ENGINE, Draws, FitResult, fit, log_evidence
from .base import ENGINES, Engine, engine_names, get_engine
from .evidence import EvidenceEstimate, UnreliableResultError, UnreliableResultWarning, estimate_evidence
from .inference_data import to_inference_data
from .io import load_fit, save_fit
from .mcmc import DDS, DIS, PIS, SCLD, TTHJB
from .settings import InvalidSettingError, UnknownSettingError
from .target import Target, make_target, whiten

__all__ = [
    "fit",
    "DIS",
    "DDS",
    "PIS",
    "TTHJB",
    "SCLD",
    "log_evidence",
    "to_inference_data",
    "save_fit",
    "load_fit",
    "FitResult",
    "Draws",
    "EvidenceEstimate",
    "estimate_evidence",
    "UnreliableResultWarning",
    "UnreliableResultError",
    "UnknownSettingError",
    "InvalidSettingError",
    "Target",
    "make_target",
    "whiten",
    "Engine",
    "ENGINES",
    "engine_names",
    "get_engine",
    "DEFAULT_ENGINE",
]
__version__ = "0.2.0"
