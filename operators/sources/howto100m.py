"""HowTo100M: `HowTo100M_v1.csv` (video_id,category_1,category_2,rank,task_id), optional `task_ids.csv`
(task_id -> WikiHow task name) and `caption.json` / `raw_caption.json` ({video_id: {text, start, end}}).

One whole-video record per CSV row, video `<video_id>.mp4`. Rolling YouTube ASR is merged (overlapping
segments joined, words repeated at the seams dropped) into "asr" TextSpans with times. A video with no
caption entry is still a record (the task name, when known, is its text). Files are told apart by name:
`*task_ids*` -> task names, `*.json` -> captions, other `*.csv` -> the video list.
"""
from __future__ import annotations

import csv
import itertools
import os
from typing import Any, Iterator

from longvid.operators.errors import MetadataError
from longvid.operators.records import TextSpan
from longvid.operators.sources.base import (
    Adapter,
    BadValue,
    Item,
    MAX_SECONDS,
    Row,
    check_id,
    clean_text,
    json_type,
    load_json,
    make_failure,
    make_record,
    merge_rolling,
    open_csv,
    open_metadata,
    parse_number,
    youtube_id,
)

SOURCE = "howto100m"


class HowTo100MAdapter(Adapter):
    name = SOURCE
    patterns = ("HowTo100M_v1.csv", "task_ids.csv", "caption.json", "raw_caption.json")
    options_spec = {"max_asr_span_sec": (float, 10.0, None)}

    def _read(self, paths: list[str], options: dict) -> Iterator[Row]:
        videos, tasks, captions = [], [], []
        for p in paths:
            base = os.path.basename(p).lower()
            if "task_ids" in base:
                tasks.append(p)
            elif base.endswith(".json"):
                captions.append(p)
            else:
                videos.append(p)
        if not videos:
            raise MetadataError(f"howto100m: no video list (HowTo100M_v1.csv) among {', '.join(paths)}")
        tables = [open_csv(p, ("video_id",), "HowTo100M video list") for p in videos]
        return self._rows(tables, tasks, captions, options)

    def _rows(self, tables, task_files, caption_files, options) -> Iterator[Row]:
        task_names: dict[str, str | BadValue] = {}
        for p in task_files:
            task_names.update(read_task_ids(p))
        caps: dict[str, Any] = {}
        cap_origin: dict[str, str] = {}
        for p in caption_files:
            data = load_json(p)
            if not isinstance(data, dict):
                raise MetadataError(f"{p}: expected a JSON object {{video_id: {{text, start, end}}}}")
            for k, v in data.items():
                if k not in caps:  # first file wins (caption.json before raw_caption.json if both given)
                    caps[k] = v
                    cap_origin[k] = p
        max_span = options["max_asr_span_sec"]
        for table in tables:
            yield from table.parse_rows(_row, task_names, caps, cap_origin, max_span)


def read_task_ids(path: str) -> dict[str, str | BadValue]:
    """task_ids.csv: tab- or comma-separated `task_id, task_name`, with or without a header row.

    A row without a name maps its id to a BadValue naming the line: the videos of that task become failures,
    the other rows are read on."""
    out: dict[str, str | BadValue] = {}
    with open_metadata(path) as f:
        first_line = f.readline()
        delim = "\t" if "\t" in first_line else ","
        reader = csv.reader(itertools.chain([first_line], f), delimiter=delim)
        id_col, name_col = 0, 1
        first = True
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if first:
                first = False
                names = [c.strip().lower() for c in row]
                if "task_id" in names:
                    id_col = names.index("task_id")
                    name_col = next((names.index(n) for n in ("task_name", "task", "name") if n in names), 1 - id_col)
                    continue
            task_id = row[id_col].strip() if len(row) > id_col else ""
            if len(row) <= max(id_col, name_col):
                out.setdefault(task_id, BadValue("task_id", f"{path}:{reader.line_num}: expected task_id and task name"))
            else:
                out[task_id] = clean_text(row[name_col])
    return out


def _segments(entry: Any, where: str) -> list[tuple[float, float, str]]:
    if not isinstance(entry, dict):
        raise BadValue(where, f"caption entry must be an object with text/start/end, got {json_type(entry)}")
    for k in ("text", "start", "end"):
        if not isinstance(entry.get(k), list):
            raise BadValue(f"{where}.{k}", f"missing or non-list {k} (got {json_type(entry.get(k))})")
    text, start, end = entry["text"], entry["start"], entry["end"]
    if not (len(text) == len(start) == len(end)):
        raise BadValue(where, f"text/start/end lengths differ ({len(text)}, {len(start)}, {len(end)})")
    segs = []
    for i, (t, s, e) in enumerate(zip(text, start, end)):
        s = parse_number(s, f"{where}.start[{i}]", limit=MAX_SECONDS)
        e = parse_number(e, f"{where}.end[{i}]", limit=MAX_SECONDS)
        if t is not None and not isinstance(t, str):
            raise BadValue(f"{where}.text[{i}]", f"text must be a string, got {json_type(t)}")
        segs.append((s, max(s, e), t or ""))
    return segs


def _row(row, origin, task_names, caps, cap_origin, max_span) -> Item:
    vid = check_id(row.get("video_id"), "video_id")
    task_id = (row.get("task_id") or "").strip()
    texts: list[TextSpan] = []
    entry = caps.get(vid)
    n_seg = 0
    if entry is not None:
        try:
            segs = _segments(entry, f"caption[{vid}]")
        except BadValue as e:
            return make_failure(SOURCE, origin, e.field, f"{cap_origin[vid]}: {e.reason}", video_id=vid)
        n_seg = len(segs)
        texts.extend(merge_rolling(segs, kind="asr", max_span=max_span))
    task = task_names.get(task_id) if task_id else None
    if isinstance(task, BadValue):
        return make_failure(SOURCE, origin, task.field, task.reason, video_id=vid)
    if task:
        texts.insert(0, TextSpan(task, kind="task"))
    meta = {
        "task_id": task_id or None,
        "task": task,
        "category_1": (row.get("category_1") or "").strip() or None,
        "category_2": (row.get("category_2") or "").strip() or None,
        "rank": (row.get("rank") or "").strip() or None,
        "youtube_id": youtube_id(vid),
        "asr_segments": n_seg,
        "has_captions": entry is not None,
    }
    return make_record(SOURCE, vid, (f"{vid}.mp4",), origin, texts=texts, meta=meta)


ADAPTER = HowTo100MAdapter()
