"""Storage layer for every LongVid job: read videos, metadata and shards; write outputs; local paths or S3.

Plain functions over URIs: a URI is either a local path (optionally `file://...`) or `s3://bucket/key`.

- Reads: `exists`, `is_folder`, `size`, `list_files`, `open_read` (seekable; on S3 a ranged-GET reader with a
  bounded readahead buffer, usable by PyAV `av.open(fileobj)`, `io.TextIOWrapper` and pyarrow), `read_bytes`,
  `read_text`.
- Records of a run: `write_json` (job.json, summary.json: every string redacted), `json_record` (the form it
  stores, to compare settings with). Logs: `RedactFilter` (a logging.Filter), `get_logger` (a logger that
  redacts its records in any process).
- Parquet: `open_parquet`, `read_parquet` (pyarrow.parquet over `open_read`), `write_parquet` (atomic). The one
  storage stack of the project: no other module talks to boto3/botocore, and none uses pyarrow.fs, fsspec or s3fs
  (tests/scenarios/test_layout.py).
- Writes are atomic: `write_bytes`, `put_file`. Local: temp name in the same folder + fsync + `os.replace`.
  S3: one PUT for small objects; a multipart upload completed only at the end for large ones (aborted on failure),
  so an object never shows under its final key half-written. A process killed mid-upload leaves an incomplete
  multipart upload behind; `abort_multipart_uploads(prefix)` clears those (operators.write: at a unit's retry).
- Transient S3 errors (throttling, 5xx, resets, timeouts, short reads in the middle of a ranged GET) are retried
  with exponential backoff + jitter, up to `S3Options.max_attempts`; permanent ones raise `StorageError` at once
  (`ObjectNotFound` for a missing object, `NoSuchBucket`, `AccessDenied`, `NoCredentials`; locally `NoSpace` for a
  full disk, `AccessDenied`, `ObjectNotFound`). Every StorageError message is one line and goes through `redact`.
- Pre-flight for the CLI: `check_readable(uri)`, `check_writable(uri)` raise those typed errors before any work.
- `safe_join` joins untrusted relative paths: no escape by `..`, absolute paths or (local) symbolic links.
- S3 clients are created lazily, one per process (keyed by pid, reset after fork), so the module is safe to use
  from Ray workers and forked processes. Configure with `configure_s3(S3Options(...))` or the usual AWS_*
  environment variables; `s3_options_from_env()` gives a secret-free dict to hand to Ray workers.

This package is that public API (the reads, writes and checks that dispatch between local disk and S3); its rooms:
`redaction` (redact, log filter), `failures` (StorageError and kinds), `uris` (join, safe_join), `s3` (options, boto3
client, retries), `s3_transfer` (ranged reader, uploads), `local` (atomic files). Callers import the package:
`from longvid.operators import storage`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import tempfile
from typing import Any, Callable, Iterable

from .failures import (AccessDenied, NoCredentials, NoSpace, NoSuchBucket, ObjectNotFound, StorageError,
                       os_error)
from .local import TMP_PREFIX, _atomic_local, file_mode
from .redaction import REDACTED, RedactFilter, get_logger, redact, redact_json
from .s3 import (MiB, S3Options, _client, _head, _IncompleteBody, _retry, configure_s3, s3_options,
                 s3_options_from_env)
from .s3_transfer import S3RangeReader, _put_s3, abort_multipart_uploads
from .uris import _local, _split, is_s3, join, safe_join

__all__ = [
    # errors (failures.py) and redaction (redaction.py)
    "StorageError", "ObjectNotFound", "NoSuchBucket", "AccessDenied", "NoCredentials", "NoSpace", "os_error",
    "REDACTED", "redact", "redact_json", "RedactFilter", "get_logger",
    # options (s3.py), URIs (uris.py), local atomic files (local.py)
    "MiB", "S3Options", "configure_s3", "s3_options", "s3_options_from_env", "S3RangeReader",
    "abort_multipart_uploads", "is_s3", "join", "safe_join", "TMP_PREFIX", "file_mode",
    # the operations (this module)
    "exists", "size", "list_files", "open_read", "read_bytes", "read_text", "is_folder", "open_parquet",
    "read_parquet", "write_parquet", "write_bytes", "write_text", "json_record", "write_json", "put_file", "delete",
    "makedirs", "check_readable", "check_writable",
]


# --------------------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------------------


def exists(uri: str) -> bool:
    """True when a file/object exists at uri (a directory or a bare prefix is not a file)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        if not key:
            return False
        try:
            _head(uri)
            return True
        except ObjectNotFound:
            return False
    return os.path.isfile(_local(uri))


def size(uri: str) -> int:
    if is_s3(uri):
        return int(_head(uri)["ContentLength"])
    try:
        st = os.stat(_local(uri))
    except FileNotFoundError:
        raise ObjectNotFound(uri, "size: no such file") from None
    except OSError as e:
        raise StorageError(uri, f"size: {e.strerror or e}") from None
    return st.st_size


def list_files(prefix: str, suffix: str | Iterable[str] | None = None, recursive: bool = True,
               name_prefix: str = "") -> list[str]:
    """Sorted URIs of the files under a folder/prefix (a missing folder gives []). `suffix` filters by name
    ending (a string or several); `name_prefix` keeps the files whose path under the folder starts with it (on S3
    it narrows the LIST request itself). Local temp files of in-flight atomic writes are never listed."""
    sfx = (suffix,) if isinstance(suffix, str) else (tuple(suffix) if suffix is not None else None)

    def keep(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        if not base or base.startswith(TMP_PREFIX):
            return False
        return sfx is None or base.endswith(sfx)

    if is_s3(prefix):
        bucket, key = _split(prefix)
        if key and not key.endswith("/"):
            key += "/"
        key += name_prefix
        out: list[str] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
            if not recursive:
                kw["Delimiter"] = "/"
            if token:
                kw["ContinuationToken"] = token
            page = _retry(prefix, "list", lambda kw=kw: _client().list_objects_v2(**kw))
            for obj in page.get("Contents", []) or []:
                if keep(obj["Key"]):
                    out.append(f"s3://{bucket}/{obj['Key']}")
            if page.get("IsTruncated") and page.get("NextContinuationToken"):
                token = page["NextContinuationToken"]
            else:
                break
        return sorted(out)
    root = _local(prefix)
    if os.path.isfile(root):
        raise StorageError(prefix, "list: is a file, not a folder")
    if not os.path.isdir(root):
        return []
    out = []
    if recursive:
        for d, dirs, files in os.walk(root):
            dirs.sort()
            out.extend(os.path.join(d, f) for f in files if keep(f))
    else:
        with os.scandir(root) as it:
            out.extend(os.path.join(root, e.name) for e in it if e.is_file() and keep(e.name))
    if name_prefix:
        out = [p for p in out if os.path.relpath(p, root).replace(os.sep, "/").startswith(name_prefix)]
    return sorted(out)


def open_read(uri: str, block_size: int = 4 * MiB) -> io.BufferedReader:
    """Open a file/object for binary, seekable reading. For S3 the reader fetches ranges of `block_size` bytes on
    demand and never the whole object. Wrap in io.TextIOWrapper for text. Missing -> ObjectNotFound."""
    if is_s3(uri):
        raw = S3RangeReader(uri, block_size=block_size)
        return io.BufferedReader(raw, buffer_size=min(block_size, 64 * 1024))
    path = _local(uri)
    try:
        return open(path, "rb", buffering=max(8192, min(block_size, 4 * MiB)))
    except FileNotFoundError:
        raise ObjectNotFound(uri, "open: no such file") from None
    except IsADirectoryError:
        raise StorageError(uri, "open: is a directory") from None
    except OSError as e:
        raise os_error(uri, "open", e) from None


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split(uri)

        def get() -> bytes:
            resp = _client().get_object(Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            n = resp.get("ContentLength")
            if n is not None and len(data) != int(n):
                raise _IncompleteBody(f"GET returned {len(data)} of {n} bytes")
            return data

        return _retry(uri, "read", get)
    try:
        with open(_local(uri), "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ObjectNotFound(uri, "read: no such file") from None
    except OSError as e:
        raise os_error(uri, "read", e) from None


def read_text(uri: str, encoding: str = "utf-8") -> str:
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise StorageError(uri, f"read_text: not valid {encoding} at byte {e.start}") from None


def is_folder(uri: str) -> bool:
    """True for a local folder, or an S3 prefix with at least one object under `prefix/`."""
    if is_s3(uri):
        bucket, key = _split(uri)
        key = key if not key or key.endswith("/") else key + "/"
        page = _retry(uri, "list", lambda: _client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))
        return bool(page.get("Contents"))
    return os.path.isdir(_local(uri))


# --------------------------------------------------------------------------------------------------------------
# Parquet: pyarrow.parquet over the handles above (ranged reads on S3: the footer and the column chunks asked
# for, never the whole object), written through the atomic writes below
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_parquet(uri: str, block_size: int = 4 * MiB):
    """`with open_parquet(uri) as pf:` a pyarrow.parquet.ParquetFile over `open_read(uri)`, closed on exit.
    pyarrow's own error for a file that is not parquet (ArrowInvalid) passes through."""
    import pyarrow.parquet as pq

    with open_read(uri, block_size=block_size) as f:
        pf = pq.ParquetFile(f)
        try:
            yield pf
        finally:
            pf.close()


def read_parquet(uri: str, columns: list[str] | None = None, **kwargs: Any):
    """The whole table (or `columns`) of one parquet file, as `pyarrow.parquet.read_table` reads it."""
    import pyarrow.parquet as pq

    with open_read(uri) as f:
        return pq.read_table(f, columns=columns, **kwargs)


def write_parquet(uri: str, table, **kwargs: Any) -> None:
    """`pyarrow.parquet.write_table(table, ..., **kwargs)`, atomically (local: streamed into a temp file; S3: one
    object). The bytes are those write_table writes to a path."""
    import pyarrow.parquet as pq

    if is_s3(uri):
        buf = io.BytesIO()
        pq.write_table(table, buf, **kwargs)
        write_bytes(uri, buf.getbuffer())
        return
    _atomic_local(uri, lambda f: pq.write_table(table, f, **kwargs))


# --------------------------------------------------------------------------------------------------------------
# Writes (atomic)
# --------------------------------------------------------------------------------------------------------------


def write_bytes(uri: str, data: bytes | bytearray | memoryview) -> None:
    """Write data to uri atomically (readers see the old content or the whole new one, never a part)."""
    data = bytes(data)
    if is_s3(uri):
        _put_s3(uri, io.BytesIO(data), len(data))
        return
    _atomic_local(uri, lambda f: f.write(data))


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def json_record(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """`value` as `write_json` stores it and `json.loads` reads it back: redacted, JSON types only (a settings
    fingerprint is compared in this form with the one a job.json holds)."""
    return json.loads(_record_text(value, default=default))


def _record_text(value: Any, **kwargs: Any) -> str:
    default = kwargs.pop("default", None)
    if default is not None:  # what `default` makes of an object json cannot write is redacted too
        kwargs["default"] = lambda o: redact_json(default(o))
    return json.dumps(redact_json(value), **kwargs)


def write_json(uri: str, value: Any, **kwargs: Any) -> None:
    """Write a record of a run (job.json, summary.json, a NIAH set's set.json) atomically, with every string in it,
    dict keys included, redacted. Keyword arguments are json.dumps's (indent, sort_keys, default, ...). Not for
    data: a caption is stored as it is, whatever it says."""
    write_text(uri, _record_text(value, **kwargs))


def put_file(src: str | os.PathLike | io.BufferedIOBase, uri: str) -> None:
    """Upload/copy a local file (a path, or an open binary file object) to uri atomically.

    S3: one PUT below `multipart_threshold`, else a multipart upload completed at the end; on any failure the
    upload is aborted and nothing appears under the final key.
    """
    if isinstance(src, (str, os.PathLike)):
        src_path = os.fspath(src)
        try:
            f = open(src_path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(src_path, "put_file: source does not exist") from None
        except OSError as e:
            raise StorageError(src_path, f"put_file: cannot open source: {e.strerror or e}") from None
        with f:
            _put_stream(f, uri)
    else:
        _put_stream(src, uri)


def _put_stream(f, uri: str) -> None:
    if is_s3(uri):
        try:
            n = os.fstat(f.fileno()).st_size - f.tell()
        except (OSError, AttributeError, io.UnsupportedOperation):
            n = None
        _put_s3(uri, f, n)
        return
    _atomic_local(uri, lambda out: shutil.copyfileobj(f, out, 1 * MiB))


def delete(uri: str) -> None:
    """Remove a file/object; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = _split(uri)
        _retry(uri, "delete", lambda: _client().delete_object(Bucket=bucket, Key=key))
        return
    try:
        os.remove(_local(uri))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_error(uri, "delete", e) from None


def makedirs(uri: str) -> None:
    """Create a local folder (and parents); no-op on S3, where folders do not exist."""
    if is_s3(uri):
        return
    try:
        os.makedirs(_local(uri), exist_ok=True)
    except OSError as e:
        raise os_error(uri, "makedirs", e) from None


# --------------------------------------------------------------------------------------------------------------
# Pre-flight checks (for the CLI: a clear one-line error before any work)
# --------------------------------------------------------------------------------------------------------------


def check_readable(uri: str) -> None:
    """Raise a StorageError subclass with a one-line message unless uri is a readable local file or folder, an S3
    object or a non-empty S3 prefix: ObjectNotFound (NoSuchBucket for a missing bucket), AccessDenied,
    NoCredentials, or StorageError (e.g. the endpoint cannot be reached)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        if key and not key.endswith("/"):
            try:
                _head(uri)
                return
            except ObjectNotFound as e:
                if isinstance(e, NoSuchBucket):
                    raise
            key += "/"
        page = _retry(uri, "list", lambda: _client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))
        if not page.get("Contents"):
            raise ObjectNotFound(uri, "no such object, and no object under this prefix")
        return
    path = _local(uri)
    if not os.path.exists(path):
        raise ObjectNotFound(uri, "no such file or folder")
    try:
        if os.path.isdir(path):
            with os.scandir(path) as it:
                next(it, None)
        else:
            with open(path, "rb"):
                pass
    except OSError as e:
        raise os_error(uri, "read", e) from None


def check_writable(uri: str) -> None:
    """Raise a StorageError subclass with a one-line message unless files can be written under the folder/prefix
    uri: local, uri (or, when it does not exist yet, its nearest existing parent) must be a folder where a file can
    be created (a probe file is created and removed; nothing else is made); S3, a probe object is put and deleted
    under the prefix. AccessDenied, NoCredentials, NoSuchBucket, NoSpace or StorageError (e.g. "is a file")."""
    if is_s3(uri):
        bucket, key = _split(uri)
        if key and not key.endswith("/"):
            key += "/"
        probe = f"{key}{TMP_PREFIX}write-check-{os.getpid()}-{random.getrandbits(48):012x}"
        _retry(uri, "write", lambda: _client().put_object(Bucket=bucket, Key=probe, Body=b""))
        try:
            _retry(uri, "delete", lambda: _client().delete_object(Bucket=bucket, Key=probe))
        except StorageError:  # may write but not delete: writing works, which is what is asked
            pass
        return
    path = os.path.abspath(_local(uri))
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(uri, "is a file, not a folder")
    d = path
    while not os.path.exists(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    if not os.path.isdir(d):
        raise StorageError(uri, f"cannot be created: {d} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}write-check-", dir=d)
    except OSError as e:
        raise os_error(uri if d == path else d, "write", e) from None
    os.close(fd)
    os.unlink(tmp)
