"""Configuration at the edge: YAML job files and command-line flags -> a job's settings dataclass.

Every job has one dataclass of settings (operators/settings.py) whose fields are declared once: their defaults,
rules, help texts and flag spellings. `add_flags` makes a job's parser from them (one flag per field: `--field-name`,
its help, type, metavar and declared choices; a bool that defaults to false is `--field-name`, one that defaults to true
`--no-field-name`; a list's flag repeats or takes one separated value; a mapping's flag repeats as KEY=VALUE), and
the YAML keys a job file may hold are the same fields. `load_config` takes the YAML mapping (if any), overrides it
with the flags the user actually gave, converts flag and YAML spellings to the annotated types and runs the class's
`validate()`: every field's declared rules, then its cross-field @rule methods. Any mistake is one ConfigError naming
the file and field, which the CLI prints as one line and exit status 2, before any work starts.

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
from longvid.operators.settings import INT_MAX, field_types, label, show, static_choices

__all__ = ["ConfigError", "add_config_flag", "add_flags", "config_from_args", "flag_values", "load_config",
           "read_yaml"]

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
    "a,b" for a list). Anything else is returned as it is: `validate()` then names what is wrong with it."""
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
    """Build `cls` (a Settings dataclass) from YAML values overridden by flags (None in overrides = not given).

    Unknown keys and bad values raise ConfigError naming the field (and `source`, the file); then `cfg.validate()`
    checks every field's declared rules and the class's cross-field rules (operators/settings.py). A flag of a field
    declared with `adds` adds its items to the file's list or mapping instead of replacing it.
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
        v = overrides[k]  # type: ignore[index]
        if fields[k].metadata.get("adds") and k in merged:
            old = _coerce(merged[k], hints[k])
            if isinstance(old, list) and isinstance(v, list):
                v = old + v
            elif isinstance(old, dict) and isinstance(v, dict):
                v = {**old, **v}
        merged[k] = v
    values = {}
    for name, f in fields.items():
        if name in merged:
            values[name] = _coerce(merged[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}{name}: required field is missing")
    cfg = cls(**values)
    try:
        cfg.validate()
    except ConfigError as e:
        field = str(e).split(":", 1)[0].split("[", 1)[0].split(".", 1)[0].split("/", 1)[0]
        raise ConfigError(f"{'' if field in flags else where}{e}") from None  # a flag's value: not the file's
    return cfg


# ---------------------------------------------------------------------------------------------------- CLI glue

CONFIG_HELP = "YAML job file (its keys are the long flags, with underscores); flags override it"


def job_log(job: str) -> Callable[[str], None]:
    """The `log` of a job's progress lines: the `longvid.<job>` logger at info level (see `--log-level`)."""
    return logging.getLogger(f"longvid.{job}").info


def add_config_flag(p, help: str = CONFIG_HELP, required: bool = False) -> None:  # noqa: A002
    """`--config FILE`: the one flag of a job that is not one of its settings."""
    p.add_argument("--config", required=required, help=help)


def flag_spellings(f: dataclasses.Field, tp: Any) -> tuple[str, ...]:
    """A field's flag: `--field-name` (a bool that defaults to true: `--no-field-name`) unless it declares others."""
    if "flags" in f.metadata:
        return tuple(f.metadata["flags"])
    name = f.name.replace("_", "-")
    return (f"--no-{name}",) if tp is bool and f.default is True else (f"--{name}",)


def _plain(tp: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def add_flags(p, *classes: type, skip: tuple[str, ...] = (), groups: dict[str, str] | None = None) -> None:
    """One flag per field of the settings classes, in their order (a field an earlier class has is not repeated;
    `skip`: fields that get no flag here); a field declared with `group` is listed in that section of --help
    (`groups`: the sections' descriptions). Every flag defaults to None, "not given": the YAML file's value or the
    field's default applies (see `flag_values`)."""
    seen = {a.dest for a in p._actions} | set(skip)  # noqa: SLF001
    sections: dict[str, Any] = {}
    for cls in classes:
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            tp = _plain(hints[f.name])
            names = flag_spellings(f, tp)
            if f.name in seen or not names:
                continue
            seen.add(f.name)
            meta = f.metadata
            kw: dict[str, Any] = {"dest": f.name, "default": None,
                                  "help": (meta.get("help") or "").replace("%", "%%")}
            origin = typing.get_origin(tp)
            if tp is bool:
                kw["action"] = "store_false" if f.default is True else "store_true"
            elif origin is dict or tp is dict:
                kw.update(action="append", metavar=meta.get("metavar", "KEY=VALUE"))
            elif origin in (list, tuple) or tp in (list, tuple):
                if not meta.get("comma"):
                    kw["action"] = "append"
                if meta.get("metavar"):
                    kw["metavar"] = meta["metavar"]
            elif tp in (int, float):
                kw["type"] = tp
            if "metavar" not in kw and tp in (int, float, str):
                choices = static_choices(meta)
                if choices and not meta.get("aliases") and "action" not in kw:
                    kw["choices"] = choices  # a usage error naming the flag, as argparse gives it
                if meta.get("metavar"):
                    kw["metavar"] = meta["metavar"]
                elif choices:
                    kw["metavar"] = "{" + ",".join(str(c) for c in choices if c != "") + "}"
            where = p
            if meta.get("group"):
                name = meta["group"]
                if name not in sections:
                    sections[name] = p.add_argument_group(name, (groups or {}).get(name))
                where = sections[name]
            where.add_argument(*names, **kw)


def _mapping(flag: str, items: list[str], value_type: Any, metavar: str) -> dict[str, Any]:
    """The KEY=VALUE items of a repeated mapping flag; a value is read as YAML (a number, true, ...) unless the
    mapping holds strings."""
    out: dict[str, Any] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k or (value_type is str and not v):
            raise ConfigError(f"{flag}: expected {metavar}, got {show(item)}")
        if value_type is not str:
            try:
                v = parse_yaml(v.encode("utf-8", "surrogatepass"), MAX_YAML_BYTES)
            except (YamlRefused, UnicodeError):
                pass  # kept as text: the field's own check names what is wrong with it
        out[k] = v
    return out


def flag_values(cls: type, args: Any) -> dict[str, Any]:
    """The values the flags of `cls`'s fields were given in `args` (None: not given); mapping flags as dicts."""
    hints = field_types(cls)
    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        tp = _plain(hints[f.name])
        if v is not None and (typing.get_origin(tp) is dict or tp is dict):
            vt = (typing.get_args(tp) or (str, Any))[1]
            v = _mapping(flag_spellings(f, tp)[0], v, vt, f.metadata.get("metavar", "KEY=VALUE"))
        out[f.name] = v
    return out


def config_from_args(cls: type, args: Any, file_values: dict[str, Any] | None = None) -> Any:
    """`cls` from `--config FILE` (if given; or its `file_values` read already) overridden by the flags the user
    gave."""
    path = getattr(args, "config", None)
    if file_values is None:
        file_values = read_yaml(path) if path else {}
    return load_config(cls, file_values, flag_values(cls, args), source=path or "")
