"""Real, small H.264 videos made locally (PyAV + libx264), for the demo, tests and benchmarks.

Each frame carries its own frame number as a row of 16 black/white blocks across the top fifth of the
picture, so a test can check that a decoder returned exactly the frames it was asked for
(`read_frame_number`), even after a resize to 224x224.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 16


def _frame(i: int, width: int, height: int, seed: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    # a slowly moving colour field, different per seed (so videos differ in content)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    phase = (i / 97.0 + seed * 0.37) % 1.0
    img[..., 0] = (255 * ((xs + phase) % 1.0)).astype(np.uint8)
    img[..., 1] = (255 * ((ys + 2 * phase) % 1.0)).astype(np.uint8)
    img[..., 2] = (seed * 53) % 256
    band = max(8, height // 5)
    bw = width // BITS
    for b in range(BITS):
        on = (i >> (BITS - 1 - b)) & 1
        img[:band, b * bw : (b + 1) * bw] = 255 if on else 0
    return img


def read_frame_number(img: np.ndarray) -> int:
    """Inverse of the frame stamp: read the 16 blocks of an RGB frame (any size)."""
    h, w = img.shape[:2]
    band = max(2, h // 5)
    bw = w // BITS
    n = 0
    for b in range(BITS):
        cell = img[band // 4 : (3 * band) // 4, b * bw + bw // 4 : (b + 1) * bw - bw // 4]
        n = (n << 1) | int(cell.mean() > 127)
    return n


def make_video(
    path: str | Path,
    seconds: float = 10.0,
    fps: float = 30.0,
    width: int = 320,
    height: int = 240,
    gop: int | None = None,
    bframes: int = 2,
    seed: int = 0,
    audio: bool = False,
    preset: str = "veryfast",
    crf: int = 28,
) -> Path:
    """Write an H.264 MP4 with a fixed keyframe interval (`gop` frames; default 2 s) and B-frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    rate = Fraction(fps).limit_denominator(1001)
    gop = gop or max(1, int(round(2 * fps)))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "bf": str(bframes),
            "preset": preset,
            "crf": str(crf),
        }
        as_ = None
        if audio:
            as_ = out.add_stream("aac", rate=16000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(i, width, height, seed), format="rgb24")
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if as_ is not None:
            _write_tone(out, as_, seconds)
    return path


def _write_tone(out, stream, seconds: float) -> None:
    sr = 16000
    t = np.arange(int(sr * seconds), dtype=np.float32) / sr
    pcm = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    step = 1024
    for k in range(0, len(pcm), step):
        chunk = pcm[k : k + step]
        if len(chunk) < step:
            chunk = np.pad(chunk, (0, step - len(chunk)))
        af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        af.sample_rate = sr
        af.pts = k
        for pkt in stream.encode(af):
            out.mux(pkt)
    for pkt in stream.encode():
        out.mux(pkt)


def make_audio_only(path: str | Path, seconds: float = 3.0) -> Path:
    """An .mp4 with an AAC track and no video stream (a classic bad input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        _write_tone(out, out.add_stream("aac", rate=16000), seconds)
    return path


def remux_video(src: str | Path, dst: str | Path, options: dict | None = None) -> Path:
    """The video stream of `src` copied packet for packet into another container (the format of `dst`'s suffix:
    .mkv, .ts, .mp4 with muxer `options` such as faststart); packets without a dts are left out."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options=options or {}) as o:
        ist = i.streams.video[0]
        ost = o.add_stream_from_template(ist)
        for p in i.demux(ist):
            if p.dts is not None:
                p.stream = ost
                o.mux(p)
    return Path(dst)
