"""Local atomic writes: a temp file in the same folder (hidden from listings by TMP_PREFIX) + fsync +
`os.replace`, published with the mode a plain open() would give."""
from __future__ import annotations

import io
import os
import tempfile
from typing import Callable

from .failures import StorageError, os_error
from .uris import _local

TMP_PREFIX = ".longvid-tmp-"  # local temp files of in-flight atomic writes; list_files hides them


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_mode() -> int:
    """Mode of files we publish: what a plain open() would give (0666 less the umask), not mkstemp's 0600,
    so trainers and auditors running as other users can read a corpus."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_local(uri: str, fill: Callable[[io.BufferedWriter], None]) -> None:
    path = _local(uri)
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=d)
    except OSError as e:
        raise os_error(uri, "write", e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise os_error(uri, "write", e) from None
        raise
    _fsync_dir(d)
