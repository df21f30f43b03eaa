"""In-memory H.264 MP4 of the sampled frames (the `<key>.mp4` of a sample), and reading it back.

`encode_mp4` writes exactly one video frame per input frame, in order: every frame gets an explicit
timestamp (pts = i in a 1/fps time base), so the encoder and muxer can neither drop nor duplicate frames. The
muxed file is checked (its packets demuxed, not decoded): N frames with increasing decode times, or ValueError.
The frame rate must be in [MIN_FPS, MAX_FPS]: outside it the time base degenerates (beyond a few thousand fps the
MP4 muxer was seen to write decode times that make every frame undecodable).

The default coding (BENCHMARKS.md "Stored frame fidelity", bench/mp4_fidelity.py) keeps the stored frames within a
mean absolute error of 1.0 and a 99th percentile of 8 (8-bit RGB levels) of the frames given, on real footage at 224
and 448, for the fewest bytes per video-hour among the codings measured: H.264 High 4:4:4 (libx264, yuv444p: no
chroma subsampling), `tune psnr` (no psychovisual tuning or adaptive quantisation: the error itself is minimised),
crf DEFAULT_CRF. 4:2:0 chroma alone is off by 13 levels at p99 on colourful footage, even losslessly coded. The
stream says which YUV it holds (BT.601, limited range) so that every reader makes the same RGB of it. PyAV and decord
decode it; most browsers do not play High 4:4:4.
"""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from longvid.operators.errors import RecordError


MIN_FPS, MAX_FPS = 0.001, 1000.0

# pix_fmt -> the x264 encoder that codes it: rgb24 is coded as GBR planes by libx264rgb (High 4:4:4 Predictive)
PIX_FMTS = {"rgb24": "libx264rgb", "yuv444p": "libx264", "yuv420p": "libx264"}
TUNES = ("", "psnr", "ssim", "film", "grain", "animation", "stillimage")
BT601 = 6  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC _SMPTE170M; colour range 1 = AVCOL_RANGE_MPEG (limited)
DEFAULT_CRF = 15
DEFAULT_PRESET = "veryfast"
DEFAULT_PIX_FMT = "yuv444p"
DEFAULT_TUNE = "psnr"


def coding_id(pix_fmt: str = DEFAULT_PIX_FMT, tune: str = DEFAULT_TUNE, preset: str = DEFAULT_PRESET) -> str:
    """What, besides the crf, decides the stored bytes (part of the ingest's settings fingerprint)."""
    return f"{PIX_FMTS.get(pix_fmt, '?')} {pix_fmt} preset={preset} tune={tune or 'none'} threads=1 mbtree=0"


def _rate(fps: float) -> Fraction:
    try:
        ok = isinstance(fps, (int, float)) and not isinstance(fps, bool) and MIN_FPS <= float(fps) <= MAX_FPS
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"fps must be a number in [{MIN_FPS:g}, {MAX_FPS:g}], got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _check_muxed(data: bytes, n: int) -> None:
    """The muxed MP4 holds n frames whose decode times increase (what a decoder needs to return them all)."""
    with av.open(io.BytesIO(data), mode="r") as c:
        dts = [p.dts for p in c.demux(c.streams.video[0]) if p.size]
    if len(dts) != n or any(d is None for d in dts) or any(b <= a for a, b in zip(dts, dts[1:])):
        raise ValueError(f"the muxed mp4 does not hold {n} decodable frames ({len(dts)} packets, decode times "
                         f"{dts[:6]}{'...' if len(dts) > 6 else ''})")


def encode_mp4(frames: np.ndarray, fps: float = 1.0, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET,
               pix_fmt: str = DEFAULT_PIX_FMT, tune: str = DEFAULT_TUNE) -> bytes:
    """H.264 MP4 bytes holding `frames` [N, H, W, 3] uint8 RGB, one video frame each.

    `pix_fmt`: yuv444p, yuv420p (H and W must then be even) or rgb24 (RGB coded as is, libx264rgb). `tune`: an
    x264 tune, "" for none. Raises ValueError for a bad array or setting.
    """
    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {a.dtype} {a.shape}")
    n, h, w = a.shape[:3]
    if n == 0:
        raise ValueError("cannot encode an empty frame list")
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pix_fmt must be one of {', '.join(PIX_FMTS)}, got {pix_fmt!r}")
    if tune not in TUNES:
        raise ValueError(f"tune must be one of {', '.join(map(repr, TUNES))}, got {tune!r}")
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"frame size must be even for yuv420p H.264, got {w}x{h}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    rate = _rate(fps)
    tb = 1 / rate
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        vs = out.add_stream(PIX_FMTS[pix_fmt], rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.time_base = tb
        vs.codec_context.time_base = tb
        if pix_fmt != "rgb24":  # say which YUV the frames were converted to (PyAV's default: BT.601, limited range), so
            cc = vs.codec_context  # every reader turns them back into the same RGB, not only those assuming it
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = BT601, 1, BT601, BT601
        # Byte-identical re-runs of a unit need a deterministic encoder: one x264 thread and no macroblock-tree
        # rate control (with mb-tree, x264's output on identical frames was seen to depend on what the process
        # had done before).
        opts = {"crf": str(int(crf)), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
        if tune:
            opts["tune"] = tune
        vs.options = opts
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(a[i]), format="rgb24")
            vf.pts = i
            vf.time_base = tb
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
    data = buf.getvalue()
    _check_muxed(data, n)
    return data


def decode_mp4(data: bytes) -> np.ndarray:
    """Every video frame of an MP4 held in memory, in presentation order, as uint8 [N, H, W, 3] RGB."""
    if not data:
        raise RecordError("decode", "zero-byte mp4", "mp4")
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            if not c.streams.video:
                raise RecordError("decode", "no video stream in the mp4", "stream")
            st = c.streams.video[0]
            st.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
    except av.error.FFmpegError as e:
        raise RecordError("decode", f"cannot decode the mp4: {e}", "mp4") from e
    if not frames:
        raise RecordError("decode", "the mp4 holds no frame", "mp4")
    return np.stack(frames)
