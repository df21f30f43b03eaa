"""What every source adapter shares: opening metadata, parsing times, building records and failures.

An adapter turns metadata files into a deterministic stream of `SourceRecord | Failure`:
every input row/item becomes exactly one of them (a row that holds several clips or windows: one each).
A metadata *file* that cannot be read at all (missing, not JSON, a CSV without its required header columns)
raises `MetadataError` naming the file.

How one bad row never ends the stream: an adapter yields one `Row` per input row (its origin "file:line" and a
function that parses it); `Adapter.read` runs each in `run_row`, which turns a `BadValue` into a Failure naming
the field and *any other* exception into a Failure naming the row, and checks what the row gave. The value
helpers here (parse_number, parse_hms, parse_digits, check_id, ...) refuse non-finite, overflowing, absurdly
large and non-ASCII-digit values with BadValue. JSON that Python cannot hold in one piece (nested deeper than
its recursion limit, integers of thousands of digits) is read per item: the item becomes an `Unreadable`.
"""
from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from longvid.operators.errors import ConfigError, MetadataError, show
from longvid.operators.records import Failure, SourceRecord, TextSpan, sample_key

Item = SourceRecord | Failure

MAX_SECONDS = 1e7  # a time or duration beyond this (about 115 days) is a bad value, not a video
MAX_ID_CHARS = 200  # ids name files: longer ones are refused
MAX_DIGITS = 18  # numeric ids (WebVid videoid, MiraData download_id)

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


class Unreadable:
    """Stands for a JSON value that is valid JSON but that Python cannot hold: nested deeper than its recursion
    limit, or an integer of more digits than int() converts. Adapters report it like a value of the wrong type."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable: {self.reason}>"


_INT_DIGITS = 4000  # below Python's int/str conversion limit (4300 digits)


def _json_int(s: str) -> int | Unreadable:
    return int(s) if len(s) <= _INT_DIGITS else Unreadable(f"an integer of {len(s.lstrip('-'))} digits")


JSON = json.JSONDecoder(parse_int=_json_int)  # the decoder for every metadata JSON (files and JSON lines)
_WS = re.compile(r"[ \t\n\r]*")
_DESCEND = 2  # a too-deep whole file is split this many levels down: ego4d.json {"videos": [<item>, ...]}


def loads(text: str) -> Any:
    """One JSON document; a too-deep one raises RecursionError (callers with items use load_json)."""
    return JSON.decode(text)


def load_json(path: str) -> Any:
    """Parse a whole JSON file; MetadataError naming the file (and position) when it is not JSON.

    A valid file that Python's parser cannot take in one piece (one item nested thousands of levels deep) is
    parsed level by level: the top container and the containers in it are read here, deeper values each in one
    piece, and a value that still cannot be read becomes an `Unreadable` (the adapter makes its item a Failure).
    """
    with open_metadata(path) as f:
        try:
            text = f.read()
        except OSError as e:
            raise MetadataError(f"{path}: cannot read metadata file: {e}") from e
    try:
        try:
            return JSON.decode(text)
        except RecursionError:
            pass
        i = _WS.match(text, 0).end()
        value, i = _decode(text, i, 0)
        if _WS.match(text, i).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return value
    except json.JSONDecodeError as e:
        raise MetadataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _decode(text: str, i: int, depth: int) -> tuple[Any, int]:
    try:
        return JSON.raw_decode(text, i)
    except RecursionError:
        pass
    if depth < _DESCEND:
        return _container(text, i, depth)
    return Unreadable("nested deeper than Python's JSON parser goes"), _skip(text, i)


def _container(text: str, i: int, depth: int) -> tuple[Any, int]:
    """The object or array at text[i] (only a container can be too deep), its members decoded one by one."""
    is_obj = text.startswith("{", i)
    close = "}" if is_obj else "]"
    out: Any = {} if is_obj else []
    i = _WS.match(text, i + 1).end()
    if text.startswith(close, i):
        return out, i + 1
    while True:
        if is_obj:
            if not text.startswith('"', i):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = JSON.raw_decode(text, i)
            i = _WS.match(text, i).end()
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            value, i = _decode(text, _WS.match(text, i + 1).end(), depth + 1)
            out[key] = value
        else:
            value, i = _decode(text, i, depth + 1)
            out.append(value)
        i = _WS.match(text, i).end()
        if text.startswith(close, i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _WS.match(text, i + 1).end()


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _skip(text: str, i: int) -> int:
    """The end of the (too deep to parse) container at text[i], found without recursion."""
    depth = 0
    for m in _TOKEN.finditer(text, i):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
        elif tok in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    raise json.JSONDecodeError("Unterminated array or object", text, i)


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
        if "\x00" in p:
            raise MetadataError(f"{p!r}: not a valid metadata path (it holds a NUL character)")
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

    def rows(self) -> Iterator[tuple[int, dict[str, str] | csv.Error]]:
        """(line number where the row starts, row) for every non-blank row, streaming; a line the CSV reader
        refuses comes as (line, the csv.Error) and reading goes on with the next line."""
        with open_metadata(self.path) as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise MetadataError(f"{self.path}: malformed CSV header ({e})") from e
            index = _header_index(header)
            line = reader.line_num + 1
            while True:
                start_line = line
                try:
                    raw = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    line = reader.line_num + 1
                    yield start_line, e
                    continue
                line = reader.line_num + 1
                if not any(c.strip() for c in raw):
                    continue  # blank line or a row of empty cells (",,,,,")
                yield start_line, {name: (raw[i] if i < len(raw) else None) for name, i in index.items()}

    def parse_rows(self, fn: Callable[..., Any], *args: Any) -> Iterator["Row"]:
        """One Row per CSV row: `fn(row, origin, *args)` parses it; a malformed line is a Failure of field "line"."""
        for line, row in self.rows():
            origin = f"{self.path}:{line}"
            if isinstance(row, csv.Error):
                yield Row(origin, functools.partial(_bad, "line", f"malformed CSV line ({row})"))
            else:
                yield Row(origin, functools.partial(fn, row, origin, *args))


def _header_index(header: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        name = _column(name)
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
    return [_column(h) for h in header]


def _column(name: str) -> str:
    """A header name without surrounding blanks or byte-order marks (a second BOM from concatenated files)."""
    return name.strip().strip("\ufeff").strip()


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
    directory lives (file name, line and field are hashed into it, and the span when there is one: one row
    gives several clips or windows)."""
    where = origin.rsplit("/", 1)[-1]
    key = sample_key(source, f"{video_id or 'unknown'}@{where}#{field}", start, end)
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
    """A SourceRecord; BadValue("span") when a time is not finite, negative, too large or the span empty.
    Meta values are kept only when they are plain JSON scalars (or lists/dicts of them, two levels)."""
    if start is not None or end is not None:
        try:
            check_span(0.0 if start is None else start, MAX_SECONDS if end is None else end, "span")
        except BadValue as e:
            e.video_id = video_id
            raise
    meta = {k: _meta_value(v) for k, v in (meta or {}).items()}
    return SourceRecord(
        source=source,
        video_id=video_id,
        video_paths=tuple(video_paths),
        start=start,
        end=end,
        texts=tuple(texts),
        origin=origin,
        meta=tuple(sorted((k, v) for k, v in meta.items() if v is not None)),
    )


def _meta_value(v: Any, depth: int = 0) -> Any:
    """The frozen form of a meta value (lists/dicts -> tuples), or None when it is no plain JSON value
    (non-finite floats, ints beyond 64 bits, deeper structures, Unreadable)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if depth < 2 and isinstance(v, (list, tuple)):
        return tuple(x for x in (_meta_value(x, depth + 1) for x in v) if x is not None)
    if depth < 2 and isinstance(v, dict):
        return tuple(sorted((str(k), x) for k, x in ((k, _meta_value(x, depth + 1)) for k, x in v.items())
                            if x is not None))
    return None


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


@dataclass(frozen=True)
class Row:
    """One input row or item: `origin` ("file:line", "file:videos[3]") names it, `parse()` gives its record(s)."""

    origin: str
    parse: Callable[[], "Item | Iterable[Item]"]


def run_row(source: str, row: Row) -> list[Item]:
    """The items of one row, never an exception: a BadValue becomes a Failure naming its field, any other
    exception a Failure of field "row" naming the exception; a row must give at least one item, and each record
    must have a key (finite span)."""
    try:
        out = row.parse()
        items = [out] if isinstance(out, (SourceRecord, Failure)) else list(out)
        for it in items:
            if not isinstance(it, (SourceRecord, Failure)):
                raise TypeError(f"a row gave {type(it).__name__}, not a SourceRecord or Failure")
            if isinstance(it, SourceRecord):
                check_span(0.0 if it.start is None else it.start, MAX_SECONDS if it.end is None else it.end, "span")
                it.key  # noqa: B018 - computable
        if not items:
            raise BadValue("row", "the row gave no record")
        return items
    except BadValue as e:
        return [make_failure(source, row.origin, e.field, e.reason, video_id=e.video_id)]
    except Exception as e:  # noqa: BLE001 - one row's unforeseen problem is that row's failure, never the job's
        return [make_failure(source, row.origin, "row", f"unreadable row ({type(e).__name__}: {_cut(str(e))})")]


class Adapter:
    """Base class: subclasses set `name`, `patterns` (file globs for a metadata directory), `options_spec` and
    `_read(paths, options)`, which checks the files it can check now (MetadataError) and returns the rows
    (an iterable of `Row`; an adapter may also yield items it built itself, for a whole-file matter)."""

    name: str = ""
    patterns: tuple[str, ...] = ("*",)
    # option -> (type, default, smallest value other than 0 (None: any non-negative number))
    options_spec: dict[str, tuple[type, Any, float | None]] = {}

    def read(self, metadata_paths: list[str] | str, options: dict | None = None) -> Iterator[Item]:
        """Deterministic stream of SourceRecord | Failure. Options and files are checked now (ConfigError,
        MetadataError); rows later, each on its own: no row's problem ends the stream."""
        if isinstance(metadata_paths, (str, os.PathLike)):
            metadata_paths = [str(metadata_paths)]
        opts = self.check_options(options or {})
        paths = expand_paths(metadata_paths, self.patterns)
        items = self._guard(self._read(paths, opts))
        return dedupe(items, self.name) if opts["dedupe"] else items

    def _guard(self, rows: Iterable[Row | Item]) -> Iterator[Item]:
        it = iter(rows)
        last = ""
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except MetadataError:
                raise
            except Exception as e:  # noqa: BLE001 - reading a file failed in a way no row explains: that file
                where = f"after {last}" if last else "at the start"
                raise MetadataError(f"{self.name}: cannot read the metadata {where}: {type(e).__name__}: "
                                    f"{_cut(str(e))}") from e
            if isinstance(row, Row):
                last = row.origin
                yield from run_row(self.name, row)
            else:
                yield row

    def check_options(self, options: dict) -> dict:
        """Source options, checked: ConfigError naming `source_options.<name>` for an unknown option or a value
        that is not a finite number in range (a window length of 1e-9 s would make unbounded windows)."""
        if not isinstance(options, dict):
            raise ConfigError(f"source_options: expected a mapping, got {show(options)}")
        known = {"dedupe", *self.options_spec}
        unknown = sorted(str(k) for k in options if k not in known)
        if unknown:
            raise ConfigError(f"source_options.{unknown[0]}: unknown option for source {self.name} "
                              f"(known: {', '.join(sorted(known))})")
        dedupe_opt = options.get("dedupe", True)
        if not isinstance(dedupe_opt, bool):
            raise ConfigError(f"source_options.dedupe: expected true/false, got {show(dedupe_opt)}")
        out: dict[str, Any] = {"dedupe": dedupe_opt}
        for name, (typ, default, smallest) in self.options_spec.items():
            v = options.get(name)
            if v is None:  # not given, or given as null: the default
                v = default
            if v is not None and typ is float:
                # (int/float comparisons are exact: a 400-digit int or nan is refused here, never converted)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_SECONDS:
                    raise ConfigError(f"source_options.{name}: {self.name} option {name!r} must be a number from 0 "
                                      f"to {MAX_SECONDS:g}, got {show(v)}")
                if smallest is not None and 0 < v < smallest:
                    raise ConfigError(f"source_options.{name}: {self.name} option {name!r} must be 0 or at least "
                                      f"{smallest:g}, got {show(v)}")
                v = float(v)
            out[name] = v
        return out

    def _read(self, paths: list[str], options: dict) -> Iterable[Row | Item]:  # pragma: no cover - abstract
        raise NotImplementedError
