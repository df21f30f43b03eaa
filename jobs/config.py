"""Configuration validated at the edge: YAML job files merged with command-line flags.

Every job has one frozen dataclass of settings. `load_config` takes the YAML mapping (if any), overrides it
with the flags the user actually gave, checks types and choices, and raises ConfigError naming the field.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from longvid.operators.errors import ConfigError

__all__ = ["ConfigError", "load_config", "read_yaml"]


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of field: value, got {type(data).__name__}")
    return data


def _coerce(name: str, value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a, where)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(errs[0] if errs else f"{where}{name}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}{name}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, inner, where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{name}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}{name}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}{name}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}{name}: expected a string, got {value!r}")
        return str(value)
    return value


def load_config(cls: type, file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, source: str = "") -> Any:
    """Build `cls` (a dataclass) from YAML values overridden by flags (None in overrides = not given).

    Unknown keys and bad values raise ConfigError naming the field; then `cls.validate()` runs if defined.
    """
    where = f"{source}: " if source else ""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        kk = k.replace("-", "_")
        if kk not in fields:
            raise ConfigError(f"{where}{k}: unknown field (known: {', '.join(sorted(fields))})")
        merged[kk] = v
    for k, v in (overrides or {}).items():
        if v is not None and k in fields:
            merged[k] = v
    values = {}
    for name, f in fields.items():
        if name in merged:
            values[name] = _coerce(name, merged[name], hints[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}{name}: required field is missing")
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------------- CLI glue


def add_cluster_arguments(p) -> None:
    """The flags every Ray job shares: where Ray runs, S3 settings, progress output."""
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--s3-profile", help="AWS profile for S3")
    p.add_argument("--s3-region", help="AWS region for S3")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress lines")


def config_from_args(cls: type, args: Any) -> Any:
    """`cls` from `--config FILE` (if given) overridden by the flags the user gave (argparse leaves others None)."""
    path = getattr(args, "config", None)
    file_values = read_yaml(path) if path else {}
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    return load_config(cls, file_values, overrides, source=path or "")


def module_main(command: str, argv: list[str] | None = None) -> int:
    """`python -m jobs.<command> ARGS` is `longvid <command> ARGS`."""
    import sys

    from longvid.jobs.cli import main

    return main([command, *(sys.argv[1:] if argv is None else argv)])
