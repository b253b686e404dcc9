"""Engine 1: learned control (DIS, DDS, PIS)."""

from . import engine  # noqa: F401  (registers "dis", "dds", "pis")
from .settings import ControlSettings

__all__ = ["ControlSettings"]
