"""The storage stack's typed errors: `StorageError` (one line, redacted, picklable) and its kinds, and `os_error`
(a local OSError typed by errno)."""
from __future__ import annotations

import errno
import re

from .redaction import redact


class StorageError(OSError):
    """A storage operation failed for good (permanent error, or transient errors that outlasted the retries).

    `uri` and `reason` are redacted. `transient` is True when the last error was of a retryable kind.
    """

    def __init__(self, uri: str, reason: str, transient: bool = False):
        self.uri = redact(uri)
        self.reason = re.sub(r"\s*[\r\n]+\s*", " ", redact(reason))  # one line, always
        self.transient = transient
        super().__init__(f"{self.uri}: {self.reason}")

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"

    def __reduce__(self):  # picklable across Ray / multiprocessing
        return (type(self), (self.uri, self.reason, self.transient))


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object, file or bucket does not exist."""


class NoSuchBucket(ObjectNotFound):
    """The S3 bucket does not exist."""


class AccessDenied(StorageError, PermissionError):
    """The credentials (or the local user) may not do this: S3 AccessDenied/403, local EACCES/EPERM/EROFS."""


class NoCredentials(StorageError):
    """No usable AWS credentials: none found, or the ones found are not valid (unknown key, bad signature,
    expired token)."""


class NoSpace(StorageError):
    """The file system (or quota) is full: ENOSPC / EDQUOT. Fails the job, not a record."""


def os_error(uri: str, op: str, e: OSError) -> StorageError:
    """The StorageError for a local OSError, typed by errno (NoSpace, AccessDenied, ObjectNotFound)."""
    if isinstance(e, StorageError):
        return e
    no = getattr(e, "errno", None)
    if no in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(uri, f"{op}: no space left on device")
    if no in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(uri, f"{op}: {e.strerror or e}")
    if no == errno.ENOENT:
        return ObjectNotFound(uri, f"{op}: {e.strerror or e}")
    return StorageError(uri, f"{op}: {e.strerror or e}")
