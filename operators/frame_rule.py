"""The frame rule: which frames of a video a sample takes, VideoChat-Flash's sampling by duration (one rule
for whole videos, one for spans).

All indices are frame numbers in the source video. See ../shared/reference/videochat-flash.md.

- a whole video (`get_frame_indices`: `dynamic_fps1` + `middle`, or plain `middle`): `frame_indices`;
- a SPAN (a record with `start`/`end`: the reference's `process_video` sends it to `lazy_load_s3video`):
  `select_span_frames`: frame count from the span's seconds, positions by `get_index` from the span's first frame,
  frame times relative to the span's start (the reference's whole-second timestamp quirk not copied);
- `select_frames(num_frames, fps, profile, start, end)`: the frames of a record, the first rule for a whole video
  (start = end = None), the second for a span. There is no other span rule (the decord `clip` path, which counted a
  span's frames, is not what training does and is gone). `SPAN_RULE` names the span rule in the ingest fingerprint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from longvid.model.constants import FRAMES_PER_CLIP as LOCAL_NUM_FRAMES  # frames per HiCo clip


@dataclass(frozen=True)
class Profile:
    """Bounds and resolution of one training stage."""

    name: str
    sample_type: str  # "middle" | "dynamic_fps1"
    lo: int
    hi: int
    resolution: int


PROFILES: dict[str, Profile] = {
    "stage1": Profile("stage1", "middle", 4, 4, 224),
    "short": Profile("short", "dynamic_fps1", 1, 8, 224),
    "long": Profile("long", "dynamic_fps1", 64, 512, 224),
    "highres": Profile("highres", "dynamic_fps1", 64, 512, 448),
    # the 2B recipe trains every stage at 448 px: its stage 1 (4 frames) and stage 2 (1-8 frames) at 448
    "stage1_448": Profile("stage1_448", "middle", 4, 4, 448),
    "short_448": Profile("short_448", "dynamic_fps1", 1, 8, 448),
}


def num_frames_dynamic_fps1(vlen: int, fps: float, lo: int, hi: int, local_num_frames: int = LOCAL_NUM_FRAMES) -> int:
    """About one frame per second, a multiple of `local_num_frames`, clamped to [lo, hi]."""
    duration = vlen / fps
    if lo > vlen:
        lo = (vlen // local_num_frames) * local_num_frames
    seg = int(math.floor(duration / local_num_frames))
    n = local_num_frames if seg == 0 else local_num_frames * seg
    n = min(n, hi)
    return max(lo, n)


def middle_indices(n: int, vlen: int) -> list[int]:
    """The middle frame of each of `n` equal segments of [0, vlen); the last index repeats if vlen < n."""
    acc = min(n, vlen)
    edges = np.linspace(0, vlen, acc + 1).astype(int)
    idx = [int((edges[i] + (edges[i + 1] - 1)) // 2) for i in range(acc)]
    if len(idx) < n and idx:
        idx += [idx[-1]] * (n - len(idx))
    return idx


def frame_indices(vlen: int, fps: float, profile: Profile) -> list[int]:
    """Indices into a span of `vlen` frames (0-based within the span)."""
    if vlen <= 0:
        raise ValueError(f"vlen must be positive, got {vlen}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if profile.sample_type == "middle":
        n = profile.hi
    elif profile.sample_type == "dynamic_fps1":
        n = num_frames_dynamic_fps1(vlen, fps, profile.lo, profile.hi)
    else:
        raise ValueError(f"unknown sample_type {profile.sample_type!r}")
    return middle_indices(n, vlen)


@dataclass(frozen=True)
class FrameSelection:
    """Where a sample's frames come from in the source video."""

    start: float  # seconds, clamped
    end: float
    duration: float  # the duration the timestamp message reports
    start_index: int
    vlen: int
    indices: tuple[int, ...]  # absolute frame indices in the source video
    times: tuple[float, ...]  # round(index / fps, 1); a span: `span_times`, index counted from the span's first frame


SPAN_RULE = "reference-seconds"  # the ingest fingerprint records it: change it whenever the span rule changes


def select_frames(num_frames: int, fps: float, profile: Profile, start: float | None = None,
                  end: float | None = None) -> FrameSelection:
    """The frames of one record: the whole video (start = end = None, `frame_indices`) or a span (`select_span_frames`).

    `num_frames` and `fps` describe the whole source video (its duration is num_frames / fps). A span with one
    bound only runs from 0 s or to the end of the video. Raises ValueError naming the problem (a bad fps, no frames,
    a span that is empty, shorter than one second, or past the end of the video).
    """
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if num_frames <= 0:
        raise ValueError(f"the video has no frames (num_frames={num_frames})")
    video_duration = num_frames / fps
    if start is not None or end is not None:
        s = 0.0 if start is None else float(start)
        e = video_duration if end is None else float(end)
        if s >= video_duration:
            raise ValueError(f"span start {s:.3f}s is past the end of the video ({video_duration:.3f}s)")
        return select_span_frames(fps, profile, s, e, num_frames=num_frames)
    idx = tuple(frame_indices(int(num_frames), fps, profile))
    times = tuple(round(i / fps, 1) for i in idx)
    return FrameSelection(0.0, float(video_duration), video_duration, 0, int(num_frames), idx, times)


def num_frames_for_span(duration: float, profile: Profile, local_num_frames: int = LOCAL_NUM_FRAMES) -> int:
    """Frames the reference takes from a span of `duration` seconds (`process_video`, the span branch).

    The count comes from the span's SECONDS, not from its frames: lo drops to (duration // 4) * 4 when it exceeds
    the duration; `dynamic_fps1` takes 4 * int(duration // 4) frames (4 when that is 0), clamped to [lo, hi];
    any other sample type takes `hi`. 30 s at 64-512 -> 28, 10 s -> 8, 100 s -> 100.
    """
    lo: float = profile.lo
    if lo > duration:
        lo = (duration // local_num_frames) * local_num_frames
    if profile.sample_type == "dynamic_fps1":
        seg = int(duration // local_num_frames)
        n: float = local_num_frames if seg == 0 else local_num_frames * seg
        n = min(n, profile.hi)
        n = max(n, lo)
    elif profile.sample_type == "middle":
        n = profile.hi
    else:
        raise ValueError(f"unknown sample_type {profile.sample_type!r}")
    return int(n)


def span_positions(total: float, n: int) -> list[int]:
    """The reference's `get_index(total, n)`: n positions spread over `total` frames, each the start of a segment
    of (total - 1) / n frames plus half a segment (`int` of the half, `round` half-to-even of the offsets)."""
    seg_size = float(total - 1) / n
    first = int(seg_size / 2)
    return [first + int(round(seg_size * k)) for k in range(n)]


def select_span_frames(
    fps: float | Fraction,
    profile: Profile,
    start: float,
    end: float,
    num_frames: int | None = None,
    local_num_frames: int = LOCAL_NUM_FRAMES,
) -> FrameSelection:
    """The reference SPAN rule, for a record with `start` and `end` (seconds) in a longer video.

    Training does not take the decord `clip` path (which counts the span's frames) for such records: the reference
    reads them with `lazy_load_s3video`, which
    - counts the frames from the span's seconds (`num_frames_for_span(end - start, ...)`, no clamping to the video),
    - spreads them by `get_index(int(end - start) * fps, N)` (`span_positions`), counted from the span's first
      frame, i.e. the first frame at or after `start` (index ceil(start * fps)),
    - reports `duration = end - start` in the timestamp message and frame times round(k / fps, 1) for the
      positions k, relative to the span's start (numpy's round, which takes 4.35 to 4.4 where Python's gives 4.3:
      the reference divides numpy integers).

    Deliberate deviation (the whole-second quirk, NOT copied): the reference turns each position into a
    presentation time with `int(k / fps)` whole seconds counted from 0, not from `start`, and keeps the first frame
    at or after each; for a span that starts after 0 s every such time lies before the span, so it ends up with
    N consecutive frames from `start`. Here the frames are the ones at the positions above, spread over the span.

    `fps` may be a Fraction (a stream's average rate) as in the reference. `num_frames` (frames of the whole video),
    when given, makes a span that runs past the video an error. Raises ValueError naming the problem for a bad
    fps, a span that is empty, negative or not finite, shorter than one second (`int(end - start) == 0`: the
    reference's get_index then has no frame to spread over and picks negative positions), or past the video.
    """
    fps_f = float(fps)
    if not math.isfinite(fps_f) or fps_f <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    s, e = float(start), float(end)
    if not (math.isfinite(s) and math.isfinite(e)) or s < 0:
        raise ValueError(f"span [{start}, {end}] must be finite seconds, start >= 0")
    if e <= s:
        raise ValueError(f"span [{start}, {end}] is empty or negative")
    duration = e - s
    if int(duration) == 0:
        raise ValueError(f"span [{start}, {end}] is shorter than one second: the span rule has no frame to take")
    n = num_frames_for_span(duration, profile, local_num_frames)
    total = int(duration) * fps
    rel = span_positions(total, n)
    first = math.ceil(s * fps_f - 1e-6)
    idx = tuple(first + k for k in rel)
    if num_frames is not None and idx[-1] >= num_frames:
        raise ValueError(
            f"span [{start}, {end}] runs past the end of the video ({num_frames} frames, {num_frames / fps_f:.3f}s)"
        )
    return FrameSelection(s, e, duration, first, int(total), idx, span_times(rel, fps_f))


def span_times(positions, fps: float) -> tuple[float, ...]:
    """Frame times of a span: round(k / fps, 1) for positions k counted from the span's first frame, with numpy's
    rounding (the reference divides numpy integers: 4.35 -> 4.4 where Python's round gives 4.3)."""
    return tuple(float(np.round(int(k) / float(fps), 1)) for k in positions)
