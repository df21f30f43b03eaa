"""The frame-index rule against a direct transcription of VideoChat-Flash's get_frame_indices / clip path."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longvid.operators.sample import PROFILES, Profile, frame_indices, num_frames_for_span, plan_span, plan_span_seconds


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


# ------------------------------------------------------------------------ the span rule (plan_span_seconds)
# (its conformance with the reference's process_video / get_index: tests/test_reference_rules.py)


def test_span_rule_counts_frames_from_the_span_seconds():
    long = PROFILES["long"]
    assert [num_frames_for_span(d, long) for d in (30.0, 10.0, 100.0, 2.0, 1000.0)] == [28, 8, 100, 4, 512]
    assert num_frames_for_span(37.0, PROFILES["short"]) == 8 and num_frames_for_span(5.0, PROFILES["short"]) == 4
    assert num_frames_for_span(99.0, PROFILES["stage1"]) == 4  # `middle`: hi frames
    # the whole-video rule counts frames, the span rule seconds: a 30 s span gets 28 frames, a 30 s video 64
    assert len(frame_indices(900, 30.0, long)) == 64


def test_span_rule_positions_are_spread_over_the_span_from_its_first_frame():
    plan = plan_span_seconds(30.0, PROFILES["long"], 100.0, 130.0, num_frames=30 * 600)
    assert plan.start_index == 3000 and plan.duration == 30.0 and len(plan.indices) == 28
    assert plan.indices[0] == 3000 + int(899 / 28 / 2) == 3016 and plan.indices[-1] < 3000 + 900  # inside the span, not at its start
    gaps = np.diff(plan.indices)
    assert gaps.min() >= 31 and gaps.max() <= 33  # about 899 / 28 frames apart
    assert plan.times[0] == 0.5 and plan.times == tuple(float(np.round((i - 3000) / 30.0, 1)) for i in plan.indices)
    # a start between frames: the first frame at or after it
    assert plan_span_seconds(30.0, PROFILES["short"], 10.01, 20.0).start_index == 301
    assert plan_span_seconds(30.0, PROFILES["short"], 0.1, 20.0).start_index == 3  # 0.1 * 30 is 3.0000000000000004


def test_span_rule_with_a_fractional_frame_rate():
    from fractions import Fraction

    plan = plan_span_seconds(Fraction(30000, 1001), PROFILES["short"], 3.3, 15.9)
    assert plan.vlen == int(12 * Fraction(30000, 1001)) == 359 and len(plan.indices) == 8
    assert plan.start_index == 99 and plan.indices == tuple(sorted(plan.indices))


@pytest.mark.parametrize("fps,start,end,frames,msg", [
    (30.0, 5.0, 5.0, None, "empty or negative"),
    (30.0, 9.0, 4.0, None, "empty or negative"),
    (30.0, -1.0, 4.0, None, "start >= 0"),
    (30.0, 1.0, float("nan"), None, "finite"),
    (30.0, 1.0, 1.9, None, "shorter than one second"),
    (0.0, 1.0, 9.0, None, "fps"),
    (float("inf"), 1.0, 9.0, None, "fps"),
    (30.0, 50.0, 70.0, 1800, "runs past the end of the video"),
])
def test_span_rule_refuses_bad_spans(fps, start, end, frames, msg):
    with pytest.raises(ValueError, match=msg):
        plan_span_seconds(fps, PROFILES["long"], start, end, num_frames=frames)
    # the same span inside a long enough video is fine (when the span itself is)
    if msg == "runs past the end of the video":
        assert len(plan_span_seconds(fps, PROFILES["long"], start, end, num_frames=2101).indices) == 20
