"""The frame-index rule against a direct transcription of VideoChat-Flash's get_frame_indices / clip path."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longvid.operators.sample import PROFILES, Profile, frame_indices, plan_span


def reference_indices(vlen: int, fps: float, sample: str, lo: int, hi: int, local_num_frames: int = 4) -> list[int]:
    """Transcribed line by line from the rule in ../shared/reference/videochat-flash.md."""
    if sample == "dynamic_fps1":
        duration = float(vlen) / fps
        num_segments = int(duration // local_num_frames)
        if num_segments == 0:
            num_frames = local_num_frames
        else:
            num_frames = local_num_frames * num_segments
        if lo > vlen:
            lo = (vlen // local_num_frames) * local_num_frames
        num_frames = min(num_frames, hi)
        num_frames = max(num_frames, lo)
    else:
        num_frames = hi
    acc_samples = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    ranges = [(intervals[i], intervals[i + 1] - 1) for i in range(len(intervals) - 1)]
    idx = [(x[0] + x[1]) // 2 for x in ranges]
    if len(idx) < num_frames:
        idx += [idx[-1]] * (num_frames - len(idx))
    return [int(i) for i in idx]


@settings(max_examples=400, deadline=None)
@given(
    vlen=st.integers(1, 40_000),
    fps=st.sampled_from([1.0, 8.0, 10.0, 23.976023976, 24.0, 25.0, 29.97002997, 30.0, 50.0, 59.94, 60.0]),
    bounds=st.sampled_from([(1, 8), (64, 512), (4, 4), (16, 64), (64, 640), (1, 1), (8, 8)]),
    sample=st.sampled_from(["dynamic_fps1", "middle"]),
)
def test_matches_reference_transcription(vlen, fps, bounds, sample):
    lo, hi = bounds
    p = Profile("t", sample, lo, hi, 224)
    assert frame_indices(vlen, fps, p) == reference_indices(vlen, fps, sample, lo, hi)


@pytest.mark.parametrize("vlen", range(1, 130))
@pytest.mark.parametrize("name", list(PROFILES))
def test_grid_of_short_lengths(vlen, name):
    p = PROFILES[name]
    for fps in (1.0, 4.0, 30.0):
        got = frame_indices(vlen, fps, p)
        assert got == reference_indices(vlen, fps, p.sample_type, p.lo, p.hi)
        assert all(0 <= i < vlen for i in got)
        assert got == sorted(got)


def test_worked_examples():
    long = PROFILES["long"]
    assert len(frame_indices(100 * 30, 30, long)) == 100
    assert len(frame_indices(30 * 30, 30, long)) == 64
    assert len(frame_indices(900 * 30, 30, long)) == 512
    assert len(frame_indices(37 * 30, 30, PROFILES["short"])) == 8
    assert len(frame_indices(300, 30, PROFILES["stage1"])) == 4


def test_span_follows_clip_path():
    # a span [10, 20] of a 60 s video at 30 fps: vlen = int(10 * 30), start_index = int(10 * 30)
    plan = plan_span(1800, 30.0, PROFILES["short"], 10.0, 20.0)
    assert plan.start_index == 300 and plan.vlen == 300 and plan.duration == pytest.approx(10.0)
    rel = reference_indices(300, 30.0, "dynamic_fps1", 1, 8)
    assert list(plan.indices) == [i + 300 for i in rel]
    assert list(plan.times) == [round(i / 30.0, 1) for i in plan.indices]


def test_span_end_clamped_to_video_minus_tenth():
    plan = plan_span(300, 30.0, PROFILES["short"], 5.0, 99.0)  # 10 s video
    assert plan.end == pytest.approx(9.9)
    assert plan.vlen == int((9.9 - 5.0) * 30)
    assert max(plan.indices) < 300


@pytest.mark.parametrize("start,end", [(50.0, 60.0), (5.0, 5.0), (7.0, 3.0)])
def test_bad_spans_are_errors(start, end):
    with pytest.raises(ValueError):
        plan_span(300, 30.0, PROFILES["long"], start, end)


def test_whole_video_uses_all_frames():
    plan = plan_span(1234, 25.0, PROFILES["long"])
    assert plan.vlen == 1234 and plan.duration == pytest.approx(1234 / 25.0)
    assert list(plan.indices) == reference_indices(1234, 25.0, "dynamic_fps1", 64, 512)
