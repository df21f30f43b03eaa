"""The value helpers of the source adapters: one field of a metadata row -> a number, a time, an id, a span or
clean text, or a `BadValue` naming the field (non-finite, overflowing, absurdly large, non-ASCII digits refused)."""
from __future__ import annotations

import math
import re
from typing import Any

from longvid.operators.errors import show
from longvid.operators.sources.metadata_files import Unreadable

MAX_SECONDS = 1e7  # a time or duration beyond this (about 115 days) is a bad value, not a video
MAX_ID_CHARS = 200  # ids name files: longer ones are refused
MAX_DIGITS = 18  # numeric ids (WebVid videoid, MiraData download_id)


class BadValue(ValueError):
    """A field value that cannot be used; `field` names it. Adapters turn it into a metadata Failure."""

    def __init__(self, field: str, reason: str, video_id: str = ""):
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.video_id = video_id


def _bad(field: str, reason: str) -> Any:
    raise BadValue(field, reason)


def _cut(message: str, n: int = 300) -> str:
    return message if len(message) <= n else message[:n] + "..."


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for "expected a list, got <json_type>" messages."""
    if isinstance(value, Unreadable):
        return f"a value Python cannot read ({value.reason})"
    for t, name in ((bool, "boolean"), (str, "string"), (int, "number"), (float, "number"), (list, "array"),
                    (tuple, "array"), (dict, "object")):
        if isinstance(value, t):
            return f"{name} {show(value)}"
    return "null" if value is None else type(value).__name__


_HMS = re.compile(r"^(?:(\d{1,9}):)?(?:(\d{1,9}):)?(\d{1,12}(?:[.,]\d{0,12})?)$", re.ASCII)


def parse_hms(value: Any, field: str) -> float:
    """'HH:MM:SS.mmm', 'H:MM:SS', 'MM:SS.f' or plain seconds -> seconds (a comma decimal is accepted)."""
    if isinstance(value, bool) or value is None:
        raise BadValue(field, f"expected a time string, got {show(value)}")
    if isinstance(value, (int, float)):
        sec = parse_number(value, field)
    elif isinstance(value, str):
        s = value.strip()
        m = _HMS.match(s)
        if not m:
            raise BadValue(field, f"bad time string {show(value)} (expected HH:MM:SS.mmm)")
        a, b, c = m.groups()
        if a is not None and b is None:  # "MM:SS"
            h, mi = 0, int(a)
        else:
            h, mi = int(a or 0), int(b or 0)
        sec_part = float(c.replace(",", "."))
        if (a is not None and sec_part >= 60) or (b is not None and mi >= 60):
            raise BadValue(field, f"bad time string {show(value)} (minutes/seconds must be < 60)")
        sec = h * 3600 + mi * 60 + sec_part
    else:
        raise BadValue(field, f"expected a time string, got {json_type(value)}")
    if not math.isfinite(sec) or sec < 0:
        raise BadValue(field, f"bad time {show(value)}")
    if sec > MAX_SECONDS:
        raise BadValue(field, f"time {show(value)} is beyond {MAX_SECONDS:.0e} s")
    return sec


_ISO_DUR = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.ASCII,
)


def parse_iso_duration(value: Any, field: str = "duration") -> float:
    """ISO-8601 duration ('PT00H00M17S', 'PT17S', 'PT1M2.5S', 'P1DT2H') -> seconds."""
    s = value.strip() if isinstance(value, str) else ""
    m = _ISO_DUR.match(s) if len(s) <= 64 else None
    if not m or s in ("P", "PT") or s.endswith("T") or not any(m.groupdict().values()):
        raise BadValue(field, f"bad ISO-8601 duration {show(value)} (expected like PT00H00M17S)")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    sec = g["d"] * 86400 + g["h"] * 3600 + g["m"] * 60 + g["s"]
    if not math.isfinite(sec) or sec > MAX_SECONDS:
        raise BadValue(field, f"duration {show(value)} is beyond {MAX_SECONDS:.0e} s")
    return sec


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def parse_number(
    value: Any, field: str, positive: bool = False, integer: bool = False, limit: float | None = None
) -> float:
    """A finite, non-negative number (a JSON number or a plain ASCII decimal string: no 'nan', 'inf', '1_000',
    '²' or '٣'); `positive` refuses 0, `integer` a fraction, `limit` anything larger."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise BadValue(field, f"missing {field}")
    if isinstance(value, str):
        s = value.strip()
        if len(s) > 400 or not _NUMBER.fullmatch(s):
            raise BadValue(field, f"not a number: {show(value)}")
        x = float(s)  # an overlong mantissa or exponent gives inf, refused below
    elif isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:
            raise BadValue(field, f"number too large: {show(value)}") from None
    else:
        raise BadValue(field, f"{field} must be a number, got {json_type(value)}")
    if not math.isfinite(x):
        raise BadValue(field, f"not a finite number: {show(value)}")
    if integer and x != int(x):
        raise BadValue(field, f"not an integer: {show(value)}")
    if positive and x <= 0:
        raise BadValue(field, f"must be positive, got {show(value)}")
    if x < 0:
        raise BadValue(field, f"must not be negative, got {show(value)}")
    if limit is not None and x > limit:
        raise BadValue(field, f"{field} {show(value)} is larger than {limit:g}")
    return int(x) if integer else x


_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def parse_digits(value: str, field: str) -> int:
    """A numeric id of ASCII digits ('²' is a digit to str.isdigit, not to int()), at most MAX_DIGITS long."""
    if not _DIGITS.fullmatch(value):
        raise BadValue(field, f"{field} must be an integer, got {show(value)}")
    if len(value) > MAX_DIGITS:
        raise BadValue(field, f"{field} has more than {MAX_DIGITS} digits: {show(value)}")
    return int(value)


_NOT_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_id(value: Any, field: str) -> str:
    """A required id (it names files): a non-empty string of at most MAX_ID_CHARS characters, without control
    characters or lone surrogates (an id that is not valid text is refused, not repaired: it would name another
    file). Surrounding blanks are removed."""
    if value is None:
        raise BadValue(field, f"missing {field}")
    if not isinstance(value, str):
        raise BadValue(field, f"{field} must be a non-empty string, got {json_type(value)}")
    v = value.strip()
    if not v:
        raise BadValue(field, f"empty {field}")
    if len(v) > MAX_ID_CHARS:
        raise BadValue(field, f"{field} is {len(v)} characters long (at most {MAX_ID_CHARS}): {show(v)}")
    bad = _NOT_ID.search(v)
    if bad:
        what = "a lone surrogate (not valid Unicode)" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
        raise BadValue(field, f"{field} holds {what} {bad.group()!r}: {show(v)}")
    return v


def check_span(start: float, end: float, field: str = "span") -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise BadValue(field, f"non-finite time in span [{start}, {end}]")
    if start < 0 or end < 0:
        raise BadValue(field, f"negative time in span [{start}, {end}]")
    if end > MAX_SECONDS:
        raise BadValue(field, f"span [{start:g}, {end:g}] ends beyond {MAX_SECONDS:.0e} s")
    if end <= start:
        raise BadValue(field, f"empty or negative span [{start}, {end}]")


_YT = re.compile(r"(?:youtu\.be/|[?&]v=|/shorts/|/embed/)([A-Za-z0-9_-]{11})")
_YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


def youtube_id(value: str | None) -> str | None:
    """The 11-character YouTube id in 'v_<id>', a watch?v= / youtu.be URL or a bare id; None if none."""
    if not value:
        return None
    s = value.strip()
    m = _YT.search(s)
    if m:
        return m.group(1)
    if s.startswith("v_") and _YT_ID.match(s[2:]):
        return s[2:]
    if _YT_ID.match(s):
        return s
    return None


_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


def clean_text(s: Any) -> str:
    """Collapse whitespace (captions that start with a space, newlines inside ASR lines); control characters
    (NUL, escapes) become blanks. None is ""; a number is its decimal form; any other non-string is refused."""
    if s is None:
        return ""
    if not isinstance(s, str):
        if isinstance(s, (int, float)) and not isinstance(s, bool):
            s = show(s)
        else:
            raise BadValue("text", f"text must be a string, got {json_type(s)}")
    return " ".join(_CONTROL.sub(" ", s).split())

