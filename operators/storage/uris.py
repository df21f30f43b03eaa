"""URIs of the storage stack: a local path (optionally `file://...`) or `s3://bucket/key`; `join`, and `safe_join`
for untrusted relative paths."""
from __future__ import annotations

import os
import posixpath
import re

from longvid.operators.errors import RecordError

from .failures import StorageError
from .redaction import redact


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _local(uri: str) -> str:
    u = os.fspath(uri)
    return u[len("file://"):] if u.startswith("file://") else u


def _split(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key). Credentials in the URI are refused (never echoed)."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if "@" in bucket:
        raise StorageError(uri, "credentials in S3 URIs are not supported; use the AWS credential chain")
    if not bucket:
        raise StorageError(uri, "S3 URI has no bucket")
    return bucket, key


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local root or an S3 prefix (no normalisation; see safe_join for untrusted parts)."""
    root = os.fspath(root)
    if is_s3(root):
        out = root.rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return os.path.join(root, *[str(p) for p in parts])


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def safe_join(root: str, rel: str) -> str:
    """Join an untrusted relative path (from metadata) onto root; refuse anything that could leave root.

    Raises RecordError(stage="locate", field="video_paths") for absolute paths, URIs/drive letters, NUL bytes,
    backslashes, empty paths and `..` that climbs out of root after normalisation, and (local roots: the only
    storage here with links) for a path that a symbolic link, of a file or of a folder on the way, leads out of
    the root: the path is resolved (realpath) before the containment check. Links that stay inside work.
    """

    def bad(why: str) -> RecordError:
        return RecordError("locate", f"unsafe relative path {redact(repr(rel))}: {why}", field="video_paths",
                           file=redact(str(root)))

    if not isinstance(rel, str):
        raise bad(f"expected a string, got {type(rel).__name__}")
    if "\x00" in rel:
        raise bad("contains a NUL byte")
    if "\\" in rel:
        raise bad("contains a backslash")
    if any(ord(c) < 32 for c in rel):
        raise bad("contains a control character")
    if rel.startswith("/") or rel.startswith("~"):
        raise bad("is absolute")
    if _SCHEME_RE.match(rel):
        raise bad("looks like a URI or drive letter")
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise bad("escapes the root" if norm.startswith("..") else "does not name a file under the root")
    out = join(root, norm)
    if not is_s3(root):
        base = os.path.realpath(_local(root))
        real = os.path.realpath(_local(out))
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise bad(f"a symbolic link leads out of the root (to {redact(real)})")
    return out
