"""Engine 2: tensor-train HJB (docs/design.md s.4).

Modules, from the bottom up: :mod:`.basis` (the orthonormal Hermite basis), :mod:`.core`
(the host-side TT algebra) and :mod:`.evaluate` (batch evaluation at points), :mod:`.cross`
and :mod:`.regression` (FTTs from function values), :mod:`.hjb` and :mod:`.dlra` (time
integration), :mod:`.w0` (W_0 and h_0 of a target), :mod:`.formulations` (the
hjb -> cutoff -> Cole-Hopf cascade), :mod:`.samplers`, :mod:`.settings` and
:mod:`.engine` (the registered engine "tt").
"""

from . import engine  # noqa: F401  (registers "tt")
from .engine import TTState
from .settings import TTSettings

__all__ = ["TTSettings", "TTState"]
