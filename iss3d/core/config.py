"""Strict dataclass configs, and the YAML files, presets and overrides they are read from.

Every component config is a ``@dataclass``; :func:`from_dict` builds one from a mapping and
rejects unknown keys, missing required keys and simple type mismatches. Supported field types:
``int``, ``float`` (ints are accepted and converted), ``str``, ``bool`` (never accepted for int or
float), ``None``, ``X | None`` and other unions, ``list[X]``, ``tuple[X, ...]`` / ``tuple[X, Y]``
(YAML lists are converted), ``dict[str, X]``, ``Literal[...]``, ``pathlib.Path`` (from str),
``Any``, and nested dataclasses (parsed recursively from a mapping). Other annotations are
passed through unchecked. Validation of values (ranges, combinations) belongs in the
dataclass's ``__post_init__``, raising UserError. :class:`StrictConfig` is the configs' base
(``from_dict`` / ``to_dict`` as methods).

Reading one, in this order: :func:`find_config` (a YAML path, or a name under ``configs/`` such
as ``svr/tiny``) -> :func:`read_yaml` (a raw dict; ``1e-4`` reads as a float) ->
:func:`apply_overrides` (``key.sub=value`` strings, each key checked against the dataclass) ->
:func:`from_dict`. :func:`load_config` does all four; :func:`load_preset` takes a preset name
of one ``configs/`` folder. Every mistake is a one-line UserError.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import yaml

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file
from iss3d.core.resources import config_dir

T = TypeVar("T")

#: The ``configs/`` folder installed with the package (config names such as ``svr/tiny``
#: resolve here).
CONFIG_DIR = config_dir()

__all__ = [
    "CONFIG_DIR",
    "StrictConfig",
    "TextYamlLoader",
    "YamlLoader",
    "apply_overrides",
    "find_config",
    "from_dict",
    "load_config",
    "load_preset",
    "parse_override",
    "read_yaml",
    "to_dict",
]


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


# -- YAML files, presets and overrides -------------------------------------------------------


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does, and
    refuses aliases (``*name``): a config never needs them, and nested aliases expand
    exponentially ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in iss3d configs", mark
            )
        return super().compose_node(parent, index)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class TextYamlLoader(YamlLoader):
    """:class:`YamlLoader` that reads every plain scalar as text: for tables keyed by ids such
    as ShapeNet's synsets, which YAML 1.1 would read as octal numbers (``03001627``)."""


TextYamlLoader.yaml_implicit_resolvers = {}


def find_config(spec: str | os.PathLike) -> Path:
    """The YAML file a config argument names: a path, or a name under ``configs/``.

    ``svr/tiny`` -> ``configs/svr/tiny.yaml``; an existing path is used as it is.

    Raises:
        UserError: nothing found (names both places looked at).
    """
    path = Path(spec)
    if path.exists() and not path.is_dir():
        return input_file(path, "a YAML file")  # a FIFO or device: refused, never read
    candidates = [CONFIG_DIR / path]
    if path.suffix not in (".yaml", ".yml"):
        candidates.insert(0, CONFIG_DIR / f"{path}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise UserError(f"config {str(spec)!r}: is a folder, expected a YAML file")
    raise UserError(f"config {str(spec)!r}: no such file (looked for {path} and {candidates[0]})")


def read_yaml(
    path: str | os.PathLike,
    contents: str = "config sections",
    loader: type[yaml.SafeLoader] | None = None,
) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file gives {}); ``contents``: what
    the mapping holds, for the error when it is not one; ``loader``: a subclass of
    :class:`YamlLoader` (default: that one).

    Raises:
        UserError: unreadable, invalid YAML (with the line), or not a mapping.
    """
    path = input_file(path, "a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (save the config as UTF-8)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = yaml.load(text, Loader=loader or YamlLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {contents}, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is parsed as YAML (safe).

    ``key=`` gives None (YAML null). Raises UserError without ``=`` or with an empty key.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"bad override {text!r}: expected key.sub=value, e.g. optim.lr=3e-4")
    try:
        parsed = yaml.load(value, Loader=YamlLoader) if value.strip() else None
    except yaml.YAMLError:
        raise UserError(f"bad override {text!r}: the value is not valid YAML") from None
    return key, parsed


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in an annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def _is_mapping_type(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict or tp is Any


def apply_overrides(
    raw: Mapping[str, Any], overrides: Iterable[tuple[str, Any] | str], cls: type
) -> dict[str, Any]:
    """Set dotted keys in a copy of the raw config, checking each key against ``cls``.

    Args:
        raw: the config as read from YAML (not modified).
        overrides: ``(key, value)`` pairs or ``"key=value"`` strings.
        cls: the config dataclass; every key must name a field (nested through dataclass
            sections; inside a ``dict`` field any sub-key is allowed).

    Raises:
        UserError: ``unknown config key 'optim.lrr' (no field 'lrr' in section 'optim')``.
    """
    out = _deep_copy(raw)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = key.split(".")
        node_cls: type | None = cls
        node = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            section = ".".join(parts[:depth]) or "top level"
            if node_cls is not None:
                fields = {f.name: f for f in dataclasses.fields(node_cls) if f.init}
                if part not in fields:
                    known = ", ".join(fields)
                    raise UserError(
                        f"unknown config key {key!r} (no {part!r} in {section}; known: {known})"
                    )
                tp = typing.get_type_hints(node_cls).get(part, Any)
                sub_cls = _dataclass_of(tp)
                if not last and sub_cls is None and not _is_mapping_type(tp):
                    raise UserError(
                        f"unknown config key {key!r} ({'.'.join(parts[: depth + 1])!r} is a "
                        "value, not a section)"
                    )
                node_cls = sub_cls
            if last:
                node[part] = value
            else:
                node = _section(node, part, key, ".".join(parts[: depth + 1]))
    return out


def _section(node: dict[str, Any], part: str, key: str, where: str) -> dict[str, Any]:
    """The mapping ``node[part]`` that override ``key`` descends into (created when absent or
    null); a value that is not a mapping is an error, not silently replaced."""
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    if not isinstance(child, dict):
        raise UserError(
            f"cannot apply override {key!r}: {where!r} is {_type_name(child)} {_show(child)} in "
            "the config, not a section"
        )
    return child


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def load_config(
    cls: type[T],
    spec: str | os.PathLike,
    overrides: Sequence[tuple[str, Any] | str] = (),
    what: str = "config",
) -> T:
    """Read a YAML config, apply overrides and parse it strictly into ``cls``.

    Args:
        cls: the stage's config dataclass.
        spec: a YAML path or a name under ``configs/`` (``"svr/tiny"``).
        overrides: ``"key.sub=value"`` strings or ``(key, value)`` pairs, applied in order.
        what: how errors name the config.

    Raises:
        UserError: missing file, bad YAML, unknown key, wrong type or bad value.
    """
    path = find_config(spec)
    raw = apply_overrides(read_yaml(path), overrides, cls)
    return from_dict(cls, raw, what)


def load_preset(
    cls: type[T],
    folder: str,
    preset: str | os.PathLike,
    overrides: Sequence[tuple[str, Any] | str] = (),
) -> T:
    """:func:`load_config` for a preset name (``configs/<folder>/<preset>.yaml``) or a YAML path;
    errors name the config ``"<folder> config"``."""
    path = Path(preset)
    spec = path if path.suffix in (".yaml", ".yml") or path.is_file() else f"{folder}/{preset}"
    return load_config(cls, spec, overrides, f"{folder} config")
