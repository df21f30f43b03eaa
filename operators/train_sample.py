"""One training sample out of its shard members: checked, cut to the stage's frame bounds, tokenized with labels.

    parse_train_sample(group, chat, options) -> TrainSample, or SampleError(reason) for a sample that cannot train
      token samples (encode): `<key>.json` + `<key>.tokens.npy` [clips, 64, D] float16/float32, read as a zero-copy
      view (the .npy header parsed here: _npy), scanned for NaN/inf (non_finite: the C kernel when built);
      frame samples (ingest): `<key>.json` + `<key>.mp4`; image samples (tiles) and text-only samples (json only);
      videos above the stage's max_frames keep whole 4-frame clips spread evenly, their timestamp message rewritten;
      `chat(conversations, label_mode) -> (input_ids, labels)` is the model's chat template (model.tokenizer's
      chat_encoder: operators do not import the model)
    sample_modality / modality_words: what the loader's modality-length grouping sorts by

Plain functions, no Ray (pipelines/loader.py calls them per sample).
"""
from __future__ import annotations

import functools
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from longvid.model.constants import FRAMES_PER_CLIP as CLIP_FRAMES
from longvid.model.constants import IGNORE_INDEX, TILE_TOKENS_PER_SIDE, TOKENS_PER_CLIP
from longvid.operators import native
from longvid.operators.shards import Group

_native = native.load()  # the C kernels (operators/_native.c) when built: the NaN/inf scan; numpy otherwise

# (conversations, label_mode) -> (input_ids, labels): model.tokenizer.chat_encoder(tokenizer)
Chat = Callable[[list[dict[str, Any]], str], tuple[list[int], list[int]]]


class SampleError(Exception):
    """One sample that cannot be trained on; `reason` is the counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


TOKEN_EXT, FRAME_EXT, JSON_EXT = "tokens.npy", "mp4", "json"


@dataclass
class TrainSample:
    """A decoded sample ready for batching. `visual`: tokens [n, D] (tokens kind) or frames uint8 [T, H, W, 3]."""

    key: str
    source: str
    input_ids: np.ndarray  # int64 [L]
    labels: np.ndarray  # int64 [L]
    visual: np.ndarray
    n_visual: int  # visual tokens this sample puts into the LLM
    num_frames: int
    duration: float
    unscanned: np.ndarray | None = None  # tokens still to be checked for NaN/inf (parse_train_sample(defer_scan=True))
    modality: str = "video"  # video | image | text (sample_modality)
    words: int = 1  # the reference's modality length: whitespace-split words of the annotation's turns
    # visual tokens per <image> in order: None = one <image> (a video), () = none (text-only), one per image
    splits: tuple[int, ...] | None = None

    @property
    def length(self) -> int:
        """Sequence length in the LLM: text tokens with the placeholders replaced by the visual tokens."""
        return int(self.input_ids.shape[0]) - (1 if self.splits is None else len(self.splits)) + self.n_visual


@dataclass(frozen=True)
class ParseOptions:
    """What parse_train_sample checks a sample against: the stage's kind, token width, frame bounds, length and
    label template, and the image token's id."""

    kind: str = "tokens"  # tokens | frames
    dim: int = 1024  # token width D expected (tokens kind)
    min_frames: int = 1
    max_frames: int = 512
    max_len: int = 32768
    label_mode: str = "assistant"  # model.tokenizer.format_chat's: assistant | qwen_2 | plain
    image_token_id: int = -1
    check_finite: bool = True  # False: the NaN/inf scan is left to the consumer (see LoaderConfig.check_finite)


_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}")


_NPY_PARSED: dict[bytes, tuple[np.dtype, bool, tuple[int, ...]]] = {}  # header text -> (dtype, fortran, shape)


def _npy_header_error(dtype: np.dtype, fortran: bool, shape: tuple[int, ...]) -> str:
    """What makes a parsed .npy header unusable for a zero-copy view ("" when nothing does)."""
    if fortran:
        return "fortran order"
    if dtype.hasobject:
        return "object dtype"
    if dtype.itemsize == 0 or dtype.subdtype is not None:
        return f"dtype {dtype} has no fixed item layout"
    if any(d < 0 for d in shape):
        return f"negative dimension in shape {shape}"
    return ""


def _npy(data: np.ndarray | bytearray) -> np.ndarray:
    """Zero-copy view of a .npy held in a (writable) buffer. The header numpy writes is parsed with a regex
    (numpy's own reader evaluates it as Python, a noticeable cost per sample), once per distinct header text;
    anything else goes to numpy. Any header that does not describe an array held in the bytes (bad magic or
    descr, fortran order, object dtype, negative dimensions, a shape larger than the data) is SampleError
    "bad npy"."""
    magic = bytes(data[:10])
    parsed = None
    hlen = 0
    if magic[:8] == b"\x93NUMPY\x01\x00" and len(magic) == 10:
        hlen = int.from_bytes(magic[8:10], "little")
        if hlen <= 4086:
            text = bytes(data[10:10 + hlen])
            parsed = _NPY_PARSED.get(text)
            if parsed is None:
                m = _NPY_HEADER.match(text.decode("latin1"))
                if m is not None:
                    try:
                        parsed = (np.dtype(m.group(1)), m.group(2) == "True",
                                  tuple(int(x) for x in m.group(3).split(",") if x.strip()))
                    except (TypeError, ValueError) as e:  # an unknown descr, a dimension that is no number
                        raise SampleError("bad npy", f"header {text[:100]!r}: {e}") from None
                    bad = _npy_header_error(*parsed)
                    if bad:
                        raise SampleError("bad npy", bad)
                    if len(_NPY_PARSED) < 4096:
                        _NPY_PARSED[text] = parsed
    if parsed is not None:
        dtype, fortran, shape = parsed
        start = 10 + hlen
    else:
        bio = io.BytesIO(bytes(data[:min(len(data), 4096)]))
        try:
            major, _ = np.lib.format.read_magic(bio)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(bio)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(bio)
        except Exception as e:  # numpy's reader on arbitrary bytes (ValueError, EOFError, and what its literal
            raise SampleError("bad npy", f"{type(e).__name__}: {e}") from None  # parser raises on odd text)
        bad = _npy_header_error(dtype, fortran, shape)
        if bad:
            raise SampleError("bad npy", bad)
        start = bio.tell()
    count = math.prod(shape)
    if len(data) - start < count * dtype.itemsize:
        raise SampleError("bad npy", f"{len(data) - start} data bytes for shape {shape} {dtype}")
    try:
        if isinstance(data, np.ndarray):
            return data[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
        return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a zero-size shape with a dimension past 2**63
        raise SampleError("bad npy", f"shape {shape} {dtype}: {e}") from None


def non_finite(a: np.ndarray, chunk_bytes: int = 1 << 19) -> bool:
    """True when any element is NaN or +-inf.

    float16/float32 in one C-contiguous, aligned block go to the native kernel: one pass over memory, no GIL.
    Otherwise (or without the kernel) integer-view max reductions in numpy (~10x faster than np.isfinite), chunk
    by chunk so that the second reduction of a chunk reads it from cache: memory is read once, scanned twice.

    A memory-mapped sample is first touched once every 64 KiB: each touch maps the 64 KiB of page-cache pages
    around it (the kernel's fault-around), so the scan then streams through mapped pages instead of stopping at
    a page fault every 64 KiB (5-10% less CPU per sample; on heap memory the touches cost ~1 us)."""
    if _native is not None and a.flags.c_contiguous and (a.dtype == np.float16 or a.dtype == np.float32):
        bad = _native.nonfinite(a, a.dtype.itemsize)
        if bad is not None:  # None: not aligned for the kernel
            return bad
    return _non_finite_numpy(a, chunk_bytes)


def _non_finite_numpy(a: np.ndarray, chunk_bytes: int = 1 << 19) -> bool:
    if a.dtype == np.float16:
        i, u, top = a.reshape(-1).view(np.int16), a.reshape(-1).view(np.uint16), (0x7C00, 0xFC00)
    elif a.dtype == np.float32:
        i, u, top = a.reshape(-1).view(np.int32), a.reshape(-1).view(np.uint32), (0x7F800000, 0xFF800000)
    else:
        return not bool(np.isfinite(a).all())
    if i.size:
        i[::65536 // a.itemsize].max()
    # positive inf/nan are the largest signed patterns, negative ones the largest unsigned patterns
    step = max(1, chunk_bytes // a.itemsize)
    for s in range(0, i.size, step):
        if int(i[s:s + step].max()) >= top[0] or int(u[s:s + step].max()) >= top[1]:
            return True
    return False


def keep_clips(n_clips: int, max_clips: int) -> list[int]:
    """Which clips stay when a sample has more than `max_clips`: evenly spread, in order (whole clips dropped)."""
    if n_clips <= max_clips:
        return list(range(n_clips))
    return [int((i + 0.5) * n_clips / max_clips) for i in range(max_clips)]


def _time_msg(duration: float, n: int, frame_times: list[float] | None, long: bool) -> str:
    from longvid.operators.prompt import time_msg

    return time_msg(duration, n, frame_times=frame_times, long=long)


try:
    import orjson as _orjson
except ImportError:  # optional: the standard parser alone gives the same results, ~7x slower
    _orjson = None


_BIG = float(2**63)  # orjson turns integers outside int64/uint64 into floats; the standard parser keeps ints


def _big_float(v: Any) -> bool:
    return type(v) is float and abs(v) >= _BIG


def load_sample_json(data: Any) -> Any:
    """json.loads of a sample's json member, exactly. orjson (if installed) first; anything it refuses (NaN/Infinity
    literals, lone surrogates, UTF-16/32 text, malformed input) and any huge number in a field parse_train_sample reads
    as an int or a string (where orjson's float would differ from json's int) go to the standard parser, so the
    result and the error are json.loads'."""
    if _orjson is not None:
        try:
            info = _orjson.loads(data.data if isinstance(data, np.ndarray) else data)
        except (ValueError, TypeError):
            info = None
        else:
            if not isinstance(info, dict):
                return info
            if not any(_big_float(info.get(k)) for k in ("num_clips", "num_frames", "padded_frames", "source")):
                conv = info.get("conversations")
                if not (type(conv) is list and any(type(t) is dict and any(_big_float(v) for v in t.values())
                                                   for t in conv)):
                    return info
    try:
        return json.loads(bytes(data))
    except RecursionError:  # nested deeper than the interpreter's stack (orjson refuses past 1024 levels)
        raise ValueError("nested too deeply") from None


def _is_text(s: str) -> bool:
    """Whether a str is valid Unicode text (no lone surrogates: json and tar names can carry them)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _padded_frames(info: dict[str, Any]) -> int:
    """The frames the encoder repeated to fill the last clip (0-3; 0 when not an int)."""
    pad = info.get("padded_frames")
    if not isinstance(pad, int):
        return 0
    if not 0 <= pad < CLIP_FRAMES:
        raise SampleError("bad json", f"padded_frames={pad} is not 0-{CLIP_FRAMES - 1}")
    return pad


def _finite_numbers(xs: list[Any]) -> bool:
    try:
        return all(type(x) in (int, float) and math.isfinite(x) for x in xs)
    except OverflowError:  # an int too large for a float
        return False


def parse_train_sample(g: Group, chat: Chat, opts: ParseOptions, defer_scan: bool = False) -> TrainSample:
    """Check and prepare one sample's members; raises SampleError(reason) for anything that cannot train.

    defer_scan=True leaves the NaN/inf scan of the tokens to the caller (`TrainSample.unscanned`), with the same
    outcome: a sample that fails any later check is scanned on the spot, so that "non-finite tokens" still takes
    precedence, as it does when the scan comes first."""
    m = g.members
    if not _is_text(g.key):
        raise SampleError("bad key", "the member name is not valid UTF-8")
    if JSON_EXT not in m:
        raise SampleError("missing json")
    payload_ext = TOKEN_EXT if opts.kind == "tokens" else FRAME_EXT
    try:
        info = load_sample_json(m[JSON_EXT])
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise SampleError("bad json", str(e)) from None
    conv = info.get("conversations")
    if not isinstance(conv, list) or not conv or not all(isinstance(t, dict) for t in conv):
        raise SampleError("no conversations")
    if not all(type(t.get("from")) is str and type(t.get("value")) is str and _is_text(t["value"]) for t in conv):
        raise SampleError("bad conversations", "every turn needs text 'from' and 'value' (valid Unicode)")
    n_ph = sum(t["value"].count("<image>") for t in conv)
    mt = info.get("media_type")  # mixture samples say it; a json-only sample without <image> is text too
    if mt == "text" or (mt is None and not n_ph and payload_ext not in m and TOKEN_EXT not in m):
        return _text_only(g, info, conv, n_ph, chat, opts)
    if mt == "image" and opts.kind == "tokens" and payload_ext in m:
        return _image(g, info, conv, n_ph, chat, opts, defer_scan)
    if mt == "image" and opts.kind != "tokens":
        raise SampleError("image in frames stage", "an encoder-in-the-loop stage reads mp4 frames; image samples "
                                                   "train from token shards")
    if payload_ext not in m:
        raise SampleError(f"missing {payload_ext}")
    if n_ph != 1:
        raise SampleError("image placeholder", "need exactly one <image> in the conversations")
    duration = _duration(info)

    if opts.kind == "tokens":
        arr = _npy(m[TOKEN_EXT])
        if arr.ndim != 3 or arr.shape[1] != TOKENS_PER_CLIP or arr.shape[2] != opts.dim or arr.shape[0] < 1:
            raise SampleError("wrong shape", f"tokens {tuple(arr.shape)}, need [clips, {TOKENS_PER_CLIP}, {opts.dim}]")
        if arr.dtype not in (np.float16, np.float32):
            raise SampleError("wrong dtype", f"tokens are {arr.dtype}, need float16 or float32")
        n_clips = arr.shape[0]
        nc = info.get("num_clips")
        nf = info.get("num_frames")
        pad = _padded_frames(info)
        if isinstance(nf, int):
            nf += pad  # the encoder repeats the last frame up to a whole clip
        if (isinstance(nc, int) and nc != n_clips) or (isinstance(nf, int) and nf != n_clips * CLIP_FRAMES):
            raise SampleError("clip count mismatch", f"tokens hold {n_clips} clips, json says num_clips={nc}, "
                                                     f"num_frames={nf}")
        if opts.check_finite and not defer_scan and non_finite(arr):
            raise SampleError("non-finite tokens")
    else:
        from longvid.operators.errors import RecordError
        from longvid.operators.mp4 import decode_mp4

        try:
            arr = decode_mp4(bytes(m[FRAME_EXT]))
        except RecordError as e:
            raise SampleError("bad mp4", e.reason) from None
        if arr.shape[0] % CLIP_FRAMES:
            raise SampleError("frames not in clips", f"{arr.shape[0]} frames is not a multiple of {CLIP_FRAMES}")
        n_clips = arr.shape[0] // CLIP_FRAMES

    if defer_scan and opts.check_finite and opts.kind == "tokens":
        try:
            s = _prepare(g, info, conv, arr, n_clips, duration, chat, opts)
        except Exception:
            if non_finite(arr):  # what the scan-first order reports
                raise SampleError("non-finite tokens") from None
            raise
        s.unscanned = arr
        return s
    return _prepare(g, info, conv, arr, n_clips, duration, chat, opts)


def _duration(info: dict[str, Any]) -> float:
    try:
        duration = float(info.get("duration") or 0.0)
    except (TypeError, ValueError, OverflowError):
        raise SampleError("bad json", "duration is not a number") from None
    if not (math.isfinite(duration) and duration >= 0):
        raise SampleError("bad json", f"duration {duration} is not a finite number of seconds")
    return duration


def _text_only(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], n_ph: int, chat: Chat,
               opts: ParseOptions) -> TrainSample:
    """A text-only sample (json only): the LLM sees its text alone, no visual token; labels by the stage's
    template. The plain template (stage 1) needs an <image> (the reference's preprocess_plain does): refused."""
    if n_ph:
        raise SampleError("image placeholder", f"a text-only sample has {n_ph} <image> in its conversations")
    if opts.label_mode == "plain":
        raise SampleError("text-only in plain", "the plain template (stage 1) needs an <image>; text-only samples "
                                                "train in qwen_2 stages")
    empty = np.zeros((0, opts.dim), dtype=np.float32)
    return _prepare(g, info, conv, empty, 0, _duration(info), chat, opts, splits=())


def _image(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], n_ph: int, chat: Chat,
           opts: ParseOptions, defer_scan: bool) -> TrainSample:
    """An image sample's tiles (encode: `<key>.tokens.npy` [num_tiles, 64, D], json `tiles_per_image`, each
    image's tiles in the reference order: `anyres_nopad` the base tile, then the grid tiles row by row; `pad` one
    tile). Image j's tokens go in place of the j-th <image>, with no newline token (the released scripts:
    mm_patch_merge_type spatial_nopad, mm_newline_position nothing): the base tile's, then the grid's stitched as
    the reference reads them (`_stitch_grids`). Never cut by the stage's frame bounds."""
    arr = _npy(g.members[TOKEN_EXT])
    if arr.ndim != 3 or arr.shape[1] != TOKENS_PER_CLIP or arr.shape[2] != opts.dim or arr.shape[0] < 1:
        raise SampleError("wrong shape", f"tokens {tuple(arr.shape)}, need [tiles, {TOKENS_PER_CLIP}, {opts.dim}]")
    if arr.dtype not in (np.float16, np.float32):
        raise SampleError("wrong dtype", f"tokens are {arr.dtype}, need float16 or float32")
    per = info.get("tiles_per_image")
    if not isinstance(per, list) or not per or not all(type(t) is int and t >= 1 for t in per):
        raise SampleError("bad json", "tiles_per_image must be a list of positive whole numbers (encode writes it)")
    if sum(per) != arr.shape[0] or info.get("num_tiles", sum(per)) != sum(per):
        raise SampleError("tile count mismatch", f"tokens hold {arr.shape[0]} tiles, json says tiles_per_image="
                                                 f"{per}, num_tiles={info.get('num_tiles')}")
    if len(per) != n_ph:
        raise SampleError("image placeholder", f"{n_ph} <image> for {len(per)} images")
    if len(per) > 1 and opts.label_mode == "plain":
        raise SampleError("multi-image in plain", "the plain template (stage 1) keeps one <image> (the reference's "
                                                  "preprocess_plain); multi-image samples train in qwen_2 stages")
    if opts.check_finite and non_finite(arr):
        raise SampleError("non-finite tokens")
    arr = _stitch_grids(arr, per, info)
    splits = tuple(t * TOKENS_PER_CLIP for t in per)
    return _prepare(g, info, conv, arr, arr.shape[0], _duration(info), chat, opts, splits=splits)


# the json's `tile_order` per image_mode (encode writes it, the loader reads it): where each tile of
# `<key>.tokens.npy` comes from
TILE_ORDER = {"anyres_nopad": "base_then_rows",  # per image: the base tile, then the grid tiles row by row, left to right
              "pad": "one_per_image"}  # per image: one tile, the image padded to a square with the mean colour
TILE_ORDERS = tuple(TILE_ORDER.values())


def _stitch_grids(arr: np.ndarray, per: list[int], info: dict[str, Any]) -> np.ndarray:
    """The image tokens [tiles, 64, D] in the order the reference feeds them to the LLM: for each `anyres_nopad`
    image with a grid of more than one column, the grid tiles' tokens re-read along whole rows of the image
    (`stitched_token_order`, from the json's `image_grids` [cols, rows]); the base tile first, as stored.
    The result keeps the shape [tiles, 64, D] (rows of 64 tokens, no longer one tile each). A grid that does not
    match the tile count is a SampleError naming image_grids."""
    order = info.get("tile_order", "base_then_rows")
    if order not in TILE_ORDERS:
        raise SampleError("bad json", f"tile_order {order!r} is not one of {', '.join(TILE_ORDERS)}")
    if order != "base_then_rows" or max(per) <= 2:  # one tile, or base + a 1x1 grid: nothing to re-read
        return arr
    grids = info.get("image_grids")
    if not isinstance(grids, list) or len(grids) != len(per):
        raise SampleError("bad json", "image_grids must list [cols, rows] for each image (encode writes it)")
    parts, t0, moved = [], 0, False
    dim = arr.shape[-1]
    for n, grid in zip(per, grids):
        if n > 2:
            if not (isinstance(grid, list) and len(grid) == 2 and all(type(v) is int and v >= 1 for v in grid)
                    and 1 + grid[0] * grid[1] == n):
                raise SampleError("bad json", f"image_grids {grid!r} does not match the image's {n} tiles (1 + cols "
                                              "x rows)")
            if grid[0] > 1:
                parts.append(arr[t0].reshape(-1, dim))
                parts.append(arr[t0 + 1:t0 + n].reshape(-1, dim)[_stitched(grid[0], grid[1])])
                moved = True
                t0 += n
                continue
        parts.append(arr[t0:t0 + n].reshape(-1, dim))
        t0 += n
    return np.concatenate(parts).reshape(arr.shape) if moved else arr


def stitched_token_order(cols: int, rows: int, side: int = TILE_TOKENS_PER_SIDE) -> list[int]:
    """Where each token of an `anyres_nopad` image's grid comes from, in the order the LLM reads them.

    The grid tiles' tokens are stored tile after tile (tile t = row t // cols, column t % cols of the grid, its
    side x side tokens row-major): index t * side**2 + r * side + c. The reference (llava_arch, `spatial_nopad`)
    views them as [rows, cols, side, side] and reads them as [rows, side, cols, side], i.e. the tiles of one grid
    row side by side, one token row at a time. Returns the stored indices in that reading order (the base tile's
    tokens, which come first, are not part of it)."""
    if cols < 1 or rows < 1 or side < 1:
        raise ValueError(f"stitched_token_order: cols, rows and side must be positive, got {cols}, {rows}, {side}")
    n = side * side
    return [(i * cols + j) * n + r * side + c
            for i in range(rows) for r in range(side) for j in range(cols) for c in range(side)]


@functools.lru_cache(maxsize=64)
def _stitched(cols: int, rows: int) -> np.ndarray:
    return np.asarray(stitched_token_order(cols, rows), dtype=np.intp)


def _prepare(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], arr: np.ndarray, n_clips: int,
             duration: float, chat: Chat, opts: ParseOptions,
             splits: tuple[int, ...] | None = None) -> TrainSample:
    """parse_train_sample after the member checks: frame bounds (videos), chat tokens and labels, length limit.
    `splits`: visual tokens per <image> of an image (one entry per image) or text-only (none) sample; None for a
    video (one <image>, its clips cut to the stage's frame bounds)."""
    modality, words = sample_modality(info, conv), modality_words(info, conv)  # of the conversation as stored
    frames = n_clips * CLIP_FRAMES if splits is None else 0
    max_clips = max(1, opts.max_frames // CLIP_FRAMES)
    n_kept = min(n_clips, max_clips) if splits is None else n_clips
    if n_kept < n_clips:
        kept = keep_clips(n_clips, max_clips)
        if opts.kind == "tokens":
            arr = arr[kept]
        else:
            idx = [c * CLIP_FRAMES + j for c in kept for j in range(CLIP_FRAMES)]
            arr = arr[idx]
        frames = len(kept) * CLIP_FRAMES
        old = info.get("time_msg")
        times = info.get("frame_times")
        pad = _padded_frames(info)
        if isinstance(times, list) and times and pad:
            times = times + [times[-1]] * pad
        turn = next((k for k, t in enumerate(conv) if isinstance(old, str) and old and old in t["value"]), None)
        if turn is not None:
            kept_times = None
            if isinstance(times, list) and len(times) == n_clips * CLIP_FRAMES:
                kept_times = [times[c * CLIP_FRAMES + j] for c in kept for j in range(CLIP_FRAMES)]
            long = "uniformly sampled at" in old and kept_times is not None
            if long and not _finite_numbers(kept_times):  # type: ignore[arg-type]
                raise SampleError("bad json", "frame_times holds a value that is not a finite number")
            new = _time_msg(duration, frames, kept_times, long)
            conv = [dict(t) for t in conv]
            conv[turn]["value"] = conv[turn]["value"].replace(old, new, 1)
    visual = arr.reshape(-1, arr.shape[-1]) if opts.kind == "tokens" or splits is not None else arr
    n_visual = n_kept * TOKENS_PER_CLIP
    want = 1 if splits is None else len(splits)

    try:
        ids, labels = chat(conv, opts.label_mode)
    except ValueError as e:
        raise SampleError("bad conversations", str(e)) from None
    # the checks on the token lists (C-speed list methods), then one array each
    n_img = ids.count(opts.image_token_id)
    if n_img != want:
        raise SampleError("image placeholder", f"{n_img} image tokens after tokenization, need {want}")
    length = len(ids) - n_img + n_visual
    if length > opts.max_len:
        cut = opts.max_len - (n_visual - n_img)
        last = len(ids) - 1 - ids[::-1].index(opts.image_token_id) if n_img else -1
        if cut <= last + 1:
            raise SampleError("too long", f"{n_visual} visual tokens alone exceed max_len {opts.max_len}")
        ids, labels = ids[:cut], labels[:cut]
        if not _predicted(labels):
            raise SampleError("too long", f"no answer token left within max_len {opts.max_len}")
    if not _predicted(labels):
        raise SampleError("no answer", "no assistant turn to train on")
    src = info.get("source", "")
    return TrainSample(g.key, "" if isinstance(src, (list, dict)) else str(src), np.array(ids, dtype=np.int64),
                       np.array(labels, dtype=np.int64), visual, n_visual, frames, duration,
                       modality=modality, words=words, splits=splits)


def _predicted(labels: list[int]) -> int:
    """Labelled tokens the loss predicts: the first token never is (qwen_2 labels the leading <|im_start|>)."""
    return len(labels) - labels.count(IGNORE_INDEX) - (labels[0] != IGNORE_INDEX if labels else 0)


MODALITIES = ("video", "image", "text")


def sample_modality(info: dict[str, Any], conv: list[dict[str, Any]]) -> str:
    """video | image | text: the json's `media_type` (mixture ingests write it), else inferred: an `image` key
    without a `video` key is an image sample, no `<image>` in any turn a text-only one, anything else a video."""
    mt = info.get("media_type")
    if mt in MODALITIES:
        return mt
    if not any("<image>" in t["value"] for t in conv):
        return "text"
    return "image" if "image" in info and "video" not in info else "video"


def modality_words(info: dict[str, Any], conv: list[dict[str, Any]]) -> int:
    """The length `group_by_modality_length` sorts by: the words (whitespace split) of every turn's value as the
    annotation has them, so without the timestamp message the ingest inserted (the reference counts before
    inserting it). At least 1."""
    n = sum(len(t["value"].split()) for t in conv)
    msg = info.get("time_msg")
    if isinstance(msg, str) and msg.strip() and any(msg in t["value"] for t in conv):
        n -= len(msg.split())
    return max(1, n)
