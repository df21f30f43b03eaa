"""The opt-in decode knobs (issue 16): keyframe-snapped mode (snap error recorded, refused where exact frames are
needed) and hardware decoding (--hwaccel: NVDEC per node, software with the same bytes where exact frames are asked
for, a clear failure for `cuda` without a device). This machine has no GPU: the device path is tested up to opening
the device, and the repacking of downloaded frames on a software frame."""
from __future__ import annotations

import json

import numpy as np
import pytest

from longvid.operators import decode as dec
from longvid.operators.decode import decode, decoder_choice, snap_error_s
from longvid.operators.errors import RecordError
from longvid.operators.probe import probe
from longvid.operators.process import ProcessOptions, process_record
from longvid.operators.records import SourceRecord, TextSpan
from longvid.operators.frame_rule import PROFILES, select_frames
from longvid.synthetic.videos import make_video, read_frame_number

W, H = 192, 144
TARGETS = [10, 80, 200, 340, 10]


@pytest.fixture(scope="module")
def gop5(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("knobs") / "gop5.mp4", seconds=12, fps=30, width=W, height=H, gop=150,
                      bframes=3)


@pytest.fixture
def no_device(monkeypatch):
    monkeypatch.setattr(dec, "cuda_unavailable", lambda: "no CUDA device could be opened (test)")


@pytest.fixture
def device_present(monkeypatch):
    """The node claims a CUDA device (the check passes) but this machine has none: opening it fails later."""
    if not dec.cuda_unavailable():
        pytest.skip("a real CUDA device is present: the open would succeed")
    monkeypatch.setattr(dec, "cuda_unavailable", lambda: "")


def test_keyframe_mode_frames_and_snap_error(gop5):
    info = probe(gop5)
    r = decode(gop5, TARGETS, info, mode="keyframe")
    assert r.indices == (0, 150, 150, 300, 0)
    assert [read_frame_number(f) for f in r.frames] == list(r.indices)
    mx, mean = snap_error_s(TARGETS, r.indices, info.fps)
    assert mx == pytest.approx(70 / 30) and mean == pytest.approx((10 + 70 + 50 + 40 + 10) / 5 / 30)
    exact = decode(gop5, TARGETS, info)
    assert snap_error_s(TARGETS, exact.indices, info.fps) == (0.0, 0.0)
    assert snap_error_s([], [], 30.0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        snap_error_s([1, 2], [1], 30.0)


def test_decoder_choice():
    assert decoder_choice("none", "keyframe") == "software"
    assert decoder_choice("cuda", "auto") == "cuda"  # an explicit request, checked against the node in decode()
    for mode in dec.EXACT_MODES:  # exact frames never go to the device under "auto", device or not
        assert decoder_choice("auto", mode) == "software"


@pytest.mark.parametrize("threads", [1, None])  # None: the GOP-parallel path
@pytest.mark.parametrize("mode", ["auto", "keyframe"])
def test_auto_without_a_device_is_software_byte_identical(gop5, no_device, mode, threads):
    info = probe(gop5)
    ref = decode(gop5, TARGETS, info, size=64, mode=mode, threads=threads, resize_method="torch")
    got = decode(gop5, TARGETS, info, size=64, mode=mode, threads=threads, resize_method="torch", hwaccel="auto")
    assert got.frames.tobytes() == ref.frames.tobytes() and got.indices == ref.indices and got.times == ref.times
    assert got.stats.decoder == ref.stats.decoder == "software" and got.stats.hw_fallback == ""


def test_auto_with_exact_frames_never_asks_for_the_device(gop5, monkeypatch):
    def ask():
        raise AssertionError("exact frames asked for the device")

    monkeypatch.setattr(dec, "cuda_unavailable", ask)
    info = probe(gop5)
    got = decode(gop5, TARGETS, info, size=64, hwaccel="auto")
    assert got.frames.tobytes() == decode(gop5, TARGETS, info, size=64).frames.tobytes()
    assert got.stats.decoder == "software"


def test_cuda_without_a_device_fails_the_record_naming_hwaccel(gop5, no_device):
    info = probe(gop5)
    for mode in ("auto", "keyframe"):
        with pytest.raises(RecordError) as e:
            decode(gop5, TARGETS, info, mode=mode, hwaccel="cuda")
        assert e.value.stage == "decode" and e.value.field == "hwaccel"
        assert "no CUDA device" in e.value.reason and "--hwaccel auto" in e.value.reason


def test_this_machine_reports_why_there_is_no_device():
    why = dec.cuda_unavailable()
    if not why:
        pytest.skip("a CUDA device is present")
    assert "CUDA" in why


def test_a_device_that_cannot_open_the_video(gop5, device_present):
    """The real HWAccel open path: "auto" falls back to software (same bytes, the reason kept), "cuda" fails."""
    info = probe(gop5)
    ref = decode(gop5, TARGETS, info, size=64, mode="keyframe")
    got = decode(gop5, TARGETS, info, size=64, mode="keyframe", hwaccel="auto")
    assert got.frames.tobytes() == ref.frames.tobytes() and got.indices == ref.indices
    assert got.stats.decoder == "software" and "CUDA decoder could not open" in got.stats.hw_fallback
    with pytest.raises(RecordError) as e:
        decode(gop5, TARGETS, info, hwaccel="cuda")
    assert e.value.field == "hwaccel" and "CUDA decoder could not open" in e.value.reason


def test_bad_arguments(gop5):
    info = probe(gop5)
    with pytest.raises(ValueError, match="hwaccel"):
        decode(gop5, TARGETS, info, hwaccel="gpu")
    with pytest.raises(ValueError, match="pyav"):
        decode(gop5, TARGETS, info, backend="decord", hwaccel="auto")


def test_frames_downloaded_from_the_device_are_repacked_to_the_software_bytes(gop5):
    """NVDEC frames arrive as NV12: the decoder repacks them into the stream's yuv420p before the RGB conversion, so
    the same picture gives the software path's bytes (shown with a software frame converted to NV12)."""
    import av

    info = probe(gop5)
    assert info.pix_fmt == "yuv420p"
    with av.open(str(gop5)) as c:
        frame = next(c.decode(video=0))
    for size in (None, 64):
        sw = dec._PyAVDecoder(gop5, info, size, 1, False, "torch")
        hw = dec._PyAVDecoder(gop5, info, size, 1, False, "torch", hw="cuda")
        nv12 = frame.reformat(format="nv12")
        assert nv12.format.name == "nv12"
        np.testing.assert_array_equal(hw._convert(nv12), sw._convert(frame))


# ------------------------------------------------------------------------------------ deblock="targets"


def test_deblock_targets_filters_only_the_targets(gop5):
    """The rule: the loop filter runs on the pictures that serve a target and on no other picture decoded for them.
    Shown without trusting the switch itself: where every decoded picture is a target (all frames, or keyframes
    only) the frames are exact; elsewhere targets differ from the exact frames, every path (GOP closure, serial,
    GOP-parallel, frame threads on a file object) gives the same bytes, because non-reference pictures never feed a
    target, and every sent picture but the targets went unfiltered."""
    info = probe(gop5)
    exact = decode(gop5, TARGETS, info)
    assert decode(gop5, TARGETS, info, deblock="all").frames.tobytes() == exact.frames.tobytes()
    every = list(range(info.num_frames))
    r = decode(gop5, every, info, deblock="targets", threads=1)
    assert r.frames.tobytes() == decode(gop5, every, info, threads=1).frames.tobytes()
    assert r.stats.packets_unfiltered == 0
    keys = [0, 150, 300]
    r = decode(gop5, keys, info, deblock="targets", threads=1, track=True)
    assert r.stats.closure and r.frames.tobytes() == decode(gop5, keys, info, threads=1).frames.tobytes()
    assert r.stats.packets_unfiltered == 0 and len(r.stats.sent_pts) == 3

    got = decode(gop5, TARGETS, info, deblock="targets", threads=1, track=True)
    assert got.stats.closure and got.indices == exact.indices
    assert got.stats.packets_unfiltered == len(got.stats.sent_pts) - len(set(TARGETS)) > 0
    err = np.abs(got.frames.astype(np.int16) - exact.frames).mean(axis=(1, 2, 3))
    assert err[0] > 0 and all(e < 16 for e in err)  # not exact, and near it
    variants = [dict(threads=None), dict(threads=1, mode="sequential"), dict(threads=1, mode="seek")]
    for kw in variants:
        other = decode(gop5, TARGETS, info, deblock="targets", **kw)
        assert other.frames.tobytes() == got.frames.tobytes(), kw
    seq = decode(gop5, TARGETS, info, deblock="targets", threads=1, mode="sequential")
    assert not seq.stats.closure and seq.stats.packets_unfiltered > got.stats.packets_unfiltered
    with open(gop5, "rb") as f:  # frame threads copy the setting with each packet
        threaded = decode(f, TARGETS, info, deblock="targets", threads=3, mode="sequential")
    assert threaded.frames.tobytes() == got.frames.tobytes()


def test_deblock_switch_is_verified_before_use():
    """The binding takes a context only after checking it (operators/loop_filter.py): any other object is refused
    with the reason, never poked."""
    import av

    from longvid.operators.loop_filter import LoopFilterSwitch, LoopFilterUnavailable, loop_filter_unavailable

    assert loop_filter_unavailable() == ""  # Linux with PyAV's wheel: available
    sw = LoopFilterSwitch(av.codec.CodecContext.create("h264", "r"))
    assert sw.skipping is False
    sw.set(True)
    sw.set(True)
    assert sw.skipping is True

    class Loose:
        skip_frame = "DEFAULT"

    for thing in (Loose(), av.codec.Codec("h264", "r")):
        with pytest.raises(LoopFilterUnavailable, match="not a PyAV CodecContext"):
            LoopFilterSwitch(thing)


def test_deblock_switch_finds_pyavs_libavcodec_beside_decords(gop5, monkeypatch):
    """decord maps its own, older FFmpeg into the process; the switch once took the first libavcodec in the process's
    mappings, decord's in some runs, and found no context. PyAV's is tried first, and any other order still works."""
    decord = pytest.importorskip("decord")
    import av

    from longvid.operators import loop_filter as lf

    decord.VideoReader(str(gop5)).get_batch([0]).asnumpy()
    lf._libs.cache_clear()
    pairs = lf._libs()
    assert len(pairs) >= 2  # PyAV's and decord's
    assert "av.libs" in pairs[0][0]._name and "decord" in pairs[-1][0]._name
    monkeypatch.setattr(lf, "_libs", lambda: tuple(reversed(pairs)))  # decord's first
    sw = lf.LoopFilterSwitch(av.codec.CodecContext.create("h264", "r"))
    sw.set(True)
    assert sw.skipping and lf._get_int(sw._util, sw._ctx, b"skip_loop_filter") == 48
    info = probe(gop5)
    assert decode(gop5, TARGETS, info, deblock="targets", threads=1).stats.packets_unfiltered > 0


def test_deblock_switch_refuses_a_context_it_cannot_verify(monkeypatch):
    """Another PyAV layout: no word points at libavcodec's AVClass, or the candidate's skip_frame does not follow
    PyAV's: refused, and PyAV's own skip_frame is left as it was."""
    import av

    from longvid.operators import loop_filter as lf

    cc = av.codec.CodecContext.create("h264", "r")
    with monkeypatch.context() as m:
        m.setattr(lf, "_read_word", lambda mem, address: None)
        with pytest.raises(lf.LoopFilterUnavailable, match="could not be located"):
            lf.LoopFilterSwitch(cc)
    cc.skip_frame = "NONREF"
    with monkeypatch.context() as m:
        m.setattr(lf, "_get_int", lambda util, ctx, name: 0)
        with pytest.raises(lf.LoopFilterUnavailable, match="verified"):
            lf.LoopFilterSwitch(cc)
    assert cc.skip_frame == "NONREF"


def test_deblock_unavailable_fails_the_record_naming_deblock(gop5, monkeypatch):
    from longvid.operators.loop_filter import LoopFilterUnavailable

    def refuse(cc):
        raise LoopFilterUnavailable("not on this platform (test)")

    monkeypatch.setattr(dec, "LoopFilterSwitch", refuse)
    info = probe(gop5)
    for threads in (1, None):
        with pytest.raises(RecordError) as e:
            decode(gop5, TARGETS, info, deblock="targets", threads=threads)
        assert e.value.stage == "decode" and e.value.field == "deblock" and "not on this platform" in e.value.reason
    assert decode(gop5, TARGETS, info, deblock="all").frames.shape[0] == len(TARGETS)
    with pytest.raises(ValueError, match="deblock"):
        decode(gop5, TARGETS, info, deblock="none")
    with pytest.raises(ValueError, match="pyav"):
        decode(gop5, TARGETS, info, backend="decord", deblock="targets")


# ------------------------------------------------------------------------------------ the sample json


def _record():
    return SourceRecord("webvid", "v", ("v.mp4",), texts=(TextSpan("a bird lands", None, None, "caption"),))


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    d = tmp_path_factory.mktemp("knob_root")
    make_video(d / "v.mp4", seconds=80, fps=10, width=W, height=H, gop=100, bframes=2)  # 10 s GOPs
    return d


def test_sample_json_records_the_knobs_only_when_set(video_root, no_device):
    base = process_record(_record(), ProcessOptions(videos_root=str(video_root), profile="long"))
    assert not {"decode_mode", "snap_error_s", "decoder"} & set(base.info)  # the default json is unchanged
    kf = process_record(_record(), ProcessOptions(videos_root=str(video_root), profile="long", decode_mode="keyframe"))
    plan = select_frames(800, 10.0, PROFILES["long"])
    used = kf.info["frame_indices"]
    assert set(used) <= {0, 100, 200, 300, 400, 500, 600, 700} and len(used) == len(plan.indices)
    err = [abs(u - r) / 10.0 for u, r in zip(used, plan.indices)]
    assert kf.info["decode_mode"] == "keyframe"
    assert kf.info["snap_error_s"] == {"max": pytest.approx(max(err)), "mean": pytest.approx(sum(err) / len(err))}
    # at most half a GOP, except after the last keyframe (79.4 s snaps back to 70 s)
    assert max(e for e, r in zip(err, plan.indices) if r < 700) <= 5.0 and kf.info["snap_error_s"]["max"] == 9.4
    assert kf.info["frame_times"] == [round(i / 10.0, 1) for i in used]  # the true times of the snapped frames
    assert "decoder" not in kf.info
    hw = process_record(_record(), ProcessOptions(videos_root=str(video_root), profile="long", decode_mode="keyframe",
                                                  hwaccel="auto"))
    assert hw.info["decoder"] == "software" and hw.mp4 == kf.mp4
    assert {k: v for k, v in hw.info.items() if k != "decoder"} == kf.info
    assert "deblock" not in base.info
    db = process_record(_record(), ProcessOptions(videos_root=str(video_root), profile="long", deblock="targets"))
    assert db.info["deblock"] == "targets" and db.info["frame_indices"] == base.info["frame_indices"]
    assert {k: v for k, v in db.info.items() if k != "deblock"} == base.info and db.mp4 != base.mp4
    with pytest.raises(RecordError) as e:
        process_record(_record(), ProcessOptions(videos_root=str(video_root), profile="long", hwaccel="cuda"))
    assert e.value.field == "hwaccel"


# ----------------------------------------------------------------------------------- settings and jobs


def test_fingerprint_records_the_knobs():
    from longvid.pipelines.ingest import IngestConfig

    base = dict(source="webvid", metadata=["m.csv"], videos="v", out="o")
    fp = IngestConfig(**base).fingerprint()
    assert fp["decode_mode"] == "auto" and "hwaccel" not in fp  # folders written before the setting stay valid
    assert IngestConfig(**base, decode_mode="keyframe").fingerprint()["decode_mode"] == "keyframe"
    for hw in ("auto", "cuda"):
        assert IngestConfig(**base, hwaccel=hw).fingerprint()["hwaccel"] == hw
    assert "deblock" not in fp and IngestConfig(**base, deblock="targets").fingerprint()["deblock"] == "targets"


def _cli(argv, capsys):
    from longvid.jobs.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture
def raw_job(tmp_path):
    (tmp_path / "meta.csv").write_text("videoid,name,page_dir,duration\n")
    (tmp_path / "videos").mkdir()
    return ["ingest", "--source", "webvid", "--metadata", str(tmp_path / "meta.csv"), "--videos",
            str(tmp_path / "videos"), "--out", str(tmp_path / "out")]


def test_another_decode_mode_into_the_same_out_is_refused(tmp_path, raw_job, capsys):
    from longvid.pipelines.ingest import IngestConfig

    fp = IngestConfig(source="webvid", metadata=[str(tmp_path / "meta.csv")], videos=str(tmp_path / "videos"),
                      out=str(tmp_path / "out")).fingerprint()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job.json").write_text(json.dumps({"job": "ingest", "fingerprint": fp}))
    for flags, named in ((["--decode-mode", "keyframe"], "decode_mode"), (["--hwaccel", "auto"], "hwaccel"),
                         (["--deblock", "targets"], "deblock")):
        rc, err = _cli(raw_job + flags, capsys)
        assert rc == 2 and "other settings" in err and named in err, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["job.json"]


def test_knobs_need_the_pyav_backend(raw_job, capsys, tmp_path):
    for flags, named in ((["--decode-mode", "keyframe"], "decode_mode"), (["--hwaccel", "auto"], "hwaccel"),
                         (["--deblock", "targets"], "deblock")):
        rc, err = _cli(raw_job + flags + ["--backend", "decord"], capsys)
        assert rc == 2 and err.strip().count("\n") == 0 and named in err and "pyav" in err, err
    assert not (tmp_path / "out").exists()


def test_cuda_on_a_local_job_without_a_device_exits_2(raw_job, capsys, tmp_path):
    if not dec.cuda_unavailable():
        pytest.skip("a CUDA device is present")
    rc, err = _cli(raw_job + ["--hwaccel", "cuda"], capsys)
    assert rc == 2 and "hwaccel" in err and "--hwaccel auto" in err, err
    assert not (tmp_path / "out").exists()


def test_deblock_on_a_local_job_where_the_switch_is_unavailable_exits_2(raw_job, capsys, tmp_path, monkeypatch):
    from longvid.operators import loop_filter

    monkeypatch.setattr(loop_filter, "loop_filter_unavailable", lambda: "not on this platform (test)")
    rc, err = _cli(raw_job + ["--deblock", "targets"], capsys)
    assert rc == 2 and "deblock" in err and "not on this platform" in err and "--deblock all" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, named", [
    (["--decode-mode", "keyframe"], "decode_mode"),
    (["--hwaccel", "cuda"], "hwaccel"),
    (["--deblock", "targets"], "deblock"),
])
def test_the_mixture_ingest_refuses_inexact_frames(tmp_path, capsys, flags, named):
    """The mixture ingest makes the paper's data: keyframe snapping and forced GPU decoding exit 2 naming the
    setting, before the mixture is read; the exact values are accepted (the mixture file is then missing)."""
    base = ["ingest", "--mixture", str(tmp_path / "mix.yaml"), "--out", str(tmp_path / "out")]
    rc, err = _cli(base + flags, capsys)
    assert rc == 2 and err.strip().count("\n") == 0 and named in err and "exact frames" in err, err
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"mixture: {tmp_path / 'mix.yaml'}\nout: {tmp_path / 'out'}\n{named}: {flags[1]}\n")
    rc, err = _cli(["ingest", "--config", str(cfg)], capsys)
    assert rc == 2 and named in err and "exact frames" in err, err
    rc, err = _cli(base + ["--decode-mode", "auto", "--hwaccel", "auto", "--deblock", "all"], capsys)
    assert rc == 2 and "mixture" in err and not any(k in err for k in ("decode_mode", "hwaccel", "deblock")), err
    assert not (tmp_path / "out").exists()
