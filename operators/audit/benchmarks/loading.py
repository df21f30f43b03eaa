"""Loading a benchmark file whatever it holds: parquet, JSON (decoded element by element when `json.loads` refuses
it, so one bad record costs that record), JSONL, CSV, Charades lines, text or binary -> a `_Doc` of records."""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHARADES_LINE = re.compile(r"^([A-Za-z0-9]{5}) ([0-9]+(?:\.[0-9]+)?) ([0-9]+(?:\.[0-9]+)?)##(.*)$")


@dataclass
class _Unusable:
    """In place of a record (or a record's field) that could not even be decoded."""

    why: str
    field: str = "-"


@dataclass
class _Doc:
    kind: str  # table | json | jsonl | lines | csv | text | binary | empty
    value: Any = None  # the json document, or the list of records (rows, lines)
    lines: list[int] | None = None  # physical line of each record (jsonl, lines, csv)

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"line {self.lines[i]}"
        return f"row {i}" if self.kind == "table" else f"record {i}"


_DECODER = json.JSONDecoder()
_JSON_WS = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[\]{},]')  # strings (group 1: closed) and JSON's structure


def _json_why(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, ValueError) and "digits" in str(e) and "Exceeds the limit" in str(e):
        return "an integer too long to decode (over 4300 digits)"
    return f"{type(e).__name__}: {e}"


def _skip_value(s: str, i: int) -> int | None:
    """End of the JSON value starting at s[i] (by brackets and strings, without decoding it), or None."""
    depth = 0
    for m in _TOKEN.finditer(s, i):
        t = m.group()
        if t[0] == '"':
            if m.group(1) is None:
                return None  # an unterminated string
            continue
        if t in "[{":
            depth += 1
        elif t in "]}":
            if depth == 0:
                return m.start()
            depth -= 1
            if depth == 0:
                return m.end()
        elif depth == 0:  # ","
            return m.start()
    return None


def _partial(s: str, pos: int, depth: int) -> tuple[Any, int | None]:
    """Decode the JSON value at s[pos]. Where json refuses it (nesting too deep, a number too long, a syntax error),
    decode its elements one by one, `depth` levels down, with `_Unusable` in place of what still fails; a container
    broken inside is skipped to its closing bracket. Returns (value, end); end is None when the brackets do not
    balance from there on (the rest of the document cannot be delimited)."""
    try:
        return _DECODER.raw_decode(s, pos)
    except (ValueError, RecursionError) as e:
        err = e
    if depth <= 0 or s[pos:pos + 1] not in ("[", "{"):
        return _Unusable(f"not valid JSON ({_json_why(err)})"), _skip_value(s, pos)
    out, end = _elements(s, pos, depth)
    return out, end if end is not None else _skip_value(s, pos)


def _elements(s: str, pos: int, depth: int) -> tuple[Any, int | None]:
    """The elements of the array or object opening at s[pos], each decoded by `_partial`; at a break in the
    structure an `_Unusable` marks it and end is None."""
    close = "]" if s[pos] == "[" else "}"
    out: Any = [] if close == "]" else {}

    def broken(i: int, why: str) -> tuple[Any, None]:
        at = f" at line {s.count(chr(10), 0, i) + 1}" if "\n" in s else ""
        if i >= len(s) or _skip_value(s, pos) is None:
            why = f"the JSON ends early or its brackets do not balance{at} (a truncated file?)"
        else:
            why = f"broken JSON{at}: {why}"
        if close == "]":
            out.append(_Unusable(why))
        else:
            out["(JSON syntax)"] = _Unusable(why)
        return out, None

    i = _JSON_WS.match(s, pos + 1).end()
    if s.startswith(close, i):
        return out, i + 1
    while True:
        if close == "}":
            try:
                key, i = _DECODER.raw_decode(s, i)
            except (ValueError, RecursionError):
                return broken(i, "expected a key")
            i = _JSON_WS.match(s, i).end()
            if not isinstance(key, str) or not s.startswith(":", i):
                return broken(i, "expected a key and ':'")
            i = _JSON_WS.match(s, i + 1).end()
        v, end = _partial(s, i, depth - 1)
        if close == "]":
            out.append(v)
        else:
            out[key] = v
        if end is None:
            return out, None
        i = _JSON_WS.match(s, end).end()
        if s.startswith(",", i):
            i = _JSON_WS.match(s, i + 1).end()
        elif s.startswith(close, i):
            return out, i + 1
        else:
            return broken(i, f"expected ',' or '{close}'")


def _json_document(s: str) -> Any:
    """The document, partially decoded if need be (see `_partial`); None when it is not JSON at all."""
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        pass
    v, end = _partial(s, 0, 2)
    if isinstance(v, _Unusable):
        return None
    if end is not None and s[end:].strip():  # text after the document
        why = _Unusable("text after the end of the JSON document is not read")
        if isinstance(v, list):
            v.append(why)
        else:
            v["(after the document)"] = why
    return v


def _jsonl(text: str) -> _Doc | None:
    """One JSON record per line, when most lines are that; lines that do not decode are unusable records."""
    recs, lines, good = [], [], 0
    for n, ln in enumerate(text.split("\n"), 1):
        t = ln.strip().lstrip("\ufeff")
        if not t:
            continue
        try:
            v = json.loads(t)
        except (ValueError, RecursionError):
            v, end = _partial(t, 0, 1)
            if end is None or t[end:].strip():
                v = _Unusable("not a JSON record")
        good += isinstance(v, (dict, list))
        recs.append(v)
        lines.append(n)
    if len(recs) > 1 and good * 2 >= len(recs):
        return _Doc("jsonl", recs, lines)
    return None


def _decode_text(data: bytes) -> str | None:
    """The text of a file (UTF-8, or UTF-16/32 with a BOM); None for binary content. A few undecodable bytes in
    a UTF-8 text file become lone surrogates, so that only the records holding them are unusable."""
    for bom, enc in ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
                     (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(enc)
            except UnicodeDecodeError:
                return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "surrogateescape")
        bad = len(re.findall("[\udc80-\udcff]", text))
        return None if bad * 10 > len(data) else text  # binary data is far denser in bytes that are not UTF-8


def _csv_rows(text: str) -> tuple[list, list[int]]:
    """csv rows (a row that csv refuses is unusable) and the line each ends on; blank rows dropped."""
    rows, lines = [], []
    rd = csv.reader(io.StringIO(text))
    last = -1
    while True:
        try:
            r = next(rd)
        except StopIteration:
            break
        except csv.Error as e:
            if rd.line_num == last:
                break  # no progress: stop here
            r = _Unusable(f"not a csv row ({e})")
        last = rd.line_num
        if isinstance(r, _Unusable) or any(c.strip() for c in r):
            rows.append(r)
            lines.append(rd.line_num)
    return rows, lines


def _load(path: Path) -> _Doc:
    """The file's content, by content, not by extension (see `_Doc.kind`)."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        return _Doc("table", pq.read_table(io.BytesIO(data)).to_pylist())  # the bytes read above
    text = _decode_text(data)
    if text is None:
        return _Doc("binary")
    s = text.lstrip().lstrip("\ufeff").lstrip()
    if not s:
        return _Doc("empty")
    if s[:1] in "[{":
        try:
            return _Doc("json", json.loads(s))
        except (ValueError, RecursionError):
            pass
    if re.search(r"^[ \t\ufeff]*[\[{]", text, re.MULTILINE):  # JSON lines (a hostile first line does not hide them)
        doc = _jsonl(text)
        if doc:
            return doc
    if s[:1] in "[{":
        v = _json_document(s)
        return _Doc("text") if v is None else _Doc("json", v)
    numbered = [(n, ln.rstrip("\r")) for n, ln in enumerate(text.split("\n"), 1) if ln.strip()]
    good = sum(1 for _, ln in numbered if _CHARADES_LINE.match(ln))
    if good and good * 2 >= len(numbered):
        return _Doc("lines", [ln for _, ln in numbered], [n for n, _ in numbered])
    rows, lines = _csv_rows(text)
    widths = Counter(len(r) for r in rows if isinstance(r, list))
    if widths and widths.most_common(1)[0][1] * 2 >= len(rows):
        return _Doc("csv", rows, lines)
    return _Doc("text")


def _dict_rows(doc: _Doc) -> list | None:
    """Records of a json/jsonl list or a parquet table (non-objects stay, to be reported), or of a csv with a
    header (a row with the wrong number of cells is unusable); None if there are no object records."""
    if doc.kind in ("json", "jsonl", "table") and isinstance(doc.value, list) and any(isinstance(r, dict) for r in doc.value):
        return doc.value
    if doc.kind == "csv" and len(doc.value) >= 2 and isinstance(doc.value[0], list):
        header = [h.strip() for h in doc.value[0]]
        return [r if isinstance(r, _Unusable) else dict(zip(header, r)) if len(r) == len(header)
                else _Unusable(f"expected {len(header)} cells, got {len(r)}") for r in doc.value[1:]]
    return None


def _single_record(d: dict) -> bool:
    """A dict that is one benchmark record (has a question or a qa list), not a mapping of records."""
    return ("question" in d or "qa" in d) and not all(isinstance(v, dict) for v in d.values())

