"""The base of every configuration dataclass: fields coerced to their annotations and checked
against their bounds when made, and the conversion from and to plain data (TOML, JSON)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal, Union

from pyro_dcgmm.errors import ConfigError


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field whose value (when not ``None``) must be finite and lie within ``bounds``:
    any of ``ge``, ``gt``, ``le``, ``lt`` (>=, >, <=, <)."""
    return field(default=default, metadata={"bounds": bounds})


def nearest(key: str, valid: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the valid name that ``key`` is (but for case) or is close to,
    or ``""`` when none is close."""
    by_lower = {name.lower(): name for name in valid}
    match = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[match[0]]!r}?" if match else ""


def _bounds_text(bounds: dict[str, float]) -> str:
    lower = [f"{'>=' if op == 'ge' else '>'} {bounds[op]:g}" for op in ("ge", "gt") if op in bounds]
    upper = [f"{'<=' if op == 'le' else '<'} {bounds[op]:g}" for op in ("le", "lt") if op in bounds]
    if lower and upper:
        left, right = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"])
        close, top = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"])
        return f"in {left}{right:g}, {top:g}{close}"
    return " and ".join(lower + upper)


def _within(value: float, bounds: dict[str, float]) -> bool:
    checks = {"ge": value >= bounds.get("ge", -math.inf), "gt": value > bounds.get("gt", -math.inf)}
    checks |= {"le": value <= bounds.get("le", math.inf), "lt": value < bounds.get("lt", math.inf)}
    return math.isfinite(value) and all(checks.values())


class Checked:
    """Base of every config dataclass: constructing one (from TOML, a dict, the estimator or plain
    Python) coerces every field to its annotation, checks its ``bounded`` range, then the rules
    between fields in :meth:`check`.  A violation raises :attr:`error` naming the field, the value
    and what is allowed."""

    section: ClassVar[str]
    error: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for spec in dataclasses.fields(self):
            where = f"{self.section}.{spec.name}"
            value = _coerce(getattr(self, spec.name), hints[spec.name], where, self.error)
            bounds = spec.metadata.get("bounds")
            if bounds and isinstance(value, numbers.Real) and not _within(value, bounds):
                finite = "" if math.isfinite(value) else "finite and "
                self.fail(f"{where} must be {finite}{_bounds_text(bounds)}, got {value!r}")
            object.__setattr__(self, spec.name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields (each field on its own is already checked)."""

    def fail(self, message: str) -> typing.NoReturn:
        raise self.error(message)

    def check_pair(self, name: str, allow_none: bool = False) -> None:
        """Field ``name`` is a positive int or a pair of them (or ``None`` if allowed)."""
        value = getattr(self, name)
        pair = (value, value) if isinstance(value, int) else value
        if (value is None and not allow_none) or (value is not None and min(pair) < 1):
            self.fail(f"{self.section}.{name} must be a positive int or a pair of them, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        inner = f"{_type_name(args[0])}s" if args[-1] is Ellipsis else f"{len(args)} ints"
        return f"a list of {inner}"
    if annotation is type(None):
        return "absent"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """Check ``value`` against a type annotation and return it in canonical form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType) and _istagged_config(args):
        return tagged_config(value, args, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, error)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and (args[-1] is Ellipsis or len(value) == len(args)):
            item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
            items = zip(value, item_types, strict=True)
            return tuple(_coerce(v, t, f"{where}[{i}]", error) for i, (v, t) in enumerate(items))
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is None and dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    raise error(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _istagged_config(options: tuple) -> bool:
    """Whether a union is one of config dataclasses told apart by their ``type`` field (the layers)."""
    return all(dataclasses.is_dataclass(option) and "type" in _type_hints(option) for option in options)


def tagged_config(value: Any, options: tuple, where: str) -> Any:
    """The config of a tagged union that ``value`` (one of them, or a table with a ``type`` key) names."""
    kinds = {typing.get_args(_type_hints(option)["type"])[0]: option for option in options}
    if isinstance(value, options):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table with a 'type' key, got {value!r}")
    kind = value.get("type")
    if kind not in kinds:
        hint = nearest(str(kind), kinds) if kind is not None else ""
        raise ConfigError(
            f"{where}.type: unknown layer type {kind!r}; valid types are {', '.join(kinds)}{hint}"
        )
    return from_dict(kinds[kind], value, where)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and values out
    of range; every message starts with ``where`` and the key."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{nearest(key, names)}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}", cls.error) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as error:
        raise type(error)(f"{where}: {error}") from None


def to_dict(config: Any) -> Any:
    """A plain-data (JSON and TOML friendly) copy of a config dataclass; ``None`` fields dropped."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: to_dict(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        }
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
