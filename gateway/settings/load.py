"""Reading the settings: the TOML file, then `GATEWAY_<SECTION>__<KEY>` from the environment,
each value converted to its field's type (an error names the key), then checked
(gateway.settings.checks)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError
from gateway.settings.checks import validate
from gateway.settings.sections import Settings

ENV_PREFIX = "GATEWAY_"


def load_settings(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
        base_dir = p.resolve().parent.parent if p.resolve().parent.name == "config" else p.resolve().parent
    _apply_env(raw, env)
    base_dir_value = raw.pop("base_dir", None) or env.get(ENV_PREFIX + "BASE_DIR") or str(base_dir)
    return _build(Settings, raw, "", extra={"base_dir": str(base_dir_value)})


_RENAMED = {
    "storage.raw_retention_days": "renamed to retention.raw_mail_days, which is now enforced (default 90 days "
                                  "after the case is closed); see [retention] in gateway.example.toml",
}


def _apply_env(raw: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(Settings)}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in sections:  # a typo (GATEWAY_SMPT__PORT) must not pass unseen
            raise ConfigError(f"unknown key {section}.{key} (from the environment variable {name})")
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = _EnvValue(value)


class _EnvValue(str):
    """A string from the environment, converted to the field's type when built."""


def _build(cls: type, data: Any, prefix: str, extra: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'configuration'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    for key in sorted(unknown):
        if f"{prefix}{key}" in _RENAMED:
            raise ConfigError(f"{prefix}{key}: {_RENAMED[prefix + key]}")
    if unknown:
        raise ConfigError(f"unknown key {prefix}{sorted(unknown)[0]}")
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: {exc}") from exc
    validate(obj, prefix)
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(value, _EnvValue) and tp is not str and origin is not Literal:
        value = _parse_env(tp, str(value), key)
    if origin in (typing.Union, types.UnionType):  # an optional section: `X | None`
        (inner,) = (arg for arg in typing.get_args(tp) if arg is not type(None))
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return str(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return str(value)
    return value


def _parse_env(tp: Any, text: str, key: str) -> Any:
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} (environment): expected true or false, not {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError as exc:
            raise ConfigError(f"{key} (environment): expected a number, not {text!r}") from exc
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key} (environment): invalid JSON: {exc}") from exc
    if typing.get_origin(tp) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text

