"""Engine 3: sequential annealing along a path from a base to the posterior (tempered SMC
with replicate particle systems; controlled Langevin transitions)."""

from . import engine  # noqa: F401  (registers "scld")
from .settings import SCLDSettings

__all__ = ["SCLDSettings"]
