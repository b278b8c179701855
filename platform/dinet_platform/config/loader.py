"""The one config reader: a YAML file + typed ``--set a.b.c=value`` overrides -> a validated model.

:func:`read_yaml` reads any of the platform's YAML files (training, sweep and serve configs,
the config inside a checkpoint or an optimized artifact) with one set of errors;
:func:`validate` turns a mapping into a typed settings model with errors that name each bad
field; :func:`load_config` is the two together for a training config, with overrides.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dinet_platform.config.schema import DINetConfig


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


ENV_PREFIX = "env:"
M = TypeVar("M", bound=BaseModel)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> DINetConfig:
    """Read ``path``, apply ``key.path=value`` overrides, validate, and return the config.

    ``env:NAME`` reads the YAML from the environment variable ``NAME`` instead: that is how a
    resolved config travels with a cluster job, whatever file it came from.
    """
    raw = read_yaml(path)
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw, source=str(path))


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file (``env:NAME``: in that environment variable); a
    :class:`ConfigError` that names the file when it is missing, not YAML or not a mapping."""
    text = _read_text(str(path), what)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def _read_text(path: str, what: str) -> str:
    if path.startswith(ENV_PREFIX):
        name = path.removeprefix(ENV_PREFIX)
        if name not in os.environ:
            raise ConfigError(f"{what} variable ${name} is not set")
        return os.environ[name]
    if not Path(path).is_file():
        raise ConfigError(f"{what} file not found: {path}")
    return Path(path).read_text()


def validate(model: type[M], raw: dict[str, Any], source: str,
             what: str = "configuration") -> M:
    """``raw`` as ``model``, or a :class:`ConfigError` listing every bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid {what}\n{format_errors(exc)}") from None


def validate_config(raw: dict[str, Any], source: str = "config") -> DINetConfig:
    return validate(DINetConfig, raw, source)


def dump_config(config: DINetConfig) -> str:
    """The resolved config as YAML that :func:`load_config` reads back unchanged."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def format_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  - {field}: {message}{shown}")
    return "\n".join(lines)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value")
    # YAML scalars: "5" -> 5, "1e-4" -> 1e-4, "true" -> True, "[1, 2]" -> [1, 2]. The schema
    # then coerces to the field's declared type, so an int given for a float field stays exact.
    set_field(raw, key.strip(), yaml.safe_load(text) if text.strip() else "")


def set_field(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted field ``key`` (list items by index: ``stages.0.lr``) of a raw config."""
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]), create=True)
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, key)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])} is not a mapping or list")


def _child(node: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"override path {where!r} goes inside a value that is not a mapping")
    if part not in node and create:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, where: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"override path {where!r}: {part!r} is not a list index") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"override path {where!r}: index {index} out of range ({len(node)})")
    return index
