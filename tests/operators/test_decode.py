"""decode_frames(): the right frames (read back from each frame's stamp), decord equality, cost-model
properties (no frame decoded twice, stop after the last target, non-reference frames skipped), bad files."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from longvid.operators.decode import decode, decode_frames
from longvid.operators.errors import RecordError
from longvid.operators.frames import resize_square
from longvid.operators.probe import probe
from longvid.synthetic.videos import _frame, make_audio_only, make_video, read_frame_number, remux_video
from tests.faults import NoWholeRead

W, H = 192, 144


def stamps(frames: np.ndarray) -> list[int]:
    return [read_frame_number(f) for f in frames]


def _write_timed(path, times_ms: list[int], stamp: list[int], container_opts=None, bframes=2, gop=12, rate=30):
    """An H.264 file whose frame k is shown at times_ms[k] (ms) and carries the stamp stamp[k]."""
    with av.open(str(path), "w", options=container_opts or {}) as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes), "preset": "veryfast"}
        for t, s in zip(times_ms, stamp):
            vf = av.VideoFrame.from_ndarray(_frame(s, W, H, 1), format="rgb24")
            vf.pts = t
            vf.time_base = Fraction(1, 1000)
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
    return path


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    v = {
        # B-frame videos with 1 s and 5 s keyframe intervals
        "gop1": make_video(d / "gop1.mp4", seconds=10, fps=30, width=W, height=H, gop=30, bframes=2),
        "gop5": make_video(d / "gop5.mp4", seconds=12, fps=30, width=W, height=H, gop=150, bframes=3),
        "ntsc": make_video(d / "ntsc.mp4", seconds=6, fps=30000 / 1001, width=W, height=H, gop=60, bframes=2, audio=True),
    }
    v["gop10"] = make_video(d / "gop10.mp4", seconds=21, fps=30, width=W, height=H, gop=300, bframes=3)
    v["mkv"] = remux_video(v["gop1"], d / "gop1.mkv")
    v["ts"] = remux_video(v["gop1"], d / "gop1.ts")  # Annex-B H.264, no keyframe index, a start offset
    v["faststart"] = remux_video(v["gop1"], d / "faststart.mp4", {"movflags": "faststart"})
    data = v["faststart"].read_bytes()
    (d / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])  # header intact, media data cut
    v["cut"] = d / "cut.mp4"
    i = data.find(b"mdat")
    (d / "zeros.mp4").write_bytes(data[: i + 4] + bytes(len(data) - i - 4))  # container fine, no decodable packet
    v["zeros"] = d / "zeros.mp4"
    # variable frame rate: 10 fps nominal with gaps (frames dropped) and a burst
    times = [k * 100 for k in range(40)] + [4300, 4700, 4750, 4800, 5000] + [5100 + k * 100 for k in range(30)]
    v["vfr"] = _write_timed(d / "vfr.mp4", times, list(range(len(times))))
    v["vfr_times"] = times
    # a stream that does not start at 0 (Matroska keeps the offset): frame k at 2.5 s + k/25
    v["offset"] = _write_timed(d / "offset.mkv", [2500 + 40 * k for k in range(100)], list(range(100)), rate=25)
    return v


SPARSE = [3, 0, 45, 46, 200, 299, 151, 151, 2]


@pytest.mark.parametrize("mode", ["auto", "sequential", "seek"])
@pytest.mark.parametrize("name", ["gop1", "gop5", "mkv", "faststart"])
def test_sparse_unsorted_repeated(vids, name, mode):
    info = probe(vids[name])
    idx = [i for i in SPARSE if i < info.num_frames - 1] + [info.num_frames - 1 if info.num_frames_exact else 290]
    frames = decode_frames(vids[name], idx, info, mode=mode)
    assert frames.shape == (len(idx), H, W, 3) and frames.dtype == np.uint8
    assert stamps(frames) == idx


@pytest.mark.parametrize("name", ["gop1", "gop5"])
def test_dense_every_frame(vids, name):
    info = probe(vids[name])
    idx = list(range(info.num_frames))
    assert stamps(decode_frames(vids[name], idx, info)) == idx


def test_dense_window_and_strided(vids):
    info = probe(vids["gop5"])
    idx = list(range(100, 180)) + list(range(181, 360, 3))
    assert stamps(decode_frames(vids["gop5"], idx, info)) == idx


def test_fractional_fps_with_audio(vids):
    info = probe(vids["ntsc"])
    idx = [0, 1, 59, 60, 61, 100, info.num_frames - 1]
    assert stamps(decode_frames(vids["ntsc"], idx, info)) == idx


def test_no_frame_decoded_twice_and_stop_after_last(vids):
    info = probe(vids["gop5"])
    idx = [10, 20, 170, 171, 330]
    r = decode(vids["gop5"], idx, info, track=True)
    assert stamps(r.frames) == idx
    assert len(r.stats.sent_pts) == len(set(r.stats.sent_pts))  # no packet sent twice
    assert r.stats.seeks >= 1  # 20 -> 170 and 171 -> 330 cross keyframes
    assert r.stats.frames_converted == 5
    # stops soon after the last target: packets of the last GOP only up to ~frame 330 + pipeline delay
    last_pts = max(r.stats.sent_pts)
    tb = av.open(str(vids["gop5"])).streams.video[0].time_base
    assert float(last_pts * tb) * 30 < 330 + 24


def test_nonref_frames_are_skipped_but_targets_are_not(vids):
    info = probe(vids["gop5"])
    idx = list(range(0, 360, 10)) + [7, 8, 9]  # targets on every kind of frame, incl. B-frames
    r = decode(vids["gop5"], idx, info, mode="sequential")
    assert stamps(r.frames) == idx
    assert r.stats.packets_nonref > 100
    assert r.stats.frames_out < 360  # some non-reference B-frames were never decoded


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(vids, threads):
    info = probe(vids["gop5"])
    idx = [359, 0, 151, 152, 7, 7, 300]
    r = decode(vids["gop5"], idx, info, threads=threads, size=64)
    assert stamps(r.frames) == idx and r.indices == tuple(idx)
    assert r.times == pytest.approx(tuple(i / 30 for i in idx), abs=1e-5)


def test_sequential_and_seek_agree_bytewise(vids):
    info = probe(vids["gop1"])
    idx = [5, 31, 64, 65, 250]
    a = decode_frames(vids["gop1"], idx, info, mode="sequential")
    b = decode_frames(vids["gop1"], idx, info, mode="seek")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["gop1", "gop5", "ntsc"])
def test_equal_to_decord(vids, name):
    decord = pytest.importorskip("decord")
    info = probe(vids[name])
    vr = decord.VideoReader(str(vids[name]), ctx=decord.cpu(0))
    assert len(vr) == info.num_frames
    assert vr.get_avg_fps() == pytest.approx(info.fps)
    idx = sorted({0, 1, 29, 30, 31, 75, 149, 150, 151, info.num_frames // 2, info.num_frames - 1})
    ref = vr.get_batch(idx).asnumpy()
    ours = decode_frames(vids[name], idx, info)
    assert ours.shape == ref.shape
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.99, (diff.mean(), diff.max())  # identical in practice


def test_decord_backend_same_interface(vids):
    pytest.importorskip("decord")
    info = probe(vids["gop1"])
    idx = [40, 3, 3, 299]
    a = decode_frames(vids["gop1"], idx, info, backend="decord", size=64)
    b = decode_frames(vids["gop1"], idx, info, backend="pyav", size=64)
    assert a.shape == (4, 64, 64, 3)
    assert stamps(a) == stamps(b) == idx
    with pytest.raises(RecordError) as ei:
        decode_frames(vids["gop1"], [300], info, backend="decord")
    assert ei.value.stage == "decode"


def test_resize_after_decode(vids):
    info = probe(vids["gop1"])
    idx = [10, 200]
    small = decode_frames(vids["gop1"], idx, info, size=64)
    full = decode_frames(vids["gop1"], idx, info)
    assert small.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(small, resize_square(full, 64))
    assert stamps(small) == idx


def test_keyframe_mode_snaps_and_reports(vids):
    info = probe(vids["gop5"])
    frames, used = decode_frames(vids["gop5"], [10, 80, 200, 340, 10], info, mode="keyframe")
    assert used == [0, 150, 150, 300, 0]
    assert stamps(frames) == used
    r = decode(vids["gop5"], [10, 80, 200, 340], info, mode="keyframe")
    assert r.stats.frames_out == 3  # only the three keyframes were decoded
    assert r.times == pytest.approx((0.0, 5.0, 5.0, 10.0))


def test_file_object_source(vids):
    info = probe(vids["gop1"])
    with NoWholeRead(str(vids["gop1"]), "r") as f:
        info2 = probe(f)
        got = decode_frames(f, [250, 7], info2, size=64)
    assert info2 == info
    assert stamps(got) == [250, 7]


def test_variable_frame_rate(vids):
    """Target i gets the frame nearest to i/fps within half a frame, else the one on screen at that time."""
    info = probe(vids["vfr"])
    times = vids["vfr_times"]
    g = [(t / 1000 - info.start_time) * info.fps for t in times]

    def expected(i):
        inside = [k for k in range(len(g)) if abs(g[k] - i) <= 0.5]
        if inside:
            return inside[0]
        before = [k for k in range(len(g)) if g[k] < i]
        return before[-1] if before else 0

    idx = list(range(0, info.num_frames, 3)) + [info.num_frames - 1]
    for mode in ("auto", "sequential"):
        r = decode(vids["vfr"], idx, info, mode=mode)
        assert stamps(r.frames) == [expected(i) for i in idx], mode


def test_stream_with_start_offset(vids):
    info = probe(vids["offset"])
    assert info.start_time == pytest.approx(2.5)
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 100 and not info.num_frames_exact
    idx = [0, 1, 50, 99, 12]
    for mode in ("auto", "sequential"):
        assert stamps(decode_frames(vids["offset"], idx, info, mode=mode)) == idx


def test_empty_indices(vids):
    info = probe(vids["gop1"])
    assert decode_frames(vids["gop1"], [], info, size=16).shape == (0, 16, 16, 3)


@pytest.mark.parametrize(
    "kind, idx, field, words",
    [
        ("cut", [5, 280], "stream", "truncated"),
        ("gop1", [300], "indices", "past the end"),
        ("gop1", [-1], "indices", "negative"),
    ],
)
def test_decode_errors(vids, kind, idx, field, words):
    info = probe(vids[kind])
    with pytest.raises(RecordError) as ei:
        decode_frames(vids[kind], idx, info)
    e = ei.value
    assert (e.stage, e.field) == ("decode", field)
    assert words in e.reason
    assert str(vids[kind]) in str(e)


def test_undecodable_stream(vids):
    """Container fine, packets garbage: probe already fails (it decodes the first picture); decode too."""
    with pytest.raises(RecordError) as ei:
        probe(vids["zeros"])
    assert (ei.value.stage, ei.value.field) == ("probe", "stream") and "undecodable" in ei.value.reason
    info = probe(vids["faststart"])  # the same layout, as if the file had been damaged after probing
    with pytest.raises(RecordError) as ei:
        decode_frames(vids["zeros"], [5, 100], info)
    assert (ei.value.stage, ei.value.field) == ("decode", "stream") and "undecodable" in ei.value.reason


def test_bad_files_fail_at_decode_open_too(tmp_path, vids):
    """decode_frames on a file that changed since probe (e.g. replaced by junk) still raises RecordError."""
    info = probe(vids["gop1"])
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video at all\n" * 20)
    with pytest.raises(RecordError) as ei:
        decode_frames(junk, [1], info)
    assert ei.value.stage == "decode" and "not a video" in ei.value.reason
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(RecordError) as ei:
        decode_frames(empty, [1], info)
    assert ei.value.reason == "zero-byte file"
    audio = make_audio_only(tmp_path / "audio.mp4", seconds=1)
    with pytest.raises(RecordError) as ei:
        decode_frames(audio, [0], info)
    assert (ei.value.stage, ei.value.field) == ("decode", "stream") and "audio-only" in ei.value.reason


def test_bad_arguments(vids):
    info = probe(vids["gop1"])
    with pytest.raises(ValueError):
        decode_frames(vids["gop1"], [1], info, backend="opencv")
    with pytest.raises(ValueError):
        decode_frames(vids["gop1"], [1], info, mode="fast")


def _encode_codec(path, codec, n=100, fps=25, opts=None, gop=25, bf=None):
    with av.open(str(path), "w") as o:
        s = o.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        if bf is not None:
            s.codec_context.max_b_frames = bf
        if opts:
            s.options = opts
        for i in range(n):
            f = av.VideoFrame.from_ndarray(_frame(i, W, H, 2), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    return path


CODECS = {
    "vp9.webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "16", "auto-alt-ref": "1"}, None),
    "hevc.mp4": ("libx265", {"preset": "ultrafast", "x265-params": "bframes=3:keyint=25:min-keyint=25:scenecut=0:log-level=error"}, None),
    "mpeg2.ts": ("mpeg2video", None, 2),  # MPEG-TS: no whole-file index -> sequential; start offset 1 frame
    "mpeg4.avi": ("mpeg4", None, 2),  # AVI with packed B-frames: first picture at pts 1
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_other_codecs_and_containers(tmp_path, name):
    codec, opts, bf = CODECS[name]
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    p = _encode_codec(tmp_path / name, codec, opts=opts, bf=bf)
    info = probe(p)
    last = info.num_frames - 1
    idx = [3, 0, 60, 61, last, 26, 24, 25, 60]
    for mode in ("auto", "sequential"):
        assert stamps(decode_frames(p, idx, info, mode=mode)) == idx, mode
    frames, used = decode_frames(p, [30, 90], info, mode="keyframe")
    assert stamps(frames) == used


def test_misplaced_keyframe_estimate_falls_back(vids, monkeypatch):
    """If a seek lands after its target (a wrong keyframe time estimate), an earlier keyframe is used."""
    from longvid.operators import decode as dec

    orig = dec._PyAVDecoder._learn_offset

    def skewed(self, pkt):
        orig(self, pkt)
        if self.kf_g is not None and not getattr(self, "_skewed", False):
            self._skewed = True
            self.kf_g = [g - 150 for g in self.kf_g]  # every keyframe believed one GOP earlier than it is

    monkeypatch.setattr(dec._PyAVDecoder, "_learn_offset", skewed)
    info = probe(vids["gop5"])
    r = decode(vids["gop5"], [200, 330, 20], info)  # the closure path checks where it lands and hands over
    assert stamps(r.frames) == [200, 330, 20] and "landed after" in r.stats.closure_fallback
    monkeypatch.setattr(dec, "USE_CLOSURE", False)
    r = decode(vids["gop5"], [200, 330, 20], info)
    assert stamps(r.frames) == [200, 330, 20]
    assert r.stats.fallbacks >= 1


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_video_is_returned_upright_like_decord(tmp_path, degrees):
    p = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(p), "w") as o:
        s = o.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"bf": "2", "g": "10"}
        s.set_display_rotation(degrees)
        for i in range(40):
            f = av.VideoFrame.from_ndarray(_frame(i, W, H, 0), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for pk in s.encode(f):
                o.mux(pk)
        for pk in s.encode():
            o.mux(pk)
    info = probe(p)
    assert info.rotation == degrees
    assert (info.width, info.height) == ((H, W) if degrees in (90, 270) else (W, H))
    idx = [33, 2, 17]
    ours = decode_frames(p, idx, info)
    assert ours.shape == (3, info.height, info.width, 3)
    assert stamps(np.rot90(ours, -degrees // 90, axes=(1, 2))) == idx  # undo the rotation: the stamp is back on top
    decord = pytest.importorskip("decord")
    ref = decord.VideoReader(str(p)).get_batch(idx).asnumpy()
    assert ref.shape == ours.shape
    assert np.abs(ref.astype(int) - ours.astype(int)).max() <= 2


def test_random_target_sets_property(vids):
    """Any multiset of targets, in any order, in any mode: the frames asked for, in that order."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    info = probe(vids["gop5"])

    @hyp.settings(max_examples=25, deadline=None, derandomize=True)
    @hyp.given(
        idx=st.lists(st.integers(0, info.num_frames - 1), min_size=1, max_size=12),
        mode=st.sampled_from(["auto", "sequential", "seek"]),
        threads=st.sampled_from([None, 1]),
    )
    def check(idx, mode, threads):
        r = decode(vids["gop5"], idx, info, mode=mode, threads=threads, size=64, track=True)
        assert stamps(r.frames) == idx
        if mode != "sequential":
            assert len(r.stats.sent_pts) == len(set(r.stats.sent_pts))  # never a packet twice

    check()


# ------------------------------------------------------------------------------------------ GOP-parallel mode


def test_split_by_gop_cuts_only_at_keyframes_with_a_margin():
    from longvid.operators.decode import GOP_LEAD, split_by_gop

    kf = [0.0, 30.0, 60.0, 90.0]
    # one GOP, or one worker: nothing to split
    assert split_by_gop([1, 5, 9], kf, 4) == [([1, 5, 9], None)]
    assert split_by_gop([1, 40, 70], kf, 1) == [([1, 40, 70], None)]
    ranges = split_by_gop([2, 10, 40, 50, 70, 80, 100], kf, 2)
    assert [t for tg, _ in ranges for t in tg] == [2, 10, 40, 50, 70, 80, 100]  # every target once, in order
    assert len(ranges) == 2
    for (tg, stop), (nxt, _) in zip(ranges, ranges[1:]):
        assert stop in kf and tg[-1] < stop - GOP_LEAD and nxt[0] >= stop + GOP_LEAD
    assert len(split_by_gop([2, 10, 40, 50, 70, 80, 100], kf, 4)) == 4
    # a target right before or right after a keyframe forbids the cut there (open-GOP leading pictures)
    assert split_by_gop([5, 29, 45], kf, 2) == [([5, 29, 45], None)]
    assert split_by_gop([5, 12, 31], kf, 2) == [([5, 12, 31], None)]
    assert split_by_gop([5, 8, 40, 45], [], 2) == [([5, 8, 40, 45], None)]


def test_gop_parallel_equals_serial_and_sends_each_packet_once(vids):
    info = probe(vids["gop1"])
    idx = [290, 5, 40, 100, 100, 160, 250, 41]
    par = decode(vids["gop1"], idx, info, threads=2, size=48, track=True)
    ser = decode(vids["gop1"], idx, info, threads=1, size=48, track=True)
    assert par.stats.ranges == 2 and ser.stats.ranges == 1
    assert stamps(par.frames) == idx
    np.testing.assert_array_equal(par.frames, ser.frames)
    assert par.indices == ser.indices and par.times == ser.times
    assert len(par.stats.sent_pts) == len(set(par.stats.sent_pts))  # no packet decoded by two ranges
    assert par.stats.frames_converted == len(set(idx))


def test_gop_parallel_open_gop_falls_back_to_serial(tmp_path, monkeypatch):
    """Open GOPs (leading pictures after the keyframe in decode order, shown before it): with the default margins
    the ranges never overlap; with cuts forced right at a keyframe the frames are still exact (a range decoder
    that lands after its target falls back to an earlier keyframe; one left with targets at its stop keyframe
    hands the whole set to the serial decoder)."""
    import longvid.operators.decode as dec

    p = tmp_path / "open.mp4"
    n = 120
    with av.open(str(p), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"g": "30", "keyint_min": "30", "sc_threshold": "0", "bf": "3", "preset": "veryfast",
                      "x264-params": "open-gop=1"}
        for k in range(n):
            vf = av.VideoFrame.from_ndarray(_frame(k, W, H, 1), format="rgb24")
            vf.pts = k
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
    info = probe(p)
    idx = [5, 40, 75, 105]
    r = decode(p, idx, info, threads=2, size=48)  # the closure path sees a non-IDR keyframe and hands over
    assert stamps(r.frames) == idx and "IDR" in r.stats.closure_fallback
    monkeypatch.setattr(dec, "USE_CLOSURE", False)
    r = decode(p, idx, info, threads=2, size=48, track=True)
    assert stamps(r.frames) == idx and r.stats.ranges == 2
    assert len(r.stats.sent_pts) == len(set(r.stats.sent_pts))
    monkeypatch.setattr(dec, "GOP_LEAD", -1)
    for idx in (list(range(24, 30)) + [31, 33], list(range(20, 30)) + [31, 58, 59, 61, 88, 89, 95]):
        r = decode(p, idx, info, threads=2, size=48)  # leading pictures of the open GOPs are targets
        assert stamps(r.frames) == idx


# ------------------------------------------------------------------------------------- closure path (H.264)


def _oracle_closure(path, targets: list[int]) -> list[int]:
    """pts of the packets an oracle decoder needs for `targets` (CFR grid positions), computed from a full scan:
    per GOP, the reference pictures decoded before the GOP's last target picture, plus the target pictures."""
    from longvid.operators.decode import PACKET_KINDS

    info = probe(path)
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        extra = st.codec_context.extradata or b""
        name = st.codec_context.name
        at = 4 if name == "h264" else 21
        nal = (extra[at] & 3) + 1 if extra[:1] == b"\x01" else 0
        kind_of = PACKET_KINDS[name]
        gops: list[list[tuple[int, int, bool]]] = []
        for p in c.demux(st):
            if p.pts is None:
                continue
            g = round((float(p.pts * st.time_base) - info.start_time) * info.fps)
            if p.is_keyframe or not gops:
                gops.append([])
            gops[-1].append((int(p.pts), g, kind_of(bytes(p), nal)[0]))
    want = set(targets)
    out = []
    for gop in gops:
        hits = [i for i, (_, g, _) in enumerate(gop) if g in want]
        if hits:
            out += [pts for i, (pts, g, ref) in enumerate(gop) if i <= hits[-1] and (ref or g in want)]
    return out


CLOSURE_SETS = {
    "gop1": [5, 31, 64, 65, 250, 251, 252, 299],
    "gop5": [0, 7, 8, 9, 149, 150, 151, 200, 359],
    "gop10": [1, 2, 3, 150, 299, 300, 301, 450, 629],
    "ntsc": [0, 1, 59, 60, 61, 100, 179],
    "mkv": [3, 0, 45, 46, 200, 299],
    "offset": [0, 1, 24, 25, 26, 60, 99],
    "ts": [0, 29, 30, 31, 100, 299],
}


@pytest.mark.parametrize("name", sorted(CLOSURE_SETS))
def test_closure_sends_exactly_the_oracle_packets_and_equals_the_general_path(vids, name, monkeypatch):
    from longvid.operators import decode as dec

    info = probe(vids[name])
    idx = CLOSURE_SETS[name]
    r = decode(vids[name], idx, info, threads=1, track=True)
    assert r.stats.closure and not r.stats.closure_fallback
    assert stamps(r.frames) == idx
    oracle = _oracle_closure(vids[name], idx)
    assert sorted(r.stats.sent_pts) == sorted(oracle)  # every packet sent once, no packet beyond the closure
    assert r.stats.frames_out == len(oracle)
    par = decode(vids[name], idx, info, threads=2)  # GOP-parallel ranges use the closure path too
    monkeypatch.setattr(dec, "USE_CLOSURE", False)
    old = decode(vids[name], idx, info, threads=1, track=True)
    assert not old.stats.closure and set(r.stats.sent_pts) <= set(old.stats.sent_pts)
    np.testing.assert_array_equal(r.frames, old.frames)  # bit-identical to the general path
    np.testing.assert_array_equal(par.frames, old.frames)
    assert r.indices == old.indices and r.times == old.times


@pytest.mark.parametrize("name", ["gop1", "gop10", "ntsc"])
def test_closure_equals_decord(vids, name):
    decord = pytest.importorskip("decord")
    info = probe(vids[name])
    idx = sorted({0, 1, 29, 30, 31, 75, 149, 150, 151, 299, 300, 301, info.num_frames // 2, info.num_frames - 1})
    idx = [i for i in idx if i < info.num_frames]
    r = decode(vids[name], idx, info, threads=1)
    assert r.stats.closure
    ref = decord.VideoReader(str(vids[name]), ctx=decord.cpu(0)).get_batch(idx).asnumpy()
    np.testing.assert_array_equal(r.frames, ref)


def test_closure_hands_odd_timestamps_to_the_general_path(vids, monkeypatch):
    """Variable frame rate (timestamps off the frame grid): the general path serves it, with the same frames."""
    from longvid.operators import decode as dec

    info = probe(vids["vfr"])
    idx = [0, 5, 41, 43, 60]
    r = decode(vids["vfr"], idx, info, threads=1)
    assert not r.stats.closure and "grid" in r.stats.closure_fallback
    monkeypatch.setattr(dec, "USE_CLOSURE", False)
    old = decode(vids["vfr"], idx, info, threads=1)
    np.testing.assert_array_equal(r.frames, old.frames)
    assert r.indices == old.indices and r.times == old.times


def test_closure_property_equals_general_path(vids, monkeypatch):
    """Any target multiset on a 3-B-frame 5 s-GOP file: the closure path's frames are the general path's, byte for
    byte, and it never sends a packet the general path does not."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    from longvid.operators import decode as dec

    info = probe(vids["gop5"])

    @hyp.settings(max_examples=15, deadline=None, derandomize=True)
    @hyp.given(idx=st.lists(st.integers(0, info.num_frames - 1), min_size=1, max_size=10))
    def check(idx):
        monkeypatch.setattr(dec, "USE_CLOSURE", True)
        a = decode(vids["gop5"], idx, info, threads=1, size=48, track=True)
        monkeypatch.setattr(dec, "USE_CLOSURE", False)
        b = decode(vids["gop5"], idx, info, threads=1, size=48, track=True)
        assert a.stats.closure
        np.testing.assert_array_equal(a.frames, b.frames)
        assert set(a.stats.sent_pts) <= set(b.stats.sent_pts) and len(a.stats.sent_pts) <= len(b.stats.sent_pts)

    check()


def test_h264_packet_kind_parses_avcc_and_annexb():
    from longvid.operators.decode import h264_packet_kind

    idr, pslice, bnonref = bytes([0x65, 0x88]), bytes([0x41, 0x9A]), bytes([0x01, 0x9E])
    sei = bytes([0x06, 0x05])
    avcc = lambda *nals: b"".join(len(n).to_bytes(4, "big") + n for n in nals)  # noqa: E731
    assert h264_packet_kind(avcc(sei, idr), 4) == (True, True)
    assert h264_packet_kind(avcc(pslice), 4) == (True, False)
    assert h264_packet_kind(avcc(bnonref, bnonref), 4) == (False, False)
    assert h264_packet_kind(b"\x00\x00\x00\x01" + sei + b"\x00\x00\x01" + bnonref, 0) == (False, False)
    assert h264_packet_kind(avcc(sei), 4) is None  # no picture
    assert h264_packet_kind(avcc(idr)[:-1], 4) is None  # truncated
    assert h264_packet_kind(bytes([0x85, 0]), 0) is None


def test_packet_kind_fuzz():
    hyp = pytest.importorskip("hypothesis")
    from longvid.operators.decode import PACKET_KINDS

    @hyp.settings(max_examples=300, deadline=None, derandomize=True)
    @hyp.given(data=hyp.strategies.binary(max_size=64), nal=hyp.strategies.sampled_from([0, 1, 2, 4]),
               codec=hyp.strategies.sampled_from(sorted(PACKET_KINDS)))
    def check(data, nal, codec):
        r = PACKET_KINDS[codec](data, nal)
        assert r is None or (isinstance(r, tuple) and len(r) == 2)

    check()


def test_serve_in_gop_and_gop_closure():
    from longvid.operators.decode import gop_closure, serve_in_gop

    # decode order I0 P4 B2(ref) b1 b3 P8 b6: shown 0..8 with 5 and 7 missing
    gs = [0, 4, 2, 1, 3, 8, 6]
    refs = [True, True, True, False, False, True, False]
    assert serve_in_gop(gs, [1, 5, 7]) == [3, 1, 6]  # 5 -> the picture at 4, 7 -> the one at 6
    assert gop_closure(refs, {3}) == [0, 1, 2, 3]
    assert gop_closure(refs, {0}) == [0]
    assert gop_closure(refs, {4, 6}) == [0, 1, 2, 4, 5, 6]
    assert gop_closure(refs, set()) == []


def test_closure_holds_few_decoded_pictures_at_once(vids, monkeypatch):
    """Each decoded picture is served or dropped as it comes out of the decoder: a GOP's closure is never held in
    memory together (a 10 s GOP at 4K would be gigabytes). Counted with proxies of the decoder's frames."""
    import weakref

    from longvid.operators import decode as dec

    class Proxy:  # av's frames take no weak reference; a proxy that forwards every attribute does
        def __init__(self, frame):
            self._f = frame

        def __getattr__(self, name):
            return getattr(self._f, name)

    alive: weakref.WeakSet = weakref.WeakSet()
    peak = [0]
    send = dec._PyAVDecoder._send

    def counting(self, pkt, skip, target=True):
        out = [Proxy(f) for f in send(self, pkt, skip, target)]
        alive.update(out)
        peak[0] = max(peak[0], len(alive))
        return out

    monkeypatch.setattr(dec._PyAVDecoder, "_send", counting)
    monkeypatch.setattr(dec._PyAVDecoder, "_convert", lambda self, fr: np.zeros((4, 4, 3), np.uint8))
    targets = [10, 140, 149]  # one 150-frame GOP: the closure runs to 149, ~40 reference pictures
    r = decode(vids["gop5"], targets, probe(vids["gop5"]), threads=1)
    assert r.stats.closure and r.stats.frames_out > 30
    assert peak[0] <= 4, f"{peak[0]} decoded pictures alive at once"


def test_closure_damaged_files_get_the_general_paths_result(vids, tmp_path_factory, monkeypatch):
    """Bytes flipped or the file cut in its media data: frames or error, the same as the general path's."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    from longvid.operators import decode as dec

    data = vids["faststart"].read_bytes()
    start = data.find(b"mdat") + 8
    d = tmp_path_factory.mktemp("damaged")

    def outcome(p, info, idx, closure):
        monkeypatch.setattr(dec, "USE_CLOSURE", closure)
        try:
            r = decode(p, idx, info, threads=1, size=32)
            return r.frames.tobytes(), r.indices
        except RecordError as e:
            return "error", e.field

    @hyp.settings(max_examples=12, deadline=None, derandomize=True)
    @hyp.given(at=st.integers(start, len(data) - 1), n=st.integers(1, 2000), cut=st.booleans(),
               idx=st.lists(st.integers(0, 299), min_size=1, max_size=6))
    def check(at, n, cut, idx):
        bad = data[:at] if cut else data[:at] + bytes(min(n, len(data) - at)) + data[at + n:]
        p = d / "bad.mp4"
        p.write_bytes(bad)
        try:
            info = probe(p)
        except RecordError:
            return  # refused before decoding: nothing to compare
        assert outcome(p, info, idx, True) == outcome(p, info, idx, False)

    check()


@pytest.mark.parametrize("open_gop", [0, 1])
def test_closure_hevc_closed_gops_and_open_gops_fall_back(tmp_path, open_gop, monkeypatch):
    if "libx265" not in av.codecs_available:
        pytest.skip("libx265 not in this PyAV build")
    from longvid.operators import decode as dec

    params = f"bframes=3:keyint=25:min-keyint=25:scenecut=0:open-gop={open_gop}:log-level=error"
    p = _encode_codec(tmp_path / f"hevc{open_gop}.mp4", "libx265", opts={"preset": "ultrafast", "x265-params": params})
    info = probe(p)
    idx = [3, 0, 24, 25, 26, 60, 61, 99]
    r = decode(p, idx, info, threads=1, track=True)
    assert stamps(r.frames) == idx
    monkeypatch.setattr(dec, "USE_CLOSURE", False)
    old = decode(p, idx, info, threads=1)
    np.testing.assert_array_equal(r.frames, old.frames)
    if open_gop:  # CRA keyframes with leading pictures: the general path serves
        assert not r.stats.closure and r.stats.closure_fallback
    else:
        assert r.stats.closure, r.stats.closure_fallback
        assert sorted(r.stats.sent_pts) == sorted(_oracle_closure(p, idx))


def test_hevc_packet_kind():
    from longvid.operators.decode import hevc_packet_kind

    def nal(t, tid=0):
        return bytes([t << 1, tid + 1, 0xAF])

    avcc = lambda *nals: b"".join(len(n).to_bytes(4, "big") + n for n in nals)  # noqa: E731
    assert hevc_packet_kind(avcc(nal(32), nal(19)), 4) == (True, True)  # VPS + IDR_W_RADL
    assert hevc_packet_kind(avcc(nal(1)), 4) == (True, False)  # TRAIL_R
    assert hevc_packet_kind(avcc(nal(0), nal(0)), 4) == (False, False)  # TRAIL_N
    assert hevc_packet_kind(b"\x00\x00\x01" + nal(21), 0) == (True, False)  # CRA: not an IDR
    assert hevc_packet_kind(avcc(nal(0, tid=1)), 4) is None  # temporal sub-layers: not handled
    assert hevc_packet_kind(avcc(nal(39)), 4) is None  # SEI only
