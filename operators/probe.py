"""Cheap facts about a video file, from the container headers (and the first picture, decoded once).

`probe(src)` accepts a local path or a seekable binary file-like object (e.g. the S3 ranged reader of
operators/storage/); the file is never read whole. Every bad input raises `RecordError` with stage "locate"
(missing file) or "probe" and a reason that says what is wrong: zero-byte file, truncated file, not a video,
audio-only, no decoder for the codec, no picture decodable.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Union

import av

from longvid.operators.errors import RecordError

Source = Union[str, "os.PathLike[str]", IO[bytes]]

# Leading bytes of the containers we expect; a file that starts like one of these but cannot be opened is
# reported as "truncated or corrupt" rather than "not a video".
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (4, b"skip"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x00\x00\x01\xb3"),
    (0, b"\x47"),  # MPEG-TS sync byte
    (0, b"OggS"),
)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the (best) video stream.

    fps: average frame rate (frames/s). num_frames: the container's frame count when it has one
    (`num_frames_exact=True`), else round(duration * fps). duration: seconds of the video stream.
    start_time: presentation time (s) of the first decodable picture, frame 0 (frame i is shown at
    start_time + i/fps). Finding it decodes one picture, which also proves the stream decodes.
    keyframe_interval_s: median spacing of keyframes from the container index (None when there is no index).
    width, height: as displayed, after the container's rotation (90/270 swap them), like decord's frames.
    """

    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    codec: str
    has_audio: bool
    start_time: float = 0.0
    num_frames_exact: bool = True
    keyframe_interval_s: float | None = None
    format_name: str = ""
    stream_index: int = 0
    rotation: int = 0  # counter-clockwise display rotation applied to decoded frames (width/height are as displayed)
    pix_fmt: str = ""  # the software decoder's pixel format (yuv420p...); frames from a GPU are repacked into it


def source_name(src: Source) -> str:
    """A printable name for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return str(getattr(src, "name", None) or getattr(src, "uri", None) or type(src).__name__)


def is_path(src: Source) -> bool:
    return isinstance(src, (str, os.PathLike))


def _size_and_head(src: Source, stage: str) -> tuple[int, bytes]:
    """File size and its first 16 bytes, without reading the rest. A file-like is rewound to 0."""
    name = source_name(src)
    if is_path(src):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise RecordError("locate", "video file not found", "path", name)
        if os.path.isdir(path):
            raise RecordError("locate", "path is a directory, not a video file", "path", name)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
        return size, head
    try:
        src.seek(0, io.SEEK_END)
        size = src.tell()
        src.seek(0)
        head = src.read(16)
        src.seek(0)
    except (OSError, ValueError, AttributeError) as e:
        raise RecordError(stage, f"source is not a seekable binary file: {e}", "path", name) from e
    return size, head


def _looks_like_container(head: bytes) -> bool:
    return any(head[off : off + len(sig)] == sig for off, sig in _SIGNATURES)


def open_container(src: Source, stage: str = "probe", hwaccel=None):
    """av.open with the bad-file cases turned into RecordError. The caller closes the container.

    `hwaccel`: PyAV's HWAccel for the decoders (operators.decode), None for software."""
    name = source_name(src)
    size, head = _size_and_head(src, stage)
    if size == 0:
        raise RecordError(stage, "zero-byte file", "size", name)
    try:
        if hwaccel is not None:
            return av.open(os.fspath(src) if is_path(src) else src, mode="r", hwaccel=hwaccel)
        return av.open(os.fspath(src) if is_path(src) else src, mode="r")
    except av.error.FileNotFoundError as e:
        raise RecordError("locate", "video file not found", "path", name) from e
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        if _looks_like_container(head):
            reason = f"truncated or corrupt video file ({size} bytes; the container cannot be opened: {e})"
        else:
            reason = f"not a video: unrecognised container format ({size} bytes; {e})"
        raise RecordError(stage, reason, "container", name) from e


def video_stream(container, name: str, stage: str = "probe"):
    """The best video stream of an open container, or RecordError for audio-only / no-video files."""
    streams = [s for s in container.streams.video]
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        what = "audio-only file" if "audio" in kinds else "no stream of any kind" if not kinds else f"only {kinds} streams"
        raise RecordError(stage, f"no video stream ({what})", "stream", name)
    # prefer a stream that is not a cover picture
    for s in streams:
        if not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    raise RecordError(stage, "no video stream (only an attached cover picture)", "stream", name)


def _rate(stream) -> float | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and r.numerator > 0 and r.denominator > 0:
            v = float(r)
            if math.isfinite(v) and 0 < v < 1000:
                return v
    return None


# demuxers whose index covers the whole file (read from the header or the cues); MPEG-TS/PS only index what
# they have read so far, so they are decoded sequentially instead of by seeking
_INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm", "avi", "asf", "flv")


def keyframe_entries(container, stream) -> list[tuple[int, int]]:
    """(timestamp, byte position) of the keyframe entries of the container index, in stream time_base units.

    Timestamps are as the demuxer stores them: DTS in MP4, PTS in Matroska. Matroska reads its cues only on
    the first seek, so there we seek to the start once (one small read) and look again. Formats without a
    whole-file index give [] (the caller then decodes sequentially).
    """
    fmt = str(container.format.name or "")
    if not any(f in fmt for f in _INDEXED_FORMATS):
        return []

    def read() -> list[tuple[int, int]]:
        try:
            return [(int(e.timestamp), int(e.pos)) for e in stream.index_entries if e.is_keyframe]
        except (AttributeError, av.error.FFmpegError):
            return []

    out = read()
    if len(out) <= 1 and ("matroska" in fmt or "webm" in fmt):
        try:
            container.seek(stream.start_time or 0, backward=True, stream=stream)
        except (av.error.FFmpegError, ValueError, OSError):
            return out
        out = read()
    return out


def frame_rotation(frame) -> int:
    """Counter-clockwise display rotation of a decoded frame (0, 90, 180 or 270), from its display matrix."""
    try:
        r = float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0
    return int(round(r / 90.0)) % 4 * 90


def first_frame(container, stream, name: str, stage: str = "probe", max_packets: int = 600) -> tuple[float | None, int]:
    """(presentation time in s, display rotation) of the first picture the decoder gives from the start.

    Frame 0 is this picture (as in decord, which counts frames from the first one). Raises RecordError when
    no picture comes out of the first `max_packets` packets (an undecodable stream). Call before any seek.
    """
    tb = stream.time_base
    cc = stream.codec_context
    errors, first_err = 0, ""
    try:
        n = 0
        for pkt in container.demux(stream):
            try:
                frames = cc.decode(pkt if pkt.size else None)
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError as e:
                errors += 1
                first_err = first_err or str(e)
                frames = []
            for fr in frames:
                t = float(fr.pts * tb) if fr.pts is not None and tb is not None else None
                return t, frame_rotation(fr)
            n += 1
            if n >= max_packets:
                break
    except av.error.FFmpegError as e:  # read error before any picture
        first_err = first_err or str(e)
    why = f" ({errors} packets failed to decode: {first_err})" if errors or first_err else ""
    raise RecordError(stage, f"undecodable stream: no picture could be decoded{why}", "stream", name)


def _keyframe_interval(container, stream) -> float | None:
    tb = float(stream.time_base or 0)
    kts = [t * tb for t, _ in keyframe_entries(container, stream)]
    if len(kts) < 2:
        return None
    gaps = sorted(b - a for a, b in zip(kts, kts[1:]) if b > a)
    return gaps[len(gaps) // 2] if gaps else None


def _scan_end(container, stream, end_guess: float, fps: float, max_packets: int = 2000) -> float | None:
    """End time (s) of the last packets, read after one seek near the end; None when that fails.

    Used only when the container has no frame count: its duration may include other streams or a start
    offset. Reads about one keyframe interval of packets, never the whole file.
    """
    tb = stream.time_base
    if tb is None or end_guess <= 0:
        return None
    try:
        container.seek(int(end_guess / tb), backward=True, stream=stream)
        end = None
        for k, pkt in enumerate(container.demux(stream)):
            if pkt.pts is not None:
                e = float(pkt.pts * tb) + (float(pkt.duration * tb) if pkt.duration else 1.0 / fps)
                end = e if end is None else max(end, e)
            if k >= max_packets:
                break
        return end
    except (av.error.FFmpegError, ValueError, OSError):
        return None


def _pix_fmt(cc) -> str:
    try:
        return str(cc.format.name) if cc is not None and cc.format is not None else ""
    except (AttributeError, ValueError):
        return ""


def probe(src: Source) -> VideoInfo:
    """Container-level facts about the video stream of `src` (a path or a seekable binary file-like)."""
    name = source_name(src)
    container = open_container(src, "probe")
    try:
        stream = video_stream(container, name, "probe")
        cc = stream.codec_context
        codec = cc.name if cc is not None else ""
        try:
            av.codec.Codec(codec, "r")
        except Exception as e:  # noqa: BLE001 - any failure means no usable decoder
            raise RecordError("probe", f"undecodable stream: no decoder for codec {codec!r}", "codec", name) from e
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise RecordError("probe", f"undecodable stream: frame size unknown ({width}x{height})", "stream", name)
        fps = _rate(stream)
        if fps is None:
            raise RecordError("probe", "the video stream has no frame rate", "fps", name)
        tb = stream.time_base or Fraction(1, 1)
        start_time = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        t0, rotation = first_frame(container, stream, name)  # frame 0 (one picture decoded, before any seek)
        if t0 is not None:
            start_time = t0
        if rotation in (90, 270):  # frames are returned upright, as decord does: report the displayed size
            width, height = height, width
        if stream.duration is not None and stream.duration > 0:
            duration = float(stream.duration * tb)
        elif container.duration is not None and container.duration > 0:
            cstart = (container.start_time or 0) / av.time_base
            duration = max(0.0, container.duration / av.time_base - max(0.0, start_time - cstart))
        else:
            duration = 0.0
        if stream.frames and stream.frames > 0:
            num_frames, exact = int(stream.frames), True
        else:
            end = _scan_end(container, stream, start_time + duration, fps)
            if end is not None and end > start_time:
                duration = end - start_time
            num_frames, exact = int(round(duration * fps)), False
        if num_frames <= 0:
            raise RecordError("probe", "the video stream has no frames (zero duration)", "num_frames", name)
        if duration <= 0:
            duration = num_frames / fps
        has_audio = len(container.streams.audio) > 0
        return VideoInfo(
            fps=fps,
            num_frames=num_frames,
            duration=duration,
            width=width,
            height=height,
            codec=codec,
            has_audio=has_audio,
            start_time=start_time,
            num_frames_exact=exact,
            keyframe_interval_s=_keyframe_interval(container, stream),
            format_name=str(container.format.name or ""),
            stream_index=int(stream.index),
            rotation=rotation,
            pix_fmt=_pix_fmt(cc),
        )
    finally:
        container.close()
