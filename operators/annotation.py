"""One AnnotationRecord (operators.mixture) -> one sample: the per-record body of `longvid ingest --mixture`.

    sample = process_annotation(record, ProcessOptions(videos_root="", profile="long"))
    sample.info        # the `<key>.json`
    sample.payload     # the other tar members: {"mp4": ...} | {"0.jpg": ..., "1.png": ...} | {}

Raises RecordError (stage, reason, field, file) for a record that cannot become a sample: the field is the
annotation's (`video`, `image`, `image[1]`, `start`, `end`), the reason says what is wrong with the file, and the
caller (pipelines.ingest.run_unit) writes the failure row with the annotation file and line. A storage error that is
not the record's fault is a TransientError (the unit is retried), as in operators.process.

Video records (`media_type: video`):
- the frames by the reference's rules: a whole video by the whole-video rule (`select_frames`), a record with
  `start`/`end` by the span rule (`select_span_frames`), each resized to the profile's square and stored as the
  `mp4` member (one video frame per sampled frame), as the raw ingest does;
- `video_read_type` says how the media is read: any container PyAV reads (default, `decord`, `av`: probe + decode in
  the isolated decoder child); `gif`: the GIF's frames at 1 fps, as the reference's `read_frames_gif` assumes (a GIF
  record with a span is read as a container, as the reference's span path does); `img` / `frame`: a folder of frame
  images (`.jpg`, `.jpeg`, `.png`; other files are ignored) in the order of the number after the last `_` of their
  names (`clip_12.jpg`; names without one first), at 1 fps (3 fps for a folder whose path holds `tvqa`, as the
  reference's `read_frames_img` has it). A whole folder is sampled by the whole-video rule counted at 1 fps (the
  reference does not pass the folder's fps to `get_frame_indices`); a folder with a span by the reference's
  `read_frames_img` clip rule (`_get_index_by_time`: frames from max(1, round(start * fps)) to
  min(round(end * fps), last), frame times in seconds of the folder);
- the conversations kept whole (every turn, as annotated) with the timestamp message inserted exactly as the
  reference's `preprocess_multimodal` does (operators.prompt.insert_time_msg).

Image records (`media_type: image`, one path or a list): each image is decoded (PIL, converted to RGB, as the
reference's `process_image`; no EXIF rotation, the reference applies none) to prove it reads, and stored as member
`<k>.jpg` or `<k>.png` (k = 0, 1, ... in the record's order). What is stored, and why: the ORIGINAL FILE BYTES when
the file is a JPEG or a PNG whose longest side is at most MAX_IMAGE_SIDE (6 x 448 = 2688, the largest `anyres_nopad`
grid at 448). The encoder then decodes exactly the pixels the reference decodes and tiles them at 224 or at 448
(model/anyres.py: the grid is chosen from the image's own size, the tiles are resized from its own pixels), so one
ingest serves both resolutions, bit for bit, at the file's own size (a lossless re-encoding of a photograph is
2-4x larger than its JPEG). Any other format (GIF, WebP, BMP, ...) is stored as a lossless PNG of its RGB pixels.
A larger image is stored as a PNG resized (PIL bicubic, aspect kept) so that its longest side is MAX_IMAGE_SIDE:
`image_sizes` keeps the original size, from which the encoder still chooses the reference's grid, and its tiles are
then resized from the stored pixels (a second bicubic resize, the only place the tiles are not bit-exact).
Conversations: `<image>` moved to the start of its turn as `preprocess_multimodal` does for images (no message).

Text-only records (`media_type: text`): the json only, conversations as annotated.

Every sample json carries the annotation's `id`, `dataset`, `annotation` ("file:line"), `media_type` and its
`video` / `image` path(s) as written, so a sample traces back to its annotation line. The manifest's `sha256` is of
the sample's payload members and its conversations (a released mixture asks many questions about one video: the
media bytes alone would make those samples exact duplicates of each other); `text` is the annotated conversation
text without `<image>`, for the audit.

Over ~500 lines (just): one job, the per-record body of a mixture, by media type (text, images, a video read as a
container, a GIF or a frame folder); the frame rule it applies is frame_rule.py's.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longvid.operators import storage
from longvid.operators.decode import decode
from longvid.operators.errors import RecordError, TransientError
from longvid.operators.frames import dhash64, resize_one
from longvid.operators.mixture import AnnotationRecord
from longvid.operators.mp4 import MAX_FPS, encode_mp4
from longvid.operators.probe import probe
from longvid.operators.process import ProcessOptions, _storage_cause
from longvid.operators.prompt import insert_time_msg, time_msg
from longvid.operators.frame_rule import (LOCAL_NUM_FRAMES, FrameSelection, Profile, frame_indices, select_frames,
                                          select_span_frames)

MAX_IMAGE_SIDE = 6 * 448  # the largest anyres_nopad grid (6x6) at the largest encoder resolution
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}  # stored as the original file bytes (within MAX_IMAGE_SIDE)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")  # frame images of a frame folder (the reference's read_frames_img)
FRAME_FOLDER_FPS = 1.0  # the reference's rate for a frame folder ("unknown data taken as 1 fps")
TVQA_FPS = 3.0  # ... except a folder whose path holds "tvqa"
GIF_FPS = 1.0  # the reference's read_frames_gif
FRAME_FOLDER_TYPES = ("img", "frame")

_FRAME_NUMBER = re.compile(r"_(\d+)\.(?:jpg|jpeg|png)$")


@dataclass
class AnnotatedSample:
    """A processed annotation record: `<key>.json` (`info`), the other members (`payload`, extension -> bytes) and
    what its manifest row needs."""

    info: dict[str, Any]
    payload: dict[str, bytes]
    text: str = ""
    frame_hashes: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.info["key"]

    def manifest_row(self, unit: int) -> dict[str, Any]:
        """The sample's manifest row (manifests.schema.MANIFEST_SCHEMA; the writer fills in `shard`). Columns
        that do not apply to an image or text sample (span, fps, frames) are null."""
        i = self.info
        h = hashlib.sha256()
        for ext in sorted(self.payload):
            h.update(self.payload[ext])
        h.update(json.dumps(i["conversations"], sort_keys=True, ensure_ascii=False).encode())
        video = i["media_type"] == "video"
        sizes = i.get("image_sizes") or [[None, None]]
        return {
            "key": i["key"],
            "shard": "",
            "unit": unit,
            "source": i["source"],
            "video_id": i["video_id"],
            "uri": i.get("uri", ""),
            "start": i.get("start"),
            "end": i.get("end"),
            "duration": i.get("duration"),
            "fps": i.get("fps"),
            "num_frames": i.get("num_frames"),
            "frame_indices": i.get("frame_indices"),
            "frame_times": i.get("frame_times"),
            "width": i["video_width"] if video else sizes[0][0],
            "height": i["video_height"] if video else sizes[0][1],
            "resolution": i.get("resolution"),
            "profile": i["profile"],
            "text": self.text,
            "num_turns": len(i["conversations"]),
            "bytes": sum(len(b) for b in self.payload.values()),
            "sha256": h.hexdigest(),
            "frame_hashes": self.frame_hashes,
        }


def record_video_id(rec: AnnotationRecord) -> str:
    """The `video_id` of a record's sample and failure rows: its annotation id as text ("" without one)."""
    return "" if rec.id is None else str(rec.id)


def media_field(rec: AnnotationRecord, k: int = 0) -> str:
    """The annotation field of the record's k-th media path: `video`, `image`, or `image[k]` for a list."""
    if rec.media_type == "text":
        return "conversations"
    return f"image[{k}]" if rec.image_list else rec.media_type


def conversation_text(rec: AnnotationRecord) -> str:
    """The annotated conversation text, one turn a line, `<image>` removed (the manifest's `text`)."""
    out = []
    for _, v in rec.conversations:
        s = " ".join(v.replace("<image>", " ").split())
        if s:
            out.append(s)
    return "\n".join(out)


def process_annotation(rec: AnnotationRecord, opts: ProcessOptions) -> AnnotatedSample:
    """One record -> one sample (see the module doc). RecordError for a record that cannot be one; TransientError
    for a storage outage (not the record's fault); a permanent storage error is stage "read"."""
    try:
        if rec.media_type == "video":
            return _video_sample(rec, opts)
        if rec.media_type == "image":
            return _image_sample(rec, opts)
        return _text_sample(rec, opts)
    except (RecordError, storage.StorageError) as e:
        cause = _storage_cause(e)  # a decoder's read that failed in storage is storage's error, not the file's
        if cause is None or isinstance(cause, storage.ObjectNotFound):
            if isinstance(e, RecordError):
                raise
            raise RecordError("locate", "not found", media_field(rec), cause.uri if cause else "") from None
        if cause.transient:
            raise TransientError(f"{cause.uri}: {cause.reason}") from None
        field = e.field if isinstance(e, RecordError) and e.field else media_field(rec)
        raise RecordError("read", f"storage error: {cause.reason}", field, cause.uri) from None


def _trace(rec: AnnotationRecord) -> dict[str, Any]:
    """What the json keeps of the annotation (AnnotationRecord.info), its own `duration` renamed: the sample's
    `duration` is the one its timestamp message reports."""
    out = rec.info()
    if "duration" in out:
        out["annotation_duration"] = out.pop("duration")
    out.pop("start", None)
    out.pop("end", None)
    return out


def _base(rec: AnnotationRecord, opts: ProcessOptions) -> dict[str, Any]:
    return {"key": rec.key, "source": rec.dataset, "video_id": record_video_id(rec), **_trace(rec),
            "profile": opts.profile}


# ------------------------------------------------------------------------------------------------------ text


def _text_sample(rec: AnnotationRecord, opts: ProcessOptions) -> AnnotatedSample:
    info = {**_base(rec, opts), "conversations": rec.turns()}
    return AnnotatedSample(info, {}, conversation_text(rec))


# ----------------------------------------------------------------------------------------------------- images


def _image_sample(rec: AnnotationRecord, opts: ProcessOptions) -> AnnotatedSample:
    from PIL import Image

    payload: dict[str, bytes] = {}
    sizes, stored, members, hashes = [], [], [], []
    for k, uri in enumerate(rec.media_paths):
        where = media_field(rec, k)
        data = _read_media(uri, where, "image")
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                rgb = img.convert("RGB")  # decodes the whole image: a truncated file fails here
        except Image.DecompressionBombError as e:
            raise RecordError("decode", f"image too large to decode safely: {e}", where, uri) from None
        except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as e:
            raise RecordError("decode", f"cannot read the image: {e}", where, uri) from None
        w, h = rgb.size
        if w <= 0 or h <= 0:
            raise RecordError("decode", f"the image has no pixels ({w}x{h})", where, uri)
        sizes.append([w, h])
        ext = KEPT_FORMATS.get(fmt)
        if ext is not None and max(w, h) <= MAX_IMAGE_SIDE:
            member, blob = f"{k}.{ext}", data
        else:
            if max(w, h) > MAX_IMAGE_SIDE:
                s = MAX_IMAGE_SIDE / max(w, h)
                rgb = rgb.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
            member, blob = f"{k}.png", buf.getvalue()
        stored.append(list(rgb.size))
        payload[member] = blob
        members.append(member)
        hashes.append(dhash64(np.asarray(rgb)))
    info = {
        **_base(rec, opts),
        "uri": rec.media_paths[0],  # uri, uris: redacted by the writer (operators/write.py)
        "uris": list(rec.media_paths),
        "conversations": insert_time_msg(rec.turns(), ""),
        "image_mode": rec.image_mode,
        "num_images": len(members),
        "image_members": members,
        "image_sizes": sizes,
        "stored_sizes": stored,
        "resolution": opts.profile_obj.resolution,
    }
    return AnnotatedSample(info, payload, conversation_text(rec), hashes)


def _read_media(uri: str, where: str, what: str) -> bytes:
    """The bytes of one media file. RecordError naming the field: stage "locate" when it is missing, "read" when
    storage refuses it for good, "decode" when it is empty. A transient storage error passes (the unit is retried)."""
    if not storage.is_s3(uri) and os.path.isdir(uri):
        raise RecordError("locate", f"{what} path {uri} is a folder, not a file", where, uri)
    try:
        data = storage.read_bytes(uri)
    except storage.ObjectNotFound:
        raise RecordError("locate", f"{what} file not found: {uri}", where, uri) from None
    except storage.StorageError as e:
        if e.transient:
            raise
        raise RecordError("read", f"cannot read the {what} file: {e.reason}", where, uri) from None
    if not data:
        raise RecordError("decode", f"zero-byte {what} file", where, uri)
    return data


# ----------------------------------------------------------------------------------------------------- videos


@dataclass
class _Frames:
    frames: np.ndarray  # [N, S, S, 3] uint8, resized
    indices: list[int]
    times: list[float]
    fps: float
    duration: float  # what the timestamp message reports
    start: float
    end: float
    width: int  # of the source (first frame)
    height: int
    video_duration: float
    reader: str  # container | gif | frames


def _video_sample(rec: AnnotationRecord, opts: ProcessOptions) -> AnnotatedSample:
    uri = rec.media_paths[0]
    profile = opts.profile_obj
    spanned = rec.start is not None
    if rec.video_read_type in FRAME_FOLDER_TYPES:
        got = _read_frame_folder(rec, uri, profile, opts)
    elif rec.video_read_type == "gif" and not spanned:
        got = _read_gif(rec, uri, profile, opts)
    else:
        got = _read_container(rec, uri, profile, opts)
    n = len(got.indices)
    rate = n / got.duration if got.duration > 0 else 1.0
    try:
        mp4 = encode_mp4(got.frames, fps=min(max(rate, 0.01), MAX_FPS), crf=opts.crf)
    except ValueError as e:
        raise RecordError("encode", str(e), "video", uri) from None
    msg = time_msg(got.duration, n, frame_times=got.times, long=opts.long_time_msg)
    info = {
        **_base(rec, opts),
        "uri": uri,  # redacted by the writer (operators/write.py)
        "start": got.start,
        "end": got.end,
        "duration": got.duration,
        "fps": got.fps,
        "num_frames": n,
        "frame_indices": got.indices,
        "frame_times": got.times,
        "time_msg": msg,
        "conversations": insert_time_msg(rec.turns(), msg),
        "resolution": profile.resolution,
        "sample_type": profile.sample_type,
        "video_width": got.width,
        "video_height": got.height,
        "video_duration": got.video_duration,
        "video_reader": got.reader,
    }
    return AnnotatedSample(info, {"mp4": mp4}, conversation_text(rec), [dhash64(f) for f in got.frames])


def _span_field(rec: AnnotationRecord, reason: str) -> str:
    return "start" if "start" in reason and "past the end" in reason else "end"


def _read_container(rec: AnnotationRecord, uri: str, profile: Profile, opts: ProcessOptions) -> _Frames:
    """A video file PyAV reads: probe, choose the frames (whole-video rule or span rule), decode and resize."""
    if not storage.is_s3(uri) and not os.path.exists(uri):
        raise RecordError("locate", f"video file not found: {uri}", "video", uri)
    src: Any = storage.open_read(uri) if storage.is_s3(uri) else uri
    try:
        try:
            info = probe(src)
        except RecordError as e:
            raise _as_video_error(e, uri) from None
        try:
            if rec.start is not None:
                assert rec.end is not None
                chosen: FrameSelection = select_span_frames(info.fps, profile, rec.start, rec.end,
                                                            num_frames=info.num_frames)
            else:
                chosen = select_frames(info.num_frames, info.fps, profile)
        except ValueError as e:
            raise RecordError("sample", str(e), _span_field(rec, str(e)) if rec.start is not None else "video",
                              uri) from None
        try:
            res = decode(src, chosen.indices, info, size=profile.resolution, backend=opts.backend, mode="auto",
                         threads=opts.decoder_threads, resize_method=opts.resize)
        except RecordError as e:
            raise _as_video_error(e, uri) from None
    finally:
        if hasattr(src, "close"):
            src.close()
    return _Frames(res.frames, [int(i) for i in res.indices], list(chosen.times), float(info.fps), chosen.duration,
                   chosen.start, chosen.end, info.width, info.height, info.duration, "container")


def _as_video_error(e: RecordError, uri: str) -> RecordError:
    """A probe/decode error of the record's video, named by the annotation field (`video`), the file property at
    fault kept in the reason."""
    reason = f"{e.reason} ({e.field})" if e.field and e.field not in ("path", "video") else e.reason
    return RecordError(e.stage, reason, "video", e.file or uri)


def _read_gif(rec: AnnotationRecord, uri: str, profile: Profile, opts: ProcessOptions) -> _Frames:
    """A GIF at GIF_FPS (the reference's read_frames_gif): the whole-video rule over its frames."""
    from PIL import Image

    data = _read_media(uri, "video", "gif")
    try:
        with Image.open(io.BytesIO(data)) as img:
            count = int(getattr(img, "n_frames", 1) or 1)
            chosen = select_frames(count, GIF_FPS, profile)
            out: dict[int, np.ndarray] = {}
            for i in sorted(set(chosen.indices)):
                img.seek(i)
                out[i] = np.array(img.convert("RGB"))
            size = img.size
    except ValueError as e:
        raise RecordError("sample", str(e), "video", uri) from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise RecordError("decode", f"cannot read the gif: {e}", "video", uri) from None
    frames = np.stack([resize_one(out[i], profile.resolution, opts.resize) for i in chosen.indices])
    return _Frames(frames, list(chosen.indices), list(chosen.times), GIF_FPS, chosen.duration, chosen.start, chosen.end,
                   size[0], size[1], count / GIF_FPS, "gif")


def frame_folder_fps(uri: str) -> float:
    """The rate the reference assumes for a frame folder: 3 fps for TVQA's, 1 fps for any other."""
    return TVQA_FPS if "tvqa" in uri.lower() else FRAME_FOLDER_FPS


def sort_frame_names(names: list[str]) -> list[str]:
    """Frame image names in the reference's order: by the number after the last `_` (`clip_12.jpg` -> 12; -1
    without one), ties by name. Names that are not `.jpg`, `.jpeg` or `.png` are left out."""
    keep = [n for n in names if n.endswith(FRAME_SUFFIXES)]

    def number(n: str) -> int:
        m = _FRAME_NUMBER.search(n)
        return int(m.group(1)) if m else -1

    return sorted(keep, key=lambda n: (number(n), n))


def frame_folder_span_indices(start: float, end: float, count: int, fps: float, profile: Profile,
                              local_num_frames: int = LOCAL_NUM_FRAMES) -> tuple[list[int], float]:
    """The reference's `read_frames_img` clip rule for a folder of `count` frames at `fps`: (indices, duration).

    The span is cut to the folder ([max(0, start), min(count / fps, end)]); N frames by the span's length (its
    frames vlen = seconds x fps against the lower bound, its seconds for `dynamic_fps1`: 4 x int(seconds // 4), at
    least 4, within the bounds; `middle`: hi); positions from first = max(1, round(start * fps)) to
    last = min(round(end * fps), count - 1) (the unclamped start and end), first + np.round((last - first) / (N - 1)
    * k). Raises ValueError for a span that holds no frame of the folder."""
    s, e = max(0.0, float(start)), min(count / fps, float(end))
    vlen = (e - s) * fps
    duration = vlen / fps
    if vlen <= 0:
        raise ValueError(f"span [{start:g}, {end:g}] holds no frame of a folder of {count} frames at {fps:g} fps "
                         f"({count / fps:g} s)")
    lo: float = profile.lo
    if lo > vlen:
        lo = (vlen // local_num_frames) * local_num_frames
    if profile.sample_type == "dynamic_fps1":
        seg = int(duration // local_num_frames)
        n: float = local_num_frames if seg == 0 else local_num_frames * seg
        n = max(min(n, profile.hi), lo)
    else:
        n = profile.hi
    n = int(n)
    first = max(1, round(float(start) * fps))
    last = min(round(float(end) * fps), count - 1)
    step = float(last - first) / (n - 1) if n > 1 else 0.0
    idx = [first + int(np.round(step * k)) for k in range(n)]
    bad = [i for i in idx if not 0 <= i < count]
    if bad:
        raise ValueError(f"span [{start:g}, {end:g}] runs past the end of a folder of {count} frames at {fps:g} fps "
                         f"(frame {bad[0]})")
    return idx, duration


def _list_frames(uri: str) -> list[str]:
    """The names of the frame images in a frame folder, in the reference's order."""
    if storage.is_s3(uri):
        names = [u.rsplit("/", 1)[-1] for u in storage.list_files(uri, recursive=False)]
    else:
        if os.path.isfile(uri):
            raise RecordError("locate", "the path is a file, not a frame folder (video_read_type img/frame)",
                              "video", uri)
        if not os.path.isdir(uri):
            raise RecordError("locate", f"frame folder not found: {uri}", "video", uri)
        try:
            with os.scandir(uri) as it:
                names = [x.name for x in it if x.is_file()]
        except OSError as e:
            raise RecordError("read", f"cannot list the frame folder: {e.strerror or e}", "video", uri) from None
    frames = sort_frame_names(names)
    if not frames:
        raise RecordError("locate", f"no frame images ({', '.join(FRAME_SUFFIXES)}) in the frame folder", "video", uri)
    return frames


def _read_frame_folder(rec: AnnotationRecord, uri: str, profile: Profile, opts: ProcessOptions) -> _Frames:
    """A folder of frame images (video_read_type img/frame), as the reference's read_frames_img samples it."""
    from PIL import Image

    names = _list_frames(uri)
    count = len(names)
    fps = frame_folder_fps(uri)
    try:
        if rec.start is not None:
            assert rec.end is not None
            idx, duration = frame_folder_span_indices(rec.start, rec.end, count, fps, profile)
            start, end = max(0.0, rec.start), min(count / fps, rec.end)
        else:
            idx = frame_indices(count, FRAME_FOLDER_FPS, profile)  # the reference counts a folder at 1 fps
            duration, start, end = count / fps, 0.0, count / fps
    except ValueError as e:
        raise RecordError("sample", str(e), _span_field(rec, str(e)) if rec.start is not None else "video",
                          uri) from None
    frames: dict[int, np.ndarray] = {}
    size = (0, 0)
    for i in sorted(set(idx)):
        f_uri = storage.join(uri, names[i])
        data = _read_media(f_uri, "video", "frame image")
        try:
            with Image.open(io.BytesIO(data)) as img:
                rgb = np.array(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise RecordError("decode", f"cannot read the frame image {names[i]}: {e}", "video", f_uri) from None
        if not size[0]:
            size = (rgb.shape[1], rgb.shape[0])
        frames[i] = resize_one(rgb, profile.resolution, opts.resize)
    times = [round(i / fps, 1) for i in idx]
    return _Frames(np.stack([frames[i] for i in idx]), list(idx), times, fps, duration, start, end, size[0],
                   size[1], count / fps, "frames")


__all__ = ["AnnotatedSample", "MAX_IMAGE_SIDE", "conversation_text", "frame_folder_fps", "frame_folder_span_indices",
           "media_field", "process_annotation", "record_video_id", "sort_frame_names"]
