"""Secret redaction of the storage stack: `redact` (text), `redact_json` (records), `RedactFilter` and
`get_logger` (log records). Every StorageError message and every record `write_json` stores goes through it."""
from __future__ import annotations

import logging
import re
from typing import Any

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
