"""In-memory H.264 MP4 of the sampled frames (the `<key>.mp4` of a sample), and reading it back.

`encode_mp4` writes exactly one video frame per input frame, in order: every frame gets an explicit
timestamp (pts = i in a 1/fps time base), so the encoder and muxer can neither drop nor duplicate frames. The
muxed file is checked (its packets demuxed, not decoded): N frames with increasing decode times, or ValueError.
The frame rate must be in [MIN_FPS, MAX_FPS]: outside it the time base degenerates (beyond a few thousand fps the
MP4 muxer was seen to write decode times that make every frame undecodable).
"""
from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np

from longvid.operators.errors import RecordError


MIN_FPS, MAX_FPS = 0.001, 1000.0


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


def encode_mp4(frames: np.ndarray, fps: float = 1.0, crf: int = 27, preset: str = "veryfast") -> bytes:
    """H.264 (libx264, yuv420p) MP4 bytes holding `frames` [N, H, W, 3] uint8 RGB, one video frame each.

    H and W must be even (a yuv420p requirement). Raises ValueError for a bad array.
    """
    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {a.dtype} {a.shape}")
    n, h, w = a.shape[:3]
    if n == 0:
        raise ValueError("cannot encode an empty frame list")
    if h % 2 or w % 2:
        raise ValueError(f"frame size must be even for yuv420p H.264, got {w}x{h}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    rate = _rate(fps)
    tb = 1 / rate
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        # Byte-identical re-runs of a unit need a deterministic encoder: one x264 thread and no macroblock-tree
        # rate control (with mb-tree, x264's output on identical frames was seen to depend on what the process
        # had done before). Without mb-tree, crf 27 gives about the bytes and PSNR of crf 23 with it.
        vs.options = {"crf": str(int(crf)), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
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
