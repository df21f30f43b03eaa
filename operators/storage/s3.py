"""The S3 side of the storage stack (the one module that talks to boto3/botocore): options and the per-process
client cache, error classification and retries with backoff, HEAD. Transfers (ranged reads, uploads) are in
s3_transfer."""
from __future__ import annotations

import dataclasses
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .failures import AccessDenied, NoCredentials, NoSuchBucket, ObjectNotFound, StorageError
from .redaction import redact
from .uris import _split

T = TypeVar("T")

MiB = 1024 * 1024

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


def _options() -> S3Options:
    """The configured options of this process (as `configure_s3` set them; environment fallbacks not filled)."""
    return _OPTIONS
