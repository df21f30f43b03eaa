"""Frames out of videos with PyAV: benchmark videos at a fixed rate, and a sample's mp4 from its shard."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from longvid.operators import shards

VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv"}


def frames_at_rate(path: str | Path | io.IOBase, fps: float = 1.0, max_frames: int = 2048) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB frame) at about `fps` frames per second, one sequential decode pass.

    Long videos are thinned to at most `max_frames` by widening the step (the duration is read from the container).
    """
    with av.open(str(path) if isinstance(path, Path) else path) as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        st = c.streams.video[0]
        st.thread_type = "AUTO"
        dur = float(c.duration / av.time_base) if c.duration else (float(st.duration * st.time_base) if st.duration else 0.0)
        step = 1.0 / fps
        if dur > 0 and dur / step > max_frames:
            step = dur / max_frames
        nxt, n = 0.0, 0
        for fr in c.decode(st):
            if fr.pts is None:
                continue
            t = float(fr.pts * st.time_base)
            if t + 1e-6 < nxt:
                continue
            yield t, fr.to_ndarray(format="rgb24")
            n += 1
            nxt = t + step
            if n >= max_frames:
                break


def decode_all(data: bytes, limit: int = 10_000) -> list[np.ndarray]:
    """Every frame of a small mp4 (a sample's stored frames), RGB."""
    out = []
    with av.open(io.BytesIO(data)) as c:
        for fr in c.decode(video=0):
            out.append(fr.to_ndarray(format="rgb24"))
            if len(out) >= limit:
                break
    return out


def read_members(fileobj, names: set[str]) -> dict[str, bytes]:
    """Members of a shard (a seekable file object; ustar, PAX or GNU long names) by base name (`<key>.<ext>`),
    read with operators.shards' parser; stops when all are found. Samples of other keys are seeked over. A corrupt
    tar raises shards.TarError (never hangs: a member size that points backwards is an error)."""
    out: dict[str, bytes] = {}
    for g in shards.iter_samples(fileobj, keys={n.split(".", 1)[0] for n in names}):
        for ext, data in g.members.items():
            name = f"{g.key}.{ext}"
            if name in names:
                out[name] = data
        if len(out) == len(names):
            break
    return out


def frame_at(path: str | Path, t: float) -> np.ndarray | None:
    """The frame shown at time `t` (seconds) of a video file."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        try:
            c.seek(int(max(t - 0.5, 0) / st.time_base), stream=st, backward=True)
        except av.error.FFmpegError:
            pass
        best = None
        for fr in c.decode(st):
            if fr.pts is None:
                continue
            best = fr
            if float(fr.pts * st.time_base) + 1e-6 >= t:
                break
        return best.to_ndarray(format="rgb24") if best is not None else None
