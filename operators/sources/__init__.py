"""Source adapters: metadata files of one dataset -> SourceRecord | Failure, one per input row/item.

An adapter lives in `operators/sources/<name>.py` and exposes `ADAPTER` (an object with
`read(metadata_paths, options) -> Iterator[SourceRecord | Failure]`). Adding a source = adding one module.

    from longvid.operators.sources import get_adapter
    for item in get_adapter("webvid").read(["results_2M_val.csv"], {}):
        ...
"""
from __future__ import annotations

import importlib
import pkgutil
import re

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NOT_ADAPTERS = {"base", "metadata_files", "values"}  # what the adapters share


def available() -> list[str]:
    """Names of the adapter modules in this package."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _NOT_ADAPTERS
    )


def get_adapter(name: str):
    """Import `operators.sources.<name>` and return its ADAPTER; ValueError naming the choices if unknown."""
    if not isinstance(name, str) or not _NAME.match(name) or name in _NOT_ADAPTERS:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(available())}")
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise ValueError(f"unknown source {name!r}; available: {', '.join(available())}") from None
        raise
    adapter = getattr(mod, "ADAPTER", None)
    if adapter is None or not callable(getattr(adapter, "read", None)):
        raise ValueError(f"operators.sources.{name} defines no ADAPTER with a read() method")
    return adapter
