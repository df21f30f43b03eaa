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

The package: `records` (what a scan gives), `loading` (any file -> records), `values` (one field -> text, options,
seconds), `readers` (one per format, under the guard); recognition and the scan are here.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from .loading import _Doc, _dict_rows, _json_why, _load, _single_record
from .readers import (MVBENCH_TASKS, _PT_ID, _VIDOR, _read_anetqa_a, _read_anetqa_q, _read_charades_json,
                      _read_charades_txt, _read_ego4d_splits, _read_egoschema_questions, _read_egoschema_windows,
                      _read_longvideobench, _read_lvbench_clean, _read_lvbench_meta, _read_mlvu, _read_mvbench,
                      _read_nextqa, _read_nextqa_map, _read_perception_ids, _read_perception_original,
                      _read_perception_rows, _read_videomme)
from .records import (MAX_PROBLEMS_PER_FILE, BenchmarkFile, BenchmarkFormatError, BenchmarkProblem, BenchmarkSet,
                      BenchText, BenchVideo, _shown)

__all__ = ["MVBENCH_TASKS", "MAX_PROBLEMS_PER_FILE", "BenchmarkFormatError", "BenchmarkProblem", "BenchVideo",
           "BenchText", "BenchmarkFile", "BenchmarkSet", "read_benchmark_file", "scan_benchmarks"]

_RECOGNISE_RECORDS = 50  # records looked at to recognise a file's format


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
