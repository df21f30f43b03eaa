"""Configuration validated at the edge: YAML job files merged with command-line flags.

Every job has one dataclass of settings whose fields declare their constraints (pipelines/settings.py).
`load_config` takes the YAML mapping (if any), overrides it with the flags the user actually gave, converts
flag and YAML spellings to the annotated types, checks every field's declared constraints, then runs the class's
`validate()` for the rules that tie fields together. Any mistake is one ConfigError naming the file and field,
which the CLI prints as one line and exit status 2, before any work starts.

`read_yaml` reads a job file with operators/safe_yaml.py, which refuses what a job file never needs and an attacker
would use (anchors and aliases: a "billion laughs" file expands exponentially; tags; deep nesting; keys given
twice), and files bigger than MAX_YAML_BYTES.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable

from longvid.operators.errors import ConfigError
from longvid.operators.safe_yaml import YamlRefused, parse_yaml
from longvid.pipelines.settings import (DTYPE_NAMES, INT_MAX, TORCH_DTYPES, check_fields, field_types, label,
                                       show)

__all__ = ["ConfigError", "load_config", "read_yaml"]

MAX_YAML_BYTES = 1 << 20  # the shipped recipes are a few kB


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML job file; ConfigError naming the file for anything else (see the module doc)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror or e}") from None
    try:
        data = parse_yaml(raw, MAX_YAML_BYTES)
    except YamlRefused as e:
        raise ConfigError(f"{p}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of field: value, got {type(data).__name__}")
    return data


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(value: Any, tp: Any) -> Any:
    """A flag's or YAML file's spelling -> the annotated type, where one is meant (the string "12" for an int,
    "a,b" for a list). Anything else is returned as it is: `check_fields` then names what is wrong with it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return value
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0]) if len(inner) == 1 else value
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            items = [_coerce(v, inner) for v in value]
            return tuple(items) if origin is tuple else items
        return value
    if isinstance(value, str) and value.isascii():  # "١٢" is no number here, though int() would take it
        s = value.strip()
        if tp is bool and s.lower() in _TRUE + _FALSE:
            return s.lower() in _TRUE
        try:
            if tp is int:
                return int(s)
            if tp is float:
                return float(s)
        except ValueError:  # not a number, or an integer of more than 4300 digits
            return value
    if tp is str and (isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT_MAX
                      or isinstance(value, float) and math.isfinite(value)):
        return str(value)  # a name or path YAML read as a number: `name: 7`
    return value


def load_config(cls: type, file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                source: str = "") -> Any:
    """Build `cls` (a settings dataclass) from YAML values overridden by flags (None in overrides = not given).

    Unknown keys and bad values raise ConfigError naming the field (and `source`, the file); then the declared
    constraints of every field are checked (pipelines/settings.py) and `cls.validate()` runs if defined.
    """
    where = f"{source}: " if source else ""
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}{show(k)}: a field name must be a string")
        kk = k.replace("-", "_")
        if kk not in fields:
            raise ConfigError(f"{where}{label(k)}: unknown field (known: {', '.join(sorted(fields))})")
        merged[kk] = v
    flags = {k for k, v in (overrides or {}).items() if v is not None and k in fields}
    for k in flags:
        merged[k] = overrides[k]  # type: ignore[index]
    values = {}
    for name, f in fields.items():
        if name in merged:
            values[name] = _coerce(merged[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}{name}: required field is missing")
    cfg = cls(**values)
    try:
        check_fields(cfg)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ConfigError as e:
        field = str(e).split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]
        raise ConfigError(f"{'' if field in flags else where}{e}") from None  # a flag's value: not the file's
    return cfg


# ---------------------------------------------------------------------------------------------------- CLI glue


# model/config.py's preset names, for help texts: importing model/config.py imports torch, which --help must not
# (tests/test_cli.py keeps the two equal).
MODEL_PRESETS = ("tiny", "videochat-flash-7b", "videochat-flash-2b")


def dtype_help(what: str, names: tuple[str, ...] = DTYPE_NAMES) -> str:
    """Help of a --dtype flag: the one spelling of every command, with the torch names as aliases."""
    return f"{what}: {' | '.join(names)} (or the torch names {', '.join(TORCH_DTYPES[n] for n in names)})"


def job_log(job: str) -> Callable[[str], None]:
    """The `log` of a job's progress lines: the `longvid.<job>` logger at info level (see `--log-level`)."""
    return logging.getLogger(f"longvid.{job}").info


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
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command", "log_level")}
    return load_config(cls, file_values, overrides, source=path or "")
