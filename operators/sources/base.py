"""What every source adapter shares: opening metadata, parsing times, building records and failures.

An adapter turns metadata files into a deterministic stream of `SourceRecord | Failure`:
every input row/item becomes exactly one of them. A metadata *file* that cannot be read at all
(missing, not JSON, a CSV without its required header columns) raises `MetadataError` naming the file.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from longvid.operators.errors import MetadataError
from longvid.operators.records import Failure, SourceRecord, TextSpan, sample_key

Item = SourceRecord | Failure

# captions in MiraData / HowTo100M files can be long
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# ---------------------------------------------------------------------------------------------------- files


def is_remote(path: str) -> bool:
    return str(path).startswith("s3://")


def open_metadata(path: str | os.PathLike) -> TextIO:
    """Open a metadata file (local path or s3://) as a UTF-8 text stream (BOM stripped, newline='' for csv)."""
    p = str(path)
    if p.startswith("file://"):
        p = p[len("file://") :]
    if is_remote(p):
        try:
            stream = _storage().open_read(p)
        except Exception as e:  # noqa: BLE001 - any storage error is "cannot read this file"
            raise MetadataError(f"{p}: cannot open metadata file: {e}") from e
        if isinstance(stream, io.TextIOBase):
            return stream
        return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    try:
        return open(p, encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError as e:
        raise MetadataError(f"{p}: metadata file not found") from e
    except IsADirectoryError as e:
        raise MetadataError(f"{p}: is a directory, expected a metadata file") from e
    except OSError as e:
        raise MetadataError(f"{p}: cannot open metadata file: {e}") from e


def load_json(path: str) -> Any:
    """Parse a whole JSON file; MetadataError naming the file (and position) when it is not JSON."""
    with open_metadata(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
        except OSError as e:
            raise MetadataError(f"{path}: cannot read metadata file: {e}") from e


def _storage():
    try:
        from longvid.operators import storage  # written by another engineer; imported only when needed
    except ImportError as e:
        raise MetadataError(f"s3:// metadata needs operators.storage, which is not available ({e})") from e
    return storage


def _expand_s3(prefix: str, patterns: tuple[str, ...]) -> list[str]:
    try:
        keys = _storage().list_files(prefix)
    except Exception as e:  # noqa: BLE001
        raise MetadataError(f"{prefix}: cannot list metadata prefix: {e}") from e
    found: list[str] = []
    for pat in patterns:
        hits = [k for k in keys if fnmatch.fnmatchcase(k[len(prefix) :], pat) and k not in found]
        found.extend(sorted(hits, key=_natural))
    if not found:
        raise MetadataError(f"{prefix}: prefix holds no metadata file matching {', '.join(patterns)}")
    return found


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def expand_paths(paths: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    """Keep files as given (in the given order); a local directory becomes its files matching `patterns`
    (glob patterns relative to the directory, tried in order), each pattern's matches in natural order."""
    out: list[str] = []
    for p in paths:
        p = str(p)
        if p.startswith("file://"):
            p = p[len("file://") :]
        if is_remote(p) and p.endswith("/"):  # an S3 prefix: its objects matching the patterns
            out.extend(_expand_s3(p, patterns))
            continue
        if not is_remote(p) and os.path.isdir(p):
            found: list[str] = []
            for pat in patterns:
                for m in sorted(Path(p).glob(pat), key=lambda x: _natural(str(x))):
                    if m.is_file() and str(m) not in found:
                        found.append(str(m))
            if not found:
                raise MetadataError(f"{p}: directory holds no metadata file matching {', '.join(patterns)}")
            out.extend(found)
        else:
            if not is_remote(p) and not os.path.exists(p):
                raise MetadataError(f"{p}: metadata file not found")
            out.append(p)
    if not out:
        raise MetadataError("no metadata files given")
    return out


# ---------------------------------------------------------------------------------------------------- csv


@dataclass
class CsvTable:
    """A CSV file read by header name. Rows are dicts keyed by column name (first occurrence wins;
    unnamed columns such as MiraData's two empty trailing ones are ignored)."""

    path: str
    columns: list[str]

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(line number where the row starts, row) for every non-blank row, streaming."""
        with open_metadata(self.path) as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                return
            index = _header_index(header)
            line = reader.line_num + 1
            try:
                for raw in reader:
                    start_line = line
                    line = reader.line_num + 1
                    if not any(c.strip() for c in raw):
                        continue  # blank line or a row of empty cells (",,,,,")
                    row = {name: (raw[i] if i < len(raw) else None) for name, i in index.items()}
                    yield start_line, row
            except csv.Error as e:
                raise MetadataError(f"{self.path}:{reader.line_num}: malformed CSV ({e})") from e


def _header_index(header: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        name = name.strip()
        if name and name not in index:
            index[name] = i
    return index


def read_csv_header(path: str) -> list[str]:
    with open_metadata(path) as f:
        try:
            header = next(csv.reader(f))
        except StopIteration:
            raise MetadataError(f"{path}: empty CSV file, expected a header row") from None
        except csv.Error as e:
            raise MetadataError(f"{path}: malformed CSV header ({e})") from e
    return [h.strip() for h in header]


def open_csv(path: str, required: Iterable[str], what: str = "CSV") -> CsvTable:
    """Check the header now (MetadataError naming the file and the missing columns), stream rows later."""
    header = read_csv_header(path)
    missing = [c for c in required if c not in header]
    if missing:
        shown = ",".join(h for h in header if h)[:200]
        raise MetadataError(f"{path}: {what} header lacks column(s) {', '.join(missing)} (header: {shown})")
    return CsvTable(path, [h for h in header if h])


def jsonl_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every non-blank line, streaming."""
    with open_metadata(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield n, line


# ---------------------------------------------------------------------------------------------------- values


class BadValue(ValueError):
    """A field value that cannot be used; `field` names it. Adapters turn it into a metadata Failure."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


_HMS = re.compile(r"^(?:(\d+):)?(?:(\d+):)?(\d+(?:[.,]\d*)?)$")


def parse_hms(value: Any, field: str) -> float:
    """'HH:MM:SS.mmm', 'H:MM:SS', 'MM:SS.f' or plain seconds -> seconds (a comma decimal is accepted)."""
    if isinstance(value, bool) or value is None:
        raise BadValue(field, f"expected a time string, got {value!r}")
    if isinstance(value, (int, float)):
        sec = float(value)
    else:
        s = str(value).strip()
        m = _HMS.match(s)
        if not m:
            raise BadValue(field, f"bad time string {value!r} (expected HH:MM:SS.mmm)")
        a, b, c = m.groups()
        if a is not None and b is None:  # "MM:SS"
            h, mi = 0, int(a)
        else:
            h, mi = int(a or 0), int(b or 0)
        sec_part = float(c.replace(",", "."))
        if (a is not None and sec_part >= 60) or (b is not None and mi >= 60):
            raise BadValue(field, f"bad time string {value!r} (minutes/seconds must be < 60)")
        sec = h * 3600 + mi * 60 + sec_part
    if not math.isfinite(sec) or sec < 0:
        raise BadValue(field, f"bad time {value!r}")
    return sec


_ISO_DUR = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(value: Any, field: str = "duration") -> float:
    """ISO-8601 duration ('PT00H00M17S', 'PT17S', 'PT1M2.5S', 'P1DT2H') -> seconds."""
    s = str(value).strip() if value is not None else ""
    m = _ISO_DUR.match(s)
    if not m or s in ("P", "PT") or s.endswith("T") or not any(m.groupdict().values()):
        raise BadValue(field, f"bad ISO-8601 duration {value!r} (expected like PT00H00M17S)")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return g["d"] * 86400 + g["h"] * 3600 + g["m"] * 60 + g["s"]


def parse_number(value: Any, field: str, positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise BadValue(field, f"missing {field}")
    try:
        x = float(value) if not isinstance(value, str) else float(value.strip())
    except (TypeError, ValueError):
        raise BadValue(field, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise BadValue(field, f"not a finite number: {value!r}")
    if integer and x != int(x):
        raise BadValue(field, f"not an integer: {value!r}")
    if positive and x <= 0:
        raise BadValue(field, f"must be positive, got {value!r}")
    if x < 0:
        raise BadValue(field, f"must not be negative, got {value!r}")
    return int(x) if integer else x


def require_str(obj: dict, name: str, field: str | None = None) -> str:
    """A required, non-empty string field."""
    field = field or name
    if name not in obj or obj[name] is None:
        raise BadValue(field, f"missing {field}")
    v = obj[name]
    if not isinstance(v, str):
        raise BadValue(field, f"{field} must be a string, got {type(v).__name__} {v!r}")
    v = v.strip()
    if not v:
        raise BadValue(field, f"empty {field}")
    return v


def check_span(start: float, end: float, field: str = "span") -> None:
    if start < 0 or end < 0:
        raise BadValue(field, f"negative time in span [{start}, {end}]")
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


def clean_text(s: Any) -> str:
    """Collapse whitespace (captions that start with a space, newlines inside ASR lines)."""
    return " ".join(str(s).split()) if s is not None else ""


# ---------------------------------------------------------------------------------------------------- records


def make_failure(
    source: str,
    origin: str,
    field: str,
    reason: str,
    video_id: str = "",
    uri: str = "",
    start: float | None = None,
    end: float | None = None,
) -> Failure:
    """A metadata-stage Failure. Its key is unique per input item and independent of where the metadata
    directory lives (file name, line and field are hashed into it)."""
    where = origin.rsplit("/", 1)[-1]
    key = sample_key(source, f"{video_id or 'unknown'}@{where}#{field}", None, None)
    return Failure(
        source=source,
        video_id=video_id or "",
        uri=uri,
        stage="metadata",
        reason=reason,
        file=origin,
        field=field,
        key=key,
        start=start,
        end=end,
    )


def make_record(
    source: str,
    video_id: str,
    video_paths: Iterable[str],
    origin: str,
    start: float | None = None,
    end: float | None = None,
    texts: Iterable[TextSpan] = (),
    meta: dict[str, Any] | None = None,
) -> SourceRecord:
    meta = {k: v for k, v in (meta or {}).items() if v is not None}
    return SourceRecord(
        source=source,
        video_id=video_id,
        video_paths=tuple(video_paths),
        start=start,
        end=end,
        texts=tuple(texts),
        origin=origin,
        meta=tuple(sorted((k, _freeze(v)) for k, v in meta.items())),
    )


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def dedupe(items: Iterator[Item], source: str) -> Iterator[Item]:
    """Turn a second record with an already-seen key into a Failure (two samples may never share a key)."""
    seen: dict[str, str] = {}
    for it in items:
        if isinstance(it, SourceRecord):
            k = it.key
            if k in seen:
                yield make_failure(
                    source, it.origin, "video_id", f"duplicate of the record at {seen[k]} (key {k})",
                    video_id=it.video_id, uri=it.video_paths[0] if it.video_paths else "", start=it.start, end=it.end,
                )
                continue
            seen[k] = it.origin
        yield it


# ---------------------------------------------------------------------------------------------------- text


def texts_in_span(texts: Iterable[TextSpan], start: float | None, end: float | None) -> list[TextSpan]:
    """Untimed texts, plus timed texts overlapping [start, end] clipped to it (a point must lie inside)."""
    lo = 0.0 if start is None else start
    hi = math.inf if end is None else end
    out = []
    for t in texts:
        if t.start is None:
            out.append(t)
            continue
        s, e = t.start, t.end if t.end is not None else t.start
        if e == s:
            if lo <= s <= hi:
                out.append(t)
        elif s < hi and e > lo:
            if s >= lo and e <= hi:
                out.append(t)
            else:
                out.append(TextSpan(t.text, max(s, lo), min(e, hi), t.kind))
    return out


def _norm_word(w: str) -> str:
    return re.sub(r"[^\w']", "", w.lower())


def merge_rolling(
    segments: Iterable[tuple[float, float, str]],
    kind: str = "asr",
    max_span: float = 10.0,
    seam_gap: float = 1.0,
    max_overlap_words: int = 40,
) -> list[TextSpan]:
    """Rolling captions (YouTube ASR, auto-subtitles) -> non-overlapping spans without repeated words.

    Segments sorted by start. When a segment starts before the previous span ends (or within `seam_gap`
    after it), the longest run of words ending the previous span and starting this segment is dropped
    from this segment. What remains is appended to the previous span if the two overlap in time and the
    result stays within `max_span` seconds; otherwise it becomes a new span starting no earlier than the
    previous one ends. A segment that was nothing but repeated words only extends the previous span.
    """
    segs = sorted(
        ((float(s), float(e), clean_text(t)) for s, e, t in segments),
        key=lambda x: (x[0], x[1]),
    )
    out: list[list] = []  # [start, end, words]
    for s, e, text in segs:
        words = text.split()
        if not words:
            continue
        e = max(e, s)
        if out:
            prev = out[-1]
            if s <= prev[1] + seam_gap:
                pw = [_norm_word(w) for w in prev[2][-max_overlap_words:]]
                cw = [_norm_word(w) for w in words[:max_overlap_words]]
                k = 0
                for n in range(min(len(pw), len(cw)), 0, -1):
                    if pw[-n:] == cw[:n]:
                        k = n
                        break
                words = words[k:]
                if not words:
                    prev[1] = max(prev[1], e)
                    continue
                if s < prev[1] and max(prev[1], e) - prev[0] <= max_span:
                    prev[2].extend(words)
                    prev[1] = max(prev[1], e)
                    continue
                s = max(s, prev[1])
                e = max(e, s)
        out.append([s, e, list(words)])
    return [TextSpan(" ".join(w), round(s, 3), round(e, 3), kind) for s, e, w in out]


# ---------------------------------------------------------------------------------------------------- adapter


class Adapter:
    """Base class: subclasses set `name`, `patterns` (file globs for a metadata directory) and `_read`."""

    name: str = ""
    patterns: tuple[str, ...] = ("*",)
    options_spec: dict[str, tuple[type, Any]] = {}

    def read(self, metadata_paths: list[str] | str, options: dict | None = None) -> Iterator[Item]:
        """Deterministic stream of SourceRecord | Failure. Files are checked now (MetadataError); rows later."""
        if isinstance(metadata_paths, (str, os.PathLike)):
            metadata_paths = [str(metadata_paths)]
        paths = expand_paths(metadata_paths, self.patterns)
        opts = self.check_options(options or {})
        items = self._read(paths, opts)  # may validate headers eagerly
        return dedupe(items, self.name) if opts.get("dedupe", True) else items

    def check_options(self, options: dict) -> dict:
        out = {"dedupe": bool(options.get("dedupe", True))}
        for name, (typ, default) in self.options_spec.items():
            v = options.get(name, default)
            if v is not None and typ is float:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"{self.name} option {name!r} must be a non-negative number, got {v!r}")
                v = float(v)
            out[name] = v
        return out

    def _read(self, paths: list[str], options: dict) -> Iterator[Item]:  # pragma: no cover - abstract
        raise NotImplementedError
