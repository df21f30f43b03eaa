"""HD-VILA-100M: `hdvila_part{0..10}.jsonl`, one video per line with its clip spans ("HH:MM:SS.mmm").

One record per clip span of `<video_id>.mp4`. A line that is not a JSON object with a video id and a clip
list is one Failure; a clip with a bad span is a Failure for that clip only. The release has no text: the
candidate subtitle sidecar `<video_id>.en.vtt` goes into meta["subtitle_paths"], and the ingest worker
calls `parse_vtt` on it when the file exists (then keeps the cues inside the span: base.texts_in_span).
"""
from __future__ import annotations

import functools
import html
import json
import re
from typing import Iterator

from longvid.operators.records import TextSpan
from longvid.operators.sources.base import (
    Adapter,
    BadValue,
    Item,
    Row,
    check_id,
    check_span,
    json_type,
    jsonl_lines,
    loads,
    make_failure,
    make_record,
    merge_rolling,
    parse_hms,
    youtube_id,
)

SOURCE = "hdvila"


class HDVilaAdapter(Adapter):
    name = SOURCE
    patterns = ("hdvila_part*.jsonl", "*.jsonl")

    def _read(self, paths: list[str], options: dict) -> Iterator[Row]:
        for p in paths:  # open each now: a missing/unreadable file fails before any work
            jsonl_lines(p).close()
        return self._rows(paths)

    def _rows(self, paths: list[str]) -> Iterator[Row]:
        for p in paths:
            for n, line in jsonl_lines(p):
                origin = f"{p}:{n}"
                yield Row(origin, functools.partial(_line, line, origin))


def _line(line: str, origin: str) -> list[Item]:
    try:
        obj = loads(line)
    except json.JSONDecodeError as e:
        raise BadValue("line", f"malformed JSON line ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise BadValue("line", "JSON line nested too deep to read") from None
    if not isinstance(obj, dict):
        raise BadValue("line", f"expected a JSON object, got {json_type(obj)}")
    raw_id = obj.get("video_id")
    url = obj.get("url") if isinstance(obj.get("url"), str) else None
    if raw_id is None and url:
        raw_id = youtube_id(url)
    vid = check_id(raw_id, "video_id")
    clips = obj.get("clip")
    if not isinstance(clips, list) or not clips:
        what = "missing clip list" if clips is None else f"clip must be a non-empty list, got {json_type(clips)}"
        raise BadValue("clip", what, video_id=vid)
    yt = youtube_id(vid) or youtube_id(url)
    out: list[Item] = []
    for i, clip in enumerate(clips):
        field = f"clip[{i}].span"
        clip_id = clip.get("clip_id") if isinstance(clip, dict) else None
        try:
            if not isinstance(clip, dict):
                raise BadValue(f"clip[{i}]", f"clip must be an object, got {json_type(clip)}")
            span = clip.get("span")
            if not isinstance(span, list) or len(span) != 2:
                raise BadValue(field, f"span must be a list of two times, got {json_type(span)}")
            start = parse_hms(span[0], field)
            end = parse_hms(span[1], field)
            check_span(start, end, field)
            if clip_id is not None:
                clip_id = check_id(clip_id, f"clip[{i}].clip_id")
        except BadValue as e:
            out.append(make_failure(SOURCE, origin, e.field, e.reason, video_id=vid))
            continue
        meta = {
            "clip_id": clip_id,
            "clip_index": i,
            "url": url,
            "youtube_id": yt,
            "subtitle_paths": [f"{vid}.en.vtt"],
            "clip_path": f"video_clips/{vid}/{clip_id}" if clip_id else None,
        }
        out.append(make_record(SOURCE, vid, (f"{vid}.mp4",), origin, start, end, (), meta))
    return out


# ---------------------------------------------------------------------------------------------------- WebVTT

_TIMING = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)")
_TAG = re.compile(r"<[^>]*>")


def parse_vtt(text: str, max_span: float = 10.0) -> list[TextSpan]:
    """WebVTT -> subtitle TextSpans (seconds, kind "subtitle"): tags and inline timestamps stripped,
    entities unescaped, NOTE/STYLE/REGION blocks skipped, rolling-caption repeats (YouTube auto subtitles
    show every line twice) merged away. Cues with an unreadable timing line are skipped."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    blocks = re.split(r"\n\n+", text)  # whitespace-only lines belong to the cue (YouTube)
    cues: list[tuple[float, float, str]] = []
    for block in blocks:
        lines = block.split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            continue
        head = lines[0].strip()
        if head.startswith("WEBVTT") or head.startswith(("NOTE", "STYLE", "REGION")):
            if not any("-->" in ln for ln in lines):
                continue
        idx = next((k for k, ln in enumerate(lines) if "-->" in ln), None)
        if idx is None:
            continue
        m = _TIMING.match(lines[idx])
        if not m:
            continue
        try:
            start = parse_hms(m.group(1), "cue")
            end = parse_hms(m.group(2), "cue")
        except BadValue:
            continue
        payload = []
        for ln in lines[idx + 1 :]:
            t = html.unescape(_TAG.sub("", ln)).replace("\u00a0", " ").strip()
            if t:
                payload.append(t)
        if payload and end >= start:
            cues.append((start, end, " ".join(payload)))
    # a rolling cue repeats the line already shown, then adds one: merge_rolling drops the repeat
    return merge_rolling(cues, kind="subtitle", max_span=max_span)


ADAPTER = HDVilaAdapter()
