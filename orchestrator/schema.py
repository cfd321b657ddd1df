"""Validation of plain mappings (parsed YAML) into dataclasses, with errors that name the key.

Field types drive coercion (bool, int, float, str, `X | None`, `tuple[X, ...]`, nested dataclasses);
field metadata may add `choices`, `min` and `max`. Unknown keys are rejected with the closest name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import OrchestratorError

# dataclass -> builder(data, path) for types whose YAML shape is not their field layout
CUSTOM_BUILDERS: dict[type, Callable[[object, str], Any]] = {}


def where_of(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_key(key: str, allowed: Sequence[str], path: str) -> OrchestratorError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
    return OrchestratorError(f"config: unknown key {where_of(path, str(key))!r}{hint}")


def _type_name(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce_scalar(kind: type, value: object, where: str) -> object:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise OrchestratorError(f"config: {where!r} expects true or false, got {_type_name(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OrchestratorError(f"config: {where!r} expects an integer, got {_type_name(value)}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-6` (no dot) as a string: accept numeric strings for float keys
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise OrchestratorError(f"config: {where!r} expects a number, got {_type_name(value)}")
    if kind is str:
        if isinstance(value, str) and value:
            return value
        raise OrchestratorError(f"config: {where!r} expects a non-empty string, got {_type_name(value)}")
    raise OrchestratorError(f"config: {where!r} has unsupported type {kind}")  # programming error


def coerce(hint: Any, value: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else coerce(inner[0], value, where)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected
        if not isinstance(value, (list, tuple)):
            raise OrchestratorError(f"config: {where!r} expects a list, got {_type_name(value)}")
        return tuple(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    return _coerce_scalar(hint, value, where)


def check_meta(meta: Mapping, value: object, where: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), meta["choices"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OrchestratorError(f"config: {where!r} must be one of {', '.join(meta['choices'])}; "
                                f"got {value!r}{hint}")
    if "min" in meta and value < meta["min"]:
        raise OrchestratorError(f"config: {where!r} must be ≥ {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise OrchestratorError(f"config: {where!r} must be ≤ {meta['max']}, got {value!r}")


def build(cls: type, data: object, path: str) -> Any:
    """A `cls` instance from a mapping: keys checked, values coerced to the field types and checked."""
    if cls in CUSTOM_BUILDERS:
        return CUSTOM_BUILDERS[cls](data, path)
    if not isinstance(data, Mapping):
        raise OrchestratorError(f"config: {path or 'the file'!r} expects a mapping of keys, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise unknown_key(key, list(fields), path)
    kwargs = {}
    for name, f in fields.items():
        where = where_of(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise OrchestratorError(f"config: required key {where!r} is missing")
            continue
        kwargs[name] = coerce(hints[name], data[name], where)
        check_meta(f.metadata, kwargs[name], where)
    return cls(**kwargs)


# ---------------------------------------------------------------- raw mappings: files and --set overrides


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override (value parsed as YAML) to the raw mapping, in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise OrchestratorError(f"--set {assignment!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise OrchestratorError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
    set_path(data, key.strip(), value)


def set_path(data: dict[str, Any], key: str, value: object) -> None:
    """Set `data[a][b]... = value` for the dotted `key`, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise OrchestratorError(f"config override {key!r}: {'.'.join(parts[:i + 1])!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OrchestratorError(f"config {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OrchestratorError(f"config {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise OrchestratorError(f"config {path}: expected a mapping at the top level")
    return data
