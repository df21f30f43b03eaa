"""Frame sampling by duration: the VideoChat-Flash rule (`dynamic_fps1` + `middle`, or plain `middle`).

All indices are frame numbers in the source video. See ../shared/reference/videochat-flash.md.

- whole videos: `frame_indices` / `plan_span(num_frames, fps, profile)` (`get_frame_indices`);
- the decord clip path for a span: `plan_span(..., start, end)` (kept for callers that use it);
- the reference's SPAN rule, which training applies to every record with `start`/`end`: `plan_span_seconds`
  (frame count from the span's seconds, positions by `get_index`; the whole-second quirk not copied).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

LOCAL_NUM_FRAMES = 4  # frames per HiCo clip


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
class SpanPlan:
    """Where a sample's frames come from in the source video."""

    start: float  # seconds, clamped
    end: float
    duration: float  # the duration the timestamp message reports
    start_index: int
    vlen: int
    indices: tuple[int, ...]  # absolute frame indices in the source video
    times: tuple[float, ...]  # round(index / fps, 1); plan_span_seconds: index counted from the span's first frame


def plan_span(num_frames: int, fps: float, profile: Profile, start: float | None = None, end: float | None = None) -> SpanPlan:
    """Apply the rule to a whole video (start=end=None) or to a span, as the decord `clip` path does.

    `num_frames` and `fps` describe the whole source video (its duration is num_frames / fps).
    Raises ValueError with a message naming the problem when the span is empty or outside the video.
    """
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if num_frames <= 0:
        raise ValueError(f"the video has no frames (num_frames={num_frames})")
    video_duration = num_frames / fps
    if start is None and end is None:
        s, e = 0.0, float(video_duration)
        vlen = int(num_frames)
        start_index = 0
        duration = video_duration
    else:
        s = max(0.0, float(start or 0.0))
        e = min(video_duration - 0.1, float(video_duration if end is None else end))
        if s >= video_duration:
            raise ValueError(f"span start {s:.3f}s is past the end of the video ({video_duration:.3f}s)")
        if e <= s:
            raise ValueError(f"span [{start}, {end}] is empty inside a {video_duration:.3f}s video")
        duration = e - s
        vlen = int(duration * fps)
        start_index = int(s * fps)
    if vlen <= 0:
        raise ValueError(f"span [{s:.3f}, {e:.3f}] holds no frame at {fps} fps")
    rel = frame_indices(vlen, fps, profile)
    idx = tuple(i + start_index for i in rel)
    times = tuple(round(i / fps, 1) for i in idx)
    return SpanPlan(s, e, duration, start_index, vlen, idx, times)


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


def plan_span_seconds(
    fps: float | Fraction,
    profile: Profile,
    start: float,
    end: float,
    num_frames: int | None = None,
    local_num_frames: int = LOCAL_NUM_FRAMES,
) -> SpanPlan:
    """The reference SPAN rule, for a record with `start` and `end` (seconds) in a longer video.

    Training does not take the decord clip path (`plan_span`) for such records: the reference reads them with
    `lazy_load_s3video`, which
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
    times = tuple(float(np.round(k / fps_f, 1)) for k in rel)  # numpy's rounding, as the reference's np.int64 / fps
    return SpanPlan(s, e, duration, first, int(total), idx, times)
