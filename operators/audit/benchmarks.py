"""Benchmark annotation readers: every file becomes video references and texts, whatever its format.

`scan_benchmarks(paths)` walks files and folders and recognises each file by its content and structure (the keys
of its records, the shape of its lines), using the path only to break ties (an MVBench task name, the word
"perception" for a bare id list). A file that matches no known format, or cannot be read or parsed at all, is
reported in `BenchmarkSet.unknown`, never guessed.

Hostile files never end the scan. Every reader runs under one per-record guard (`_each`): a record that cannot be
used (a field of the wrong JSON type or missing, a number that overflows or is not finite, text that is not valid
Unicode, nesting too deep to decode, a line that does not parse) becomes a `BenchmarkProblem` naming the file, the
record (its index, line or key) and the field, and the reader goes on with the next record. A JSON document that
`json.loads` refuses is decoded element by element (`_partial`), so one bad record costs that record, not the file.
Each file counts its records: `records == usable + unusable`.

Formats (see ../shared/reference/benchmarks.md): MVBench task json, Video-MME parquet, LongVideoBench json, MLVU json,
LVBench clean json and original `video_info.meta.jsonl`, Charades-STA json and `charades_sta_*.txt` lines,
EgoSchema `uid_to_ego4d.json` and `questions.json`, Ego4D `ego4d.json` (val/test splits), Perception Test (HF rows,
original `all_valid.json`, id-list csv), NExT-QA csv and `map_vid_vidorID.json`, ActivityNet-QA `*_q.json` and
`*_a.json`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from . import ids

# MVBench task -> the dataset its videos come from (MVBench paper, table 1).
MVBENCH_TASKS: dict[str, str] = {
    "action_antonym": "ssv2",
    "action_count": "perception_test",
    "action_localization": ids.CHARADES,
    "action_prediction": ids.CHARADES,  # STAR
    "action_sequence": ids.CHARADES,  # STAR
    "character_order": "perception_test",
    "counterfactual_inference": "clevrer",
    "egocentric_navigation": "vlnce",
    "episodic_reasoning": "tvqa",
    "fine_grained_action": "mit",
    "fine_grained_pose": "ntu",
    "moving_attribute": "clevrer",
    "moving_count": "clevrer",
    "moving_direction": "clevrer",
    "object_existence": "clevrer",
    "object_interaction": ids.CHARADES,  # STAR
    "object_shuffle": "perception_test",
    "scene_transition": "movqa",
    "state_change": "perception_test",
    "unexpected_action": "funqa",
}

MAX_PROBLEMS_PER_FILE = 200  # problems kept with their details per file; all are counted
_RECOGNISE_RECORDS = 50  # records looked at to recognise a file's format

_OPTION_LABEL = re.compile(r"^\s*\(?[A-Ea-e][.):]\s+")
_CHARADES_LINE = re.compile(r"^([A-Za-z0-9]{5}) ([0-9]+(?:\.[0-9]+)?) ([0-9]+(?:\.[0-9]+)?)##(.*)$")
_PT_ID = re.compile(r"^video_[0-9]+$")
_VIDOR = re.compile(r"^[0-9]{4}/[0-9]+$")


class BenchmarkFormatError(ValueError):
    """One field of a benchmark record that cannot be used; the reader guard adds the file and the record."""

    def __init__(self, fld: str, why: str):
        self.field, self.why = fld, why
        super().__init__(f"field {fld!r}: {why}")


@dataclass(frozen=True)
class BenchmarkProblem:
    """A record of a benchmark file that was not used, and why."""

    path: str
    where: str  # "record 3", "row 3", "line 7", "q_uid <key>"
    field: str  # "-" when the record as a whole is unusable
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: " + ("" if self.field == "-" else f"field {self.field!r}: ") + self.why


@dataclass(frozen=True)
class BenchVideo:
    """A benchmark's reference to a video (optionally a window of it, seconds in the source video)."""

    benchmark: str
    task: str
    namespace: str
    video_id: str  # normalised within namespace
    raw: str  # as the file writes it
    ref: str  # "<file>#<record>" or the benchmark's question id
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}:{self.video_id}"


@dataclass(frozen=True)
class BenchText:
    """One benchmark text (question, option, answer, grounding query)."""

    benchmark: str
    task: str
    ref: str
    video: str  # raw video field of the record, for evidence ("" if none)
    field: str  # question | option | answer | query
    text: str


@dataclass
class BenchmarkFile:
    path: str  # as shown to the user (undecodable bytes of the name escaped)
    format: str
    benchmark: str
    videos: list[BenchVideo] = field(default_factory=list)
    texts: list[BenchText] = field(default_factory=list)
    records: int = 0  # records read: usable + unusable
    unusable: int = 0
    problems: list[BenchmarkProblem] = field(default_factory=list)  # the first MAX_PROBLEMS_PER_FILE unusable records

    @property
    def name(self) -> str:
        return Path(self.path).name

    def problem(self, where: str, fld: str, why: str) -> None:
        self.unusable += 1
        if len(self.problems) < MAX_PROBLEMS_PER_FILE:
            self.problems.append(BenchmarkProblem(self.path, _shown(where, 120), _shown(fld, 80), _shown(why, 300)))


@dataclass
class BenchmarkSet:
    files: list[BenchmarkFile]
    unknown: list[tuple[str, str]]  # (path, why it was not recognised or could not be read)

    @property
    def videos(self) -> list[BenchVideo]:
        seen, out = set(), []
        for f in self.files:
            for v in f.videos:
                k = (v.benchmark, v.namespace, v.video_id, v.start, v.end)
                if k not in seen:
                    seen.add(k)
                    out.append(v)
        return out

    @property
    def texts(self) -> list[BenchText]:
        seen, out = set(), []
        for f in self.files:
            for t in f.texts:
                k = (t.benchmark, t.video, t.field, t.text)
                if k not in seen:
                    seen.add(k)
                    out.append(t)
        return out

    @property
    def benchmarks(self) -> list[str]:
        return sorted({f.benchmark for f in self.files})

    @property
    def problems(self) -> list[BenchmarkProblem]:
        """The unusable records with their details (at most MAX_PROBLEMS_PER_FILE per file)."""
        return [p for f in self.files for p in f.problems]

    @property
    def unusable_records(self) -> int:
        return sum(f.unusable for f in self.files)


# ---------------------------------------------------------------- values

def _valid_text(s: str) -> bool:
    """Encodable as UTF-8: no lone surrogate (from a JSON escape or an undecodable byte of the file)."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown(s: str, limit: int = 200) -> str:
    """`s` safe to print and to write as UTF-8 (lone surrogates escaped), cut to `limit` characters."""
    s = s if len(s) <= limit else s[:limit] + "..."
    return s if _valid_text(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


def _kind(v: Any) -> str:
    """The JSON name of a value's type, for messages (never the value itself: it may be huge or deep)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number" if isinstance(v, int) or math.isfinite(v) else f"the number {v}"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _text(v: Any, fld: str) -> str:
    """`v` as benchmark text: a string of valid Unicode."""
    if v is None:
        raise BenchmarkFormatError(fld, "missing")
    if not isinstance(v, str):
        raise BenchmarkFormatError(fld, f"expected text, got {_kind(v)}")
    if not _valid_text(v):
        raise BenchmarkFormatError(fld, "not valid Unicode text (a lone surrogate or an undecodable byte)")
    return v


def _need(rec: dict, key: str) -> str:
    """A required text field (it may be blank: a record with an empty question still names its video)."""
    return _text(rec.get(key), key)


def _need_id(rec: dict, key: str) -> str:
    """A required id field: text, not blank."""
    v = _text(rec.get(key), key)
    if not v.strip():
        raise BenchmarkFormatError(key, "empty")
    return v


def _opt(rec: dict, key: str) -> str:
    """An optional text field ("" when absent or null); an integer is taken as its digits (question ids)."""
    v = rec.get(key)
    if v is None:
        return ""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return _text(v, key)


def _option(v: Any, fld: str) -> str | None:
    """One answer option: text, or a finite number as its text; None for a null option."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v)):
        return str(v)
    return _OPTION_LABEL.sub("", _text(v, fld))


def _options(rec: dict, key: str) -> list[str]:
    v = rec.get(key)
    if v is None:
        raise BenchmarkFormatError(key, "missing")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, str):  # some exports store the option list as a JSON string
        try:
            v = json.loads(_text(v, key))
        except (ValueError, RecursionError):
            raise BenchmarkFormatError(key, f"expected a list of options, got the string {_shown(rec[key], 40)!r}") from None
    if not isinstance(v, list):
        raise BenchmarkFormatError(key, f"expected a list of options, got {_kind(v)}")
    return [o for o in (_option(x, f"{key}[{j}]") for j, x in enumerate(v)) if o is not None]


def _seconds(v: Any, fld: str) -> float:
    """A time in seconds: a finite number (or a string of one)."""
    if v is None:
        raise BenchmarkFormatError(fld, "missing")
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BenchmarkFormatError(fld, f"expected a number of seconds, got {_kind(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise BenchmarkFormatError(fld, "number too large for seconds") from None
    except ValueError:
        raise BenchmarkFormatError(fld, f"not a number: {_shown(v, 40)!r}") from None
    if not math.isfinite(x):
        raise BenchmarkFormatError(fld, f"not a finite number ({x})")
    return x


def _text_items(bench: str, task: str, ref: str, video: str, question: str | None, options: list[str] = (),
                answer: Any = None, qfield: str = "question") -> list[BenchText]:
    out = []
    if question:
        out.append(BenchText(bench, task, ref, video, qfield, question))
    for o in options:
        if o.strip():
            out.append(BenchText(bench, task, ref, video, "option", o))
    if isinstance(answer, str):
        a = _OPTION_LABEL.sub("", answer)
        if len(a.strip()) > 1 and a not in options:  # a bare letter adds nothing; an option text is already there
            out.append(BenchText(bench, task, ref, video, "answer", a))
    return out


# ---------------------------------------------------------------- loading

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


# ---------------------------------------------------------------- the per-record guard

def _check_items(part: BenchmarkFile) -> None:
    """Every text of the record's items is valid Unicode, every time finite (a backstop for all readers)."""
    for item in (*part.videos, *part.texts):
        for f in fields(item):
            v = getattr(item, f.name)
            if isinstance(v, str) and not _valid_text(v):
                raise BenchmarkFormatError(f.name, "not valid Unicode text (a lone surrogate or an undecodable byte)")
            if isinstance(v, float) and not math.isfinite(v):
                raise BenchmarkFormatError(f.name, f"not a finite number ({v})")


def _each(bf: BenchmarkFile, records: Iterator[tuple[Any, str, Any]], read: Callable[[BenchmarkFile, Any, Any], None],
          objects: bool = True) -> BenchmarkFile:
    """Run `read(part, i, record)` on every record; keep the items of a record only if all of it could be used,
    else record a problem naming the record and the field, and go on."""
    for i, where, rec in records:
        bf.records += 1
        part = BenchmarkFile(bf.path, bf.format, bf.benchmark)
        try:
            if isinstance(rec, _Unusable):
                raise BenchmarkFormatError(rec.field, rec.why)
            if objects and not isinstance(rec, dict):
                raise BenchmarkFormatError("-", f"expected an object, got {_kind(rec)}")
            for k, v in rec.items() if isinstance(rec, dict) else ():
                if isinstance(v, _Unusable):
                    raise BenchmarkFormatError(str(k), v.why)
            read(part, i, rec)
            _check_items(part)
        except BenchmarkFormatError as e:
            bf.problem(where, e.field, e.why)
        except Exception as e:  # whatever else a hostile record provokes (OverflowError, RecursionError, ...)
            bf.problem(where, "-", _json_why(e))
        else:
            bf.videos += part.videos
            bf.texts += part.texts
    return bf


def _listed(doc: _Doc, rows: list) -> Iterator[tuple[int, str, Any]]:
    return ((i, doc.where(i), r) for i, r in enumerate(rows))


def _keyed(obj: dict, label: str) -> Iterator[tuple[str, str, Any]]:
    return ((k, f"{label} {k}", v) for k, v in obj.items())


# ---------------------------------------------------------------- readers (one per format: one record at a time)

def _read_mvbench(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    stem = Path(path).stem
    hinted = stem in MVBENCH_TASKS or "mvbench" in path.lower()
    bench = "MVBench" if hinted else f"MVBench-format:{Path(path).parent.name}"
    ns = MVBENCH_TASKS.get(stem)
    if ns is None:  # unknown task: Charades ids are unmistakable, anything else stays in a namespace of its own
        vids = [r["video"] for r in rows if isinstance(r, dict) and isinstance(r.get("video"), str)]
        ns = ids.CHARADES if vids and all(ids.charades_id(v) for v in vids) else f"mvbench.{stem}"

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        raw = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        q = _need(r, "question")
        opts = _options(r, "candidates")
        vid = ids.normalise(ns, raw)
        if vid:
            part.videos.append(BenchVideo(bench, stem, ns, vid, raw, ref))
        part.texts += _text_items(bench, stem, ref, raw, q, opts, r.get("answer"))

    return _each(BenchmarkFile(path, "mvbench-json", bench), _listed(doc, rows), read)


def _read_mlvu(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    stem = Path(path).stem

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        vid = ids.generic_id(v)
        if vid:
            part.videos.append(BenchVideo("MLVU", stem, "mlvu", vid, v, ref))
        part.texts += _text_items("MLVU", stem, ref, v, _need(r, "question"), _options(r, "candidates"), r.get("answer"))

    return _each(BenchmarkFile(path, "mlvu-json", "MLVU"), _listed(doc, rows), read)


def _read_lvbench_clean(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    # ids here are renamed (00000000): they only match LVBench's own namespace; the text still matches.
    stem = Path(path).stem

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        part.videos.append(BenchVideo("LVBench", stem, "lvbench", v, v, ref))
        part.texts += _text_items("LVBench", stem, ref, v, _need(r, "question"), _options(r, "candidates"), r.get("answer"))

    return _each(BenchmarkFile(path, "lvbench-clean-json", "LVBench"), _listed(doc, rows), read)


def _read_lvbench_meta(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        key = _need_id(r, "key")
        qa = r.get("qa")
        if not isinstance(qa, list):
            raise BenchmarkFormatError("qa", f"expected a list of questions, got {_kind(qa)}")
        task = _opt(r, "type")
        yt = ids.youtube_id(key)
        ref = f"{part.name}#{i}"
        if yt:
            part.videos.append(BenchVideo("LVBench", task, ids.YOUTUBE, yt, key, ref))
        for j, q in enumerate(qa):
            if not isinstance(q, dict):
                raise BenchmarkFormatError(f"qa[{j}]", f"expected an object, got {_kind(q)}")
            lines = _text(q.get("question"), f"qa[{j}].question").split("\n")  # question text, then "(A) ..." option lines
            opts = [_OPTION_LABEL.sub("", ln) for ln in lines[1:] if ln.strip()]
            part.texts += _text_items("LVBench", task, _opt(q, "uid") or f"{ref}.{j}", key, lines[0], opts)

    return _each(BenchmarkFile(path, "lvbench-meta-jsonl", "LVBench"), _listed(doc, rows), read)


def _read_videomme(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        raw = _opt(r, "videoID") or _opt(r, "url")
        if not raw:
            raise BenchmarkFormatError("videoID", "missing (and no url)")
        url = _opt(r, "url")
        yt = ids.youtube_id(raw) or ids.youtube_id(url) or ids.normalise(ids.YOUTUBE, raw)
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        task = _opt(r, "duration")
        if yt:
            part.videos.append(BenchVideo("Video-MME", task, ids.YOUTUBE, yt, url or raw, ref))
        part.texts += _text_items("Video-MME", task, ref, raw, _need(r, "question"), _options(r, "options"), r.get("answer"))

    return _each(BenchmarkFile(path, "videomme-parquet", "Video-MME"), _listed(doc, rows), read)


def _read_longvideobench(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_id")
        ref = _opt(r, "id") or f"{part.name}#{i}"
        task = _opt(r, "question_category")
        yt = ids.youtube_id(v)
        if yt:
            part.videos.append(BenchVideo("LongVideoBench", task, ids.YOUTUBE, yt, v, ref))
        else:  # `@user-<n>` ids (TikTok)
            part.videos.append(BenchVideo("LongVideoBench", task, "tiktok", v, v, ref))
        opts = _options(r, "candidates")
        part.texts += _text_items("LongVideoBench", task, ref, v, _need(r, "question"), opts)

    return _each(BenchmarkFile(path, "longvideobench-json", "LongVideoBench"), _listed(doc, rows), read)


def _charades_items(part: BenchmarkFile, i: int, raw: str, caption: str) -> None:
    cid = ids.charades_id(raw)
    if cid is None:
        raise BenchmarkFormatError("video", f"not a Charades id: {_shown(raw, 40)!r}")
    ref = f"{part.name}#{i}"
    # The benchmark shows the whole video: any span of it leaks (the timestamp is the queried moment).
    part.videos.append(BenchVideo("Charades-STA", "test", ids.CHARADES, cid, raw, ref))
    part.texts.append(BenchText("Charades-STA", "test", ref, raw, "query", caption))


def _read_charades_json(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        ts = r.get("timestamp")
        if not isinstance(ts, list) or len(ts) != 2:
            raise BenchmarkFormatError("timestamp", f"expected [start, end], got {_kind(ts)}"
                                       + (f" of {len(ts)}" if isinstance(ts, list) else ""))
        for j in (0, 1):  # the queried moment: not used for matching (any span of the video leaks), but a number
            _seconds(ts[j], f"timestamp[{j}]")
        _charades_items(part, i, _need_id(r, "video"), _need(r, "caption"))

    return _each(BenchmarkFile(path, "charades-sta-json", "Charades-STA"), _listed(doc, rows), read)


def _read_charades_txt(path: str, doc: _Doc) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, ln: str) -> None:
        m = _CHARADES_LINE.match(ln)
        if m is None:
            raise BenchmarkFormatError("-", "not a Charades-STA line ('<id> <start> <end>##<query>')")
        for j, fld in ((2, "start"), (3, "end")):
            _seconds(m.group(j), fld)
        _charades_items(part, i, m.group(1), _text(m.group(4).strip(), "query"))

    return _each(BenchmarkFile(path, "charades-sta-txt", "Charades-STA"), _listed(doc, doc.value), read, objects=False)


def _read_egoschema_windows(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, q_uid: str, w: dict) -> None:
        raw = _need_id(w, "video_uid")
        uid = ids.ego4d_uid(raw)
        if uid is None:
            raise BenchmarkFormatError("video_uid", f"not an Ego4D uid: {_shown(raw, 40)!r}")
        s, e = _seconds(w.get("starting_sec"), "starting_sec"), _seconds(w.get("ending_sec"), "ending_sec")
        if e < s:
            raise BenchmarkFormatError("ending_sec", f"before starting_sec ({e} < {s})")
        part.videos.append(BenchVideo("EgoSchema", "", ids.EGO4D, uid, raw, q_uid, s, e))

    return _each(BenchmarkFile(path, "egoschema-uid-to-ego4d", "EgoSchema"), _keyed(obj, "q_uid"), read)


def _read_egoschema_questions(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        q_uid = _need_id(r, "q_uid")
        opts = [o for k in sorted(r) if k.startswith("option") and r[k] for o in [_option(r[k], k)] if o is not None]
        part.texts += _text_items("EgoSchema", "", q_uid, q_uid, _need(r, "question"), opts)

    return _each(BenchmarkFile(path, "egoschema-questions", "EgoSchema"), _listed(doc, rows), read)


def _read_ego4d_splits(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, v: dict) -> None:
        raw = _need_id(v, "video_uid")
        splits = [f"{k}={v[k]}" for k in ("split_em", "split_av", "split_fho") if v.get(k) in ("val", "test")]
        uid = ids.ego4d_uid(raw)
        if uid is None:
            raise BenchmarkFormatError("video_uid", f"not an Ego4D uid: {_shown(raw, 40)!r}")
        if splits:
            part.videos.append(BenchVideo("Ego4D-val/test", ",".join(splits), ids.EGO4D, uid, raw, f"videos[{i}]"))

    videos = obj["videos"]
    return _each(BenchmarkFile(path, "ego4d-json", "Ego4D-val/test"), ((i, f"videos[{i}]", v) for i, v in enumerate(videos)), read)


def _read_perception_rows(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_name")
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        area = _opt(r, "area")
        vid = ids.generic_id(v)
        if vid:
            part.videos.append(BenchVideo("PerceptionTest", area, "perception_test", vid, v, ref))
        part.texts += _text_items("PerceptionTest", area, ref, v, _opt(r, "question"), _options(r, "options"))

    return _each(BenchmarkFile(path, "perception-test-rows", "PerceptionTest"), _listed(doc, rows), read)


def _read_perception_original(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, vkey: str, rec: dict) -> None:
        meta = {} if rec.get("metadata") is None else rec["metadata"]
        if not isinstance(meta, dict):
            raise BenchmarkFormatError("metadata", f"expected an object, got {_kind(meta)}")
        v = _opt(meta, "video_id") or vkey
        part.videos.append(BenchVideo("PerceptionTest", "", "perception_test", v, v, v))
        mcq = rec.get("mc_question")
        if not isinstance(mcq, list):
            raise BenchmarkFormatError("mc_question", "missing" if mcq is None else f"expected a list of questions, got {_kind(mcq)}")
        for j, q in enumerate(mcq):
            if not isinstance(q, dict):
                raise BenchmarkFormatError(f"mc_question[{j}]", f"expected an object, got {_kind(q)}")
            opts = _options(q, "options") if q.get("options") is not None else []
            part.texts += _text_items("PerceptionTest", _opt(q, "area"), f"{v}#{_opt(q, 'id') or j}", v,
                                      _text(q.get("question"), f"mc_question[{j}].question"), opts)

    return _each(BenchmarkFile(path, "perception-test-json", "PerceptionTest"), _keyed(obj, "video"), read)


def _read_perception_ids(path: str, doc: _Doc) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: list) -> None:
        c = _text(r[0], "id").strip() if len(r) == 1 else ""
        if not _PT_ID.match(c):
            raise BenchmarkFormatError("-", "expected one video_NNNN id")
        part.videos.append(BenchVideo("PerceptionTest", "mc", "perception_test", c, c, f"{part.name}#{i}"))

    return _each(BenchmarkFile(path, "perception-test-id-list", "PerceptionTest"), _listed(doc, doc.value), read, objects=False)


def _read_nextqa(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video").strip()
        qid = _opt(r, "qid")
        ref = f"{v}_{qid}" if qid else f"{part.name}#{i}"
        task = _opt(r, "type")
        part.videos.append(BenchVideo("NExT-QA", task, "vidor", ids.vidor_id(v) or v, v, ref))
        opts = [o for k in ("a0", "a1", "a2", "a3", "a4") if r.get(k) for o in [_option(r[k], k)] if o is not None]
        ans = r.get("answer")
        part.texts += _text_items("NExT-QA", task, ref, v, _need(r, "question"), opts,
                                  ans if isinstance(ans, str) and not ans.isdigit() else None)

    return _each(BenchmarkFile(path, "nextqa-csv", "NExT-QA"), _listed(doc, rows), read)


def _read_nextqa_map(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, k: str, v: Any) -> None:
        v = _text(v, "value")
        if not _VIDOR.match(v):
            raise BenchmarkFormatError("value", f"not a VidOR path ('NNNN/NNNNNNNNNN'): {_shown(v, 40)!r}")
        part.videos.append(BenchVideo("NExT-QA", "", "vidor", ids.vidor_id(v) or v, v, k))

    return _each(BenchmarkFile(path, "nextqa-vidor-map", "NExT-QA"), _keyed(obj, "video"), read, objects=False)


def _read_anetqa_q(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_name")
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        yt = ids.youtube_id(v) or ids.youtube_id("v_" + v)
        if yt:
            part.videos.append(BenchVideo("ActivityNet-QA", "", ids.YOUTUBE, yt, v, ref))
        part.texts += _text_items("ActivityNet-QA", "", ref, v, _need(r, "question"))

    return _each(BenchmarkFile(path, "activitynet-qa-questions", "ActivityNet-QA"), _listed(doc, rows), read)


def _read_anetqa_a(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        ref = _opt(r, "question_id")
        if not ref:
            raise BenchmarkFormatError("question_id", "missing")
        a = r.get("answer")
        if isinstance(a, str) and a.strip():
            part.texts.append(BenchText("ActivityNet-QA", "", ref, "", "answer", a))

    return _each(BenchmarkFile(path, "activitynet-qa-answers", "ActivityNet-QA"), _listed(doc, rows), read)


# ---------------------------------------------------------------- recognition

def _record_format(r: dict) -> Callable | None:
    """The reader of a list-of-records format whose record looks like `r` (by its keys)."""
    def has(*keys: str) -> bool:
        return all(k in r for k in keys)

    if has("video", "question", "candidates", "answer"):
        if "time_reference" in r:
            return _read_lvbench_clean
        if "duration" in r and "question_type" in r:
            return _read_mlvu
        return _read_mvbench
    if has("question", "options", "answer") and ("videoID" in r or "url" in r):
        return _read_videomme
    if has("video_id", "question", "candidates", "correct_choice"):
        return _read_longvideobench
    if has("video", "caption", "timestamp"):
        return _read_charades_json
    if has("key", "qa"):
        return _read_lvbench_meta
    if has("q_uid", "question") and any(isinstance(k, str) and k.startswith("option") for k in r):
        return _read_egoschema_questions
    if has("video_name", "question", "options"):
        return _read_perception_rows
    if has("video", "question", "a0", "a1"):
        return _read_nextqa
    if has("video_name", "question", "question_id"):
        return _read_anetqa_q
    if has("answer", "question_id") and "question" not in r:
        return _read_anetqa_a
    return None


def _recognise(path: str, doc: _Doc) -> Callable[[], BenchmarkFile] | str:
    """A reader bound to the content, or the reason the file is not recognised. The format of a list of records
    is the one most of its first records have (a hostile record does not hide the file's format)."""
    low = path.lower()
    kind, content = doc.kind, doc.value
    if kind == "lines":
        return lambda: _read_charades_txt(path, doc)
    if kind == "csv" and sum(isinstance(r, list) and len(r) == 1 for r in content) * 2 >= len(content):  # a bare id list
        cells = [r[0].strip() for r in content if isinstance(r, list) and len(r) == 1]
        if sum(bool(_PT_ID.match(c)) for c in cells) * 2 >= len(content):
            if "perception" in low or "mc_question" in low:
                return lambda: _read_perception_ids(path, doc)
            return "csv of video_NNNN ids, but the path does not say which dataset (Perception Test? CLEVRER?)"
    if kind == "json" and isinstance(content, dict) and _single_record(content):
        doc = _Doc("jsonl", [content])  # a one-line JSONL file
        kind, content = doc.kind, doc.value
    rows = _dict_rows(doc)
    if rows and kind == "csv":
        doc = _Doc("csv", rows, doc.lines[1:])  # the records follow the header
    if rows:
        objs = [r for r in rows[:_RECOGNISE_RECORDS * 4] if isinstance(r, dict)][:_RECOGNISE_RECORDS]
        votes = Counter(f for f in map(_record_format, objs) if f is not None)
        if votes:
            reader = votes.most_common(1)[0][0]
            return lambda: reader(path, doc, rows)
        if not objs:
            return "csv rows do not match their header" if kind == "csv" else "no record is an object"
        return f"records with keys {[_shown(str(k), 40) for k in sorted(map(str, objs[0]))[:12]]} match no known benchmark format"
    if kind == "json" and isinstance(content, dict) and content:
        videos = content.get("videos")
        if isinstance(videos, list) and any(isinstance(v, dict) and "video_uid" in v for v in videos[:_RECOGNISE_RECORDS]):
            return lambda: _read_ego4d_splits(path, content)
        vals = list(content.values())[:_RECOGNISE_RECORDS]
        if any(isinstance(v, dict) and "video_uid" in v and "starting_sec" in v for v in vals):
            return lambda: _read_egoschema_windows(path, content)
        if any(isinstance(v, dict) and "mc_question" in v for v in vals):
            return lambda: _read_perception_original(path, content)
        if sum(isinstance(v, str) and bool(_VIDOR.match(v)) for v in vals) * 2 >= len(vals):
            return lambda: _read_nextqa_map(path, content)
        return f"json object with keys like {[_shown(str(k), 40) for k in list(content)[:5]]} matches no known benchmark format"
    if kind == "csv":
        return "csv matches no known benchmark format"
    if kind == "empty":
        return "empty file"
    if kind == "binary":
        return "binary content (not UTF-8 text, not parquet)"
    return f"unrecognised content ({kind})"


def _display_path(p: Path) -> str:
    """The path as text that can always be shown and written (bytes of the name that are not UTF-8 escaped)."""
    return _shown(str(p), 10_000)


def read_benchmark_file(path: str | Path) -> BenchmarkFile | str:
    """A recognised file's items (its unusable records in `.problems`), or a string saying why the file was not
    recognised or could not be read. Never raises for what the file holds."""
    p = Path(path)
    shown = _display_path(p)
    try:
        doc = _load(p)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    except Exception as e:  # a corrupt parquet file, for instance
        return f"cannot parse: {_shown(_json_why(e), 300)}"
    try:
        r = _recognise(shown, doc)
        return r if isinstance(r, str) else r()
    except Exception as e:  # the per-record guard keeps records apart; this is the last line for the file
        return f"cannot parse: {_shown(_json_why(e), 300)}"


def _walk(paths: list[str | Path]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--benchmarks {_display_path(p)}: no such file or directory")
    return out


def scan_benchmarks(paths: list[str | Path]) -> BenchmarkSet:
    files, unknown = [], []
    for f in _walk(paths):
        r = read_benchmark_file(f)
        if isinstance(r, str):
            unknown.append((_display_path(f), r))
        else:
            files.append(r)
    return BenchmarkSet(files, unknown)
