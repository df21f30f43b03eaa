"""The record types that cross operator boundaries.

metadata row --adapter--> SourceRecord --ingest operators--> Sample (written) or Failure (recorded)

Every input row ends as exactly one Sample or one Failure: that is what makes
"written + failed = inputs" hold by construction.

Text safety: every string a TextSpan, SourceRecord or Failure holds is valid Unicode text, so that it encodes as
UTF-8 in every writer downstream (parquet, json, tar member names). JSON metadata can hold lone surrogates
("\\ud800" escapes); these classes replace each one with U+FFFD when they are built (`safe_text`). An *id* that is
not valid text is refused earlier, by the adapter (sources.values.check_id), because a changed id names another file.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("ego4d", "howto100m", "hdvila", "miradata", "webvid")


_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(s: str) -> str:
    """`s` with every lone surrogate replaced by U+FFFD (the replacement character): always UTF-8 encodable."""
    return _SURROGATE.sub("\ufffd", s) if _has_surrogate(s) else s


def _has_surrogate(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unsafe(v: Any) -> bool:
    """True when v, or a string inside its tuples, holds a lone surrogate (cheap: called for every record)."""
    if isinstance(v, str):
        return _has_surrogate(v)
    if isinstance(v, tuple):
        for x in v:
            if isinstance(x, str):
                if _has_surrogate(x):
                    return True
            elif isinstance(x, tuple) and _unsafe(x):
                return True
    return False


def _safe(v: Any) -> Any:
    """safe_text over a value and, recursively, the items of its tuples (meta values are frozen to tuples)."""
    if isinstance(v, str):
        return safe_text(v)
    if isinstance(v, tuple):
        return tuple(_safe(x) for x in v)
    return v


def _make_safe(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        if _unsafe(v):
            object.__setattr__(obj, name, _safe(v))  # frozen dataclass: set once, while it is being built


@dataclass(frozen=True)
class TextSpan:
    """One piece of source text. Times are seconds, absolute in the source video (None: untimed)."""

    text: str
    start: float | None = None
    end: float | None = None
    kind: str = "caption"  # caption | dense_caption | narration | summary | asr | subtitle | task | ...

    def __post_init__(self) -> None:
        _make_safe(self, ("text", "kind"))


@dataclass(frozen=True)
class SourceRecord:
    """One unit of input: a whole video or a span of it, with the source's own text.

    video_paths are candidate locations *relative to the video root*, in the source's own layout
    (the locate operator joins them with --videos and refuses any that escape the root).
    start/end are seconds in the source video; None means the whole video.
    """

    source: str
    video_id: str
    video_paths: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    texts: tuple[TextSpan, ...] = ()
    origin: str = ""  # "file:line" of the metadata row, for error messages
    meta: tuple[tuple[str, Any], ...] = ()  # small extra facts (fps, duration_sec, category, clip_id, ...)

    def __post_init__(self) -> None:
        _make_safe(self, ("source", "video_id", "video_paths", "origin", "meta"))

    @property
    def key(self) -> str:
        return sample_key(self.source, self.video_id, self.start, self.end)

    def meta_dict(self) -> dict[str, Any]:
        return dict(self.meta)


@dataclass(frozen=True)
class Failure:
    """An input that produced no sample, and why. `file` and `field` point at the culprit."""

    source: str
    video_id: str
    uri: str
    stage: str  # metadata | locate | probe | sample | decode | encode | write | timeout | crash
    reason: str
    file: str = ""
    field: str = ""
    key: str = ""
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        _make_safe(self, ("source", "video_id", "uri", "stage", "reason", "file", "field", "key"))

    def as_row(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source": self.source,
            "video_id": self.video_id,
            "uri": self.uri,
            "start": self.start,
            "end": self.end,
            "stage": self.stage,
            "reason": self.reason,
            "file": self.file,
            "field": self.field,
        }


@dataclass
class Sample:
    """A processed sample: what `<key>.json` holds (`info`) and the `<key>.mp4` bytes."""

    info: dict[str, Any]
    mp4: bytes
    text: str = ""
    frame_hashes: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.info["key"]


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(source: str, video_id: str, start: float | None, end: float | None) -> str:
    """Deterministic WebDataset key from (source, video id, span): no dots, no slashes.

    Characters outside [A-Za-z0-9_-] are replaced; when that changes the id, a short hash of the
    original id is appended so that two ids never collapse into one key.
    """
    safe = _SAFE.sub("-", video_id)
    if safe != video_id or not safe:
        safe = f"{safe}-{hashlib.sha1(video_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    if start is None and end is None:
        span = "full"
    else:
        s = 0 if start is None else int(round(start * 1000))
        e = "end" if end is None else f"{int(round(end * 1000)):09d}"
        span = f"{s:09d}-{e}"
    return f"{source}_{safe}_{span}"
