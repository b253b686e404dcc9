"""Save and load fitted samplers without pickle.

A fit is stored in one ``.npz`` file (``numpy.savez``, read back with ``allow_pickle=False``):

* ``state/<i>``: the array leaves of ``FitResult.state`` in ``tree_flatten`` order;
* ``history/<name>``: the per-iteration training history;
* ``whitening/shift``, ``whitening/scale_tril``: the whitening map (mu, L) (docs/design.md s.1);
* ``meta``: one JSON string with the format version, engine, settings (nested by group),
  info, the pytree structure of the state, the whitening method, the dimension, the site
  names and a fingerprint of the model's data.

Loading rebuilds the :class:`~numpyro_hjb.target.Target` from the model with
:func:`~numpyro_hjb.target.make_target` (no whitening pre-fit) and re-applies the saved
(mu, L) exactly as :func:`~numpyro_hjb.target.whiten` does, so proposals with the same key
are identical before and after the round trip. The model code itself is not stored: pass
the same model and data to :func:`load_fit`.

Format versions: 3 stores typed settings; versions 1 and 2 stored a flat settings dict and
a dict state, and load through the one migration here (:func:`_migrate`), which calls the
engine's own ``migrate``.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .api import FitResult
from .base import get_engine
from .target import Target, apply_whitening, make_target

__all__ = ["save_fit", "load_fit", "apply_whitening", "FitFileError"]

FORMAT_VERSION = 3
_PACKAGE = __name__.split(".")[0]


class FitFileError(ValueError):
    """A file that is not a readable numpyro_hjb fit (missing, truncated, corrupted,
    foreign, or from a newer version); the message names the file."""


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


# -- save / load --------------------------------------------------------------------------


def save_fit(fit_result: FitResult, path: str | os.PathLike) -> None:
    """Write ``fit_result`` to ``path`` (an ``.npz`` file; no pickle anywhere).

    Raises:
        TypeError: ``fit_result`` is not a FitResult, or its state holds a leaf or node
            type that cannot be stored.
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
        "settings": _to_json(fit_result.settings.to_dict()),
        "info": _to_json(fit_result.info),
        "state_structure": structure,
        "whitening": target.whitening,
        "dim": int(target.dim),
        "site_names": list(target.site_names),
        "improper_sites": list(target.improper_sites),
        "history": sorted(fit_result.history),
        "data_fingerprint": _fingerprint(target),
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


def _fingerprint(target: Target) -> str | None:
    if target.model is None:
        return None
    from .mcmc.kernel import data_fingerprint

    return data_fingerprint(target.model_args, target.model_kwargs)


def _read(path: str) -> tuple[dict, list, dict, np.ndarray, np.ndarray]:
    """(meta, state leaves, history, shift, tril) of a fit file, or FitFileError."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no fit file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise FitFileError(f"{path!r} is not a numpyro_hjb fit file (no 'meta')")
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != "numpyro_hjb.fit":
                raise FitFileError(f"{path!r} is not a numpyro_hjb fit file")
            n_leaves = sum(1 for k in data.files if k.startswith("state/"))
            leaves = [np.array(data[f"state/{i}"]) for i in range(n_leaves)]
            history = {k: np.array(data[f"history/{k}"]) for k in meta.get("history", [])}
            shift = np.array(data["whitening/shift"])
            tril = np.array(data["whitening/scale_tril"])
    except FitFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as err:
        # numpy's own message for non-zip bytes suggests allow_pickle=True: never do that
        raise FitFileError(
            f"{path!r} is not a readable numpyro_hjb fit file (truncated, corrupted or of "
            f"another format: {type(err).__name__}). Fit files are written by save_fit."
        ) from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise FitFileError(
            f"{path!r} has format version {meta['format_version']}, newer than this "
            f"numpyro_hjb ({FORMAT_VERSION}); upgrade numpyro_hjb"
        )
    return meta, leaves, history, shift, tril


def _migrate(meta: dict, engine, state):
    """Settings and state of a saved fit; format versions 1-2 (flat settings, dict state)
    through the engine's migration."""
    if meta["format_version"] >= 3:
        return engine.settings.from_dict(_from_json(meta["settings"])), state
    if engine.migrate is None:
        raise FitFileError(
            f"fits of engine {engine.name!r} saved in format version {meta['format_version']} "
            "cannot be loaded by this version; refit"
        )
    config = _from_json(meta["config"])
    if meta["format_version"] < 2 and engine.name == "pis":
        config["grid_power"] = 1.0  # version-1 PIS fits ran on the uniform grid
    config.pop("scheme", None)
    return engine.migrate({**config, "scheme": engine.name}, state)


def load_fit(
    path: str | os.PathLike, model: Callable | Target, *model_args: Any, **model_kwargs: Any
) -> FitResult:
    """Read a fit written by :func:`save_fit` and attach it to ``model`` and its data.

    Args:
        path: the file.
        model: the same NumPyro model (or a prepared, unwhitened :class:`Target`).
        *model_args, **model_kwargs: the model's data, as at fitting time.

    Raises:
        FileNotFoundError: no file at ``path``.
        FitFileError: not a readable numpyro_hjb fit file (truncated, corrupted, foreign,
            newer format), or a saved state that does not match its engine.
        ValueError: the model's latent sites / dimension differ from the saved ones.
    Warns:
        UserWarning: the model's data differ from the data the fit was made on.
    """
    path = os.fspath(path)
    meta, leaves, history, shift, tril = _read(path)
    try:
        engine = get_engine(meta["engine"])
    except ValueError:
        raise FitFileError(f"unknown engine {meta['engine']!r} in {path!r}") from None
    if isinstance(model, Target):
        if model_args or model_kwargs:
            raise ValueError("model arguments given with a prepared Target")
        target = model
    else:
        target = make_target(model, *model_args, whitening=None, precision=engine.precision,
                             **model_kwargs)
    if target.dim != meta["dim"] or (
        meta["site_names"] and tuple(meta["site_names"]) != tuple(target.site_names)
    ):
        raise ValueError(
            f"model does not match the saved fit {path!r}: latent sites "
            f"{list(target.site_names)} (dimension {target.dim}) vs saved "
            f"{meta['site_names']} (dimension {meta['dim']})"
        )
    saved_print = meta.get("data_fingerprint")
    if saved_print is not None and target.model is not None and _fingerprint(target) != saved_print:
        warnings.warn(
            f"the model's data differ from those {path!r} was fitted on: the loaded sampler "
            "proposes for the old posterior (its weights are still exact, but expect a low "
            "ESS). Refit on the new data.",
            UserWarning,
            stacklevel=2,
        )
    if meta["whitening"] != "none":
        target = apply_whitening(target, shift, tril, meta["whitening"])
    try:
        state = _decode_tree(meta["state_structure"], leaves)
        settings, state = _migrate(meta, engine, state)
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise FitFileError(f"the state saved in {path!r} does not match engine "
                           f"{engine.name!r}: {err}") from None
    _check_state(engine, state, path)
    info = _from_json(meta["info"])
    return FitResult(engine.name, target, state, settings, history, info)


def _check_state(engine, state, path: str) -> None:
    if not isinstance(state, engine.state_type):
        raise FitFileError(
            f"the state saved in {path!r} is a {type(state).__name__}, not the "
            f"{engine.state_type.__name__} of engine {engine.name!r}"
        )
