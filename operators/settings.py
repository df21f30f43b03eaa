"""Job settings declared once: each field's default, rules, flag and help next to the field, one checker for all.

    shard_size_mb: float = setting(1024.0, gt=0, le=2**20, help="target tar size in MB (default 1024)")
    dtype: str = setting("bf16", choices=DTYPE_NAMES, aliases=DTYPE_ALIASES, help="compute dtype ...")

A job's settings class is a dataclass deriving from `Settings`. Its fields are the keys of its YAML job file and
its command-line flags (jobs/config.py generates the parser from them: `--field-name`, help, metavar); nothing else
lists them. `Settings.validate()` checks every field (`check_fields`), then the class's `@rule` methods: the rules
that tie fields together, each a small named method raising ConfigError "field: what is wrong".

`check_fields(cfg)` enforces, for every field of a settings dataclass (declared or not):
  types     the annotation's type (a bool is never a number; a float field takes an int);
  numbers   floats finite, ints within int64, then the field's ge / gt / le / lt;
  strings   at most MAX_STR characters, no NUL and no lone surrogate (no path or name holds one), then `choices`
            after `aliases` (a callable for lists that live in heavy modules) and `required` (not empty);
  lists     every item by the same rules (bounds and choices apply to the items); `required`: not empty;
  dicts     the key and value types of `dict[K, V]`.
The first violation raises ConfigError "field: what is wrong, got VALUE". Values from YAML files and flags are
converted to the annotated types by `jobs.config.load_config`, which then calls `validate()`.

Our own ~180 lines, not pydantic or jsonargparse: those would replace the messages and flag spellings users rely on.
This module sits in operators/ (it imports only operators/errors.py) so that every layer can declare settings.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Callable, Iterable

from longvid.operators.errors import ConfigError, show  # noqa: F401 - show: re-exported for the jobs

__all__ = ["DTYPE_NAMES", "DTYPE_ALIASES", "INT_MAX", "TORCH_DTYPES", "Settings", "Shared", "check_fields",
           "field_types", "label", "like", "ordered", "rule", "rules", "setting", "show"]

INT_MAX = 2**63 - 1  # every int setting fits an int64 (numpy, Ray and the OS take no bigger)
MAX_STR = 4096  # no path (PATH_MAX), name or spec setting is longer

# The one spelling of `--dtype` across commands; the torch/numpy names are accepted as aliases.
DTYPE_NAMES = ("fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the one spelling -> torch/numpy name
DTYPE_ALIASES = {**{t: n for n, t in TORCH_DTYPES.items()}, "float": "fp32", "half": "fp16"}

_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None, aliases: dict[str, str] | None = None,
            required: bool = False, help: str = "", flags: tuple[str, ...] | None = None,  # noqa: A002
            metavar: str | None = None, comma: bool = False, adds: bool = False, group: str | None = None) -> Any:
    """A dataclass field with its rules (checked by `check_fields`; bounds are inclusive with ge/le) and its flag:

    help      the flag's help text (every field of a job's settings has one);
    flags     the flag's spellings when not `--field-name` (a bool field that defaults to true: `--no-field-name`);
              `()`: no flag (a structure only a job file can give);
    metavar   the value's name in --help (default: `{a,b}` from static choices);
    comma     a list field whose flag takes one comma-separated value (`--frames 1000,2000`), else the flag repeats;
    adds      a list or mapping field whose flag values are added to the job file's instead of replacing them;
    group     the --help section the flag is listed in (default: with the others).
    """
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, aliases=aliases,
                                   required=required or None, help=help or None, flags=flags, metavar=metavar,
                                   comma=comma or None, adds=adds or None, group=group).items() if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def like(cls: type, name: str, **changes: Any) -> Any:
    """The field `name` of the settings class `cls` declared again elsewhere: the same default, rules, flag and help
    (`changes` replace metadata entries, e.g. help=...)."""
    f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return dataclasses.field(default=f.default, default_factory=f.default_factory,
                             metadata={**f.metadata, **changes})


def rule(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Marks a method of a settings class as one of its cross-field rules (run by `Settings.validate`, in the order
    the class declares them, after every field's own checks): it raises ConfigError "field: what is wrong"."""
    fn.settings_rule = True  # type: ignore[attr-defined]
    return fn


def ordered(low: str, high: str) -> Callable[[Any], None]:
    """The rule `low <= high` for two fields ("min_frames/max_frames: need min <= max, got 8, 4")."""
    def check(cfg: Any) -> None:
        lo, hi = getattr(cfg, low), getattr(cfg, high)
        if lo > hi:
            raise ConfigError(f"{low}/{high}: need min <= max, got {lo}, {hi}")

    check.__name__ = f"{low}_le_{high}"
    return rule(check)


@functools.lru_cache(maxsize=None)
def rules(cls: type) -> tuple[Callable[[Any], None], ...]:
    """The @rule methods of a settings class, base classes' first, each class's in declaration order."""
    found: dict[str, Callable[[Any], None]] = {}
    for klass in reversed(cls.__mro__):
        for name, v in vars(klass).items():
            if getattr(v, "settings_rule", False):
                found[name] = v
    return tuple(found.values())


class Settings:
    """The base of a job's settings dataclass (see the module doc)."""

    def validate(self) -> None:
        """Every field's declared rules, then the class's @rule methods; the first violation raises ConfigError."""
        check_fields(self)
        for r in rules(type(self)):
            r(self)


@dataclasses.dataclass
class Shared(Settings):
    """Settings that several jobs have, declared once here; a job's class takes one with `like(Shared, name)`."""

    num_cpus: int = setting(0, ge=0, help="CPUs of the embedded Ray (default: all)")
    ray_address: str = setting("", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    s3_endpoint_url: str = setting("", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    s3_profile: str = setting("", help="AWS profile for S3")
    s3_region: str = setting("", help="AWS region for S3")
    quiet: bool = setting(False, help="no progress lines")


def label(value: Any, limit: int = 40) -> str:
    """A name for a message: a short printable string as it is, anything else as `show` gives it."""
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return value
    return show(value, limit)


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings dataclass (cached)."""
    return typing.get_type_hints(cls)


def static_choices(meta: Any) -> tuple[Any, ...] | None:
    """A field's choices when they are declared as values (not a callable, which may import a heavy module)."""
    c = meta.get("choices")
    return None if c is None or callable(c) else tuple(c)


def _choices(meta: dict) -> tuple[Any, ...] | None:
    c = meta.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def _check_str(name: str, v: str, meta: dict) -> str:
    if len(v) > MAX_STR:
        raise ConfigError(f"{name}: longer than {MAX_STR} characters ({len(v)}), got {show(v)}")
    if "\x00" in v:
        raise ConfigError(f"{name}: must not contain a NUL character, got {show(v)}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name}: must be valid Unicode text (it holds a lone surrogate), got {show(v)}") from None
    return _check_choice(name, (meta.get("aliases") or {}).get(v, v), meta)


def _check_choice(name: str, v: Any, meta: dict) -> Any:
    choices = _choices(meta)
    if choices is not None and v not in choices:
        accepted = [str(c) for c in choices] + sorted(meta.get("aliases") or {})
        raise ConfigError(f"{name}: must be one of {', '.join(accepted)}; got {show(v)}")
    return v


def _check_number(name: str, v: Any, meta: dict) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{name}: must be a finite number, got {show(v)}")
    if isinstance(v, int) and abs(v) > INT_MAX:
        raise ConfigError(f"{name}: must be at most {INT_MAX} in size, got {show(v)}")
    for key, (ok, op) in _BOUNDS.items():
        if key in meta and not ok(v, meta[key]):
            raise ConfigError(f"{name}: must be {op} {meta[key]}, got {show(v)}")
    _check_choice(name, v, meta)


def _check(name: str, v: Any, tp: Any, meta: dict) -> Any:
    """Check one value against its annotation and constraints; returns it (aliases resolved)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return v
        errors = []
        for a in args:
            if a is not type(None):
                try:
                    return _check(name, v, a, meta)
                except ConfigError as e:
                    errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{name}: must be one of {', '.join(map(str, args))}; got {show(v)}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{name}: expected true or false, got {show(v)}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}: expected an integer, got {show(v)}")
        _check_number(name, v, meta)
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {show(v)}")
        if isinstance(v, int):
            try:
                v = float(v)
            except OverflowError:
                raise ConfigError(f"{name}: must be a finite number, got {show(v)}") from None
        _check_number(name, v, meta)
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{name}: expected a string, got {show(v)}")
        return _check_str(name, v, meta)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {show(v)}")
        if meta.get("required") and not v:
            raise ConfigError(f"{name}: must not be empty")
        inner = args[0] if args else Any
        items = [_check(f"{name}[{i}]", x, inner, meta) for i, x in enumerate(v)]
        return type(v)(items)
    if origin is dict or tp is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{name}: expected a mapping, got {show(v)}")
        vt = args[1] if len(args) == 2 else Any
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise ConfigError(f"{name}: keys must be strings, got {show(k)}")
            out[_check_str(f"{name} key", k, {})] = _check(f"{name}.{k[:40]}", x, vt, {})
        return out
    if isinstance(tp, type):
        if not isinstance(v, tp):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {show(v)}")
        return v
    return v


def check_fields(cfg: Any) -> None:
    """Check every field of the dataclass instance `cfg` (see the module doc); ConfigError names the field."""
    hints = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        meta = f.metadata
        checked = _check(f.name, v, hints[f.name], meta)
        if meta.get("required") and isinstance(checked, str) and not checked:
            raise ConfigError(f"{f.name}: required (got an empty value)")
        if checked is not v:
            object.__setattr__(cfg, f.name, checked)
