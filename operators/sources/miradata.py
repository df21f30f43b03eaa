"""MiraData v0 and v1 CSVs (the version is told by the header; parsed by column name).

v0: `index,video_id,start_frame,end_frame,<captions>,fps,start_timestep,end_timestep,,` -> span = frames / fps
    (the H:MM:SS timesteps when fps is missing); video `<video_id>.mp4` (also the v1 layout of the numeric
    prefix of `index`).
v1: `clip_id, source, video_url, video_id, ..., timestamp, ..., file_path, <captions>`; `timestamp` is the
    Python-literal string "['HH:MM:SS.fff', 'HH:MM:SS.fff']" (parsed with ast.literal_eval, never eval);
    clip_id "{download_id}.{clip_index}"; video `<download_id//1000:09d>/<download_id:012d>.mp4`.
Each caption column becomes its own untimed TextSpan whose kind is the column name.
"""
from __future__ import annotations

import ast
import re
from typing import Iterator

from longvid.operators.errors import MetadataError
from longvid.operators.records import TextSpan
from longvid.operators.sources.base import (
    Adapter,
    BadValue,
    Item,
    MAX_ID_CHARS,
    MAX_SECONDS,
    Row,
    check_id,
    check_span,
    clean_text,
    make_failure,
    make_record,
    open_csv,
    parse_hms,
    parse_number,
    read_csv_header,
    show,
    youtube_id,
)

SOURCE = "miradata"
CAPTIONS = (
    "short_caption",
    "dense_caption",
    "main_object_caption",
    "background_caption",
    "style_caption",
    "camera_caption",
)
V0_REQUIRED = ("video_id", "start_frame", "end_frame", "fps")
V1_REQUIRED = ("clip_id", "timestamp")
MAX_FPS = 10_000.0
_INDEX_ID = re.compile(r"^(\d{1,18})_", re.ASCII)  # v0 index "<download_id>_<video_id>-<clip>"
_CLIP_ID = re.compile(r"^(\d{1,18})\.(\d{1,9})$", re.ASCII)  # v1 clip_id "<download_id>.<clip_index>"


def raw_video_path(download_id: int) -> str:
    """MiraData's raw-video layout: <download_id//1000 zero-padded to 9>/<download_id zero-padded to 12>.mp4."""
    return f"{download_id // 1000:09d}/{download_id:012d}.mp4"


class MiraDataAdapter(Adapter):
    name = SOURCE
    patterns = ("*.csv",)

    def _read(self, paths: list[str], options: dict) -> Iterator[Row]:
        tables = []
        for p in paths:
            header = read_csv_header(p)
            if "clip_id" in header and "timestamp" in header:
                tables.append((open_csv(p, V1_REQUIRED, "MiraData v1"), _row_v1))
            elif "start_frame" in header or "index" in header:
                tables.append((open_csv(p, V0_REQUIRED, "MiraData v0"), _row_v0))
            else:
                raise MetadataError(
                    f"{p}: not a MiraData CSV: header needs clip_id,timestamp (v1) or "
                    f"index,video_id,start_frame,end_frame,fps (v0)"
                )
        return self._rows(tables)

    def _rows(self, tables) -> Iterator[Row]:
        for table, fn in tables:
            yield from table.parse_rows(fn)


def _captions(row: dict) -> tuple[TextSpan, ...]:
    out = []
    for c in CAPTIONS:
        t = clean_text(row.get(c))
        if t:
            out.append(TextSpan(t, kind=c))
    return tuple(out)


def _row_v0(row: dict, origin: str) -> Item:
    vid = (row.get("video_id") or "").strip()
    start = end = None
    try:
        vid = check_id(row.get("video_id"), "video_id")
        fps_raw = (row.get("fps") or "").strip()
        if fps_raw:
            fps = parse_number(fps_raw, "fps", positive=True, limit=MAX_FPS)
            sf = parse_number(row.get("start_frame"), "start_frame", integer=True)
            ef = parse_number(row.get("end_frame"), "end_frame", integer=True)
            start, end = sf / fps, ef / fps
            check_span(start, end, "end_frame")
        else:  # no fps: fall back on the H:MM:SS timesteps
            fps = None
            start = parse_hms(row.get("start_timestep"), "start_timestep")
            end = parse_hms(row.get("end_timestep"), "end_timestep")
            check_span(start, end, "end_timestep")
    except BadValue as e:
        return make_failure(SOURCE, origin, e.field, e.reason, video_id=vid)
    index = (row.get("index") or "").strip()
    paths = [f"{vid}.mp4"]
    m = _INDEX_ID.match(index)
    if m:
        paths.append(raw_video_path(int(m.group(1))))
    meta = {
        "version": "v0",
        "clip_id": index or None,
        "fps": fps,
        "start_frame": int(sf) if fps else None,
        "end_frame": int(ef) if fps else None,
        "start_timestep": (row.get("start_timestep") or "").strip() or None,
        "end_timestep": (row.get("end_timestep") or "").strip() or None,
        "youtube_id": youtube_id(vid),
    }
    return make_record(SOURCE, vid, paths, origin, round(start, 6), round(end, 6), _captions(row), meta)


def parse_timestamp_list(value: str | None, field: str = "timestamp") -> tuple[float, float]:
    """"['00:00:10.000', '00:00:20.500']" -> (10.0, 20.5), safely (ast.literal_eval accepts literals only)."""
    if value is None or not value.strip():
        raise BadValue(field, f"missing {field}")
    if len(value) > 200:  # two times are about 30 characters; literal_eval of a long string costs for nothing
        raise BadValue(field, f"{field} is not a list of two times: {show(value)}")
    try:
        obj = ast.literal_eval(value.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise BadValue(field, f"{field} is not a list literal: {show(value)}") from None
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise BadValue(field, f"{field} must be a list of two times, got {show(value)}")
    start = parse_hms(obj[0], field)
    end = parse_hms(obj[1], field)
    check_span(start, end, field)
    return start, end


def _row_v1(row: dict, origin: str) -> Item:
    clip_id = (row.get("clip_id") or "").strip()
    vid = (row.get("video_id") or "").strip()
    try:
        m = _CLIP_ID.match(clip_id)
        if not clip_id:
            raise BadValue("clip_id", "missing clip_id")
        if not m:
            raise BadValue("clip_id", f"clip_id must be '<download_id>.<clip_index>', got {show(clip_id)}")
        download_id = int(m.group(1))
        if vid:
            vid = check_id(vid, "video_id")
        start, end = parse_timestamp_list(row.get("timestamp"))
        fps_raw = (row.get("fps") or "").strip()
        fps = parse_number(fps_raw, "fps", positive=True, limit=MAX_FPS) if fps_raw else None
        secs_raw = (row.get("seconds") or "").strip()
        seconds = parse_number(secs_raw, "seconds", limit=MAX_SECONDS) if secs_raw else None
    except BadValue as e:
        return make_failure(SOURCE, origin, e.field, e.reason, video_id=vid or clip_id.split(".")[0][:MAX_ID_CHARS])
    video_id = vid or f"{download_id:012d}"
    meta = {
        "version": "v1",
        "clip_id": clip_id,
        "download_id": download_id,
        "clip_index": int(m.group(2)),
        "fps": fps,
        "clip_seconds": seconds,
        "url": (row.get("video_url") or "").strip() or None,
        "origin_source": (row.get("source") or "").strip() or None,
        "clip_path": (row.get("file_path") or "").strip() or None,
        "youtube_id": youtube_id(vid) or youtube_id(row.get("video_url")),
    }
    return make_record(SOURCE, video_id, (raw_video_path(download_id),), origin, start, end, _captions(row), meta)


ADAPTER = MiraDataAdapter()
