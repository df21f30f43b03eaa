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

Here: the CSV tables (their rows are Rows), records and failures, text spans, `Row`/`run_row` and `Adapter`. The
metadata files are opened by metadata_files.py and the values checked by values.py; both are re-exported here, so
that an adapter imports what it shares from this one module.
"""
from __future__ import annotations

import csv
import functools
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from longvid.operators.errors import ConfigError, MetadataError, show
from longvid.operators.records import Failure, SourceRecord, TextSpan, sample_key
from longvid.operators.sources.metadata_files import (JSON, Unreadable, expand_paths, is_remote, load_json, loads,
                                                      open_metadata)
from longvid.operators.sources.values import (MAX_DIGITS, MAX_ID_CHARS, MAX_SECONDS, BadValue, _bad, _cut, check_id,
                                              check_span, clean_text, json_type, parse_digits, parse_hms,
                                              parse_iso_duration, parse_number, youtube_id)

__all__ = [  # what adapters share; the re-exported names live in metadata_files.py and values.py
    "Item", "JSON", "Unreadable", "expand_paths", "is_remote", "load_json", "loads", "open_metadata", "show",
    "MAX_DIGITS", "MAX_ID_CHARS", "MAX_SECONDS", "BadValue", "check_id", "check_span", "clean_text", "json_type",
    "parse_digits", "parse_hms", "parse_iso_duration", "parse_number", "youtube_id",
    "CsvTable", "read_csv_header", "open_csv", "jsonl_lines", "make_failure", "make_record", "dedupe",
    "texts_in_span", "merge_rolling", "Row", "run_row", "Adapter",
]

Item = SourceRecord | Failure

# captions in MiraData / HowTo100M files can be long
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


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

