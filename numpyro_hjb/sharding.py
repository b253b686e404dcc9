"""The particle axis across devices.

Every batch of particles the package computes (proposals, the replicate particle systems of
the sequential engine) has a leading axis whose entries are independent given the PRNG key.
With more than one device that axis is partitioned over a one-dimensional
:class:`jax.sharding.Mesh` with the axis name ``"particles"``: the compiled programs are
given ``out_shardings`` of ``NamedSharding(mesh, P("particles"))`` and XLA's partitioner
spreads the work, so the values are the same as on one device up to floating-point
round-off (the random bits do not depend on the partition, ``jax_threefry_partitionable``).

The devices are chosen per fit (``fit(model, devices=...)``): ``None`` means every device of
the default backend (``jax.devices()``), an int the first that many, or a sequence of
devices. A batch whose leading size is not a multiple of the device count is left on one
device.

Several hosts: start every process with ``jax.distributed.initialize()`` before the first
JAX call; ``jax.devices()`` then lists the devices of all hosts and the same code runs
unchanged on each process (``examples/multi_host.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "constrain_particles",
    "current_devices",
    "jit_over_particles",
    "particle_sharding",
    "resolve_devices",
    "sharding_for",
    "use_devices",
]

#: the mesh axis the particle axis is partitioned over
AXIS = "particles"

_DEVICES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("numpyro_hjb_devices",
                                                                         default=None)


def resolve_devices(devices: int | Sequence | None = None) -> tuple:
    """The devices a ``devices=`` argument names (see the module docstring)."""
    available = jax.devices()
    if devices is None:
        return tuple(available)
    if isinstance(devices, (bool, np.bool_)):
        raise TypeError(f"devices must be None, an int or a sequence of devices, got {devices!r}")
    if isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must be between 1 and {len(available)} (the devices of "
                             f"this process, jax.devices()), got {devices}")
        return tuple(available[: int(devices)])
    out = tuple(devices)
    if not out or not all(isinstance(d, jax.Device) for d in out):
        raise TypeError("devices must be None, an int or a non-empty sequence of jax devices "
                        f"(jax.devices()), got {devices!r}")
    return out


def particle_sharding(devices: Sequence) -> NamedSharding | None:
    """``NamedSharding(Mesh(devices, ("particles",)), P("particles"))``, or None for one
    device."""
    devices = tuple(devices)
    if len(devices) < 2:
        return None
    return NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))


@contextlib.contextmanager
def use_devices(devices: Sequence | None):
    """Run the enclosed engine calls with the particle axis over ``devices``."""
    token = _DEVICES.set(None if devices is None else tuple(devices))
    try:
        yield
    finally:
        _DEVICES.reset(token)


def current_devices() -> tuple:
    """The devices of the enclosing :func:`use_devices` (default: ``jax.devices()``)."""
    devices = _DEVICES.get()
    return tuple(jax.devices()) if devices is None else devices


def sharding_for(leading: int, devices: Sequence | None = None) -> NamedSharding | None:
    """The particle sharding for a batch of ``leading`` entries on ``devices`` (default:
    :func:`current_devices`), or None when there is one device or ``leading`` is not a
    multiple of their number."""
    devices = current_devices() if devices is None else tuple(devices)
    if len(devices) < 2 or leading % len(devices):
        return None
    return particle_sharding(devices)


def jit_over_particles(fn, leading: int, devices: Sequence | None = None):
    """``jax.jit(fn)`` whose outputs (every leaf with ``leading`` entries on axis 0) are
    partitioned over the devices (:func:`sharding_for`); plain ``jax.jit`` on one device."""
    sharding = sharding_for(leading, devices)
    return jax.jit(fn) if sharding is None else jax.jit(fn, out_shardings=sharding)


def constrain_particles(x: jax.Array, axis: int = 0) -> jax.Array:
    """``x`` with its ``axis`` (the particle axis) partitioned over the current devices
    (``jax.lax.with_sharding_constraint``, applied where a batch is created inside a traced
    program); unchanged on one device or when the axis does not divide evenly."""
    sharding = sharding_for(x.shape[axis])
    if sharding is None:
        return x
    spec = PartitionSpec(*([None] * axis + [AXIS]))
    return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, spec))


def map_over_devices(batched_fn, leading: int, split: tuple[bool, ...]):
    """``batched_fn(*args)`` run as one program per device (``jax.shard_map``): the
    arguments flagged in ``split`` (and every output) are divided along axis 0 into equal
    blocks, one per device, the others are copied to every device. Each device runs the
    same batched computation on its block, with no communication, so the result does not
    depend on the number of devices beyond the block size. Plain ``batched_fn`` on one
    device, or when ``leading`` does not divide evenly."""
    sharding = sharding_for(leading)
    if sharding is None:
        return batched_fn
    in_specs = tuple(PartitionSpec(AXIS) if s else PartitionSpec() for s in split)
    return jax.shard_map(batched_fn, mesh=sharding.mesh, in_specs=in_specs,
                         out_specs=PartitionSpec(AXIS), check_vma=False)


def to_host(tree):
    """Every array leaf of ``tree`` as a numpy array of its global value. With several
    processes (``jax.distributed``) an array partitioned over devices of other hosts is
    gathered first (``multihost_utils.process_allgather``), so every process holds it."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)
