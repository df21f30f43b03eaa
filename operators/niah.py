"""Needle-in-a-video-haystack (NIAH, multi-hop NIAH): spec readers, placement rules, token splicing.

Plain functions, no Ray and no model. The rules are those of the released VideoChat-Flash NIAH evaluation
(`xtuner-eval_niah/vision_niah/*`), re-implemented here:

- Haystack: a long video sampled at about 1 fps: frames 0, r, 2r, ... with r = round(fps) (`video_1fps_indices`),
  every frame padded to a square (not stretched: `model.umt.preprocess(pad_to_square=True)`, LLaVA's
  `expand2square`) and worth `TOKENS_PER_FRAME` = 16 tokens (the HiCo encoder gives 64 tokens per 4-frame clip;
  the reference encodes 8 frames at a time and views the result as 8 slots of 16 tokens). When more than 7,500
  frames are asked for, half of the longest length is asked of the video and the frames read are repeated twice;
  the reference's read loop stops one batch late, so 10,000 frames repeat a period of 5,016 distinct frames, not
  5,000 (`haystack_unique_frames`, `reference_frames_read`). Generalised here: frame i of a haystack is unique
  frame i mod U, so a source shorter than needed is repeated as well.
- Needles: an image padded to a square, repeated 4 times and encoded as one clip: 64 tokens (4 frame slots).
- Single hop: the needle goes in front of haystack frame `int(depth * length)` (depths 0, 0.2, ..., 1.0; the
  haystack keeps all `length` frames): haystack[:p] + needle + haystack[p:length].
- Multi hop: the n images of an item are spread evenly: interval = length / (n - 1); image 0 first, then for
  k = 1..n-1 haystack[int((k-1) * interval):int(k * interval)] + image k. So image k sits in front of haystack
  frame int(k * interval), the first at 0 and the last at the very end (the float arithmetic is kept as is).
- Scoring (pipelines/niah_eval.py): the prompt ends with "Best option: ("; the answer is decoded greedily over the
  whole vocabulary and compared with the answer letter as the released eval does (`reference_match`); the
  option-letter argmax under teacher forcing is a labelled option (`--scoring options`).

The spec files are the released JSON lists: single hop `{question, answer, image, id}`, multi hop
`{images, question1, answer1, question2, answer2}` (question1 asks for the caption of the final frame, question2
a question about it).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from longvid.operators.errors import ConfigError

from longvid.model.constants import TOKENS_PER_FRAME  # noqa: E402,F401 - re-exported
DOUBLE_ABOVE = 7500  # more frames than this requested: half of them are asked for and repeated twice
READ_BATCH = 8  # the reference reads (and encodes) the haystack 8 frames at a time
DEFAULT_LENGTHS = tuple(range(1000, 10001, 1000))
DEFAULT_DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Kind = Literal["single", "multi"]


class SpecError(ConfigError):
    """A NIAH spec file (or needle image folder) that cannot be used: the message names the file, item and field."""


# --------------------------------------------------------------------------------------------------------------
# Spec files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: text ending where the answer letter starts, its options and the answer."""

    text: str
    answer: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class NiahItem:
    """One spec item. Single hop: one image, one question. Multi hop: 2+ images in placement order and two
    questions: `caption` (question1) and `qa` (question2)."""

    id: int
    kind: Kind
    images: tuple[str, ...]
    questions: dict[str, Question]


_OPTION = re.compile(r"\(([A-Z])\)")


def parse_options(question: str) -> tuple[str, ...]:
    """Option letters of a released NIAH question: the `(A)`, `(B)`, ... after `Options:`, in order.

    The trailing `Best option: (` (where the answer starts) is not an option. Empty when there are none.
    """
    head, sep, tail = question.partition("Options:")
    text = tail if sep else question
    letters = []
    for m in _OPTION.finditer(text):
        if m.group(1) not in letters:
            letters.append(m.group(1))
    return tuple(letters)


def _question(where: str, raw: dict, qkey: str, akey: str) -> Question:
    q = raw.get(qkey)
    if not isinstance(q, str) or not q.strip():
        raise SpecError(f"{where}: field {qkey!r} must be a non-empty string, got {q!r}")
    a = raw.get(akey)
    if not isinstance(a, str) or not a.strip():
        raise SpecError(f"{where}: field {akey!r} must be a non-empty string (an option letter), got {a!r}")
    a = a.strip().strip("()").strip()
    opts = parse_options(q)
    if len(opts) < 2:
        raise SpecError(f"{where}: field {qkey!r} has fewer than 2 options '(A) ...' after 'Options:'")
    if a not in opts:
        raise SpecError(f"{where}: field {akey!r} is {raw.get(akey)!r}, not one of the options {', '.join(opts)}")
    return Question(q, a, opts)


def _image_name(where: str, field: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SpecError(f"{where}: field {field!r} must be a non-empty image file name, got {v!r}")
    return v


def read_spec(path: str | Path, kind: Kind | None = None) -> tuple[Kind, list[NiahItem]]:
    """Read a released NIAH spec (a JSON list). `kind` None detects it from the first item ("images" = multi).

    Raises SpecError naming the file, item index and field for anything unusable.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{p}: NIAH spec file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{p}: not a JSON file: {e}") from None
    if not isinstance(data, list) or not data:
        raise SpecError(f"{p}: expected a non-empty JSON list of items, got {type(data).__name__}")
    if not all(isinstance(x, dict) for x in data):
        i = next(i for i, x in enumerate(data) if not isinstance(x, dict))
        raise SpecError(f"{p}: item {i}: expected an object, got {type(data[i]).__name__}")
    detected: Kind = "multi" if "images" in data[0] else "single"
    kind = kind or detected
    if kind not in ("single", "multi"):
        raise SpecError(f"{p}: kind must be 'single' or 'multi', got {kind!r}")
    items: list[NiahItem] = []
    ids: set[int] = set()
    for i, raw in enumerate(data):
        where = f"{p}: item {i}"
        if kind == "single":
            if "image" not in raw:
                hint = " (this looks like a multi-hop spec: use --multi-hop)" if "images" in raw else ""
                raise SpecError(f"{where}: field 'image' is missing{hint}")
            image = _image_name(where, "image", raw["image"])
            q = _question(where, raw, "question", "answer")
            iid = raw.get("id", i)
            if isinstance(iid, bool) or not isinstance(iid, int):
                raise SpecError(f"{where}: field 'id' must be an integer, got {iid!r}")
            items.append(NiahItem(iid, "single", (image,), {"single": q}))
        else:
            if "images" not in raw:
                hint = " (this looks like a single-hop spec: drop --multi-hop)" if "image" in raw else ""
                raise SpecError(f"{where}: field 'images' is missing{hint}")
            imgs = raw["images"]
            if not isinstance(imgs, list) or len(imgs) < 2:
                raise SpecError(f"{where}: field 'images' must be a list of at least 2 image names, got {imgs!r}")
            images = tuple(_image_name(where, f"images[{k}]", v) for k, v in enumerate(imgs))
            qs = {"caption": _question(where, raw, "question1", "answer1"),
                  "qa": _question(where, raw, "question2", "answer2")}
            iid = raw.get("id", i)
            if isinstance(iid, bool) or not isinstance(iid, int):
                raise SpecError(f"{where}: field 'id' must be an integer, got {iid!r}")
            items.append(NiahItem(iid, "multi", images, qs))
        if items[-1].id in ids:
            raise SpecError(f"{where}: field 'id' {items[-1].id} repeats an earlier item's id")
        ids.add(items[-1].id)
    return kind, items


def resolve_image(images_dir: str | Path, name: str, where: str = "") -> Path:
    """The needle image file for a spec `image` field: DIR/name, else DIR/basename(name).

    Refuses names that leave DIR (absolute, `..`). Raises SpecError naming the spec field and the paths tried.
    """
    root = Path(images_dir).resolve()
    prefix = f"{where}: " if where else ""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise SpecError(f"{prefix}image name {name!r} must be a relative path inside {root}")
    tried = [root / rel, root / rel.name]
    for t in tried:
        if t.is_file():
            return t
    raise SpecError(f"{prefix}needle image {name!r} not found (tried {', '.join(str(t) for t in dict.fromkeys(tried))})")


# --------------------------------------------------------------------------------------------------------------
# Placement rules
# --------------------------------------------------------------------------------------------------------------


def check_lengths(lengths: Sequence[int]) -> list[int]:
    out = [int(x) for x in lengths]
    if not out:
        raise ConfigError("frames: give at least one haystack length")
    if any(x < 1 for x in out):
        raise ConfigError(f"frames: haystack lengths must be >= 1 frame, got {out}")
    if len(set(out)) != len(out):
        raise ConfigError(f"frames: lengths repeat: {out}")
    return out


def check_depths(depths: Sequence[float]) -> list[float]:
    out = [float(x) for x in depths]
    if not out:
        raise ConfigError("depths: give at least one depth in [0, 1]")
    if any(not (0.0 <= d <= 1.0) or math.isnan(d) for d in out):
        raise ConfigError(f"depths: every depth must lie in [0, 1], got {out}")
    if len(set(out)) != len(out):
        raise ConfigError(f"depths: depths repeat: {out}")
    return out


def single_hop_position(length: int, depth: float) -> int:
    """Haystack frame the needle goes in front of: int(depth * length) (0 = first, length = after the last)."""
    if length < 1 or not 0.0 <= depth <= 1.0:
        raise ValueError(f"single_hop_position: need length >= 1 and depth in [0, 1], got {length}, {depth}")
    return int(depth * length)


def multi_hop_positions(length: int, n_needles: int) -> list[int]:
    """Haystack frames the n needles go in front of: 0, int(k * length / (n - 1)) for k = 1..n-1."""
    if n_needles < 2:
        raise ValueError(f"multi_hop_positions: a chain needs at least 2 needles, got {n_needles}")
    if length < 1:
        raise ValueError(f"multi_hop_positions: length must be >= 1, got {length}")
    interval = length / (n_needles - 1)
    return [0] + [int(k * interval) for k in range(1, n_needles)]


def haystack_frames_used(kind: Kind, length: int, positions: Sequence[int]) -> int:
    """Haystack frames in an input: all `length` for single hop; up to the last needle for multi hop."""
    return int(length) if kind == "single" else int(positions[-1])


def reference_frames_read(requested: int, batch: int = READ_BATCH) -> int:
    """Frames the reference's haystack loop reads when asked for `requested` frames of a long enough video.

    Transcribed from `produce_haystack_embedding.py`:

        total_batches = (requested + batch - 1) // batch
        for i, video_batch in enumerate(batches of `batch` frames):
            keep video_batch
            if i > total_batches:
                break

    The test `i > total_batches` comes after the batch is kept, so batches 0 .. total_batches + 1 are kept:
    (total_batches + 2) * batch frames. Asked for 5,000 (a 10,000-frame haystack): 627 batches = 5,016 frames.
    """
    if requested < 1 or batch < 1:
        raise ValueError(f"reference_frames_read: need requested >= 1 and batch >= 1, got {requested}, {batch}")
    total_batches = (requested + batch - 1) // batch
    return (total_batches + 2) * batch


def haystack_unique_frames(longest: int, available: int | None = None) -> int:
    """How many distinct source frames a haystack of `longest` frames uses (its repeat period U).

    Above 7,500 frames the reference asks for longest // 2 frames, reads `reference_frames_read` of them
    (5,016 for 10,000) and repeats that block twice: U is that count. Otherwise U = longest (the reference reads
    a few frames more, never used). Never more than `available` (a short source repeats: frame i is i mod U).
    """
    if longest < 1:
        raise ValueError(f"haystack_unique_frames: longest must be >= 1, got {longest}")
    want = reference_frames_read(longest // 2) if longest > DOUBLE_ABOVE else longest
    if available is not None:
        if available < 1:
            raise ValueError("haystack_unique_frames: the haystack source has no frames")
        want = min(want, available)
    return want


def haystack_frame_map(unique: int, length: int) -> np.ndarray:
    """Source frame of each of the first `length` haystack frames: i mod unique."""
    return np.arange(length, dtype=np.int64) % int(unique)


def video_1fps_indices(num_frames: int, fps: float, limit: int | None = None) -> list[int]:
    """Haystack frame indices of a video, as the reference reads them: every round(fps)-th frame from frame 0
    (`range(0, num_frames, round(fps))`; 29.97 fps -> every 30th frame), at most `limit` of them.

    Python's round() (half to even, as the reference's) picks the step; an fps that rounds to 0 is an error."""
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"video_1fps_indices: fps must be positive, got {fps}")
    step = round(fps)
    if step < 1:
        raise ValueError(f"video_1fps_indices: fps {fps} rounds to a step of 0 frames")
    out = range(0, max(int(num_frames), 0), step)
    return list(out if limit is None else out[: max(int(limit), 0)])


@dataclass(frozen=True)
class Placement:
    """Where the needles of one input go: `positions[k]` = haystack frame needle k is put in front of."""

    kind: Kind
    length: int
    depth: float | None
    positions: tuple[int, ...]

    @property
    def haystack_frames(self) -> int:
        return haystack_frames_used(self.kind, self.length, self.positions)

    def token_starts(self, tokens_per_frame: int = TOKENS_PER_FRAME, needle_tokens: int = 64) -> list[int]:
        """Index of each needle's first token in the spliced visual sequence."""
        return [p * tokens_per_frame + k * needle_tokens for k, p in enumerate(self.positions)]

    def num_tokens(self, tokens_per_frame: int = TOKENS_PER_FRAME, needle_tokens: int = 64) -> int:
        return self.haystack_frames * tokens_per_frame + len(self.positions) * needle_tokens


def placements(kind: Kind, n_needles: int, lengths: Sequence[int], depths: Sequence[float]) -> list[Placement]:
    """Every (length, depth) placement of an item: lengths x depths for single hop, one per length for multi hop."""
    out = []
    for length in lengths:
        if kind == "single":
            if n_needles != 1:
                raise ValueError(f"placements: single hop has 1 needle, got {n_needles}")
            out += [Placement(kind, int(length), float(d), (single_hop_position(int(length), float(d)),)) for d in depths]
        else:
            out.append(Placement(kind, int(length), None, tuple(multi_hop_positions(int(length), n_needles))))
    return out


# --------------------------------------------------------------------------------------------------------------
# Splicing
# --------------------------------------------------------------------------------------------------------------


def splice_tokens(
    haystack: np.ndarray,
    needles: Sequence[np.ndarray],
    placement: Placement,
    tokens_per_frame: int = TOKENS_PER_FRAME,
) -> np.ndarray:
    """The visual input of one NIAH item: haystack slots [U, tokens_per_frame, D] (frame i = slot i mod U) with
    the needles [n_k, D] put in front of haystack frames `placement.positions` (in order) -> [N, D].
    """
    if haystack.ndim != 3 or haystack.shape[1] != tokens_per_frame:
        raise ValueError(f"splice_tokens: haystack must be [U, {tokens_per_frame}, D], got {haystack.shape}")
    if len(needles) != len(placement.positions):
        raise ValueError(f"splice_tokens: {len(needles)} needles for {len(placement.positions)} positions")
    pos = list(placement.positions)
    if pos != sorted(pos):
        raise ValueError(f"splice_tokens: positions must be non-decreasing, got {pos}")
    used = placement.haystack_frames
    if pos and pos[-1] > used:
        raise ValueError(f"splice_tokens: position {pos[-1]} is past the {used} haystack frames")
    dim = haystack.shape[2]
    frames = haystack_frame_map(haystack.shape[0], used)
    parts: list[np.ndarray] = []
    prev = 0
    for p, needle in zip(pos, needles):
        if needle.ndim != 2 or needle.shape[1] != dim:
            raise ValueError(f"splice_tokens: needle must be [n, {dim}], got {needle.shape}")
        if p > prev:
            parts.append(haystack[frames[prev:p]].reshape(-1, dim))
        parts.append(needle)
        prev = p
    if used > prev:
        parts.append(haystack[frames[prev:used]].reshape(-1, dim))
    return np.concatenate(parts, axis=0)


def depth_label(depth: float | None) -> str:
    """'40%' for 0.4; 'spread' for multi-hop (no depth)."""
    if depth is None or (isinstance(depth, float) and math.isnan(depth)):
        return "spread"
    return f"{round(depth * 100):d}%"
