"""Typed, frozen engine settings: declared once, validated once, overridden by name.

Every engine's settings are a frozen dataclass (:class:`EngineSettings`) whose fields are
groups of related options (:class:`SettingsGroup`: the time grid, the network, the optimiser,
...). A group declares each option with :func:`option`: its type (from the annotation), its
default, a one-line doc and an optional range check. Construction validates every option:

* the type is checked against the annotation (``int`` rejects ``75.9`` and ``True``,
  ``float`` rejects ``"0.01"``, ``Literal`` rejects values outside its choices, ``tuple[int,
  ...]`` rejects anything but a sequence of integers), so a wrong type fails with the name of
  the option before any work starts;
* the range check (e.g. :func:`positive`) rejects out-of-range values with the name.

``fit(model, engine="dds", num_iterations=500)`` maps each keyword onto the one group that
declares it (:meth:`EngineSettings.with_overrides`); a name no group declares raises
:class:`UnknownSettingError`, which lists the valid names and suggests the closest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

__all__ = [
    "EngineSettings",
    "InvalidSettingError",
    "SettingsGroup",
    "UnknownSettingError",
    "at_least",
    "in_range",
    "nonnegative",
    "option",
    "positive",
    "suggest",
]


class UnknownSettingError(TypeError):
    """A setting name that the engine does not declare (a ``TypeError``, like an unknown
    keyword argument)."""


class InvalidSettingError(TypeError, ValueError):
    """A setting of the wrong type or out of range; both a ``TypeError`` and a
    ``ValueError``, so either ``except`` catches it."""


Check = Callable[[Any], str | None]  # value -> None if valid, else what is wrong


def option(default: Any, doc: str, check: Check | None = None) -> Any:
    """Declare one option of a :class:`SettingsGroup` (a dataclass field with metadata)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check})


def positive(value) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def nonnegative(value) -> str | None:
    return None if value is None or value >= 0 else "must be >= 0"


def at_least(bound) -> Check:
    def check(value):
        return None if value is None or value >= bound else f"must be >= {bound}"

    return check


def in_range(lo, hi, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    def check(value):
        if value is None:
            return None
        ok_lo = value > lo if open_lo else value >= lo
        ok_hi = value < hi if open_hi else value <= hi
        if ok_lo and ok_hi:
            return None
        return f"must be in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    return check


def suggest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------- type checks


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"a tuple of {_describe(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "None"
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


_NO = object()


def _coerce(value, annotation):
    """``value`` converted to the annotated type, or ``_NO`` if it does not have it."""
    import numpy as np

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if origin is Literal:
        choices = typing.get_args(annotation)
        return value if any(value == c and type(value) is type(c) for c in choices) else _NO
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return _NO
        item = typing.get_args(annotation)[0]
        items = tuple(_coerce(v, item) for v in value)
        return _NO if any(v is _NO for v in items) or not items else items
    if annotation is type(None):
        return None if value is None else _NO
    if annotation is bool:
        return bool(value) if isinstance(value, (bool, np.bool_)) else _NO
    if isinstance(value, (bool, np.bool_)):
        return _NO  # True is not an int or a float here
    if annotation is int:
        return int(value) if isinstance(value, (int, np.integer)) else _NO
    if annotation is float:
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        return _NO
    if annotation is str:
        return value if isinstance(value, str) else _NO
    return value if isinstance(value, annotation) else _NO


@dataclasses.dataclass(frozen=True)
class SettingsGroup:
    """A frozen group of options; every option is type- and range-checked on construction."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out = _coerce(value, hints[f.name])
            if out is _NO:
                raise InvalidSettingError(
                    f"setting {f.name!r} must be {_describe(hints[f.name])}, got {value!r} "
                    f"({type(value).__name__})"
                )
            check = f.metadata.get("check")
            problem = check(out) if check is not None else None
            if problem:
                raise InvalidSettingError(f"setting {f.name!r} {problem}, got {value!r}")
            object.__setattr__(self, f.name, out)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def docs(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """An engine's settings: fields that are :class:`SettingsGroup` instances (plus, in
    subclasses, fixed fields that are not overridable, e.g. the scheme of an engine)."""

    #: fields that belong to the engine definition, not to the user's overrides
    FIXED: typing.ClassVar[tuple[str, ...]] = ()

    @classmethod
    def groups(cls) -> dict[str, type[SettingsGroup]]:
        hints = typing.get_type_hints(cls)
        return {
            f.name: hints[f.name]
            for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], SettingsGroup)
        }

    @classmethod
    def option_index(cls) -> dict[str, str]:
        """Flat option name -> the group that declares it (names are unique per engine)."""
        index: dict[str, str] = {}
        for group, group_cls in cls.groups().items():
            for name in group_cls.option_names():
                if name in index:  # pragma: no cover - a declaration bug, caught by the tests
                    raise RuntimeError(f"option {name!r} is declared twice in {cls.__name__}")
                index[name] = group
        return index

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(cls.option_index())

    def with_overrides(self, overrides: Mapping[str, Any], *, engine: str = "") -> "EngineSettings":
        """A copy with flat options (``num_iterations=...``) or whole groups
        (``optimiser=Optimiser(...)``) replaced; validated, the originals untouched."""
        index = self.option_index()
        groups = self.groups()
        unknown = [k for k in overrides if k not in index and k not in groups]
        if unknown:
            valid = sorted(index)
            hints = "".join(f"\n  {k!r}{suggest(k, valid)}" for k in unknown)
            raise UnknownSettingError(
                f"unknown settings for engine {engine or type(self).__name__!r}: "
                f"{sorted(unknown)}{hints}\nvalid settings: {', '.join(valid)}"
            )
        changes: dict[str, dict] = {}
        replaced: dict[str, SettingsGroup] = {}
        for key, value in overrides.items():
            if key in groups:
                if not isinstance(value, groups[key]):
                    raise InvalidSettingError(
                        f"settings group {key!r} must be a {groups[key].__name__}, got "
                        f"{type(value).__name__}"
                    )
                replaced[key] = value
            else:
                changes.setdefault(index[key], {})[key] = value
        new = dict(replaced)
        for group, values in changes.items():
            base = new.get(group, getattr(self, group))
            new[group] = dataclasses.replace(base, **values)
        return dataclasses.replace(self, **new)

    def flat(self) -> dict[str, Any]:
        """{option: value} over all groups (what ``fit(**overrides)`` accepts)."""
        out: dict[str, Any] = {}
        for group in self.groups():
            out.update(getattr(self, group).as_dict())
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values ({group: {option: value}}, fixed fields at the top): what a
        saved fit stores."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self.FIXED}
        for group in self.groups():
            out[group] = getattr(self, group).as_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EngineSettings":
        """The inverse of :meth:`to_dict` (validated)."""
        kwargs = {name: data[name] for name in cls.FIXED if name in data}
        for group, group_cls in cls.groups().items():
            values = dict(data.get(group, {}))
            unknown = set(values) - set(group_cls.option_names())
            if unknown:
                raise UnknownSettingError(
                    f"unknown settings in group {group!r}: {sorted(unknown)}"
                )
            kwargs[group] = group_cls(**values)
        return cls(**kwargs)

    def describe(self) -> str:
        """``key=value`` for each option that differs from the defaults of the same engine."""
        default = type(self)(**{n: getattr(self, n) for n in self.FIXED}).flat()
        return ", ".join(f"{k}={v!r}" for k, v in self.flat().items() if default.get(k) != v)
