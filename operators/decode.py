"""Decode a chosen set of frames from a video, cheaply.

Index semantics (the same as decord's for constant-frame-rate videos): frame `i` is the frame presented at
`info.start_time + i / info.fps`. A decoded frame with presentation time `p` sits at grid position
`g = (p - start_time) * fps`; target `i` is served by the first frame with `|g - i| <= 0.5`, or, when no frame
falls in that window (variable frame rate, dropped frames), by the frame on screen at that time (the last one
before it). For a CFR file `g` is an integer and frame `i` is the i-th frame in presentation order, which is
what `decord.VideoReader.get_batch` returns.

The closure path (modes "auto" and "seek", H.264 and single-layer HEVC): per GOP that holds a target, the decoder
gets exactly the reference pictures (H.264 nal_ref_idc != 0, HEVC not a sub-layer non-reference type, read from the
packet's NAL headers) up to the GOP's last target in decode
order, plus the target pictures; it is then drained and the next needed keyframe is read next (a seek when it is
not the next GOP; the tail of a GOP is demuxed, never decoded). It applies where that is provably exact: GOPs that
start with an IDR picture and show nothing before it, timestamps on the frame-rate grid (within the time base's
rounding), GOPs in increasing time. Anything else (another codec, an open GOP, variable frame rate, a damaged
file, a target past the last frame) makes it start over on the general path below, so the frames and errors are
the same whatever the stream (`stats.closure`, `stats.closure_fallback` say which path served).

Cost model of the general path of the PyAV backend (mode "auto"):
- unique targets are sorted and served in one forward pass; decoding stops after the last target;
- before each target, the keyframe that precedes it is looked up in the container index; when that keyframe is
  beyond every packet sent to the decoder so far and more than `SEEK_MIN_FRAMES` frames ahead, we seek to it,
  otherwise we keep decoding sequentially (a seek never goes back over packets already decoded, so no frame
  is decoded twice);
- each packet whose presentation time is not near a target is sent with `skip_frame = NONREF`, so libavcodec
  drops it if no other frame references it (non-reference B-frames); packets near a target are sent with
  `skip_frame = DEFAULT`. The decision is per packet, from the packet's own timestamp, so it is exact with
  B-frames;
- a target frame is converted to RGB and resized right after it comes out of the decoder; other frames are
  never converted, so memory is bounded by the output.
Frame 0 is the first picture the decoder gives (`probe` finds its time); frames of a video with a rotation in
its display matrix are returned upright (as decord returns them).

GOP-parallel (mode "auto" or "seek", a local file, `threads` not 1): targets spread over several GOPs are split at
keyframes into up to min(threads, 4) ranges, each decoded by its own single-threaded decoder in a thread; a range
stops at the keyframe where the next one starts, so no packet is sent twice. Frame threading inside one decoder
stalls at every seek; ranges of GOPs do not. Ingest workers use one thread by default (one CPU per task): no split.

Mode "sequential" never seeks; mode "seek" seeks whenever the target's keyframe is ahead; mode "keyframe"
snaps each target to its nearest keyframe and decodes only those keyframes (for very sparse sampling) and
returns the indices it actually used (`snap_error_s` measures how far they are from the targets). Every other mode
returns exact frames.

Hardware decoding (`hwaccel`, PyAV backend): "none" decodes in software; "auto" decodes with NVDEC (PyAV's
HWAccel, CUDA) only when the frames need not be exact (mode "keyframe") and this process can open a CUDA device,
else in software, so exact frames are always the software decoder's bytes; "cuda" always asks for NVDEC and is the
record's RecordError (field "hwaccel") where no CUDA device can be opened. The choice is made by the decoding process
itself (per node); `stats.decoder` says which decoder produced the frames. Frames downloaded from the device are
repacked into the stream's own pixel format (NV12 -> yuv420p, a lossless copy) before the same RGB conversion as
the software path.

Deblocking (`deblock`, PyAV backend, software decoding): "all" (the default) runs the codec's loop filter on every
picture, as any decoder does. "targets" runs it only on the pictures that serve a target and skips it on the pictures
decoded only because a target references them (operators/loop_filter.py switches it per packet): less CPU, and the
targets are no longer exact, since their references lack the filter (BENCHMARKS.md "Decode knobs" measures both).
`stats.packets_unfiltered` counts the packets sent without it. A picture serves a target when its time is within half
a frame of the target's; in a variable-frame-rate stream a target served by the picture on screen before it may
thus be one decoded without the filter. NVDEC ignores the setting.

Sources: a local path or a seekable binary file-like object (never read whole).

Over ~500 lines: the PyAV decoder is one state machine (demux, GOP closure, seek, serve targets; ~590 of the lines),
and the GOP-parallel, keyframe and decord paths are modes of the one `decode` entry point, the first two driving it.
"""
from __future__ import annotations

import bisect
import functools
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

import av
from PIL import Image

from longvid.operators.errors import RecordError
from longvid.operators.frames import RESIZE_METHODS, resize_one
from longvid.operators.loop_filter import LoopFilterSwitch, LoopFilterUnavailable
from longvid.operators.probe import (
    Source,
    VideoInfo,
    frame_rotation,
    is_path,
    keyframe_entries,
    open_container,
    source_name,
    video_stream,
)

BACKENDS = ("pyav", "decord")
MODES = ("auto", "sequential", "seek", "keyframe")
HWACCELS = ("none", "auto", "cuda")  # see the module doc
DEBLOCKS = ("all", "targets")  # loop filter on every picture (exact), or only on the targets (see the module doc)
EXACT_MODES = ("auto", "sequential", "seek")  # modes whose frames are the rule's frames, bit for bit
DEFAULT_BACKEND = "pyav"

SEEK_MIN_FRAMES = 8  # a seek (demuxer reposition + decoder flush) costs about this many frame decodes
NONREF_WINDOW = 4.0  # frames before a target (in grid units) that are always fully decoded (VFR safety)
MAX_FALLBACKS = 3
MAX_PACKET_ERRORS = 64
MAX_PENDING = 3  # full-resolution frames waiting for conversion (bounds memory when the converter lags)
USE_CLOSURE = True  # H.264/HEVC with trustworthy timestamps: send only the packets the targets depend on (see _run_closure)
MAX_GOP_PACKETS = 3000  # the closure path holds one GOP's packets (demuxed, not decoded); longer GOPs: general path


@dataclass
class DecodeStats:
    """What the decoder did (for tests and benchmarks)."""

    packets_sent: int = 0
    packets_nonref: int = 0  # sent with skip_frame=NONREF
    packets_unfiltered: int = 0  # sent with the loop filter off (deblock="targets": pictures that are not targets)
    frames_out: int = 0  # frames that came out of the decoder
    frames_converted: int = 0  # frames converted to RGB (= unique targets served)
    seeks: int = 0
    fallbacks: int = 0
    packet_errors: int = 0
    ranges: int = 1  # decoders that ran in parallel over ranges of GOPs
    closure: bool = False  # served by the closure path (only the packets the targets depend on were sent)
    closure_fallback: str = ""  # why the closure path gave the stream back to the general path ("" = it did not)
    sent_pts: list[int] = field(default_factory=list)  # pts of every packet sent, in order
    sent_skip: list[bool] = field(default_factory=list)  # for each of them: sent with a skip_frame level (NONREF...)
    decoder: str = "software"  # which decoder produced the frames: "software" or "cuda" (NVDEC)
    hw_fallback: str = ""  # why hwaccel "auto" decoded in software on a node with a CUDA device ("" = it did not)


@dataclass
class DecodeResult:
    frames: np.ndarray  # uint8 [len(indices), H, W, 3]
    indices: tuple[int, ...]  # frame index actually used for each requested index
    times: tuple[float, ...]  # seconds after the stream start of each returned frame
    stats: DecodeStats


def decode_frames(
    src: Source,
    indices: Sequence[int],
    info: VideoInfo,
    size: int | None = None,
    backend: str = DEFAULT_BACKEND,
    mode: str = "auto",
    threads: int | None = None,
    resize_method: str = "pil",
    hwaccel: str = "none",
    deblock: str = "all",
):
    """Frames `indices` of `src` as uint8 [len(indices), H, W, 3] RGB, in the order of `indices`.

    With `size`, each frame is resized to [size, size] (operators.frames.resize_square) right after decoding.
    Mode "keyframe" returns `(frames, actual_indices)` instead (each target snapped to its nearest keyframe).
    `threads`: decoder threads (None: libav's automatic choice; 1: single-threaded, for one-CPU workers).
    `resize_method`: "pil" (exactly the UMT preprocessor) or "torch" (faster; 1-2/255 off on ~0.1% of values).
    `hwaccel`: "none", "auto" or "cuda"; `deblock`: "all" or "targets" (the module doc).
    Raises RecordError(stage="decode", ...) for a bad file or an index past the end.
    """
    res = decode(src, indices, info, size=size, backend=backend, mode=mode, threads=threads, resize_method=resize_method,
                 hwaccel=hwaccel, deblock=deblock)
    if mode == "keyframe":
        return res.frames, list(res.indices)
    return res.frames


def decode(
    src: Source,
    indices: Sequence[int],
    info: VideoInfo,
    size: int | None = None,
    backend: str = DEFAULT_BACKEND,
    mode: str = "auto",
    threads: int | None = None,
    track: bool = False,
    resize_method: str = "pil",
    hwaccel: str = "none",
    deblock: str = "all",
) -> DecodeResult:
    """Like `decode_frames` but always returns a DecodeResult (frames, used indices and times, stats).

    `track=True` records the pts of every packet sent to the decoder in `stats.sent_pts`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")
    if mode not in MODES:
        raise ValueError(f"unknown decode mode {mode!r}; expected one of {MODES}")
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {resize_method!r}; expected one of {RESIZE_METHODS}")
    if hwaccel not in HWACCELS:
        raise ValueError(f"unknown hwaccel {hwaccel!r}; expected one of {HWACCELS}")
    if hwaccel != "none" and backend != "pyav":
        raise ValueError(f"hwaccel {hwaccel!r} needs the pyav backend (got {backend!r})")
    if deblock not in DEBLOCKS:
        raise ValueError(f"unknown deblock {deblock!r}; expected one of {DEBLOCKS}")
    if deblock != "all" and backend != "pyav":
        raise ValueError(f"deblock {deblock!r} needs the pyav backend (got {backend!r})")
    if size is not None and (not isinstance(size, (int, np.integer)) or size <= 0):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    name = source_name(src)
    idx = [int(i) for i in indices]
    for i in idx:
        if i < 0:
            raise RecordError("decode", f"negative frame index {i}", "indices", name)
    if info.num_frames_exact:
        past = [i for i in idx if i >= info.num_frames]
        if past:
            raise RecordError(
                "decode",
                f"target frame {max(past)} is past the end of the video ({info.num_frames} frames)",
                "indices",
                name,
            )
    hw = ""  # the hwaccel setting when this process decodes on the GPU, "" in software
    if decoder_choice(hwaccel, mode) == "cuda":
        why = cuda_unavailable()
        if why:
            raise RecordError("decode", f"hwaccel cuda: {why} on this node (--hwaccel auto decodes in software where "
                              "there is no device)", "hwaccel", name)
        hw = hwaccel
    h, w = (size, size) if size else (info.height, info.width)  # displayed size (after rotation)
    if not idx:
        return DecodeResult(np.empty((0, h, w, 3), np.uint8), (), (), DecodeStats())
    if backend == "decord":
        return _decode_decord(src, idx, info, size, threads, resize_method)
    if mode in ("auto", "seek") and is_path(src) and threads != 1:
        res = _decode_gop_parallel(src, idx, info, size, threads, track, resize_method, mode, hw, deblock)
        if res is not None:
            return res
    return _PyAVDecoder(src, info, size, threads, track, resize_method, hw=hw, deblock=deblock).run(idx, mode)


@functools.lru_cache(maxsize=1)
def cuda_unavailable() -> str:
    """"" when this process can open a CUDA device for decoding (NVDEC through PyAV's HWAccel), else why not.

    Asked once per process: the answer is the node's (an ingest decodes in processes on every node)."""
    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError:
        return "this PyAV has no hardware acceleration (av.codec.hwaccel)"
    try:
        if "cuda" not in hwdevices_available():
            return "the FFmpeg of this PyAV was built without CUDA"
        HWAccel("cuda").create(av.codec.Codec("h264", "r"))  # opens (and, when dropped, releases) the device
    except Exception as e:  # noqa: BLE001 - no driver, no device, no permission: each has its own error type
        return f"no CUDA device could be opened ({type(e).__name__}: {e})"
    return ""


def decoder_choice(hwaccel: str, mode: str) -> str:
    """The decoder `hwaccel` asks for in `mode`: "cuda" or "software". "auto" is "cuda" only where the frames need
    not be exact (mode "keyframe") and this process can open a CUDA device; "cuda" is "cuda" even without a device
    (decode() then fails the record, field "hwaccel")."""
    if hwaccel == "cuda" or (hwaccel == "auto" and mode not in EXACT_MODES and not cuda_unavailable()):
        return "cuda"
    return "software"


def snap_error_s(rule: Sequence[int], used: Sequence[int], fps: float) -> tuple[float, float]:
    """(max, mean) of |used frame - rule frame| in seconds, pairwise: how far mode "keyframe"'s frames lie from the
    frames the rule asked for (0.0, 0.0 for exact frames)."""
    if len(rule) != len(used):
        raise ValueError(f"{len(rule)} rule frames but {len(used)} used frames")
    if not rule:
        return 0.0, 0.0
    err = [abs(int(u) - int(r)) / float(fps) for r, u in zip(rule, used)]
    return max(err), sum(err) / len(err)


# ----------------------------------------------------------------------------------------------- PyAV


class _Fallback(Exception):
    """A seek landed after its target: retry from an earlier keyframe."""


class _Unserved(Exception):
    """GOP-parallel mode: a range's decoder reached its stop keyframe with targets left."""


class _NotUnderstood(Exception):
    """The closure path met something it cannot prove safe (the general path takes over from the start)."""


class _PyAVDecoder:
    def __init__(self, src: Source, info: VideoInfo, size: int | None, threads: int | None, track: bool,
                 resize_method: str = "pil", stop_g: float | None = None, hw: str = "", deblock: str = "all"):
        self.src, self.info, self.size, self.track = src, info, size, track
        self.deblock = deblock
        self.loop_filter = None  # deblock="targets": the LoopFilterSwitch of the open decoder
        self.hw = hw  # "auto" or "cuda": decode with NVDEC (decode() checked the device); "": software
        self.stop_g = stop_g  # a keyframe where another decoder takes over (GOP-parallel mode): drain and stop there
        self.resize_method = resize_method
        self.name = source_name(src)
        self.threads = threads
        self.stats = DecodeStats()

    # -- setup
    def _open(self):
        if not is_path(self.src):
            self.src.seek(0)
        self.container = self._open_container()
        c = self.container
        st = next((s for s in c.streams.video if s.index == self.info.stream_index), None)
        try:
            self.stream = st if st is not None else video_stream(c, self.name, "decode")
        except RecordError:
            c.close()
            raise
        st = self.stream
        try:  # the demuxer skips other streams' packets (audio, subtitles) instead of handing them to us
            discard_all = type(st.discard).all
            for other in c.streams:
                if other.index != st.index:
                    other.discard = discard_all
        except (AttributeError, ValueError, TypeError):
            pass
        if self.threads is None:
            st.thread_type = "AUTO"
        elif self.threads > 1:
            st.thread_type = "AUTO"
            st.thread_count = int(self.threads)
        else:
            st.thread_count = 1
        self.cc = st.codec_context
        if self.deblock == "targets" and not self.hw:
            try:
                self.loop_filter = LoopFilterSwitch(self.cc)
            except LoopFilterUnavailable as e:
                c.close()
                raise RecordError("decode", f"deblock targets: {e} (decode with deblock all)", "deblock",
                                  self.name) from None
        self.tb = float(st.time_base)
        self.fps = float(self.info.fps)
        self.start = float(self.info.start_time)
        # keyframes from the container index (MP4: DTS; Matroska: PTS) -> estimated grid positions later
        self.kf_ts: list[int] = []
        self.kf_pos: list[int] = []
        for ts, pos in keyframe_entries(c, st):
            self.kf_ts.append(ts)
            self.kf_pos.append(pos)
        self.kf_g: list[float] | None = None  # set once the index-timestamp -> pts offset is known
        self.kf_off = 0

    def _open_container(self):
        """The container, its video decoder on the CUDA device when `self.hw` is set. A video the device's decoder
        cannot open is decoded in software under "auto" (`stats.hw_fallback` says why) and fails the record, field
        "hwaccel", under "cuda"; a file that does not open in software either gets the file's own error."""
        if not self.hw:
            return open_container(self.src, "decode")
        from av.codec.hwaccel import HWAccel

        try:
            return open_container(self.src, "decode", hwaccel=HWAccel("cuda", allow_software_fallback=True))
        except RecordError as e:
            if e.stage == "locate":
                raise
            cause = e.__cause__
            why = f"the CUDA decoder could not open this video ({type(cause).__name__}: {cause})" if cause else e.reason
        if not is_path(self.src):
            self.src.seek(0)
        c = open_container(self.src, "decode")
        if self.hw == "cuda":
            c.close()
            raise RecordError("decode", f"hwaccel cuda: {why}", "hwaccel", self.name)
        self.stats.hw_fallback, self.hw = why, ""
        return c

    def _decoder_used(self) -> str:
        """"cuda" when the frames came out of NVDEC (the codec context negotiated the device's pixel format); PyAV
        decodes in software when the device has no decoder for the stream (`stats.hw_fallback` then says so)."""
        if not self.hw:
            return "software"
        try:
            on_device = bool(self.cc.is_hwaccel) and getattr(self.cc.format, "name", "") == "cuda"
        except (AttributeError, ValueError, av.error.FFmpegError):
            on_device = False
        if not on_device and not self.stats.hw_fallback:
            self.stats.hw_fallback = f"the CUDA device did not decode this {self.cc.name} stream"
        return "cuda" if on_device else "software"

    def g_of(self, pts: int) -> float:
        return (pts * self.tb - self.start) * self.fps

    def _learn_offset(self, pkt) -> None:
        """Index timestamps may be DTS: learn pts - index_ts from the first keyframe packet seen."""
        if self.kf_g is not None or not self.kf_ts or pkt.pts is None or not pkt.is_keyframe:
            return
        off = None
        if pkt.pos is not None and pkt.pos >= 0:
            k = _find(self.kf_pos, int(pkt.pos))
            if k is not None:
                off = int(pkt.pts) - self.kf_ts[k]
        if off is None:
            off = int(pkt.pts) - int(pkt.dts) if pkt.dts is not None else 0
        self.kf_off = off
        self.kf_g = [self.g_of(t + off) for t in self.kf_ts]

    # -- the pass
    def run(self, indices: list[int], mode: str) -> DecodeResult:
        self._open()
        try:
            if mode == "keyframe":
                if self.kf_ts:
                    return self._run_keyframes(indices)
                mode = "auto"  # no index: exact frames are the best we can do cheaply
            if mode in ("auto", "seek") and USE_CLOSURE:
                nal_len = self._closure_nal_length()
                if nal_len is not None:
                    try:
                        return self._run_closure(indices, nal_len)
                    except (_NotUnderstood, RecordError, av.error.FFmpegError) as e:
                        # start over with the general path: the same frames, and a damaged file gets its errors
                        self.stats.closure_fallback = str(e) or type(e).__name__
                        self.stats.closure = False
                        if self.pool is not None:
                            self.pool.shutdown(wait=True, cancel_futures=True)
                            self.pool = None
                        self._seek_start()
            return self._run_exact(indices, mode)
        except RecordError:
            raise
        except av.error.FFmpegError as e:
            raise RecordError("decode", f"undecodable stream: {e}", "stream", self.name) from e
        finally:
            pool = getattr(self, "pool", None)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.container.close()

    def _convert(self, frame) -> np.ndarray:
        self.stats.frames_converted += 1
        try:
            if self.hw and self.info.pix_fmt and frame.format.name != self.info.pix_fmt:
                # downloaded from the device (NV12, P010): repack losslessly into the stream's own layout first, so
                # the RGB conversion below is the software path's
                frame = frame.reformat(format=self.info.pix_fmt)
            rgb = frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError) as e:
            raise RecordError("decode", f"undecodable frame: {e}", "stream", self.name) from e
        rot = frame_rotation(frame)
        if rot:  # upright, as decord and players show it
            rgb = np.ascontiguousarray(np.rot90(rgb, rot // 90))
        if self.size:
            rgb = resize_one(rgb, self.size, self.resize_method)
        return rgb

    # -- output: each served target is written straight into its rows of the result array
    def _begin_output(self, indices: list[int], targets: list[int]) -> None:
        pos = {t: k for k, t in enumerate(targets)}
        self.rows: list[list[int]] = [[] for _ in targets]
        for r, i in enumerate(indices):
            self.rows[pos[i]].append(r)
        self.dest: np.ndarray | None = None
        self.n_out = len(indices)
        self.used_g = [math.nan] * len(targets)
        self.pending: deque = deque()
        # RGB conversion + resize (both release the GIL) overlap with decoding when more than one thread is allowed
        self.pool = ThreadPoolExecutor(max_workers=1) if self.threads != 1 else None

    def _store(self, j: int, arr: np.ndarray) -> None:
        if self.dest is None:
            self.dest = np.empty((self.n_out,) + arr.shape, np.uint8)
        arr = _fit(arr, self.dest.shape[1:])
        rows = self.rows[j]
        self.dest[rows[0]] = arr
        for r in rows[1:]:
            self.dest[r] = self.dest[rows[0]]

    def _deliver(self, j: int, frame, g: float) -> None:
        self.used_g[j] = g
        if self.pool is None:
            self._store(j, self._convert(frame))
            return
        self.pending.append(self.pool.submit(lambda: self._store(j, self._convert(frame))))
        while len(self.pending) > MAX_PENDING or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def _end_output(self, indices: list[int], targets: list[int]) -> DecodeResult:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None
        self.stats.decoder = self._decoder_used()
        pos = {t: k for k, t in enumerate(targets)}
        used = tuple(int(round(self.used_g[pos[i]])) for i in indices)
        times = tuple(round(self.used_g[pos[i]] / self.fps, 6) for i in indices)
        return DecodeResult(self.dest, used, times, self.stats)

    def _send(self, pkt, skip, target: bool = True):
        """Send one packet (None: drain). skip: True = NONREF, False = DEFAULT, or a skip_frame level name.
        target: the packet's picture serves a target (with deblock="targets" only those keep the loop filter)."""
        want = skip if isinstance(skip, str) else ("NONREF" if skip else "DEFAULT")
        if self._skip_state != want:
            self.cc.skip_frame = want
            self._skip_state = want
        if skip is True:
            self.stats.packets_nonref += 1
        if self.loop_filter is not None and pkt is not None:
            self.loop_filter.set(not target)
            self.stats.packets_unfiltered += not target
        self.stats.packets_sent += 1
        if self.track and pkt is not None and pkt.pts is not None:
            self.stats.sent_pts.append(int(pkt.pts))
            self.stats.sent_skip.append(want != "DEFAULT")
        try:
            return self.cc.decode(pkt)
        except av.error.EOFError:
            return []
        except av.error.FFmpegError as e:
            self.stats.packet_errors += 1
            if self._first_error is None:
                self._first_error = str(e)
            if self.stats.packet_errors > MAX_PACKET_ERRORS and self.stats.frames_out == 0:
                raise RecordError(
                    "decode", f"undecodable stream: {self.stats.packet_errors} packets failed ({e})", "stream", self.name
                ) from e
            return []

    def _prime(self) -> None:
        """Read up to the first keyframe packet to learn how index timestamps map to presentation times.

        The packets read are kept and decoded first (no seek back to the start is needed)."""
        self._pushback = []
        for pkt in self.container.demux(self.stream):
            self._pushback.append(pkt)
            if pkt.size == 0 and pkt.pts is None:
                break
            if pkt.pts is not None and pkt.is_keyframe:
                self._learn_offset(pkt)
                break
        if self.kf_g is None and self.kf_ts:
            self.kf_g = [self.g_of(t) for t in self.kf_ts]

    def _packets(self):
        pushed, self._pushback = self._pushback, []
        yield from pushed
        yield from self.container.demux(self.stream)

    def _run_exact(self, indices: list[int], mode: str) -> DecodeResult:
        targets = sorted(set(indices))
        n = len(targets)
        self.targets = targets
        self._begin_output(indices, targets)
        self._skip_state = "DEFAULT"
        self._first_error = None
        can_seek = mode != "sequential" and bool(self.kf_ts)
        min_gap = 0.0 if mode == "seek" else float(SEEK_MIN_FRAMES)
        j = 0  # next target to serve
        prev = None  # (frame, g): the last frame out of the decoder since the last seek
        last = None
        sent_max_g = -math.inf  # grid position of the furthest packet sent so far
        read_error = None

        def next_seek() -> int | None:
            """Keyframe ordinal to seek to before serving targets[j], or None to keep decoding sequentially."""
            if not can_seek or j >= n or self.kf_g is None:
                return None
            k = bisect.bisect_right(self.kf_g, targets[j] + 0.5) - 1
            if k < 0 or self.kf_g[k] <= sent_max_g + 1e-6:
                return None  # before the first keyframe, or its GOP is already being decoded
            return k if self.kf_g[k] - max(sent_max_g, 0.0) > min_gap else None

        pending: int | None = None
        self._pushback = []
        if can_seek:
            self._prime()
            pending = next_seek()
        check_landing = False
        stopped = False
        while j < n:
            if pending is not None:
                self._seek(pending)
                pending = None
                prev = None
                check_landing = True
            try:
                for pkt in self._packets():
                    if pkt.size == 0 and pkt.pts is None:  # end of stream: drain the decoder
                        frames = self._send(None, False)
                    else:
                        if pkt.pts is not None:
                            gp = self.g_of(pkt.pts)
                            if check_landing and pkt.is_keyframe and gp > targets[j] + 0.5:
                                raise _Fallback()
                            if self.stop_g is not None and pkt.is_keyframe and gp >= self.stop_g - 0.5:
                                stopped = True  # the next range's decoder starts at this keyframe: drain only
                            sent_max_g = max(sent_max_g, gp)
                            skip = not self._near_target(gp, j)
                            target = not skip and self._is_target(gp, j)
                        else:
                            skip, target = False, True
                        frames = self._send(None, False) if stopped else self._send(pkt, skip, target)
                    advanced = False
                    for fr in frames:
                        self.stats.frames_out += 1
                        g = self.g_of(fr.pts) if fr.pts is not None else (prev[1] + 1.0 if prev else 0.0)
                        if check_landing:
                            check_landing = False
                            if g > targets[j] + 0.5:
                                raise _Fallback()
                        while j < n:
                            t = targets[j]
                            if g < t - 0.5:
                                break
                            if g <= t + 0.5 or prev is None:
                                self._deliver(j, fr, g)
                            else:  # no frame in the target's window: the one on screen at that time
                                self._deliver(j, prev[0], prev[1])
                            j += 1
                            advanced = True
                        prev = last = (fr, g)
                    if j >= n or stopped:
                        break
                    if advanced:
                        pending = next_seek()
                        if pending is not None:
                            break
                else:
                    break  # the demuxer reached the end of the file
                if stopped:
                    break
            except _Fallback:
                self.stats.fallbacks += 1
                prev, check_landing = None, False
                k = bisect.bisect_right(self.kf_g, targets[j] + 0.5) - 1 - self.stats.fallbacks
                if self.stats.fallbacks > MAX_FALLBACKS or k < 0:
                    can_seek = False
                    self._seek_start()
                else:
                    pending = k
            except av.error.FFmpegError as e:  # a demuxer read error (truncated or damaged data)
                read_error = str(e)
                try:
                    for fr in self._send(None, False):
                        pass
                except av.error.FFmpegError:
                    pass
                break
        if j < n:
            if stopped:  # a target lies past the boundary keyframe (open GOP): the caller decodes serially
                raise _Unserved()
            self._finish_at_eof(targets, j, last, read_error)
        return self._end_output(indices, targets)

    def _near_target(self, gp: float, j: int) -> bool:
        """Is a frame at grid position gp possibly needed for a target at or after targets[j]?"""
        t = self.targets
        m = bisect.bisect_left(t, gp - 0.5, lo=j)
        return m < len(t) and t[m] <= gp + NONREF_WINDOW

    def _is_target(self, gp: float, j: int) -> bool:
        """Does a frame at grid position gp serve a target at or after targets[j] (within half a frame)?"""
        t = self.targets
        m = bisect.bisect_left(t, gp - 0.5, lo=j)
        return m < len(t) and t[m] <= gp + 0.5

    def _finish_at_eof(self, targets, j, last, read_error) -> None:
        """Targets left when the stream ended: served by the last frame if they fall within its display time."""
        n = len(targets)
        info = self.info
        if last is None:
            why = f" ({self.stats.packet_errors} packets failed to decode: {self._first_error})" if self.stats.packet_errors else ""
            if read_error:
                why += f" (read error: {read_error})"
            raise RecordError("decode", f"undecodable stream: no frame could be decoded{why}", "stream", self.name)
        fr, g = last
        slack = 1.5
        dur = getattr(fr, "duration", None)
        if dur:
            slack = max(slack, dur * self.tb * self.fps + 0.5)
        if not info.num_frames_exact:
            slack = max(slack, self.fps)  # estimated frame counts may be off by up to a second
        bad = [t for t in targets[j:] if t > g + slack]
        if bad:
            t = bad[0]
            truncated = info.num_frames_exact and t < info.num_frames
            msg = f"target frame {t} ({t / self.fps:.2f}s) could not be decoded: the stream ends before it"
            if truncated:
                msg += f" although the container declares {info.num_frames} frames (the file looks truncated)"
            else:
                msg += f" (target index past the end; last decoded frame {int(round(g))} at {g / self.fps:.2f}s)"
            if self.stats.packet_errors:
                msg += f"; {self.stats.packet_errors} packets failed to decode: {self._first_error}"
            if read_error:
                msg += f"; read error: {read_error}"
            raise RecordError("decode", msg, "stream" if truncated else "indices", self.name)
        for jj in range(j, n):
            self._deliver(jj, fr, g)

    # -- closure path (H.264/HEVC, closed GOPs, frame-rate-grid timestamps)
    def _closure_nal_length(self) -> int | None:
        """The NAL length-prefix size of an H.264/HEVC stream (0: Annex-B start codes), or None when the closure
        path does not apply (another codec). Without a keyframe index the GOPs are read in order (no seek)."""
        extra = self.cc.extradata or b""
        if self.cc.name == "h264":
            if extra[:1] == b"\x01":  # avcC: lengthSizeMinusOne in the low bits of byte 4
                return (extra[4] & 3) + 1 if len(extra) > 4 else None
            return 0
        if self.cc.name == "hevc":
            if extra[:1] == b"\x01":  # hvcC: lengthSizeMinusOne in the low bits of byte 21
                return (extra[21] & 3) + 1 if len(extra) > 22 else None
            return 0
        return None

    def _closure_next(self):
        """The next packet of the stream in decode order (None at the end of the stream)."""
        if self._peek is not None:
            pkt, self._peek = self._peek, None
            return pkt
        for pkt in self._it:
            if pkt.size == 0 and pkt.pts is None:
                return None
            return pkt
        return None

    def _closure_gop(self, nal_len: int):
        """One GOP from the current position: [(packet, grid position, is_reference)] in decode order, and the grid
        position of the next keyframe (inf at the end). The packets are demuxed and held, not decoded."""
        first = self._closure_next()
        if first is None:
            return [], math.inf
        gop = []
        pkt = first
        while pkt is not None:
            if gop and pkt.is_keyframe:
                self._peek = pkt
                break
            if pkt.pts is None:  # (decode order is the packet order: no DTS needed; Matroska has none)
                raise _NotUnderstood("a packet without a timestamp")
            g = self.g_of(pkt.pts)
            if abs(g - round(g)) > 0.01 + 0.5 * self.tb * self.fps:  # on the grid, up to the time base's rounding
                raise _NotUnderstood(f"a timestamp off the frame-rate grid ({g:.3f})")
            kind = PACKET_KINDS[self.cc.name](bytes(pkt), nal_len)
            if kind is None:
                raise _NotUnderstood(f"a {self.cc.name} packet that could not be parsed")
            is_ref, is_idr = kind
            if not gop and not (pkt.is_keyframe and is_idr):
                raise _NotUnderstood("a GOP that does not start with an IDR picture")
            gop.append((pkt, int(round(g)), is_ref))
            if len(gop) > MAX_GOP_PACKETS:
                raise _NotUnderstood(f"a GOP longer than {MAX_GOP_PACKETS} packets")
            pkt = self._closure_next()
        gs = [g for _, g, _ in gop]
        if min(gs) != gs[0] or len(set(gs)) != len(gs):
            raise _NotUnderstood("pictures shown before their keyframe (open GOP) or a repeated timestamp")
        if gs[0] <= self._closure_last_g:
            raise _NotUnderstood("GOPs whose timestamps do not increase")
        self._closure_last_g = max(gs)
        nxt = math.inf
        if self._peek is not None:
            if self._peek.pts is None:
                raise _NotUnderstood("a keyframe without a timestamp")
            nxt = self.g_of(self._peek.pts)
            if nxt <= max(gs):
                raise _NotUnderstood("GOPs that overlap in presentation time")
        return gop, nxt

    def _run_closure(self, indices: list[int], nal_len: int) -> DecodeResult:
        """Send the decoder exactly the packets the targets depend on: in each GOP that serves a target, every
        reference packet up to the last serving packet (decode order) plus the serving packets; then drain and go
        to the next needed keyframe (a seek when it is not the next one). Applies to H.264/HEVC streams whose GOPs start
        with an IDR picture, show nothing before it and whose timestamps sit on the frame-rate grid; anything else
        raises _NotUnderstood before a wrong frame could be served. Non-reference pictures are never referenced
        and an IDR picture resets the references, so the frames are those of a full decode, bit for bit."""
        targets = sorted(set(indices))
        n = len(targets)
        self._begin_output(indices, targets)
        self._skip_state = "DEFAULT"
        self._first_error = None
        self._prime()
        self.stats.closure = True
        self._it = self._packets()
        self._peek = None
        self._closure_last_g = -math.inf
        j = 0
        last_seek = None
        first_gop = True
        while j < n:
            t = targets[j]
            nxt_g = self.g_of(self._peek.pts) if self._peek is not None and self._peek.pts is not None else None
            k = bisect.bisect_right(self.kf_g, t + 0.5) - 1 if self.kf_g else -1
            if (k > 0 or (k == 0 and not first_gop)) and (nxt_g is None or self.kf_g[k] > nxt_g + 0.5) and k != last_seek:
                self._seek(k)  # the needed GOP is not the next one: jump (its packets are never read)
                self._it, self._peek, last_seek = self._packets(), None, k
                self._closure_last_g = -math.inf
                first_gop = False
            gop, nxt = self._closure_gop(nal_len)
            if not gop:
                raise _NotUnderstood("a target past the last frame")
            g0 = gop[0][1]
            if self.stop_g is not None and g0 >= self.stop_g - 0.5:
                raise _Unserved()
            if t < g0 and not first_gop:  # before the first picture of the stream, the first picture serves
                raise _NotUnderstood("a seek that landed after its target")
            first_gop = False
            m = bisect.bisect_left(targets, nxt - 0.5, lo=j)  # targets shown before the next keyframe
            if m == n and nxt == math.inf and targets[-1] > max(g for _, g, _ in gop):
                raise _NotUnderstood("a target past the last frame")
            if m == j:
                continue
            serving = serve_in_gop([g for _, g, _ in gop], targets[j:m])
            order = gop_closure([r for _, _, r in gop], set(serving))
            by_pts: dict[int, list[int]] = {}
            for jj, i in enumerate(serving):
                by_pts.setdefault(int(gop[i][0].pts), []).append(j + jj)
            serves = set(serving)
            done = 0
            # each picture is served or dropped as it comes out: a GOP's decoded pictures are never held together
            # (a 10 s GOP at 4K would be gigabytes)
            for i in [*order, None]:  # None: drain, the pictures held for reordering come out
                frames = self._send(gop[i][0], False, i in serves) if i is not None else self._send(None, False)
                for fr in frames:
                    self.stats.frames_out += 1
                    for jj in by_pts.get(fr.pts, ()) if fr.pts is not None else ():
                        self._deliver(jj, fr, self.g_of(fr.pts))
                        done += 1
                del frames
            self.cc.flush_buffers()
            if done != m - j:
                raise _NotUnderstood(f"{m - j - done} target pictures did not come out of the decoder")
            j = m
        return self._end_output(indices, targets)

    # -- seeking
    def _seek(self, k: int) -> None:
        self._pushback = []
        self.stats.seeks += 1
        # demuxers seek by presentation time (MP4 too, although its index holds DTS)
        self.container.seek(self.kf_ts[k] + self.kf_off, backward=True, any_frame=False, stream=self.stream)
        self.cc.flush_buffers()

    def _seek_start(self) -> None:
        """Back to the very start: reopen the file (a seek to the first timestamp is not exact in every format)."""
        self._pushback = []
        self.container.close()
        keep = (self.kf_ts, self.kf_pos, self.kf_g, self.kf_off)
        self._open()
        self.kf_ts, self.kf_pos, self.kf_g, self.kf_off = keep
        self._skip_state = "DEFAULT"

    # -- keyframe mode
    def _run_keyframes(self, indices: list[int]) -> DecodeResult:
        targets = sorted(set(indices))
        self._skip_state = "DEFAULT"
        self._first_error = None
        self._prime()
        self._pushback = []
        kf_g = self.kf_g or []
        choice: dict[int, int] = {}
        for t in targets:
            k = bisect.bisect_left(kf_g, t)
            cands = [c for c in (k - 1, k) if 0 <= c < len(kf_g)]
            choice[t] = min(cands, key=lambda c: (abs(kf_g[c] - t), c))
        self._begin_output(indices, targets)
        self.pool = None  # a handful of frames: convert inline
        by_kf: dict[int, list[int]] = {}
        for jj, t in enumerate(targets):
            by_kf.setdefault(choice[t], []).append(jj)
        for k in sorted(by_kf):
            self._seek(k)
            got = self._first_picture_from(kf_g[k])
            if got is None:
                raise RecordError("decode", f"undecodable stream: no picture after keyframe {k} "
                                  f"({kf_g[k] / self.fps:.2f}s)", "stream", self.name)
            fr, g = got
            arr = self._convert(fr)
            for jj in by_kf[k]:
                self.used_g[jj] = g
                self._store(jj, arr)
        return self._end_output(indices, targets)

    def _first_picture_from(self, g0: float, max_packets: int = 1000):
        """After a seek: the first picture at or after grid position g0 (leading pictures are passed over)."""
        sent = 0
        for pkt in self.container.demux(self.stream):
            eof = pkt.size == 0 and pkt.pts is None
            frames = self._send(None if eof else pkt, "NONKEY")  # only keyframes are decoded at all
            for fr in frames:
                self.stats.frames_out += 1
                g = self.g_of(fr.pts) if fr.pts is not None else g0
                if g >= g0 - 0.5:
                    return fr, g
            sent += 1
            if eof or sent >= max_packets:
                break
        return None


# ------------------------------------------------------------------------------- closure helpers (H.264, HEVC)


def _nal_headers(data: bytes, nal_len: int) -> list[bytes] | None:
    """The first two bytes of each NAL unit of a packet; None when the framing cannot be parsed.

    `nal_len`: the size of the NAL length prefixes (avcC/hvcC, 1-4) or 0 for Annex-B start codes."""
    heads = []
    size = len(data)
    if nal_len:
        i = 0
        while i < size:
            if i + nal_len > size:
                return None
            ln = int.from_bytes(data[i : i + nal_len], "big")
            i += nal_len
            if ln <= 0 or i + ln > size:
                return None
            heads.append(data[i : i + min(ln, 2)])
            i += ln
    else:
        i = data.find(b"\x00\x00\x01")
        while i >= 0 and i + 3 < size:
            heads.append(data[i + 3 : i + 5])
            i = data.find(b"\x00\x00\x01", i + 3)
    return heads


def h264_packet_kind(data: bytes, nal_len: int) -> tuple[bool, bool] | None:
    """(is_reference, is_idr) of an H.264 access unit from its NAL headers; None when it cannot be parsed.

    A picture is a reference when any of its slices has nal_ref_idc != 0; non-reference pictures are never used by
    another."""
    heads = _nal_headers(data, nal_len)
    if heads is None or any(h[0] & 0x80 for h in heads):
        return None  # forbidden_zero_bit set: not H.264 as we know it
    vcl = [h[0] for h in heads if 1 <= (h[0] & 0x1F) <= 5]
    if not vcl:
        return None
    return any(h & 0x60 for h in vcl), any((h & 0x1F) == 5 for h in vcl)


def hevc_packet_kind(data: bytes, nal_len: int) -> tuple[bool, bool] | None:
    """(is_reference, is_idr) of an HEVC access unit; None when it cannot be parsed or is not a single-layer,
    single-temporal-layer stream (a sub-layer non-reference picture may serve a higher sub-layer).

    Non-reference: every slice is TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N or a reserved _N type (even types < 16)."""
    heads = _nal_headers(data, nal_len)
    if heads is None or any(len(h) < 2 or h[0] & 0x80 for h in heads):
        return None
    vcl = [h for h in heads if (h[0] >> 1) & 0x3F < 32]
    if not vcl or any((h[0] & 1) or (h[1] >> 3) or (h[1] & 7) != 1 for h in vcl):
        return None  # no picture, nuh_layer_id != 0 or TemporalId != 0
    types = [(h[0] >> 1) & 0x3F for h in vcl]
    return any(t >= 16 or t % 2 for t in types), any(t in (19, 20) for t in types)


PACKET_KINDS = {"h264": h264_packet_kind, "hevc": hevc_packet_kind}


def serve_in_gop(gs: list[int], targets: list[int]) -> list[int]:
    """Decode-order positions of the pictures (grid positions `gs`, integers, distinct) serving sorted `targets`:
    the picture at the target's position, else the last one shown before it (else the first one)."""
    shown = sorted(range(len(gs)), key=lambda i: gs[i])
    order = [gs[i] for i in shown]
    out = []
    for t in targets:
        k = bisect.bisect_right(order, t) - 1
        out.append(shown[max(k, 0)])
    return out


def gop_closure(refs: list[bool], serving: set[int]) -> list[int]:
    """Decode-order positions of one closed GOP the decoder needs for the `serving` ones: every reference picture up
    to the last serving one, plus the serving ones (nothing after the last serving picture is sent)."""
    if not serving:
        return []
    last = max(serving)
    return [i for i in range(last + 1) if refs[i] or i in serving]


# ----------------------------------------------------------------------------------- GOP-parallel (PyAV)

# Ranges are cut only where the targets keep this many frames away from the keyframe on both sides: the keyframe
# position comes from the container index and may be off by the leading pictures of an open GOP (at most a few).
GOP_LEAD = 8
MAX_GOP_WORKERS = 4


def _gop_workers(threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return min(MAX_GOP_WORKERS, cores)


def split_by_gop(targets: list[int], kf_g: list[float], workers: int) -> list[tuple[list[int], float | None]]:
    """Sorted unique targets -> up to `workers` contiguous ranges [(targets, stop_g)], cut only at keyframes.

    A cut sits before a keyframe that starts a target's GOP, more than GOP_LEAD frames after the previous target
    and at least GOP_LEAD frames before the target; `stop_g` is that keyframe's grid position (None for the last
    range). Ranges are balanced by the frames
    each must decode (from a target's keyframe, or the previous target in the same GOP, to the target)."""
    if workers < 2 or len(targets) < 2 or not kf_g:
        return [(targets, None)]
    ks = [bisect.bisect_right(kf_g, t + 0.5) - 1 for t in targets]
    cost = []
    for i, t in enumerate(targets):
        start = kf_g[ks[i]] if ks[i] >= 0 else 0.0
        if i and ks[i - 1] == ks[i]:
            start = targets[i - 1]
        cost.append(max(1.0, t - start + 1))
    cuts = [i for i in range(1, len(targets))
            if ks[i] > ks[i - 1] and ks[i] >= 0 and targets[i - 1] < kf_g[ks[i]] - GOP_LEAD
            and targets[i] >= kf_g[ks[i]] + GOP_LEAD]
    if not cuts:
        return [(targets, None)]
    total = sum(cost)
    prefix = [0.0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    chosen: list[int] = []
    for w in range(1, workers):
        goal = total * w / workers
        best = min(cuts, key=lambda i: abs(prefix[i] - goal))
        if (not chosen or best > chosen[-1]) and 0 < best < len(targets):
            chosen.append(best)
    bounds = [0] + chosen + [len(targets)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        out.append((targets[a:b], kf_g[ks[b]] if b < len(targets) else None))
    return out


def _decode_gop_parallel(src, idx: list[int], info: VideoInfo, size, threads, track, resize_method, mode, hw="",
                         deblock="all"):
    """Sparse targets spread over several GOPs of a local file: one single-threaded decoder per range of GOPs, in
    parallel threads (libavcodec releases the GIL). Frame threading inside one decoder stalls at every seek; ranges
    of GOPs do not, and each range's decoder stops at the keyframe where the next begins (no packet is decoded by
    two of them). None when there is nothing to split (one GOP, one target, one thread allowed)."""
    workers = _gop_workers(threads)
    targets = sorted(set(idx))
    if workers < 2 or len(targets) < 2:
        return None
    scout = _PyAVDecoder(src, info, size, 1, False, resize_method)
    scout._open()
    try:
        scout._prime()
        kf_g = list(scout.kf_g or [])
    finally:
        scout.container.close()
    ranges = split_by_gop(targets, kf_g, workers)
    if len(ranges) < 2:
        return None

    def one(rng):
        tg, stop = rng
        return _PyAVDecoder(src, info, size, 1, track, resize_method, stop_g=stop, hw=hw, deblock=deblock).run(tg, mode)

    try:
        with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
            results = list(pool.map(one, ranges))
    except (_Unserved, RecordError):
        # an open-GOP stream put a target past a cut, or a range failed (a damaged or truncated file): the serial
        # decoder decides, so that a bad file gets the same error whatever the thread count
        return None
    where: dict[int, tuple[int, int]] = {}
    for r, (tg, _) in enumerate(ranges):
        for k, t in enumerate(tg):
            where[t] = (r, k)
    first = results[0].frames
    frames = np.empty((len(idx),) + first.shape[1:], np.uint8)
    used, times = [], []
    for row, i in enumerate(idx):
        r, k = where[i]
        res = results[r]
        frames[row] = _fit(res.frames[k], frames.shape[1:])
        used.append(res.indices[k])
        times.append(res.times[k])
    stats = DecodeStats()
    for res in results:
        for f in ("packets_sent", "packets_nonref", "packets_unfiltered", "frames_out", "frames_converted", "seeks",
                  "fallbacks", "packet_errors"):
            setattr(stats, f, getattr(stats, f) + getattr(res.stats, f))
        stats.sent_pts.extend(res.stats.sent_pts)
        stats.sent_skip.extend(res.stats.sent_skip)
        stats.closure = stats.closure or res.stats.closure
        stats.closure_fallback = stats.closure_fallback or res.stats.closure_fallback
        stats.hw_fallback = stats.hw_fallback or res.stats.hw_fallback
    stats.decoder = "+".join(sorted({res.stats.decoder for res in results}))  # "cuda+software": ranges differed
    stats.ranges = len(results)
    return DecodeResult(frames, tuple(used), tuple(times), stats)


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A frame whose size differs from the output's (the picture size changed mid-stream) resized to it."""
    if arr.shape == tuple(shape):
        return arr
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _find(sorted_list: list[int], value: int) -> int | None:
    k = bisect.bisect_left(sorted_list, value)
    if k < len(sorted_list) and sorted_list[k] == value:
        return k
    # positions are not always sorted in the index: fall back to a scan
    try:
        return sorted_list.index(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------- decord

DECORD_CHUNK = 16  # frames per get_batch call, so full-resolution frames never pile up


def _decode_decord(src: Source, indices: list[int], info: VideoInfo, size: int | None, threads: int | None,
                   resize_method: str = "pil") -> DecodeResult:
    import decord

    name = source_name(src)
    if not is_path(src):
        raise RecordError("decode", "the decord backend reads whole file objects into memory: pass a local path", "path", name)
    open_container(src, "decode").close()  # same bad-file errors as the PyAV backend
    try:
        vr = decord.VideoReader(os.fspath(src), ctx=decord.cpu(0), num_threads=0 if threads is None else int(threads))
    except (decord.DECORDError, RuntimeError) as e:
        raise RecordError("decode", f"undecodable stream (decord): {e}", "stream", name) from e
    total = len(vr)
    targets = sorted(set(indices))
    if targets[-1] >= total:
        raise RecordError("decode", f"target frame {targets[-1]} is past the end of the video ({total} frames)", "indices", name)
    fps = float(info.fps)
    h, w = (size, size) if size else (None, None)
    out: list[np.ndarray] = []
    stats = DecodeStats()
    try:
        for a in range(0, len(targets), DECORD_CHUNK):
            chunk = targets[a : a + DECORD_CHUNK]
            batch = vr.get_batch(chunk).asnumpy()
            stats.frames_converted += len(chunk)
            for fr in batch:
                out.append(resize_one(fr, size, resize_method) if size else fr.copy())
            del batch
    except (decord.DECORDError, RuntimeError) as e:
        raise RecordError("decode", f"undecodable stream (decord): {e}", "stream", name) from e
    del vr
    pos = {t: k for k, t in enumerate(targets)}
    stack = np.stack(out)
    order = np.fromiter((pos[i] for i in indices), dtype=np.intp, count=len(indices))
    return DecodeResult(stack[order], tuple(indices), tuple(round(i / fps, 6) for i in indices), stats)
