"""Frame sampling by duration: the VideoChat-Flash rule (`dynamic_fps1` + `middle`, or plain `middle`).

All indices are frame numbers in the source video. See ../shared/reference/videochat-flash.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
    times: tuple[float, ...]  # round(index / fps, 1)


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
