"""Ego4D: `ego4d.json` (at the root or under v2/) + `narration.json` (v1) / `narrations.json`.

One record per video, or per window of `window_sec` (default 480 s) for longer videos; the last window is
shorter but at least `min_window_sec` (default 8 s), else it is merged into the previous one. `window_sec` is 0
(whole videos) or at least 1 s, and a video that would need more than MAX_WINDOWS windows is a failure. Texts:
narrations of both passes (points in time, "#C"/"#O" tags and "#unsure"/"#summary" markers removed) and
summaries (spans) whose middle lies in the window, clipped to it. Videos in a val/test split of an Ego4D
benchmark are still ingested: meta["splits"] and meta["eval_split"] let the audit flag them.
Videos: `v2/full_scale/<video_uid>.mp4`, then `v1/full_scale/<video_uid>.mp4`. Files are told apart by
name: `*narration*` -> narrations, anything else -> the video list. A narration entry of the wrong shape (not an
object, a pass that is not an object, narrations/summaries that are not lists) makes its video a failure naming
the narration file and field; one malformed narration or summary inside a list is dropped and counted.
"""
from __future__ import annotations

import functools
import os
import re
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
    parse_number,
    show,
)

SOURCE = "ego4d"
SPLIT_FIELDS = ("split_em", "split_av", "split_fho")
PASSES = ("narration_pass_1", "narration_pass_2")
_TAG = re.compile(r"#\s*(?:unsure|summary)\b[:.]?", re.IGNORECASE)
_WHO = re.compile(r"(^|\s)#\s*([CO])\b", re.IGNORECASE)
MAX_WINDOWS = 10_000  # windows of one video (a week of video in 60 s windows)
MAX_FPS = 10_000.0


def clean_narration(text: Any) -> str:
    """'#C C picks a bag' -> 'C picks a bag'; '#O man X ...' -> 'man X ...'; #unsure/#summary dropped."""
    if not isinstance(text, str):
        return ""
    t = _TAG.sub(" ", text)
    t = _WHO.sub(r"\1", t)
    return clean_text(t)


def windows(duration: float, window_sec: float | None, min_window_sec: float) -> list[tuple[float, float] | None]:
    """[None] (whole video) if it fits one window, else consecutive windows covering [0, duration]."""
    if not window_sec or duration <= window_sec:
        return [None]
    if duration / window_sec > MAX_WINDOWS:
        raise BadValue("duration_sec", f"duration_sec {duration:g} s makes more than {MAX_WINDOWS} windows of "
                                       f"{window_sec:g} s (window_sec)")
    out: list[list[float]] = []
    t = 0.0
    while t < duration - 1e-9:
        out.append([t, min(t + window_sec, duration)])
        t += window_sec
    if len(out) > 1 and out[-1][1] - out[-1][0] < min_window_sec:
        last = out.pop()
        out[-1][1] = last[1]
    return [(round(float(a), 3), round(float(b), 3)) for a, b in out]


class Ego4DAdapter(Adapter):
    name = SOURCE
    patterns = (
        "ego4d.json",
        "v2/ego4d.json",
        "narrations.json",
        "narration.json",
        "v2/annotations/narration.json",
        "v2/annotations/narrations.json",
        "v1/annotations/narration.json",
    )
    # window_sec: 0 = whole videos, else at least 1 s (a tiny window would make unbounded windows)
    options_spec = {"window_sec": (float, 480.0, 1.0), "min_window_sec": (float, 8.0, None)}

    def _read(self, paths: list[str], options: dict) -> Iterator[Row]:
        narr = [p for p in paths if "narration" in os.path.basename(p).lower()]
        vids = [p for p in paths if p not in narr]
        if not vids:
            raise MetadataError(f"ego4d: no video list (ego4d.json) among {', '.join(paths)}")
        # a root holding both <root>/ego4d.json and <root>/v2/ego4d.json: the first one is used
        firsts: dict[str, str] = {}
        for p in vids:
            firsts.setdefault(os.path.basename(p), p)
        vids = [p for p in vids if firsts[os.path.basename(p)] == p]
        return self._items(vids, narr, options)

    def _items(self, vid_files, narr_files, options) -> Iterator[Row]:
        narrations: dict[str, tuple[str, Any]] = {}  # video_uid -> (file, entry)
        for p in narr_files:
            data = load_json(p)
            if not isinstance(data, dict):
                raise MetadataError(f"{p}: expected a JSON object {{video_uid: {{narration_pass_1: ...}}}}")
            for k, v in data.items():
                if k in narrations and isinstance(narrations[k][1], dict) and isinstance(v, dict):
                    # passes missing from the first file come from later ones
                    narrations[k] = (narrations[k][0], {**v, **narrations[k][1]})
                else:
                    narrations.setdefault(k, (p, v))
        for p in vid_files:
            data = load_json(p)
            if isinstance(data, dict) and isinstance(data.get("videos"), list):
                videos = data["videos"]
            elif isinstance(data, list):
                videos = data
            else:
                raise MetadataError(f"{p}: expected ego4d.json with a top-level 'videos' list")
            for i, v in enumerate(videos):
                origin = f"{p}:videos[{i}]"
                yield Row(origin, functools.partial(_video, v, origin, narrations, options))


def _video(v: Any, origin: str, narrations: dict, options: dict) -> list[Item]:
    if not isinstance(v, dict):
        raise BadValue("videos[]", f"expected an object, got {json_type(v)}")
    uid = check_id(v.get("video_uid"), "video_uid")
    if "/" in uid or "\\" in uid or uid.startswith("."):
        raise BadValue("video_uid", f"video_uid is not a plain id: {show(uid)}", video_id=uid)
    try:
        vm = v.get("video_metadata")
        if vm is None:
            vm = {}
        if not isinstance(vm, dict):
            raise BadValue("video_metadata", f"video_metadata must be an object, got {json_type(vm)}")
        dur = v.get("duration_sec")
        field = "duration_sec"
        if dur is None:
            dur, field = vm.get("mp4_duration_sec"), "video_metadata.mp4_duration_sec"
        if dur is None:
            raise BadValue("duration_sec", "missing duration_sec (and video_metadata.mp4_duration_sec)")
        duration = parse_number(dur, field, positive=True, limit=MAX_SECONDS)
        fps_raw = vm.get("fps")
        fps = parse_number(fps_raw, "video_metadata.fps", positive=True, limit=MAX_FPS) if fps_raw is not None else None
        scenarios = v.get("scenarios")
        if scenarios is not None and not isinstance(scenarios, list):
            raise BadValue("scenarios", f"scenarios must be a list, got {json_type(scenarios)}")
        narr_file, entry = narrations.get(uid, ("", None))
        texts, dropped = _texts(entry, narr_file)
        wins = windows(duration, options["window_sec"], options["min_window_sec"])
    except BadValue as e:
        return [make_failure(SOURCE, origin, e.field, e.reason, video_id=uid)]
    splits = {f[len("split_"):]: v.get(f) for f in SPLIT_FIELDS if isinstance(v.get(f), str) and v.get(f)}
    meta = {
        "duration_sec": duration,
        "fps": fps,
        "num_frames": vm.get("num_frames"),
        "width": vm.get("display_resolution_width"),
        "height": vm.get("display_resolution_height"),
        "scenarios": [s for s in scenarios or [] if isinstance(s, str)] or None,
        "splits": splits or None,
        "eval_split": any(s in ("val", "test") for s in splits.values()),
        "storage": next((v[k] for k in ("s3_location", "s3_path", "canonical_s3_location")
                         if isinstance(v.get(k), str) and v.get(k)), None),
        "narration_status": entry.get("status") if isinstance(entry, dict) else None,
        "texts_dropped": dropped or None,
    }
    paths = (f"v2/full_scale/{uid}.mp4", f"v1/full_scale/{uid}.mp4")
    out: list[Item] = []
    for w in wins:
        if w is None:
            out.append(make_record(SOURCE, uid, paths, origin, None, None, texts, meta))
            continue
        s, e = w
        last = w is wins[-1]
        inside = [t for t in (_clip(t, s, e, last) for t in texts) if t is not None]
        out.append(make_record(SOURCE, uid, paths, origin, s, e, inside,
                               {**meta, "window": [s, e], "windows": len(wins)}))
    return out


def _clip(t: TextSpan, s: float, e: float, last: bool) -> TextSpan | None:
    """A text of window [s, e): a point inside it, or a span whose middle is inside (clipped to it)."""
    if t.start is None:
        return t
    point = t.start if t.end is None or t.end == t.start else (t.start + t.end) / 2
    if not (s <= point < e or (last and point == e)):
        return None
    if t.end is None or t.end == t.start:
        return t
    if t.start >= s and t.end <= e:
        return t
    return TextSpan(t.text, max(t.start, s), min(t.end, e), t.kind)


def _texts(entry: Any, narr_file: str) -> tuple[list[TextSpan], int]:
    """Narrations of both passes and summaries, sorted by time. An entry of the wrong shape is a BadValue naming
    the narration file and field; a malformed narration or summary is dropped and counted."""
    if entry is None:
        return [], 0
    if not isinstance(entry, dict):
        raise BadValue("narrations", f"{narr_file}: the entry of this video must be an object, got {json_type(entry)}")
    out: list[tuple[float, int, TextSpan]] = []
    dropped = 0
    seen: set[tuple[float, str]] = set()
    for pi, pname in enumerate(PASSES):
        ps = entry.get(pname)
        if ps is None:
            continue
        if not isinstance(ps, dict):
            raise BadValue(pname, f"{narr_file}: {pname} must be an object, got {json_type(ps)}")
        items = {}
        for kind in ("narrations", "summaries"):
            items[kind] = ps.get(kind) if ps.get(kind) is not None else []
            if not isinstance(items[kind], list):
                raise BadValue(f"{pname}.{kind}", f"{narr_file}: {pname}.{kind} must be a list, "
                                                  f"got {json_type(items[kind])}")
        for n in items["narrations"]:
            try:
                if not isinstance(n, dict):
                    raise BadValue("narration", "not an object")
                ts = parse_number(n.get("timestamp_sec"), "timestamp_sec", limit=MAX_SECONDS)
            except BadValue:
                dropped += 1
                continue
            text = clean_narration(n.get("narration_text"))
            if not text:
                dropped += 1
                continue
            k = (round(ts, 3), text)
            if k in seen:  # identical narration in both passes
                continue
            seen.add(k)
            out.append((ts, pi, TextSpan(text, round(ts, 3), round(ts, 3), "narration")))
        for sm in items["summaries"]:
            try:
                if not isinstance(sm, dict):
                    raise BadValue("summary", "not an object")
                s = parse_number(sm.get("start_sec"), "start_sec", limit=MAX_SECONDS)
                e = parse_number(sm.get("end_sec"), "end_sec", limit=MAX_SECONDS)
                if e <= s:
                    raise BadValue("end_sec", "empty span")
            except BadValue:
                dropped += 1
                continue
            text = clean_narration(sm.get("summary_text"))
            if not text:
                dropped += 1
                continue
            out.append((s, pi, TextSpan(text, round(s, 3), round(e, 3), "summary")))
    out.sort(key=lambda x: (x[0], x[1], x[2].kind, x[2].text))
    return [t for _, _, t in out], dropped


ADAPTER = Ego4DAdapter()
