"""One exception type for "this record cannot become a sample": the pipeline turns it into a Failure row."""
from __future__ import annotations


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
