"""Save and load fitted samplers without pickle.

A fit is stored in one ``.npz`` file (``numpy.savez``, read back with
``allow_pickle=False``):

* ``state/<i>``: the array leaves of ``FitResult.state`` in ``tree_flatten`` order;
* ``history/<name>``: the per-iteration training history;
* ``whitening/shift``, ``whitening/scale_tril``: the whitening map (mu, L) (DESIGN.md s.1);
* ``meta``: one JSON string with the format version, engine, config, info, the pytree
  structure of the state, the whitening method, the dimension and the site names.

Loading rebuilds the :class:`~numpyro_hjb.target.Target` from the model with
:func:`~numpyro_hjb.target.make_target` (no whitening pre-fit) and re-applies the saved
(mu, L) exactly as :func:`~numpyro_hjb.target.whiten` does, so proposals with the same key
are identical before and after the round trip. The model code itself is not stored: pass
the same model and data to :func:`load_fit`.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .api import ENGINES, FitResult
from .target import apply_whitening, Target, make_target

__all__ = ["save_fit", "load_fit", "apply_whitening"]

FORMAT_VERSION = 2
# 2: the learned-control setting grid_power applies to PIS too (default 2, as for the OU
#    schemes); version-1 PIS fits ran on the uniform grid whatever their stored grid_power said.
_PACKAGE = __name__.split(".")[0]


# -- pytree structure <-> JSON ------------------------------------------------------------


def _encode_tree(tree: Any, leaves: list) -> Any:
    """JSON description of a pytree of dicts / lists / tuples / None / our NamedTuples;
    array (or scalar) leaves are appended to ``leaves`` and referenced by index."""
    if isinstance(tree, dict):
        keys = list(tree)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"state dict keys must be strings, got {keys}")
        return {"type": "dict", "keys": keys, "children": [_encode_tree(tree[k], leaves) for k in keys]}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        if not cls.__module__.startswith(_PACKAGE):
            raise TypeError(
                f"cannot save a state containing the NamedTuple {cls.__qualname__} from "
                f"{cls.__module__}: only {_PACKAGE}'s own NamedTuples are restored"
            )
        return {
            "type": "namedtuple",
            "module": cls.__module__,
            "name": cls.__qualname__,
            "children": [_encode_tree(v, leaves) for v in tree],
        }
    if isinstance(tree, (list, tuple)):
        kind = "list" if isinstance(tree, list) else "tuple"
        return {"type": kind, "children": [_encode_tree(v, leaves) for v in tree]}
    if tree is None:
        return {"type": "none"}
    if isinstance(tree, (bool, int, float)) and not isinstance(tree, np.generic):
        leaves.append(np.asarray(tree))
        return {"type": "leaf", "index": len(leaves) - 1, "python": type(tree).__name__}
    if isinstance(tree, (jax.Array, np.ndarray, np.generic)):
        leaves.append(np.asarray(tree))
        return {"type": "leaf", "index": len(leaves) - 1}
    raise TypeError(f"cannot save a state leaf of type {type(tree).__name__}")


def _decode_tree(spec: dict, leaves: list) -> Any:
    kind = spec["type"]
    if kind == "dict":
        return {k: _decode_tree(c, leaves) for k, c in zip(spec["keys"], spec["children"])}
    if kind == "namedtuple":
        if not spec["module"].startswith(_PACKAGE):
            raise ValueError(f"refusing to import {spec['module']!r} while loading a fit")
        cls = importlib.import_module(spec["module"])
        for part in spec["name"].split("."):
            cls = getattr(cls, part)
        return cls(*[_decode_tree(c, leaves) for c in spec["children"]])
    if kind in ("list", "tuple"):
        children = [_decode_tree(c, leaves) for c in spec["children"]]
        return children if kind == "list" else tuple(children)
    if kind == "none":
        return None
    if kind == "leaf":
        value = leaves[spec["index"]]
        python = spec.get("python")
        if python is not None:
            return {"bool": bool, "int": int, "float": float}[python](value)
        # numpy, not jnp: jnp.asarray would silently drop float64 to float32 when x64 is
        # off, and the float64 engine (tt) converts under its own x64 context.
        return value
    raise ValueError(f"unknown pytree node type {kind!r} in the saved file")


def _to_json(value: Any) -> Any:
    """Plain Python value -> JSON, tagging tuples and arrays so they come back as such."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray)):
        arr = np.asarray(value)
        return {"__array__": arr.tolist(), "dtype": str(arr.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__str__": str(value)}


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_from_json(v) for v in value["__tuple__"])
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"])
        if "__str__" in value:
            return value["__str__"]
        return {k: _from_json(v) for k, v in value.items()}
    return value


# -- whitening ----------------------------------------------------------------------------


# -- save / load --------------------------------------------------------------------------


def save_fit(fit_result: FitResult, path: str | os.PathLike) -> None:
    """Write ``fit_result`` to ``path`` (an ``.npz`` file; no pickle anywhere).

    Raises:
        TypeError: ``fit_result`` is not a FitResult, or its state holds a leaf or node
            type that cannot be stored (arrays, scalars, dicts, lists, tuples, None and
            numpyro_hjb NamedTuples can).
    """
    if not isinstance(fit_result, FitResult):
        raise TypeError(f"fit_result must be a FitResult, got {type(fit_result).__name__}")
    leaves: list = []
    structure = _encode_tree(fit_result.state, leaves)
    target = fit_result.target
    meta = {
        "format": "numpyro_hjb.fit",
        "format_version": FORMAT_VERSION,
        "engine": fit_result.engine,
        "config": _to_json(fit_result.config),
        "info": _to_json(fit_result.info),
        "state_structure": structure,
        "whitening": target.whitening,
        "dim": int(target.dim),
        "site_names": list(target.site_names),
        "improper_sites": list(target.improper_sites),
        "history": sorted(fit_result.history),
    }
    arrays = {f"state/{i}": leaf for i, leaf in enumerate(leaves)}
    arrays.update({f"history/{k}": np.asarray(v) for k, v in fit_result.history.items()})
    arrays["whitening/shift"] = np.asarray(target.shift)
    arrays["whitening/scale_tril"] = np.asarray(target.scale_tril)
    arrays["meta"] = np.asarray(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(os.fspath(path), "wb") as fh:  # exactly ``path``: no ".npz" appended
        fh.write(buffer.getvalue())


def load_fit(
    path: str | os.PathLike, model: Callable | Target, *model_args: Any, **model_kwargs: Any
) -> FitResult:
    """Read a fit written by :func:`save_fit` and attach it to ``model`` and its data.

    Args:
        path: the file.
        model: the same NumPyro model (or a prepared, unwhitened :class:`Target`).
        *model_args, **model_kwargs: the model's data, as at fitting time.

    Raises:
        ValueError: not a numpyro_hjb fit file, or the model's latent sites / dimension
            differ from the saved ones.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if "meta" not in data:
            raise ValueError(f"{os.fspath(path)!r} is not a numpyro_hjb fit file (no 'meta')")
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != "numpyro_hjb.fit":
            raise ValueError(f"{os.fspath(path)!r} is not a numpyro_hjb fit file")
        if meta["format_version"] > FORMAT_VERSION:
            raise ValueError(
                f"file format version {meta['format_version']} is newer than this "
                f"numpyro_hjb ({FORMAT_VERSION})"
            )
        n_leaves = sum(1 for k in data.files if k.startswith("state/"))
        leaves = [np.array(data[f"state/{i}"]) for i in range(n_leaves)]
        history = {k: np.array(data[f"history/{k}"]) for k in meta["history"]}
        shift = np.array(data["whitening/shift"])
        tril = np.array(data["whitening/scale_tril"])
    engine = meta["engine"]
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} in {os.fspath(path)!r}")
    if isinstance(model, Target):
        if model_args or model_kwargs:
            raise ValueError("model arguments given with a prepared Target")
        target = model
    else:
        target = make_target(model, *model_args, whitening=None, **model_kwargs)
    if target.dim != meta["dim"] or (
        meta["site_names"] and tuple(meta["site_names"]) != tuple(target.site_names)
    ):
        raise ValueError(
            f"model does not match the saved fit: latent sites {list(target.site_names)} "
            f"(dimension {target.dim}) vs saved {meta['site_names']} (dimension {meta['dim']})"
        )
    if meta["whitening"] != "none":
        target = apply_whitening(target, shift, tril, meta["whitening"])
    state = _decode_tree(meta["state_structure"], leaves)
    config = _from_json(meta["config"])
    if meta["format_version"] < 2 and engine == "pis":
        config["grid_power"] = 1.0
    info = _from_json(meta["info"])
    return FitResult(engine, target, state, config, history, info)
