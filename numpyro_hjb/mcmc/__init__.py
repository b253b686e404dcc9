"""Exact posterior draws from a fitted sampler: pure IMH / i-SIR functions, local moves, and
the NumPyro ``MCMCKernel`` classes."""

from .imh import IMHState, imh_init, imh_refill, imh_step
from .kernel import DDS, DIS, PIS, TTHJB, DiffusionKernel
from .particle_kernel import SCLD
from .pimh import PIMHState, pimh_init, pimh_step
from .refine import make_refine_fn

__all__ = [
    "IMHState", "imh_init", "imh_refill", "imh_step", "make_refine_fn",
    "DiffusionKernel", "DIS", "DDS", "PIS", "TTHJB", "SCLD", "PIMHState", "pimh_init", "pimh_step",
]
