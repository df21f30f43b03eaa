"""Switch libavcodec's deblocking (loop) filter picture by picture on an open PyAV decoder.

The opt-in `deblock="targets"` knob of operators/decode.py skips the H.264/HEVC loop filter on the pictures that are
decoded only because a target references them. libavcodec reads `AVCodecContext.skip_loop_filter` for every slice
it decodes (and frame threads copy it from the user's context with each packet), so the setting can change between
packets. PyAV 18 exposes only `skip_frame` after the codec is open; this module is the small binding that sets the
other field through libavcodec's own option API (`av_opt_set_int` on the context, the call FFmpeg's tools use).

PyAV keeps the AVCodecContext pointer in a C attribute of its CodecContext object that Python cannot read. It is
found without trusting any layout: the object's words are read (inside its own allocation) and a word is taken as
the context only when (1) the memory it points to starts with libavcodec's AVClass (`avcodec_get_class()`), read
through /proc/self/mem so that a word that is not a pointer cannot crash the process, and (2) the `skip_frame` that
PyAV reports follows the context's own `skip_frame` option through two changes. Anything else (another platform,
another PyAV or FFmpeg layout) makes `LoopFilterSwitch` raise `LoopFilterUnavailable` with the reason, and the
caller refuses the knob: the frames are never decoded with a filter setting that was not verified.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

import av

# libavcodec's AVDiscard values, by the names PyAV gives skip_frame
_LEVELS = {"NONE": -16, "DEFAULT": 0, "NONREF": 8, "BIDIR": 16, "NONINTRA": 24, "NONKEY": 32, "ALL": 48}
_WORD = ctypes.sizeof(ctypes.c_void_p)


class LoopFilterUnavailable(RuntimeError):
    """The loop filter cannot be switched per picture in this process (the message says why)."""


@functools.lru_cache(maxsize=1)
def _libs() -> tuple[tuple[ctypes.CDLL, ctypes.CDLL], ...]:
    """Candidate (libavcodec, libavutil) pairs, one per folder holding both: first the copies PyAV's wheel bundles,
    then those mapped in this process (PyAV built against a system FFmpeg). Another library may have loaded its own
    FFmpeg too (decord bundles one): `_find_context` takes the pair whose AVClass the context carries."""
    import av.codec.context  # noqa: F401  (makes sure PyAV's libraries are mapped)

    dirs = [os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")]
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(" ")[-1]
                if os.path.basename(path).startswith("libavcodec") and os.path.dirname(path) not in dirs:
                    dirs.append(os.path.dirname(path))
    except OSError:
        pass
    pairs = []
    for d in dirs:
        codec = sorted(glob.glob(os.path.join(d, "libavcodec*.so*")))
        util = sorted(glob.glob(os.path.join(d, "libavutil*.so*")))
        if not codec or not util:
            continue
        try:
            c, u = ctypes.CDLL(codec[0]), ctypes.CDLL(util[0])
        except OSError:
            continue
        c.avcodec_get_class.restype = ctypes.c_void_p
        c.avcodec_get_class.argtypes = []
        u.av_opt_set_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int]
        u.av_opt_set_int.restype = ctypes.c_int
        u.av_opt_get_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
        u.av_opt_get_int.restype = ctypes.c_int
        pairs.append((c, u))
    if not pairs:
        raise LoopFilterUnavailable("PyAV's libavcodec and libavutil were not found in this process")
    return tuple(pairs)


def _read_word(mem, address: int) -> int | None:
    """The pointer-sized word at `address`, or None where this process has no readable memory there."""
    if address <= 0 or address >= 1 << 63:
        return None
    try:
        data = os.pread(mem.fileno(), _WORD, address)
    except OSError:
        return None
    return int.from_bytes(data, sys.byteorder) if len(data) == _WORD else None


def _get_int(util, ctx: int, name: bytes) -> int | None:
    out = ctypes.c_int64()
    return out.value if util.av_opt_get_int(ctypes.c_void_p(ctx), name, 0, ctypes.byref(out)) == 0 else None


def _find_context(cc, codec, util) -> int:
    """The AVCodecContext behind PyAV's CodecContext `cc` (module doc), or LoopFilterUnavailable."""
    if not sys.platform.startswith("linux"):
        raise LoopFilterUnavailable(f"switching the loop filter needs Linux (/proc/self/mem), not {sys.platform}")
    if not isinstance(cc, av.codec.context.CodecContext):
        raise LoopFilterUnavailable(f"not a PyAV CodecContext: {type(cc).__name__}")
    av_class = codec.avcodec_get_class()
    size = type(cc).__basicsize__
    try:
        mem = open("/proc/self/mem", "rb", buffering=0)
    except OSError as e:
        raise LoopFilterUnavailable(f"/proc/self/mem cannot be read ({e})") from None
    with mem:
        candidates = []
        for off in range(2 * _WORD, size - _WORD + 1, _WORD):  # after the refcount and type of the object header
            word = _read_word(mem, id(cc) + off)
            if word and _read_word(mem, word) == av_class:
                candidates.append(word)
    if not candidates:
        raise LoopFilterUnavailable(f"the codec context of PyAV {av.__version__} could not be located")
    before = cc.skip_frame
    try:
        for ctx in candidates:
            ok = True
            for level in ("NONKEY", "ALL", before):
                cc.skip_frame = level
                if _get_int(util, ctx, b"skip_frame") != _LEVELS.get(level):
                    ok = False
                    break
            if ok and _get_int(util, ctx, b"skip_loop_filter") is not None:
                return ctx
    finally:
        cc.skip_frame = before
    raise LoopFilterUnavailable(f"the codec context of PyAV {av.__version__} could not be located and verified")


class LoopFilterSwitch:
    """Turn the loop filter off and on between packets sent to PyAV's decoder `cc` (a video CodecContext).

    `set(skip)` applies to the packets sent after it; it is a no-op when the state does not change."""

    def __init__(self, cc):
        why = None
        for codec, util in _libs():
            try:
                self._ctx = _find_context(cc, codec, util)
                break
            except LoopFilterUnavailable as e:
                why = why or e
        else:
            raise why or LoopFilterUnavailable("no libavcodec to try")
        self._util = util
        self._cc = cc  # keeps the context alive as long as this switch
        self.skipping = _get_int(util, self._ctx, b"skip_loop_filter") == _LEVELS["ALL"]

    def set(self, skip: bool) -> None:
        if skip == self.skipping:
            return
        level = _LEVELS["ALL"] if skip else _LEVELS["DEFAULT"]
        if self._util.av_opt_set_int(ctypes.c_void_p(self._ctx), b"skip_loop_filter", level, 0) != 0:
            raise LoopFilterUnavailable("libavcodec refused the skip_loop_filter option")
        self.skipping = skip


@functools.lru_cache(maxsize=1)
def loop_filter_unavailable() -> str:
    """"" when this process can switch the loop filter per picture (tried on an H.264 decoder), else why not."""
    try:
        LoopFilterSwitch(av.codec.CodecContext.create("h264", "r"))
    except LoopFilterUnavailable as e:
        return str(e)
    except (OSError, AttributeError, ValueError, av.error.FFmpegError) as e:
        return f"{type(e).__name__}: {e}"
    return ""
