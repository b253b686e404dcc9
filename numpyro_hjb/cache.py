"""A small least-recently-used cache keyed by an object's identity.

The engines keep compiled programs per target (and compiled executables per program) so
that a fit, its proposals and repeated calls compile once. Keyed by ``id(owner)`` with the
owner itself kept beside the value (an id can be reused once its object is gone), and
bounded, so that a long process which fits many models does not keep every compiled program
alive: each one holds compiled machine code, and thousands of them exhaust the process's
memory maps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["IdentityCache"]


class IdentityCache:
    """``{(owner, key): value}`` for at most ``maxsize`` entries, the least recently used
    dropped first; an entry is found only for the very same owner object."""

    def __init__(self, maxsize: int = 16):
        self.maxsize = int(maxsize)
        self._entries: OrderedDict = OrderedDict()

    def get(self, owner: Any, key: Hashable = ()) -> Any | None:
        """The value stored for ``owner`` and ``key``, or None."""
        k = (id(owner), key)
        hit = self._entries.get(k)
        if hit is None or hit[0] is not owner:
            return None
        self._entries.move_to_end(k)
        return hit[1]

    def put(self, owner: Any, key: Hashable, value: Any) -> Any:
        """Store ``value`` for ``owner`` and ``key`` (dropping the oldest past ``maxsize``);
        returns it."""
        k = (id(owner), key)
        self._entries[k] = (owner, value)
        self._entries.move_to_end(k)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
