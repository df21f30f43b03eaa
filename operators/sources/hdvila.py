"""HD-VILA-100M: `hdvila_part{0..10}.jsonl`, one video per line with its clip spans ("HH:MM:SS.mmm").

One record per clip span of `<video_id>.mp4`. A line that is not a JSON object with a video id and a clip
list is one Failure; a clip with a bad span is a Failure for that clip only. The release has no text: the
candidate subtitle sidecar `<video_id>.en.vtt` goes into meta["subtitle_paths"], and the ingest worker
calls `parse_vtt` on it when the file exists (then keeps the cues inside the span: base.texts_in_span).
"""
from __future__ import annotations

import html
import json
import re
from typing import Iterator

from longvid.operators.records import TextSpan
from longvid.operators.sources.base import (
    Adapter,
    BadValue,
    Item,
    check_span,
    jsonl_lines,
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

    def _read(self, paths: list[str], options: dict) -> Iterator[Item]:
        for p in paths:  # open each now: a missing/unreadable file fails before any work
            jsonl_lines(p).close()
        return self._items(paths)

    def _items(self, paths: list[str]) -> Iterator[Item]:
        for p in paths:
            for n, line in jsonl_lines(p):
                yield from _line(line, f"{p}:{n}")


def _line(line: str, origin: str) -> Iterator[Item]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        yield make_failure(SOURCE, origin, "line", f"malformed JSON line ({e.msg} at column {e.colno})")
        return
    if not isinstance(obj, dict):
        yield make_failure(SOURCE, origin, "line", f"expected a JSON object, got {type(obj).__name__}")
        return
    raw_id = obj.get("video_id")
    url = obj.get("url") if isinstance(obj.get("url"), str) else None
    if raw_id is None and url:
        raw_id = youtube_id(url)
    if not isinstance(raw_id, str) or not raw_id.strip():
        what = "missing video_id" if raw_id is None else f"video_id must be a non-empty string, got {raw_id!r}"
        yield make_failure(SOURCE, origin, "video_id", what)
        return
    vid = raw_id.strip()
    clips = obj.get("clip")
    if not isinstance(clips, list) or not clips:
        what = "missing clip list" if clips is None else "clip must be a non-empty list"
        yield make_failure(SOURCE, origin, "clip", what, video_id=vid)
        return
    yt = youtube_id(vid) or youtube_id(url)
    for i, clip in enumerate(clips):
        field = f"clip[{i}].span"
        clip_id = clip.get("clip_id") if isinstance(clip, dict) else None
        try:
            if not isinstance(clip, dict):
                raise BadValue(f"clip[{i}]", f"clip must be an object, got {type(clip).__name__}")
            span = clip.get("span")
            if not isinstance(span, list) or len(span) != 2:
                raise BadValue(field, f"span must be a list of two times, got {span!r}")
            start = parse_hms(span[0], field)
            end = parse_hms(span[1], field)
            check_span(start, end, field)
            if clip_id is not None and not isinstance(clip_id, str):
                raise BadValue(f"clip[{i}].clip_id", f"clip_id must be a string, got {clip_id!r}")
        except BadValue as e:
            yield make_failure(SOURCE, origin, e.field, e.reason, video_id=vid)
            continue
        meta = {
            "clip_id": clip_id,
            "clip_index": i,
            "url": url,
            "youtube_id": yt,
            "subtitle_paths": [f"{vid}.en.vtt"],
            "clip_path": f"video_clips/{vid}/{clip_id}" if clip_id else None,
        }
        yield make_record(SOURCE, vid, (f"{vid}.mp4",), origin, start, end, (), meta)


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
