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
  (tests/test_layout.py).
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
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import posixpath
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from longvid.operators.errors import RecordError

T = TypeVar("T")

MiB = 1024 * 1024
TMP_PREFIX = ".longvid-tmp-"  # local temp files of in-flight atomic writes; list_files hides them

# --------------------------------------------------------------------------------------------------------------
# Errors and redaction
# --------------------------------------------------------------------------------------------------------------

_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b")
# an http(s) URL whose query string carries SigV2/SigV4 presigning material: drop the whole query string
_PRESIGNED_RE = re.compile(
    r"(?P<url>https?://[^\s?#\"'<>]+)\?(?P<q>[^\s\"'<>]*)", re.IGNORECASE
)
_PRESIGN_MARK_RE = re.compile(r"(?:^|[&;])(?:X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId)=", re.IGNORECASE)
# user:password@ (or key:secret@) in any scheme://authority
_USERINFO_RE = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@", re.IGNORECASE)
_SECRET_NAMES = (
    "aws_secret_access_key|aws_session_token|aws_security_token|secret_access_key|SecretAccessKey|SessionToken|"
    "X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Credential|Signature|Expires|AWSAccessKeyId|"
    "secret_key|secretkey|access_key_secret|password"
)
_SECRET_KV_RE = re.compile(
    r"(?P<name>(?<![A-Za-z0-9])(?:" + _SECRET_NAMES + r"))(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<val>[^\s&\"',;}<>]+)",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(text: Any) -> str:
    """Remove credentials from text that might be logged or written.

    Strips presigned query strings from http(s) URLs, userinfo from `scheme://user:secret@host`, the values of
    secret-looking keys (aws_secret_access_key=, "SecretAccessKey": ..., X-Amz-Signature=, Signature=, ...) and
    AWS access key ids (AKIA.../ASIA...).
    """
    s = str(text)

    def _strip_query(m: re.Match) -> str:
        return m.group("url") if _PRESIGN_MARK_RE.search(m.group("q")) else m.group(0)

    s = _PRESIGNED_RE.sub(_strip_query, s)
    s = _USERINFO_RE.sub(lambda m: m.group("scheme") + REDACTED + "@", s)
    s = _SECRET_KV_RE.sub(lambda m: m.group("name") + m.group("sep") + REDACTED, s)
    s = _ACCESS_KEY_RE.sub(REDACTED, s)
    return s


def redact_json(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, tuples, strings, numbers) with every string in it, dict keys included,
    redacted; other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(v) for v in value]
    return value


class RedactFilter(logging.Filter):
    """A logging filter that redacts each record's message (and its traceback) before any handler formats it.

    On a handler it covers what that handler writes; on a logger, every record made by that logger wherever it goes
    (a Ray worker's log files included): see `get_logger`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it as usual
            return True
        record.msg, record.args = redact(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with a RedactFilter on the logger itself: its records are redacted in any process
    and whatever handlers print them (for code that logs paths, e.g. in Ray workers)."""
    log = logging.getLogger(name)
    if not any(isinstance(f, RedactFilter) for f in log.filters):
        log.addFilter(RedactFilter())
    return log


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


# --------------------------------------------------------------------------------------------------------------
# Options and the per-process client cache
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Options:
    """Non-secret S3 settings. Credentials always come from the usual AWS chain (env, profile, instance role).

    `None` fields fall back to the environment: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_PROFILE,
    AWS_REGION / AWS_DEFAULT_REGION. `max_attempts` counts the first try; backoff before retry n (1-based) is
    uniform in [d/2, d] with d = min(max_delay, base_delay * 2**(n-1)).
    """

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    max_attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * MiB  # objects at least this big are uploaded in parts
    part_size: int = 16 * MiB  # S3 requires >= 5 MiB for every part but the last
    max_pool_connections: int = 16
    addressing_style: str | None = None  # None: "path" when endpoint_url is set, else "auto"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"S3Options.{field}: {why}")

        if int(self.max_attempts) < 1:
            bad("max_attempts", f"must be >= 1, got {self.max_attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            bad("base_delay", "delays must be >= 0")
        if int(self.part_size) < 1:
            bad("part_size", f"must be >= 1, got {self.part_size!r}")
        if int(self.multipart_threshold) < 1:
            bad("multipart_threshold", f"must be >= 1, got {self.multipart_threshold!r}")
        if self.addressing_style not in (None, "auto", "path", "virtual"):
            bad("addressing_style", f"must be auto|path|virtual, got {self.addressing_style!r}")
        if self.endpoint_url is not None and not re.match(r"^https?://", str(self.endpoint_url)):
            bad("endpoint_url", f"must start with http:// or https://, got {redact(self.endpoint_url)!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "S3Options":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"S3Options: unknown field(s) {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> "S3Options":
        """These options with `None` endpoint/profile/region filled from the environment."""
        env = os.environ
        return dataclasses.replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            profile=self.profile or env.get("AWS_PROFILE") or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )


_OPTIONS = S3Options()
_CLIENTS: dict[int, Any] = {}  # pid -> boto3 S3 client
_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()
    _CLIENTS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def configure_s3(opts: S3Options | dict | None = None, **overrides: Any) -> S3Options:
    """Set the S3 options of this process (drops cached clients if they changed). Accepts S3Options, a dict (e.g. the one from
    `s3_options_from_env()` shipped to a Ray worker) or keyword overrides. `configure_s3()` resets to defaults."""
    global _OPTIONS
    if opts is None:
        o = S3Options()
    elif isinstance(opts, S3Options):
        o = opts
    elif isinstance(opts, dict):
        o = S3Options.from_dict(opts)
    else:
        raise TypeError(f"configure_s3: expected S3Options or dict, got {type(opts).__name__}")
    if overrides:
        o = dataclasses.replace(o, **overrides)
    with _LOCK:
        if o != _OPTIONS:  # same options again (e.g. once per Ray task): keep the cached client
            _OPTIONS = o
            _CLIENTS.clear()
    return o


def s3_options() -> S3Options:
    """The effective options of this process (configured values, environment fallbacks filled in)."""
    return _OPTIONS.resolved()


def s3_options_from_env() -> dict:
    """A plain, secret-free dict of the effective S3 options (configured + environment) to pass to Ray workers,
    which call `configure_s3(d)`. Credentials are never included: workers get them from their own environment."""
    d = s3_options().to_dict()
    if d.get("endpoint_url"):
        d["endpoint_url"] = redact(d["endpoint_url"])  # never carry userinfo along
    return d


def _client():
    pid = os.getpid()
    c = _CLIENTS.get(pid)
    if c is not None:
        return c
    with _LOCK:
        c = _CLIENTS.get(pid)
        if c is None:
            c = _make_client(_OPTIONS.resolved())
            _CLIENTS.clear()  # entries of other pids are stale copies from a parent process
            _CLIENTS[pid] = c
    return c


def _make_client(o: S3Options):
    import boto3
    from botocore.config import Config

    style = o.addressing_style or ("path" if o.endpoint_url else "auto")
    cfg = Config(
        region_name=o.region,
        connect_timeout=o.connect_timeout,
        read_timeout=o.read_timeout,
        max_pool_connections=o.max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours (see _retry)
        s3={"addressing_style": style},
    )
    session = boto3.session.Session(profile_name=o.profile) if o.profile else boto3.session.Session()
    return session.client("s3", endpoint_url=o.endpoint_url, region_name=o.region, config=cfg)


# --------------------------------------------------------------------------------------------------------------
# Error classification and retries
# --------------------------------------------------------------------------------------------------------------

_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "RequestLimitExceeded", "TooManyRequestsException", "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "PriorRequestNotComplete", "EC2ThrottledException", "IDPCommunicationError",
    "500", "502", "503", "504", "429",
}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired", "InvalidClientTokenId", "AuthFailure", "UnrecognizedClientException"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState", "403"}


def _classify(exc: BaseException) -> tuple[str, str]:
    """-> (kind, reason) with kind in {"transient", "not_found", "no_bucket", "denied", "credentials",
    "permanent"}."""
    import botocore.exceptions as bce

    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code", "") or "")
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
        msg = err.get("Message") or ""
        reason = f"{code or 'error'} (HTTP {status})" + (f": {msg}" if msg else "")
        if code == "NoSuchBucket":
            return "no_bucket", reason
        if code in _NOT_FOUND_CODES or (status == 404 and code not in _TRANSIENT_CODES):
            return "not_found", reason
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return "transient", reason
        if code in _CREDENTIAL_CODES:
            return "credentials", f"AWS credentials not accepted: {reason}"
        if code in _DENIED_CODES or status == 403:
            return "denied", f"access denied: {reason}"
        return "permanent", reason
    transient_types: tuple = (
        bce.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeout...
        bce.IncompleteReadError,
        bce.HTTPClientError,
        ConnectionError,  # ConnectionResetError, BrokenPipeError, ...
        TimeoutError,
        _IncompleteBody,
    )
    for name in ("ResponseStreamingError",):
        t = getattr(bce, name, None)
        if t is not None:
            transient_types += (t,)
    try:
        import urllib3.exceptions as ue

        transient_types += (ue.ProtocolError, ue.ReadTimeoutError, ue.IncompleteRead, ue.SSLError)
    except Exception:  # pragma: no cover
        pass
    import http.client

    transient_types += (http.client.IncompleteRead, http.client.RemoteDisconnected)
    if isinstance(exc, transient_types):
        return "transient", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return "credentials", f"no usable AWS credentials ({type(exc).__name__})"
    if isinstance(exc, bce.BotoCoreError):
        return "permanent", f"{type(exc).__name__}: {exc}"
    return "permanent", f"{type(exc).__name__}: {exc}"


class _IncompleteBody(Exception):
    """A ranged GET returned fewer bytes than asked for (connection cut mid-body)."""


_PERMANENT: dict[str, type[StorageError]] = {"denied": AccessDenied, "credentials": NoCredentials,
                                              "permanent": StorageError}


def _backoff(attempt: int, o: S3Options) -> float:
    d = min(o.max_delay, o.base_delay * (2 ** (attempt - 1)))
    return d / 2 + random.uniform(0, d / 2)


def _retry(uri: str, op: str, fn: Callable[[], T], attempts: int | None = None) -> T:
    """Run fn, retrying transient errors with exponential backoff + jitter; map failures to StorageError."""
    o = _OPTIONS
    n = attempts or o.max_attempts
    for attempt in range(1, n + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            kind, reason = _classify(exc)
            if kind == "no_bucket":
                raise NoSuchBucket(uri, f"{op}: no such bucket: {reason}") from None
            if kind == "not_found":
                raise ObjectNotFound(uri, f"{op}: not found: {reason}") from None
            if kind in _PERMANENT:
                raise _PERMANENT[kind](uri, f"{op} failed: {reason}") from None
            if attempt >= n:
                raise StorageError(uri, f"{op} failed after {n} attempts: {reason}", transient=True) from None
            time.sleep(_backoff(attempt, o))
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------------------


def _head(uri: str) -> dict:
    bucket, key = _split(uri)
    if not key:
        raise StorageError(uri, "S3 URI names a bucket, not an object")

    def head() -> dict:
        resp = _client().head_object(Bucket=bucket, Key=key)
        if "ContentLength" not in resp:  # headers cut off by a closed connection: retry, never KeyError
            raise _IncompleteBody("HEAD answer without Content-Length")
        return resp

    return _retry(uri, "head", head)


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


class S3RangeReader(io.RawIOBase):
    """A seekable raw reader over one S3 object, by ranged GETs, with a readahead buffer of `block_size` bytes.

    Never holds more than max(block_size, 0) bytes of its own (reads at least block_size long go straight into
    the caller's buffer). The object's ETag is pinned at open: if the object is replaced while being read, the
    next range fails with a StorageError instead of mixing two versions. Stats: `requests`, `bytes_fetched`,
    `peak_buffered`.
    """

    def __init__(self, uri: str, block_size: int = 4 * MiB):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"open_read: block_size must be >= 1, got {block_size}")
        self.uri = uri
        self.name = redact(uri)
        self._bucket, self._key = _split(uri)
        head = _head(uri)
        self._size = int(head["ContentLength"])
        self._etag = head.get("ETag")
        self._block = int(block_size)
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self.requests = 0
        self.bytes_fetched = 0
        self.peak_buffered = 0

    # io.RawIOBase protocol
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"{self.name}: negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        self._check_open()
        mv = memoryview(b).cast("B")
        want = len(mv)
        if want == 0 or self._pos >= self._size:
            return 0
        want = min(want, self._size - self._pos)
        off = self._pos - self._buf_start
        if not (0 <= off < len(self._buf)):
            if want >= self._block:  # big read: straight into the caller's buffer, no copy kept
                self._fetch_into(self._pos, mv[:want])
                self._pos += want
                return want
            end = min(self._size, self._pos + self._block)
            self._buf = b""  # drop the old block before fetching the next one (bounded memory)
            buf = bytearray(end - self._pos)
            self._fetch_into(self._pos, memoryview(buf))
            self._buf, self._buf_start = bytes(buf), self._pos
            self.peak_buffered = max(self.peak_buffered, len(self._buf))
            off = 0
        n = min(want, len(self._buf) - off)
        mv[:n] = self._buf[off : off + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._check_open()
        n = max(0, self._size - self._pos)
        out = bytearray(n)
        got = 0
        mv = memoryview(out)
        while got < n:
            k = self.readinto(mv[got:])
            if not k:
                break
            got += k
        return bytes(out[:got])

    def close(self) -> None:
        self._buf = b""
        super().close()

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed reader {self.name}")

    def _fetch_into(self, start: int, dst: memoryview) -> None:
        """Fill dst with object bytes [start, start+len(dst)); resume after a cut from the last byte received."""
        got = 0
        total = len(dst)

        def attempt() -> None:
            nonlocal got
            lo, hi = start + got, start + total - 1
            kw: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={lo}-{hi}"}
            if self._etag:
                kw["IfMatch"] = self._etag
            self.requests += 1
            try:
                resp = _client().get_object(**kw)
            except Exception as exc:  # an object replaced under us is not a transient error
                import botocore.exceptions as bce

                if isinstance(exc, bce.ClientError) and exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "412"):
                    raise StorageError(self.uri, "object changed while being read (ETag mismatch)") from None
                raise
            body = resp["Body"]
            try:
                while got < total:
                    chunk = body.read(min(total - got, 256 * 1024))
                    if not chunk:
                        raise _IncompleteBody(f"ranged GET ended after {got} of {total} bytes")
                    dst[got : got + len(chunk)] = chunk
                    got += len(chunk)
                    self.bytes_fetched += len(chunk)
            finally:
                body.close()

        _retry(self.uri, f"read bytes {start}-{start + total - 1}", attempt)


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


def _read_exact(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _put_s3(uri: str, f, n: int | None) -> None:
    o = _OPTIONS
    bucket, key = _split(uri)
    if not key or key.endswith("/"):
        raise StorageError(uri, "write: S3 URI must name an object key")
    first = _read_exact(f, o.multipart_threshold)
    if len(first) < o.multipart_threshold:  # small: a single PUT is atomic by itself
        _retry(uri, "put", lambda: _client().put_object(Bucket=bucket, Key=key, Body=first))
        return
    _multipart(uri, bucket, key, first, f)


def _multipart(uri: str, bucket: str, key: str, first: bytes, f) -> None:
    o = _OPTIONS
    upload_id = _retry(uri, "create multipart upload",
                       lambda: _client().create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts: list[dict] = []
    try:
        pending, number, eof = first, 1, False
        while True:
            while len(pending) < o.part_size and not eof:
                more = _read_exact(f, o.part_size - len(pending))
                if more:
                    pending += more
                else:
                    eof = True
            if not pending:
                break
            body, pending = pending[: o.part_size], pending[o.part_size :]
            resp = _retry(uri, f"upload part {number}", lambda b=body, k=number: _client().upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=k, Body=b))
            parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            number += 1
            if eof and not pending:
                break
        try:
            _retry(uri, "complete multipart upload", lambda: _client().complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except ObjectNotFound:
            # NoSuchUpload on a retried complete: the first attempt succeeded but its answer was lost. Accept it
            # when the object now under the key is exactly this upload (the ETag of the parts' MD5s).
            if not _is_our_multipart(uri, bucket, key, parts):
                raise
    except BaseException:
        try:
            _retry(uri, "abort multipart upload", lambda: _client().abort_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id))
        except Exception:  # the original error matters more; a leftover upload is reclaimed by lifecycle rules
            pass
        raise


def _is_our_multipart(uri: str, bucket: str, key: str, parts: list[dict]) -> bool:
    import hashlib

    try:
        digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
    except ValueError:  # part ETags that are not MD5s (e.g. SSE-KMS): cannot tell
        return False
    expected = f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"
    try:
        head = _retry(uri, "head", lambda: _client().head_object(Bucket=bucket, Key=key))
    except ObjectNotFound:
        return False
    return str(head.get("ETag", "")).strip('"') == expected


def abort_multipart_uploads(prefix: str) -> int:
    """Abort the incomplete multipart uploads of the keys starting with `prefix` (s3://bucket/key-prefix; a no-op
    for local paths). A writer killed mid-upload leaves one behind: invisible to listings, billed until aborted.
    A live writer's upload under `prefix` is aborted too (its completion then fails), so call it only where that
    is harmless, e.g. the retry of a unit whose other attempts are dead or write the same bytes. Returns the count."""
    if not is_s3(prefix):
        return 0
    bucket, key = _split(prefix)
    found: list[tuple[str, str]] = []
    marker: dict[str, str] = {}
    while True:
        page = _retry(prefix, "list multipart uploads", lambda m=dict(marker): _client().list_multipart_uploads(
            Bucket=bucket, Prefix=key, **m))
        found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", []) or [] if u["Key"].startswith(key)]
        if page.get("IsTruncated") and page.get("NextKeyMarker"):
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page.get("NextUploadIdMarker") or ""}
        else:
            break
    for k, upload_id in found:
        try:
            _retry(f"s3://{bucket}/{k}", "abort multipart upload", lambda k=k, u=upload_id: _client()
                   .abort_multipart_upload(Bucket=bucket, Key=k, UploadId=u))
        except ObjectNotFound:  # NoSuchUpload: already completed or aborted
            pass
    return len(found)


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
