"""Strict parsing of small dataclass configs from plain dicts (YAML), with one-line UserErrors.

Every component config is a ``@dataclass``; :func:`from_dict` builds one from a mapping and
rejects unknown keys, missing required keys and simple type mismatches. Supported field types:
``int``, ``float`` (ints are accepted and converted), ``str``, ``bool`` (never accepted for int or
float), ``None``, ``X | None`` and other unions, ``list[X]``, ``tuple[X, ...]`` / ``tuple[X, Y]``
(YAML lists are converted), ``dict[str, X]``, ``Literal[...]``, ``pathlib.Path`` (from str),
``Any``, and nested dataclasses (parsed recursively from a mapping). Other annotations are
passed through unchecked. Validation of values (ranges, combinations) belongs in the
dataclass's ``__post_init__``, raising UserError.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

from iss3d.data.errors import UserError

T = TypeVar("T")

__all__ = ["StrictConfig", "from_dict", "to_dict"]


def from_dict(cls: type[T], d: Mapping[str, Any] | None, what: str) -> T:
    """Build the dataclass ``cls`` from the mapping ``d``, strictly.

    Args:
        cls: a dataclass type.
        d: the raw values (e.g. a YAML section); None means "all defaults".
        what: how errors name this config, e.g. ``"decoder config"``.

    Raises:
        UserError: ``unknown key 'x' in decoder config``, ``missing key 'c_dim' in decoder
            config``, ``decoder config: 'hidden' must be an int, got str 'big'``, ...
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise UserError(f"{what} must be a mapping of keys to values, got {_type_name(d)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in d:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"unknown key {key!r} in {what} (known keys: {known})")
    kwargs = {}
    for name, field in fields.items():
        if name not in d:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise UserError(f"missing key {name!r} in {what}")
            continue
        kwargs[name] = _coerce(d[name], hints.get(name, Any), what, name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-dict form of a dataclass config (Paths as str, tuples as lists): YAML-ready."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp: Any) -> str:
    """A short English name of an annotation, for error messages."""
    origin = typing.get_origin(tp)
    if tp is type(None) or tp is None:
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an int", float: "a number", str: "a string", bool: "a boolean", Path: "a path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    """Internal: the value does not fit the annotation (turned into a UserError by the caller)."""


def _coerce(value: Any, tp: Any, what: str, key: str) -> Any:
    try:
        return _convert(value, tp, what, key)
    except _Mismatch:
        raise UserError(
            f"{what}: {key!r} must be {_describe(tp)}, got {_type_name(value)} {_show(value)}"
        ) from None


def _convert(value: Any, tp: Any, what: str, key: str) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise _Mismatch
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _convert(value, arg, what, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _Mismatch
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        item = args[0] if args else Any
        return [_coerce(v, item, what, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_coerce(v, item, what, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(
                f"{what}: {key!r} must be a list of {len(args)} values, got {len(value)}"
            )
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, what, f"{key}[{i}]") for i, (v, a) in pairs)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        val_tp = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{what}: {key!r} must have string keys, got {_show(k)}")
            out[k] = _coerce(v, val_tp, what, f"{key}.{k}")
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_dict(tp, value, f"{what} section {key!r}")
    return value


class StrictConfig:
    """Base of the dataclass configs: strict :meth:`from_dict` and :meth:`to_dict`.

    Subclasses set ``CONFIG_NAME`` (how errors name them, e.g. ``"decoder config"``).
    """

    CONFIG_NAME: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Any:
        """Parse strictly (unknown keys, wrong types, bad values -> UserError)."""
        return from_dict(cls, d, cls.CONFIG_NAME)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
