"""One SourceRecord -> one Sample: locate, probe, choose the frames, decode, resize, encode, prompt.

This is the per-record body of the ingest job. It raises `RecordError` (stage, reason, field, file) for any bad
input; the caller (operators.isolate, pipelines.ingest) turns that into a Failure row.

A sample always has text: a record whose span holds no text that makes a conversation is a failure of stage
"prompt" (checked once the frames are chosen, before decoding), never a sample with empty conversations.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from longvid.operators import storage
from longvid.operators.errors import RecordError, TransientError
from longvid.operators.frames import dhash64
from longvid.operators.mp4 import DEFAULT_CRF, encode_mp4
from longvid.operators.probe import VideoInfo, probe
from longvid.operators.decode import decode, snap_error_s
from longvid.operators.prompt import build_conversations, sample_text, time_msg
from longvid.operators.records import Sample, SourceRecord, TextSpan
from longvid.operators.frame_rule import PROFILES, FrameSelection, Profile, select_frames, span_times
from longvid.operators.sources.base import texts_in_span


@dataclass(frozen=True)
class ProcessOptions:
    """Per-record settings of the ingest job (plain values: they travel to Ray workers)."""

    videos_root: str
    profile: str = "long"
    backend: str = "pyav"
    decode_mode: str = "auto"  # auto | keyframe (snap sparse targets to keyframes; true times recorded)
    hwaccel: str = "none"  # none | auto | cuda (operators/decode.py: NVDEC where the node has a CUDA device)
    deblock: str = "all"  # all | targets (operators/decode.py: loop filter only on the chosen frames; not exact)
    crf: int = DEFAULT_CRF  # of the stored mp4's coding (operators.mp4)
    decoder_threads: int | None = 1  # one CPU per Ray task
    resize: str = "torch"  # torch: antialiased bicubic, 1-2/255 off pil on ~0.1% of values, much faster; pil: exact
    long_time_msg: bool = False  # use the per-frame-times variant of the timestamp message

    @property
    def profile_obj(self) -> Profile:
        return PROFILES[self.profile]


def locate(record: SourceRecord, videos_root: str) -> str:
    """The URI of the first candidate path that exists under the video root.

    Paths that escape the root are refused (RecordError, stage locate); no candidate found is a locate failure.
    """
    if not record.video_paths:
        raise RecordError("locate", "the record names no video path", "video_paths", record.origin)
    tried = []
    for rel in record.video_paths:
        uri = storage.safe_join(videos_root, rel)
        tried.append(uri)
        if storage.exists(uri):
            return uri
    raise RecordError("locate", f"video not found (tried {', '.join(tried)})", "video_paths", tried[0])


def _open(uri: str):
    return uri if not storage.is_s3(uri) else storage.open_read(uri)


def _sidecar_texts(record: SourceRecord, videos_root: str) -> list[TextSpan]:
    """Subtitles next to the video (HD-VILA `<video_id>.en.vtt`), when present. A bad sidecar is ignored; one whose
    path leads out of the video root (`..`, a symbolic link) is the record's locate failure."""
    paths = record.meta_dict().get("subtitle_paths") or ()
    for rel in paths:
        try:
            uri = storage.safe_join(videos_root, rel)
        except RecordError as e:
            raise RecordError("locate", f"subtitle: {e.reason}", "subtitle_paths", e.file) from None
        try:
            if not storage.exists(uri):
                continue
            from longvid.operators.sources.hdvila import parse_vtt

            return list(parse_vtt(storage.read_text(uri)))
        except storage.StorageError as e:
            if e.transient:  # not the sidecar's fault: the unit is retried (process_record -> TransientError)
                raise
            continue
        except (RecordError, OSError, ValueError, UnicodeDecodeError):
            continue
    return []


def _no_text(record: SourceRecord, sidecar: list[TextSpan], in_span: list[TextSpan], start: float,
             end: float) -> tuple[str, str]:
    """(field, reason) for a record that makes no conversation: which text was missing, and where."""
    where = record.origin or record.key
    subs = list(record.meta_dict().get("subtitle_paths") or ())
    if not record.texts and not sidecar:
        if subs:
            return "subtitle_paths", (f"no text: {where} has no caption, and the subtitle file "
                                      f"{' / '.join(subs)} is missing under the video root, unreadable or holds no cue")
        return "texts", f"no text: {where} gives this video no caption, narration or other text"
    if not in_span:
        n = len(record.texts) + len(sidecar)
        return "span", f"no text inside the span {start:.1f} - {end:.1f} s: the {n} texts of {where} lie outside it"
    kinds = ", ".join(sorted({t.kind for t in in_span}))
    return "texts", f"no usable text: {where} has only texts of kind {kinds}, which make no conversation"


def _storage_cause(exc: BaseException) -> storage.StorageError | None:
    """The StorageError behind an exception (operators wrap I/O errors in RecordError), if any."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, storage.StorageError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def process_record(record: SourceRecord, opts: ProcessOptions) -> Sample:
    """Turn one record into a Sample (json info + mp4 bytes).

    Raises RecordError for bad input (a permanent storage error, e.g. access denied, is stage "read"), and
    TransientError when storage failed for a reason that is not the record's (the unit is then retried).
    """
    try:
        return _process(record, opts)
    except (RecordError, storage.StorageError) as e:
        cause = _storage_cause(e)
        if cause is None or isinstance(cause, storage.ObjectNotFound):
            raise
        if cause.transient:
            raise TransientError(f"{cause.uri}: {cause.reason}") from None
        raise RecordError("read", f"storage error: {cause.reason}", "uri", cause.uri) from None


def select_record_frames(record: SourceRecord, info: VideoInfo, profile: Profile, uri: str = "") -> FrameSelection:
    """The frames a record takes from its probed video (operators.frame_rule.select_frames): a whole video by the
    whole-video rule, a record with `start`/`end` (HD-VILA and MiraData clips, Ego4D windows) by the reference's
    span rule (frame count from the span's seconds, `get_index` positions from the span's first frame). A span the
    rule cannot take (empty, shorter than one second, past the end of the video) is RecordError stage "sample"."""
    spanned = record.start is not None or record.end is not None
    try:
        return select_frames(info.num_frames, info.fps, profile, record.start, record.end)
    except ValueError as e:
        raise RecordError("sample", str(e), "span" if spanned else "duration", uri or record.origin) from None


def frame_times(chosen: FrameSelection, indices: list[int], fps: float, spanned: bool) -> list[float]:
    """Times of the decoded frames (the chosen frames, or the keyframes `decode_mode=keyframe` snapped to): a
    whole video's round(index / fps, 1) from frame 0, a span's relative to its first frame (`span_times`; a keyframe
    before the span's first frame has a negative time)."""
    if spanned:
        return list(span_times([i - chosen.start_index for i in indices], fps))
    return [round(i / fps, 1) for i in indices]


def _process(record: SourceRecord, opts: ProcessOptions) -> Sample:
    profile = opts.profile_obj
    uri = locate(record, opts.videos_root)
    key = record.key
    spanned = record.start is not None or record.end is not None
    src = _open(uri)
    try:
        info = probe(src)
        chosen = select_record_frames(record, info, profile, uri)
        # only text that belongs to the sampled span (subtitles and narrations cover the whole video)
        sidecar = _sidecar_texts(record, opts.videos_root)
        texts = texts_in_span(list(record.texts) + sidecar, chosen.start, chosen.end)
        if not build_conversations(texts, chosen.start, chosen.end, chosen.duration, "", key):
            field, reason = _no_text(record, sidecar, texts, chosen.start, chosen.end)
            raise RecordError("prompt", reason, field, uri)
        mode = opts.decode_mode if opts.decode_mode in ("auto", "keyframe") else "auto"
        res = decode(src, chosen.indices, info, size=profile.resolution, backend=opts.backend, mode=mode,
                     threads=opts.decoder_threads, resize_method=opts.resize, hwaccel=opts.hwaccel,
                     deblock=opts.deblock)
    finally:
        if hasattr(src, "close"):
            src.close()
    indices = [int(i) for i in res.indices]
    times = frame_times(chosen, indices, info.fps, spanned)
    n = len(indices)
    frames = res.frames
    try:
        mp4 = encode_mp4(frames, fps=max(n / chosen.duration, 0.01) if chosen.duration > 0 else 1.0, crf=opts.crf)
    except ValueError as e:
        raise RecordError("encode", str(e), "frames", uri) from None
    msg = time_msg(chosen.duration, n, frame_times=times, long=opts.long_time_msg)
    conversations = build_conversations(texts, chosen.start, chosen.end, chosen.duration, msg, key)
    if not conversations:  # the check above holds; this one guards the promise against a future change
        raise RecordError("prompt", f"{record.origin or record.key}: no conversation for this sample", "texts", uri)
    meta = {k: v for k, v in record.meta_dict().items() if _jsonable(v)}
    sample_info: dict[str, Any] = {
        "key": key,
        "source": record.source,
        "video_id": record.video_id,
        "uri": uri,  # redacted by the writer (operators/write.py)
        "start": chosen.start,
        "end": chosen.end,
        "duration": chosen.duration,
        "fps": info.fps,
        "num_frames": n,
        "frame_indices": indices,
        "frame_times": times,
        "time_msg": msg,
        "conversations": conversations,
        "profile": profile.name,
        "resolution": profile.resolution,
        "sample_type": profile.sample_type,
        "video_width": info.width,
        "video_height": info.height,
        "video_duration": info.duration,
        "texts": [{"text": t.text, "start": t.start, "end": t.end, "kind": t.kind} for t in texts],
        "meta": meta,
    }
    sample_info.update(decode_knobs(opts, chosen.indices, indices, info.fps, res.stats.decoder))
    return Sample(
        info=sample_info,
        mp4=mp4,
        text=sample_text(texts),
        frame_hashes=[dhash64(f) for f in frames],
    )


def decode_knobs(opts: ProcessOptions, rule: list[int], used: list[int], fps: float, decoder: str) -> dict[str, Any]:
    """What a sample's json records of the opt-in decode knobs; nothing at the defaults (the json is unchanged):
    with --decode-mode keyframe the mode and how far the snapped frames lie from the rule's (seconds, max and mean
    over the sample's frames); with --hwaccel other than none the decoder that produced the frames; with --deblock
    targets that setting (the frames' references were decoded without the loop filter)."""
    out: dict[str, Any] = {}
    if opts.decode_mode != "auto":
        mx, mean = snap_error_s(rule, used, fps)
        out["decode_mode"] = opts.decode_mode
        out["snap_error_s"] = {"max": round(mx, 6), "mean": round(mean, 6)}
    if opts.hwaccel != "none":
        out["decoder"] = decoder
    if opts.deblock != "all":
        out["deblock"] = opts.deblock
    return out


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def manifest_row(sample: Sample, shard: str, unit: int) -> dict[str, Any]:
    """The manifest row of a written sample (manifests.schema.MANIFEST_SCHEMA)."""
    i = sample.info
    return {
        "key": i["key"],
        "shard": shard,
        "unit": unit,
        "source": i["source"],
        "video_id": i["video_id"],
        "uri": i["uri"],
        "start": i["start"],
        "end": i["end"],
        "duration": i["duration"],
        "fps": i["fps"],
        "num_frames": i["num_frames"],
        "frame_indices": i["frame_indices"],
        "frame_times": i["frame_times"],
        "width": i["video_width"],
        "height": i["video_height"],
        "resolution": i["resolution"],
        "profile": i["profile"],
        "text": sample.text,
        "num_turns": len(i["conversations"]),
        "bytes": len(sample.mp4),
        "sha256": hashlib.sha256(sample.mp4).hexdigest(),
        "frame_hashes": sample.frame_hashes,
    }

