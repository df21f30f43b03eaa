"""The frame rules (whole video: get_frame_indices; span: the seconds rule) and that the ingest samples by them."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longvid.operators.errors import ConfigError, RecordError
from longvid.operators.probe import VideoInfo
from longvid.operators.process import frame_times, select_record_frames
from longvid.operators.records import SourceRecord
from longvid.operators.frame_rule import (
    PROFILES,
    SPAN_RULE,
    Profile,
    frame_indices,
    num_frames_for_span,
    select_frames,
    select_span_frames,
)


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


def test_a_span_takes_the_seconds_rule_not_the_clip_path():
    # a 30 s span [10, 40] of a 60 s video at 30 fps: the span rule's frames (the decord clip path is gone)
    chosen = select_frames(1800, 30.0, PROFILES["long"], 10.0, 40.0)
    assert chosen == select_span_frames(30.0, PROFILES["long"], 10.0, 40.0, num_frames=1800)
    assert len(chosen.indices) == 28  # the clip path counted the span's 900 frames: 64
    assert chosen.times[0] == round(chosen.indices[0] / 30.0 - 10.0, 1)  # relative to the span's start


def test_a_span_with_one_bound_runs_from_zero_or_to_the_end():
    assert select_frames(300, 30.0, PROFILES["short"], 5.0, None) == select_span_frames(30.0, PROFILES["short"], 5.0, 10.0)
    assert select_frames(300, 30.0, PROFILES["short"], None, 6.0) == select_span_frames(30.0, PROFILES["short"], 0.0, 6.0)


@pytest.mark.parametrize("start,end,msg", [
    (50.0, 60.0, "past the end of the video"),  # starts after the 10 s video
    (5.0, 99.0, "runs past the end of the video"),  # no clamping to the video (the clip path clamped to 9.9 s)
    (5.0, 5.0, "empty"),
    (7.0, 3.0, "empty"),
    (5.0, 5.5, "shorter than one second"),
])
def test_bad_spans_are_errors(start, end, msg):
    with pytest.raises(ValueError, match=msg):
        select_frames(300, 30.0, PROFILES["long"], start, end)


def test_whole_video_uses_all_frames():
    chosen = select_frames(1234, 25.0, PROFILES["long"])
    assert chosen.vlen == 1234 and chosen.duration == pytest.approx(1234 / 25.0)
    assert list(chosen.indices) == reference_indices(1234, 25.0, "dynamic_fps1", 64, 512)


# ------------------------------------------------------------------------ the span rule (select_span_frames)
# (its conformance with the reference's process_video / get_index: tests/scenarios/test_reference_rules.py)


def test_span_rule_counts_frames_from_the_span_seconds():
    long = PROFILES["long"]
    assert [num_frames_for_span(d, long) for d in (30.0, 10.0, 100.0, 2.0, 1000.0)] == [28, 8, 100, 4, 512]
    assert num_frames_for_span(37.0, PROFILES["short"]) == 8 and num_frames_for_span(5.0, PROFILES["short"]) == 4
    assert num_frames_for_span(99.0, PROFILES["stage1"]) == 4  # `middle`: hi frames
    # the whole-video rule counts frames, the span rule seconds: a 30 s span gets 28 frames, a 30 s video 64
    assert len(frame_indices(900, 30.0, long)) == 64


def test_span_rule_positions_are_spread_over_the_span_from_its_first_frame():
    chosen = select_span_frames(30.0, PROFILES["long"], 100.0, 130.0, num_frames=30 * 600)
    assert chosen.start_index == 3000 and chosen.duration == 30.0 and len(chosen.indices) == 28
    assert chosen.indices[0] == 3000 + int(899 / 28 / 2) == 3016 and chosen.indices[-1] < 3000 + 900  # inside the span, not at its start
    gaps = np.diff(chosen.indices)
    assert gaps.min() >= 31 and gaps.max() <= 33  # about 899 / 28 frames apart
    assert chosen.times[0] == 0.5 and chosen.times == tuple(float(np.round((i - 3000) / 30.0, 1)) for i in chosen.indices)
    # a start between frames: the first frame at or after it
    assert select_span_frames(30.0, PROFILES["short"], 10.01, 20.0).start_index == 301
    assert select_span_frames(30.0, PROFILES["short"], 0.1, 20.0).start_index == 3  # 0.1 * 30 is 3.0000000000000004


def test_span_rule_with_a_fractional_frame_rate():
    from fractions import Fraction

    chosen = select_span_frames(Fraction(30000, 1001), PROFILES["short"], 3.3, 15.9)
    assert chosen.vlen == int(12 * Fraction(30000, 1001)) == 359 and len(chosen.indices) == 8
    assert chosen.start_index == 99 and chosen.indices == tuple(sorted(chosen.indices))


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
        select_span_frames(fps, PROFILES["long"], start, end, num_frames=frames)
    # the same span inside a long enough video is fine (when the span itself is)
    if msg == "runs past the end of the video":
        assert len(select_span_frames(fps, PROFILES["long"], start, end, num_frames=2101).indices) == 20


# ----------------------------------------------------- the ingest samples by these rules (operators.process, no Ray)


def _info(fps: float, num_frames: int) -> VideoInfo:
    return VideoInfo(fps=fps, num_frames=num_frames, duration=num_frames / fps, width=320, height=240, codec="h264",
                     has_audio=False)


@pytest.mark.parametrize("name", list(PROFILES))
def test_ingest_frames_of_a_span_record_are_the_span_rule(name):
    """operators.process.select_record_frames (what process_record decodes) over a grid of spans and frame rates equals
    select_span_frames; the spans the rule refuses are the record's failure (stage "sample", field "span")."""
    profile = PROFILES[name]
    checked = refused = 0
    for fps in (1.0, 10.0, 23.976023976, 25.0, 29.97002997, 30.0, 59.94, 60.0):
        num_frames = int(round(700 * fps))  # a 700 s video
        info = _info(fps, num_frames)
        for start in (0.0, 0.4, 3.0, 12.3, 100.0, 650.5):
            for length in (0.5, 1.0, 3.9, 4.0, 10.0, 30.0, 37.5, 63.9, 100.0, 512.3, 640.0):
                rec = SourceRecord("hdvila", "v", ("v.mp4",), start, start + length, origin="m.jsonl:3")
                try:
                    want = select_span_frames(fps, profile, start, start + length, num_frames=num_frames)
                except ValueError as e:
                    with pytest.raises(RecordError) as got:
                        select_record_frames(rec, info, profile, "v.mp4")
                    assert (got.value.stage, got.value.field, got.value.reason) == ("sample", "span", str(e))
                    refused += 1
                    continue
                chosen = select_record_frames(rec, info, profile, "v.mp4")
                assert chosen == want
                assert len(chosen.indices) == num_frames_for_span(length, profile)
                assert frame_times(chosen, list(chosen.indices), fps, True) == list(want.times)
                checked += 1
    assert checked > 300 and refused > 20


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, 20_000).map(lambda x: x / 8), length=st.integers(8, 8_000).map(lambda x: x / 8),
       fps=st.sampled_from([8.0, 24.0, 25.0, 29.97002997, 30.0, 60.0]), name=st.sampled_from(list(PROFILES)))
def test_ingest_frames_of_a_span_record_fuzz(start, length, fps, name):
    info = _info(fps, int(round(3600 * fps)))
    rec = SourceRecord("ego4d", "v", ("v.mp4",), start, start + length)
    chosen = select_record_frames(rec, info, PROFILES[name])
    assert chosen == select_span_frames(fps, PROFILES[name], start, start + length, num_frames=info.num_frames)
    assert chosen.start_index <= chosen.indices[0] and chosen.indices[-1] < chosen.start_index + int(length) * fps


def test_ingest_frames_of_a_whole_video_are_unchanged():
    for fps, n in ((25.0, 1234), (30.0, 900), (29.97002997, 27_000), (1.0, 3)):
        for profile in PROFILES.values():
            chosen = select_record_frames(SourceRecord("webvid", "v", ("v.mp4",)), _info(fps, n), profile)
            assert list(chosen.indices) == reference_indices(n, fps, profile.sample_type, profile.lo, profile.hi)
            assert frame_times(chosen, list(chosen.indices), fps, False) == [round(i / fps, 1) for i in chosen.indices]
    # the worked example of the README's migration note: a 30 s window of a long video at the long profile
    rec = SourceRecord("miradata", "v", ("v.mp4",), 100.0, 130.0)
    assert len(select_record_frames(rec, _info(30.0, 30 * 600), PROFILES["long"]).indices) == 28
    assert len(select_record_frames(SourceRecord("webvid", "v", ("v.mp4",)), _info(30.0, 900), PROFILES["long"]).indices) == 64


def test_an_output_folder_written_with_the_old_span_rule_is_refused(tmp_path):
    """job.json of a folder written before the span rule has no `span_rule`: a re-run into it is refused, naming the
    setting, before any work; a folder written with this rule is accepted."""
    import json

    from longvid.pipelines.ingest import IngestConfig
    from longvid.pipelines.outputs import JobOutput

    cfg = IngestConfig(source="hdvila", metadata=["m.jsonl"], videos=str(tmp_path / "v"), out=str(tmp_path / "old"))
    fp = cfg.fingerprint()
    assert fp["span_rule"] == SPAN_RULE == "reference-seconds"
    old = {k: v for k, v in json.loads(json.dumps(fp)).items() if k != "span_rule"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "job.json").write_text(json.dumps({"job": "ingest", "fingerprint": old}))
    with pytest.raises(ConfigError) as e:
        JobOutput(cfg.out, "ingest").prepare(cfg.fingerprint())
    assert str(e.value).startswith("out: ") and "other settings (span_rule)" in str(e.value)
    assert "use a new --out" in str(e.value)
    new = IngestConfig(source="hdvila", metadata=["m.jsonl"], videos=str(tmp_path / "v"), out=str(tmp_path / "new"))
    JobOutput(new.out, "ingest").prepare(new.fingerprint())  # writes job.json with the rule
    assert json.loads((tmp_path / "new" / "job.json").read_text())["fingerprint"]["span_rule"] == SPAN_RULE
    JobOutput(new.out, "ingest").prepare(new.fingerprint())  # and accepts it on resume
