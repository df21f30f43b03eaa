"""probe(): container facts, and a RecordError with the right stage/field for every kind of bad file."""
from __future__ import annotations

import io
import os

import pytest

from longvid.operators.errors import RecordError
from longvid.operators.probe import VideoInfo, probe
from longvid.synthetic.videos import make_audio_only, make_video, remux_video
from tests.faults import NoWholeRead


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    out = {
        "plain": make_video(d / "plain.mp4", seconds=4, fps=30, width=160, height=120, gop=30),
        "audio": make_video(d / "audio.mp4", seconds=3, fps=25, width=160, height=120, gop=50, audio=True),
        "ntsc": make_video(d / "ntsc.mp4", seconds=3, fps=30000 / 1001, width=160, height=120, gop=15),
        "audio_only": make_audio_only(d / "audio_only.mp4", seconds=2),
    }
    (d / "zero.mp4").write_bytes(b"")
    out["zero"] = d / "zero.mp4"
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    out["text"] = d / "text.mp4"
    (d / "random.mp4").write_bytes(os.urandom(20000))
    out["random"] = d / "random.mp4"
    data = out["plain"].read_bytes()  # moov is at the end: cutting the file loses it
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.mp4"
    # Matroska: frame count not in the header, keyframes only in the cues
    out["mkv"] = remux_video(out["plain"], d / "plain.mkv")
    return out


def test_plain_mp4_facts(vids):
    info = probe(vids["plain"])
    assert isinstance(info, VideoInfo)
    assert info.fps == pytest.approx(30.0)
    assert info.num_frames == 120 and info.num_frames_exact
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert (info.width, info.height) == (160, 120)
    assert info.codec == "h264"
    assert info.has_audio is False
    assert info.start_time == pytest.approx(0.0)
    assert info.keyframe_interval_s == pytest.approx(1.0, abs=0.01)
    with pytest.raises(Exception):
        info.fps = 1.0  # frozen


def test_audio_and_gop(vids):
    info = probe(vids["audio"])
    assert info.has_audio is True
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 75
    assert info.keyframe_interval_s == pytest.approx(2.0, abs=0.01)


def test_fractional_rate(vids):
    info = probe(vids["ntsc"])
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert info.num_frames == round(3 * 30000 / 1001)


def test_matroska_estimates_frame_count_and_reads_cues(vids):
    info = probe(vids["mkv"])
    assert info.num_frames_exact is False
    assert abs(info.num_frames - 120) <= 1
    assert info.fps == pytest.approx(30.0)
    assert info.keyframe_interval_s == pytest.approx(1.0, abs=0.01)


def test_file_like_source_is_not_read_whole(vids):
    with NoWholeRead(str(vids["plain"]), "r") as f:
        info = probe(f)
    assert info == probe(str(vids["plain"]))


@pytest.mark.parametrize(
    "kind, stage, field, words",
    [
        ("zero", "probe", "size", "zero-byte"),
        ("text", "probe", "container", "not a video"),
        ("random", "probe", "container", "not a video"),
        ("truncated", "probe", "container", "truncated"),
        ("audio_only", "probe", "stream", "audio-only"),
    ],
)
def test_bad_files(vids, kind, stage, field, words):
    with pytest.raises(RecordError) as ei:
        probe(vids[kind])
    e = ei.value
    assert (e.stage, e.field) == (stage, field)
    assert words in e.reason
    assert str(vids[kind]) in str(e)  # names the file


def test_missing_file_is_a_locate_error(tmp_path):
    with pytest.raises(RecordError) as ei:
        probe(tmp_path / "nope.mp4")
    assert ei.value.stage == "locate" and ei.value.field == "path"


def test_zero_byte_file_object():
    with pytest.raises(RecordError) as ei:
        probe(io.BytesIO(b""))
    assert ei.value.reason == "zero-byte file"
