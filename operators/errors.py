"""The project's exceptions (a record that cannot become a sample, a metadata file that cannot be read, a bad
setting, a transient outage) and `show`, the one safe repr of a value for their messages."""
from __future__ import annotations

import reprlib
from typing import Any


class RecordError(Exception):
    """Raised by an operator for a bad input. `stage` and `field` end up in the failure row.

    stage: metadata | locate | probe | sample | decode | encode | write | timeout | crash
    field: the metadata field or file property at fault ("span", "video_paths", "stream", ...)
    """

    def __init__(self, stage: str, reason: str, field: str = "", file: str = ""):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.field = field
        self.file = file

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        fld = f" [{self.field}]" if self.field else ""
        return f"{where}{self.stage}{fld}: {self.reason}"


class MetadataError(Exception):
    """A metadata file that cannot be read at all: a clear error before any work starts."""


class ConfigError(ValueError):
    """A bad job configuration: the message names the field (and the file when it came from one)."""


class TransientError(Exception):
    """A record could not be read *now* (a storage outage that outlasted the retries).

    It is not the record's fault, so it must not become a failure row: the unit is abandoned uncommitted and
    retried (by Ray, then by re-running the job).
    """


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxlong, _REPR.maxother, _REPR.maxlevel = 80, 40, 80, 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6


def show(value: Any, limit: int = 0) -> str:
    """A short, safe repr of a value for an error message (long strings, huge ints and deep lists cut; the whole
    cut to `limit` characters when given). Never raises."""
    try:
        r = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a message must never fail
        r = f"<{type(value).__name__}>"
    return r if not limit or len(r) <= limit else r[: limit - 3] + "..."
