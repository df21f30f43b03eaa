"""Streaming training data: token (or frame) shards -> per-worker, exactly resumable batches (read top to bottom).

    recipe data entry {shards: globs, weight, sampling}            (one "source" of a stage's mixture)
      plan_source(): expand the globs (local or s3://), count samples per shard (index.json, else manifests/,
                     else the tar headers), cut the sampling strategy (operators.mixture.parse_strategy: all |
                     first:N[%] | first2:N .. first4:N | end:N[%]; a mixture's dataset written by `ingest --mixture`
                     has it applied already: all of it is taken) into per-shard sample ranges, mean duration
                     (manifests, else the first samples' json),
                     and compare the frame bounds the shards were ingested with to the stage's (check_frame_bounds)
      rank_pieces(): this worker's disjoint part: whole shards when there are at least as many as workers, else
                     shards cut into sample ranges (more workers than shards); balanced by sample count
    per worker:
      SourceStream   reads its pieces in a per-epoch shuffled order, tar member groups one at a time
                     (never a whole shard), skips drop-listed keys without reading them, cycles epochs forever
      decode_sample  json + tokens.npy (or mp4) -> checked sample (malformed: counted warning, skipped),
                     frame bounds (whole 4-frame clips dropped evenly, timestamp message rewritten),
                     chat tokens and labels of the stage's template (model.tokenizer.format_chat: plain, qwen_2
                     with the reference's labels, or assistant-only), cut to max_len
      StageLoader    blocks of `buffer` samples (whole optimizer steps: accum x batch_size) drawn across sources by
                     the mixture (by sample count or by video duration), each block cut into micro-batches by
                     `group_by`: random (none), sorted by length (length), or the reference's
                     group_by_modality_length over the block (modality_length); a background thread prefetches
    Every batch carries the loader state after it: (block number, every source's cursor at the block start,
    batches already taken from the block, counters). Restoring re-reads one block at most, so a resumed run
    sees exactly the batches an uninterrupted one would.

Token shard members (written by the encode job): `<key>.json` (the ingest json + encoder, resolution,
tokens_per_frame, num_clips) and `<key>.tokens.npy` [num_frames / 4, 64, D] float16/float32.
Frame shard members (the ingest job): `<key>.json` and `<key>.mp4` (the sampled frames).
"""
from __future__ import annotations

import fnmatch
import io
import json
import logging
import math
import os
import queue
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from longvid.operators import native, storage
from longvid.operators.errors import ConfigError
from longvid.operators.mixture import parse_strategy
from longvid.operators.settings import check_fields, setting
from longvid.operators.shards import Group, TarError, iter_groups, open_shard, tune_malloc  # noqa: F401

_native = native.load()  # the C kernels (operators/_native.c) when built; numpy and Python otherwise

log = logging.getLogger("longvid.train.data")

from longvid.model.constants import FRAMES_PER_CLIP as CLIP_FRAMES  # noqa: E402
from longvid.model.constants import IGNORE_INDEX, TOKENS_PER_CLIP  # noqa: E402,F401 - IGNORE_INDEX: re-exported
TOKEN_EXT, FRAME_EXT, JSON_EXT = "tokens.npy", "mp4", "json"


class DataError(ValueError):
    """A data entry of a recipe that cannot be planned: the message names the stage, the entry and the file."""


class SampleError(Exception):
    """One sample that cannot be trained on; `reason` is the counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ======================================================================================================== planning


@dataclass(frozen=True)
class Piece:
    """Samples [lo, hi) (group order in the tar) of one shard."""

    url: str
    lo: int
    hi: int

    @property
    def n(self) -> int:
        return self.hi - self.lo


@dataclass
class SourcePlan:
    """One data entry of a stage, planned: the selected samples as per-shard ranges, plus mixture facts."""

    name: str
    kind: str  # tokens | frames
    weight: float
    pieces: list[Piece]
    mean_duration: float
    count_from: str  # index.json | manifests | tar

    @property
    def nsamples(self) -> int:
        return sum(p.n for p in self.pieces)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "weight": self.weight, "mean_duration": self.mean_duration,
                "count_from": self.count_from, "pieces": [[p.url, p.lo, p.hi] for p in self.pieces]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SourcePlan":
        return cls(d["name"], d["kind"], float(d["weight"]), [Piece(u, int(a), int(b)) for u, a, b in d["pieces"]],
                   float(d["mean_duration"]), d.get("count_from", ""))


def expand_shards(patterns: list[str], root: str = "") -> list[str]:
    """Sorted, de-duplicated shard URIs matching glob patterns (local paths or s3://bucket/prefix/*.tar).
    Relative local patterns are taken relative to `root`."""
    out: set[str] = set()
    for pat in patterns:
        if not storage.is_s3(pat) and root and not os.path.isabs(pat):
            pat = os.path.join(root, pat)
        if not any(c in pat for c in "*?["):
            if not storage.exists(pat):
                raise DataError(f"{storage.redact(pat)}: shard not found")
            out.add(pat)
            continue
        if storage.is_s3(pat):
            head = re.split(r"[*?\[]", pat, maxsplit=1)[0]
            prefix = head.rsplit("/", 1)[0]
            out.update(u for u in storage.list_files(prefix, ".tar") if fnmatch.fnmatchcase(u, pat))
        else:
            import glob

            out.update(os.path.abspath(p) for p in glob.glob(pat, recursive=True) if os.path.isfile(p))
    return sorted(out)


def _job_dir(shard: str) -> str | None:
    """The job folder of a shard written by ingest/encode (…/<job>/shards/shard-*.tar), or None."""
    parent = shard.rsplit("/", 1)[0] if "/" in shard else ""
    if parent.rsplit("/", 1)[-1] != "shards":
        return None
    return parent.rsplit("/", 1)[0]


def _rel(job: str, shard: str) -> str:
    return shard[len(job) + 1:]


def _read_index(job: str) -> dict[str, int] | None:
    uri = storage.join(job, "index.json")
    try:
        if not storage.exists(uri):
            return None
        d = json.loads(storage.read_text(uri))
        out = {str(s["url"]): int(s["nsamples"]) for s in d["shardlist"]}
        if any(n < 0 for n in out.values()):
            raise ValueError("a negative nsamples")
        return out
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, storage.StorageError) as e:
        log.warning("%s: unreadable wids index (%s); counting another way", storage.redact(uri), e)
        return None


def _read_manifests(job: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = storage.list_files(storage.join(job, "manifests"), ".parquet")
    tables = []
    for uri in parts:
        try:
            t = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        except Exception as e:  # a broken part only costs its counts
            log.warning("%s: unreadable manifest part (%s)", storage.redact(uri), e)
            continue
        cols = [c for c in ("shard", "duration") if c in t.column_names]
        if "shard" in cols:
            tables.append(t.select(cols))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _job_json(folder: str) -> dict[str, Any] | None:
    uri = storage.join(folder, "job.json")
    try:
        if not storage.exists(uri):
            return None
        d = json.loads(storage.read_text(uri))
    except (ValueError, RecursionError, storage.StorageError) as e:
        log.warning("%s: unreadable job.json (%s)", storage.redact(uri), e)
        return None
    return d if isinstance(d, dict) else None


def applied_strategy(folder: str, depth: int = 2) -> str | None:
    """The sampling_strategy `ingest --mixture` applied to the samples of a job folder (its job.json fingerprint's
    dataset), following an encode job's job.json to the ingest folder it read; None when none is recorded."""
    d = _job_json(folder)
    fp = d.get("fingerprint") if d else None
    if not isinstance(fp, dict):
        return None
    ds = fp.get("dataset")
    if d.get("job") == "ingest" and isinstance(ds, dict) and isinstance(ds.get("sampling_strategy"), str):
        return ds["sampling_strategy"]
    src = fp.get("shards")
    if d.get("job") == "encode" and isinstance(src, str) and src and depth > 0:
        return applied_strategy(src, depth - 1)
    return None


def ingest_strategy(shards: list[str]) -> str | None:
    """The strategy applied at ingest to these shards (applied_strategy of their job folders): None when no folder
    records one; DataError when folders record different ones, or only some of them one; "" (applied, strategy
    unknown) when no job.json says it but the first sample's json names its mixture dataset and annotation line."""
    found = {job: applied_strategy(job) if job else None for job in {_job_dir(s) for s in shards}}
    kinds = set(found.values())
    if len(kinds) > 1:
        raise DataError("the shards come from job folders ingested with different sampling strategies: " + ", ".join(
            f"{storage.redact(j or '(loose shards)')}: {v or 'not recorded'}" for j, v in sorted(
                found.items(), key=lambda kv: kv[0] or "")))
    done = kinds.pop() if kinds else None
    if done is None and shards:  # no job.json to say it (moved, or an encode of a relative --shards): the samples
        first = next(_shard_infos(shards[0], 1), {})  # of ingest --mixture name their dataset and annotation line
        if isinstance(first.get("dataset"), str) and isinstance(first.get("annotation"), str):
            return ""
    return done


def count_tar_samples(uri: str) -> int:
    """Samples (member groups) in a tar, reading headers only. A corrupt or truncated tar counts the samples
    before the damage and one more for the damage itself (a warning names the shard): the loader reads those
    samples, then meets the damage and counts the shard as a corrupt tar, as it does with an index.json."""
    n = 0
    with storage.open_read(uri) as f:
        try:
            for _ in iter_groups(f, 0, want=lambda k: False):
                n += 1
        except TarError as e:
            log.warning("%s: unreadable after %d samples (%s)", storage.redact(uri), n, e)
            n += 1
    return n


def plan_source(name: str, patterns: list[str], *, kind: str = "tokens", weight: float = 1.0,
                sampling: str = "all", root: str = "", frame_bounds: tuple[int, int] | None = None,
                bounds_policy: str = "error", applied: list[str] | None = None,
                bounds_found: list[str] | None = None) -> SourcePlan:
    """Expand, count and cut one data entry (raises DataError naming what is wrong). `frame_bounds`: the stage's
    (min_frames, max_frames), compared with the shards' ingest bounds (check_frame_bounds, `bounds_policy`).
    `sampling`: operators.mixture.parse_strategy's strings. `applied` (a mixture's datasets): when the shards' job
    folders say `ingest --mixture` already applied the strategy (ingest_strategy), every sample is taken, the
    name is appended to `applied`, and a different recorded strategy is a DataError. `bounds_found` collects the
    frame-bound differences that policy "ignore" let through."""
    shards = expand_shards(patterns, root)
    if not shards:
        raise DataError(f"{name}: no shard matches {', '.join(storage.redact(p) for p in patterns)}")
    if frame_bounds is not None:
        found = check_frame_bounds(name, shards, frame_bounds[0], frame_bounds[1], bounds_policy)
        if bounds_found is not None:
            bounds_found += found
    counts: dict[str, int] = {}
    durations: dict[str, tuple[float, int]] = {}
    how = set()
    by_job: dict[str | None, list[str]] = {}
    for s in shards:
        by_job.setdefault(_job_dir(s), []).append(s)
    for job, members in by_job.items():
        index = _read_index(job) if job else None
        man = _read_manifests(job) if job else None
        if man is not None and "duration" in man.column_names:
            sh = man.column("shard").to_pylist()
            du = man.column("duration").to_pylist()
            acc: dict[str, list[float]] = {}
            for a, b in zip(sh, du):
                if b is not None:
                    acc.setdefault(a, []).append(float(b))
            for s in members:
                v = acc.get(_rel(job, s))
                if v:
                    durations[s] = (sum(v), len(v))
        man_counts = Counter(man.column("shard").to_pylist()) if man is not None else None
        for s in members:
            rel = _rel(job, s) if job else None
            if index is not None and rel in index:
                counts[s] = index[rel]
                how.add("index.json")
            elif man_counts is not None and rel in man_counts:
                counts[s] = man_counts[rel]
                how.add("manifests")
            else:
                counts[s] = count_tar_samples(s)
                how.add("tar")
    try:
        samp = parse_strategy(sampling, "sampling")
    except ConfigError as e:
        raise DataError(f"{name}: {e}") from None
    if applied is not None:
        done = ingest_strategy(shards)
        if done is not None:
            if done and done != str(samp):
                raise DataError(f"{name}: the shards were ingested with sampling_strategy {done}, the mixture says "
                                f"{samp}; ingest the mixture again, or train it as ingested")
            samp = parse_strategy("all")  # applied at ingest: never twice
            applied.append(name)
    total = sum(counts[s] for s in shards)
    sel = samp.select(total)
    lo, hi = sel.start, sel.stop
    pieces, pos = [], 0
    for s in shards:
        n = counts[s]
        a, b = max(lo, pos), min(hi, pos + n)
        if b > a:
            pieces.append(Piece(s, a - pos, b - pos))
        pos += n
    if not pieces:
        raise DataError(f"{name}: {sampling!r} selects no sample of the {total} in {len(shards)} shards")
    if durations:
        secs = sum(v[0] for v in durations.values())
        mean = secs / max(1, sum(v[1] for v in durations.values()))
    else:
        mean = _json_mean_duration(pieces[0].url)
    return SourcePlan(name, kind, float(weight), pieces, float(mean), "+".join(sorted(how)))


def _shard_infos(uri: str, limit: int = 8) -> Iterator[dict[str, Any]]:
    """The parsed json members of the first `limit` samples of a shard (unreadable ones skipped: the loader counts
    them when it reads them; a corrupt tar ends the walk)."""
    with storage.open_read(uri) as f:
        try:
            for n, g in enumerate(iter_groups(f, 0, want=lambda k: True, exts=(JSON_EXT,))):
                if n >= limit:
                    return
                try:
                    info = _load_info(g.members[JSON_EXT]) if JSON_EXT in g.members else None
                except ValueError:
                    continue
                if isinstance(info, dict):
                    yield info
        except TarError:
            return


def _json_mean_duration(uri: str, limit: int = 8) -> float:
    vals = []
    for info in _shard_infos(uri, limit):
        try:
            v = float(info["duration"])
        except (KeyError, ValueError, TypeError, OverflowError):
            continue  # no usable duration: the loader counts the sample when it reads it
        if math.isfinite(v) and v >= 0:
            vals.append(v)
    return float(np.mean(vals)) if vals else 1.0


def source_media_type(plan: SourcePlan) -> str:
    """video | image | text: the media_type of a source's first selected shard's first sample (video when unsaid)."""
    first = next(_shard_infos(plan.pieces[0].url, 1), {}) if plan.pieces else {}
    mt = first.get("media_type")
    return mt if mt in ("image", "text") else "video"


def ingest_bounds(info: dict[str, Any]) -> tuple[int, int, str] | None:
    """(lo, hi, profile) of the frame bounds a video sample was ingested with, from the `profile` its json records
    (ingest writes it, encode keeps it); None for image and text samples and when no known profile is recorded."""
    from longvid.operators.sample import PROFILES

    if info.get("media_type") in ("image", "text"):
        return None
    name = info.get("profile")
    p = PROFILES.get(name) if isinstance(name, str) else None
    return (p.lo, p.hi, p.name) if p is not None else None


def check_frame_bounds(name: str, shards: list[str], lo: int, hi: int, policy: str = "error") -> list[str]:
    """Compare the frame bounds the shards were ingested with to a stage's [lo, hi]. One shard per job folder is
    read (a folder is written with one profile: its job.json fingerprint says so), every loose shard otherwise.
    policy "error": DataError naming the first shard that differs, its bounds and the stage's; "ignore": each
    difference is logged at debug level (the caller says how many, once per stage). Returns the differences found."""
    by_job: dict[str | None, list[str]] = {}
    for s in shards:
        by_job.setdefault(_job_dir(s), []).append(s)
    found = []
    for job, members in by_job.items():
        for uri in members[:1] if job else members:
            got = next((b for b in map(ingest_bounds, list(_shard_infos(uri, 4))) if b is not None), None)
            if got is None or (got[0], got[1]) == (lo, hi):
                continue
            msg = (f"{name}: shard {storage.redact(uri)} was ingested with frame bounds {got[0]}-{got[1]} (profile "
                   f"{got[2]}), this stage's are {lo}-{hi} (min_frames-max_frames)")
            if policy == "error":
                raise DataError(msg + "; ingest with the stage's profile, or set frame_bounds: ignore to train on "
                                      "them as they are (whole clips dropped evenly above max_frames)")
            log.debug("%s; frame_bounds: ignore: trained as they are", msg)
            found.append(msg)
    return found


def rank_pieces(pieces: list[Piece], rank: int, world: int) -> tuple[list[Piece], bool]:
    """This rank's disjoint share of `pieces` -> (pieces, shared). With fewer shards than workers the shards are
    cut into sample ranges; only when there are fewer samples than workers do ranks share (shared=True)."""
    if world <= 1:
        return list(pieces), False
    units = list(pieces)
    if len(units) < world:  # fewer shards than workers: cut shards into ranges of about total / world samples
        chunk = max(1, sum(p.n for p in pieces) // world)
        units = []
        for p in pieces:
            k = math.ceil(p.n / chunk)
            edges = [p.lo + (p.n * i) // k for i in range(k + 1)]
            units += [Piece(p.url, a, b) for a, b in zip(edges, edges[1:]) if b > a]
    if len(units) < world:
        return [units[rank % len(units)]], True
    load = [0] * world
    mine: list[list[Piece]] = [[] for _ in range(world)]
    for i in sorted(range(len(units)), key=lambda i: (-units[i].n, i)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += units[i].n
        mine[r].append(units[i])
    return sorted(mine[rank], key=lambda p: (p.url, p.lo)), False


# ======================================================================================================== decoding


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


class FastTokenizer:
    """Wraps a transformers fast tokenizer so that `tok(text, add_special_tokens=False)["input_ids"]` (what
    `model.tokenizer.format_chat` calls for every piece of a chat) goes straight to the Rust tokenizer, with the
    constant pieces (system turn, role headers) memoised. Everything else is delegated. The fast path is used only
    when it gives the same ids as the wrapped tokenizer on a probe text; otherwise calls go through unchanged."""

    PROBE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nThe video "
             "lasts for 37.50 seconds, and 36 frames are uniformly sampled from it. \nWhat happens? é 你好<|im_end|>\n")

    def __init__(self, tok: Any):
        self._tok = tok
        self._cache: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}
        self.unk_token_id = tok.unk_token_id  # a transformers property that looks the token up on every read
        rust = getattr(tok, "_tokenizer", None)
        self._rust = None
        self._encode: Callable[[str], list[int]] | None = None
        if rust is not None and hasattr(rust, "encode"):
            # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: ~25% less per call
            fast = getattr(rust, "encode_batch_fast", None)
            candidates: list[Callable[[str], list[int]]] = []
            if fast is not None:
                candidates.append(lambda t: fast([t], add_special_tokens=False)[0].ids)
            candidates.append(lambda t: rust.encode(t, add_special_tokens=False).ids)
            try:
                want = list(tok(self.PROBE, add_special_tokens=False)["input_ids"])
            except Exception:
                want = None
            for enc in candidates:
                try:
                    if want is not None and enc(self.PROBE) == want:
                        self._rust, self._encode = rust, enc
                        break
                except Exception:  # any mismatch in API: try the next, else stay on the slow, exact path
                    continue

    def __call__(self, text: Any, add_special_tokens: bool = True, **kw: Any) -> Any:
        if self._rust is None or add_special_tokens or kw or not isinstance(text, str):
            return self._tok(text, add_special_tokens=add_special_tokens, **kw)
        return {"input_ids": self.text_ids(text)}

    def text_ids(self, text: str) -> list[int]:
        """Ids of `text` without special tokens (what format_chat asks for each piece of a chat). A new list
        every call: callers may extend it."""
        if self._rust is None:
            return list(self._tok(text, add_special_tokens=False)["input_ids"])
        ids = self._cache.get(text)
        if ids is None:
            ids = self._encode(text)  # type: ignore[misc]
            if len(text) <= 64 and len(self._cache) < 4096:
                self._cache[text] = ids
            else:
                return ids
        return list(ids)

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        """The wrapped tokenizer's lookup, memoised for single tokens it knows (format_chat asks for the image
        token's id on every sample). Tokens it does not know are never memoised, so tokens added later still
        resolve; known tokens keep their ids."""
        if isinstance(tokens, str):
            tid = self._ids.get(tokens)
            if tid is None:
                tid = self._tok.convert_tokens_to_ids(tokens)
                if tid is not None and tid != self.unk_token_id and len(self._ids) < 1024:
                    self._ids[tokens] = tid
            return tid
        return self._tok.convert_tokens_to_ids(tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


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
    unscanned: np.ndarray | None = None  # tokens still to be checked for NaN/inf (decode_sample(defer_scan=True))
    modality: str = "video"  # video | image | text (sample_modality)
    words: int = 1  # the reference's modality length: whitespace-split words of the annotation's turns
    # visual tokens per <image> in order: None = one <image> (a video), () = none (text-only), one per image
    splits: tuple[int, ...] | None = None

    @property
    def length(self) -> int:
        """Sequence length in the LLM: text tokens with the placeholders replaced by the visual tokens."""
        return int(self.input_ids.shape[0]) - (1 if self.splits is None else len(self.splits)) + self.n_visual


@dataclass(frozen=True)
class DecodeOptions:
    kind: str = "tokens"  # tokens | frames
    dim: int = 1024  # token width D expected (tokens kind)
    min_frames: int = 1
    max_frames: int = 512
    max_len: int = 32768
    label_mode: str = "assistant"  # model.tokenizer.format_chat's: assistant | qwen_2 | plain
    image_token_id: int = -1
    check_finite: bool = True  # False: the NaN/inf scan is left to the consumer (see LoaderConfig.check_finite)


try:
    import orjson as _orjson
except ImportError:  # optional: the standard parser alone gives the same results, ~7x slower
    _orjson = None


_BIG = float(2**63)  # orjson turns integers outside int64/uint64 into floats; the standard parser keeps ints


def _big_float(v: Any) -> bool:
    return type(v) is float and abs(v) >= _BIG


def _load_info(data: Any) -> Any:
    """json.loads of a sample's json member, exactly. orjson (if installed) first; anything it refuses (NaN/Infinity
    literals, lone surrogates, UTF-16/32 text, malformed input) and any huge number in a field decode_sample reads
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


def decode_sample(g: Group, tokenizer: Any, opts: DecodeOptions, defer_scan: bool = False) -> TrainSample:
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
        info = _load_info(m[JSON_EXT])
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
        return _text_only(g, info, conv, n_ph, tokenizer, opts)
    if mt == "image" and opts.kind == "tokens" and payload_ext in m:
        return _image(g, info, conv, n_ph, tokenizer, opts, defer_scan)
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
            s = _prepare(g, info, conv, arr, n_clips, duration, tokenizer, opts)
        except Exception:
            if non_finite(arr):  # what the scan-first order reports
                raise SampleError("non-finite tokens") from None
            raise
        s.unscanned = arr
        return s
    return _prepare(g, info, conv, arr, n_clips, duration, tokenizer, opts)


def _duration(info: dict[str, Any]) -> float:
    try:
        duration = float(info.get("duration") or 0.0)
    except (TypeError, ValueError, OverflowError):
        raise SampleError("bad json", "duration is not a number") from None
    if not (math.isfinite(duration) and duration >= 0):
        raise SampleError("bad json", f"duration {duration} is not a finite number of seconds")
    return duration


def _text_only(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], n_ph: int, tokenizer: Any,
               opts: DecodeOptions) -> TrainSample:
    """A text-only sample (json only): the LLM sees its text alone, no visual token; labels by the stage's
    template. The plain template (stage 1) needs an <image> (the reference's preprocess_plain does): refused."""
    if n_ph:
        raise SampleError("image placeholder", f"a text-only sample has {n_ph} <image> in its conversations")
    if opts.label_mode == "plain":
        raise SampleError("text-only in plain", "the plain template (stage 1) needs an <image>; text-only samples "
                                                "train in qwen_2 stages")
    empty = np.zeros((0, opts.dim), dtype=np.float32)
    return _prepare(g, info, conv, empty, 0, _duration(info), tokenizer, opts, splits=())


def _image(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], n_ph: int, tokenizer: Any,
           opts: DecodeOptions, defer_scan: bool) -> TrainSample:
    """An image sample's tiles (encode: `<key>.tokens.npy` [num_tiles, 64, D], json `tiles_per_image`, each
    image's tiles in the reference order: `anyres_nopad` the base tile, then the grid tiles row by row; `pad` one
    tile). Image j's tiles go in place of the j-th <image>, with no newline token (the released scripts:
    mm_patch_merge_type spatial_nopad, mm_newline_position nothing). Never cut by the stage's frame bounds."""
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
    splits = tuple(t * TOKENS_PER_CLIP for t in per)
    return _prepare(g, info, conv, arr, arr.shape[0], _duration(info), tokenizer, opts, splits=splits)


def _prepare(g: Group, info: dict[str, Any], conv: list[dict[str, Any]], arr: np.ndarray, n_clips: int,
             duration: float, tokenizer: Any, opts: DecodeOptions,
             splits: tuple[int, ...] | None = None) -> TrainSample:
    """decode_sample after the member checks: frame bounds (videos), chat tokens and labels, length limit.
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
        ids, labels = _format_chat()(conv, tokenizer, label_mode=opts.label_mode)
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


_FORMAT_CHAT: list[Callable[..., Any]] = []


def _format_chat() -> Callable[..., Any]:
    """model.tokenizer.format_chat, imported on first use (the model layer is not loaded with this module)."""
    if not _FORMAT_CHAT:
        from longvid.model.tokenizer import format_chat

        _FORMAT_CHAT.append(format_chat)
    return _FORMAT_CHAT[0]


# ======================================================================================================== streams


@dataclass
class Cursor:
    """Where a source stream stands: epoch, position in the epoch's piece order, sample index in the shard
    (group number) and the byte offset of its header (0 = not known: walk from the start of the shard)."""

    epoch: int = 0
    piece: int = 0
    sample: int = -1  # -1: at the start of the piece
    offset: int = 0

    def to_list(self) -> list[int]:
        return [self.epoch, self.piece, self.sample, self.offset]


class SourceStream:
    """Samples of one source for one rank, endlessly (epochs in shuffled piece order), skipping bad ones."""

    def __init__(self, plan: SourcePlan, pieces: list[Piece], seed_key: list[int], exclude: frozenset[str],
                 counters: Counter, cursor: Cursor | None = None, want_exts: tuple[str, ...] | None = None):
        self.plan = plan
        self.pieces = pieces
        self.seed_key = seed_key
        self.exclude = exclude
        self.counters = counters
        self.cursor = cursor or Cursor()
        self.exts = want_exts
        self.pending: list[tuple[Any, ...]] | None = None  # set: warnings are held here instead of logged
        self._f = None
        self._it: Iterator[Group] | None = None
        self._open_piece: tuple[int, int] | None = None
        # samples per epoch: any run of 2 * total groups holds a whole epoch (epochs differ in piece order)
        self.total = sum(p.n for p in pieces)

    def order(self, epoch: int) -> list[int]:
        if getattr(self, "_order", (None,))[0] != epoch:
            rng = np.random.default_rng([*self.seed_key, epoch])
            self._order = (epoch, [int(i) for i in rng.permutation(len(self.pieces))])
        return self._order[1]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        self._f, self._it, self._open_piece = None, None, None

    def _want(self, key: str) -> bool:
        return key not in self.exclude

    def _open(self) -> Piece:
        c = self.cursor
        piece = self.pieces[self.order(c.epoch)[c.piece]]
        if self._open_piece != (c.epoch, c.piece):
            self.close()
            self._f = open_shard(piece.url)
            if c.sample < 0 or c.offset <= 0 and c.sample > 0:
                # walk the headers up to the piece's first sample (no data read)
                it = iter_groups(self._f, 0, want=lambda k: False)
                n = 0
                start = 0
                target = piece.lo if c.sample < 0 else c.sample
                for g in it:
                    if n == target:
                        start = g.start
                        break
                    n += 1
                    start = g.end
                c.sample, c.offset = target, start
            self._it = iter_groups(self._f, c.offset, want=self._want, exts=self.exts)
            self._open_piece = (c.epoch, c.piece)
        return piece

    def _advance_piece(self) -> None:
        self.close()
        c = self.cursor
        c.piece += 1
        if c.piece >= len(self.pieces):
            c.epoch += 1
            c.piece = 0
        c.sample, c.offset = -1, 0

    def next_group(self) -> Group:
        """The next member group of this source (excluded keys counted and skipped, never read)."""
        empty_pieces = 0
        excluded = 0
        while True:
            c = self.cursor
            opened = False
            try:
                piece = self._open()
                opened = True
                if c.sample >= piece.hi:
                    self._advance_piece()
                    continue
                g = next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                if c.sample < piece.hi:
                    self.counters["short shard"] += 1
                    _log(self.pending, "%s: shard ended after %d samples (expected %d)", storage.redact(piece.url),
                         c.sample, piece.hi)
                empty_pieces += 1
                if empty_pieces > 2 * len(self.pieces):
                    raise DataError(f"{self.plan.name}: no readable sample in this worker's shards")
                self._advance_piece()
                continue
            except (TarError, storage.StorageError, UnicodeDecodeError, ValueError) as e:
                if not opened and isinstance(e, storage.StorageError):
                    raise  # the shard cannot be opened (or walked): as before, not a corrupt tar
                # also a corrupt header met while walking to the piece's first sample (inside _open)
                piece = self.pieces[self.order(c.epoch)[c.piece]]
                self.counters["corrupt tar"] += 1
                _log(self.pending, "%s: unreadable from sample %d on (%s); skipping the rest of this piece",
                     storage.redact(piece.url), max(c.sample, piece.lo), e)
                empty_pieces += 1
                if empty_pieces > 2 * len(self.pieces):
                    raise DataError(f"{self.plan.name}: no readable sample in this worker's shards") from None
                self._advance_piece()
                continue
            c.sample += 1
            c.offset = g.end
            if "__skipped__" in g.members:
                self.counters["excluded"] += 1
                excluded += 1
                if excluded > 2 * self.total:  # a whole epoch went by: every sample is excluded
                    raise DataError(f"{self.plan.name}: every sample of this worker's shards is excluded")
                continue
            empty_pieces = 0
            return g


def _log(pending: list[tuple[Any, ...]] | None, msg: str, *args: Any) -> None:
    if pending is None:
        log.warning(msg, *args)
    else:
        pending.append((msg, *args))


def _warn(counters: Counter, reason: str, key: str, detail: str, url: str,
          pending: list[tuple[Any, ...]] | None = None) -> None:
    counters[reason] += 1
    counters["skipped"] += 1
    if counters[reason] <= 5:
        _log(pending, "skipping sample %s in %s: %s%s", key, storage.redact(url), reason,
             f" ({detail})" if detail else "")


@dataclass
class Batch:
    """A collated batch plus what the metrics need, and the loader state after it."""

    input_ids: Any  # torch.LongTensor [B, L]
    attention_mask: Any
    labels: Any
    visual: list[Any]  # tokens: float tensors [n_i, D]; frames: uint8 tensors [T_i, H, W, 3]
    keys: list[str]
    n_tokens: int  # LLM positions carrying data (text + visual)
    n_visual: int
    state: dict[str, Any] = field(default_factory=dict)
    splits: list[tuple[int, ...] | None] = field(default_factory=list)  # TrainSample.splits per sample

    def __len__(self) -> int:
        return len(self.keys)


def collate(samples: list[TrainSample], pad_id: int) -> Batch:
    """Pad to the longest sample (ids: pad_id, labels: IGNORE_INDEX, mask: 0). Built in numpy and handed to torch
    without a copy (cheaper than torch's per-op dispatch); a batch of one wraps the sample's own arrays."""
    import torch

    b = len(samples)
    if b == 1:
        s = samples[0]
        ids = torch.from_numpy(s.input_ids[None])
        labels = torch.from_numpy(s.labels[None])
        mask = torch.from_numpy(np.ones(ids.shape, dtype=np.int64))
    else:
        width = max(int(s.input_ids.shape[0]) for s in samples)
        ids_a = np.full((b, width), pad_id, dtype=np.int64)
        lab_a = np.full((b, width), IGNORE_INDEX, dtype=np.int64)
        mask_a = np.zeros((b, width), dtype=np.int64)
        for i, s in enumerate(samples):
            n = int(s.input_ids.shape[0])
            ids_a[i, :n] = s.input_ids
            lab_a[i, :n] = s.labels
            mask_a[i, :n] = 1
        ids, labels, mask = torch.from_numpy(ids_a), torch.from_numpy(lab_a), torch.from_numpy(mask_a)
    visual = [torch.from_numpy(s.visual) for s in samples]
    return Batch(ids, mask, labels, visual, [s.key for s in samples], sum(s.length for s in samples),
                 sum(s.n_visual for s in samples), splits=[s.splits for s in samples])


GROUP_BY = ("none", "length", "modality_length")


@dataclass
class LoaderConfig:
    """What one worker's loader for one stage needs (JSON-friendly); constraints as in operators/settings.py."""

    sources: list[dict[str, Any]]  # SourcePlan.to_dict()
    batch_size: int = setting(ge=1, le=65536)
    buffer: int = setting(256, ge=0, le=2**24)
    mix: str = setting("duration", choices=("duration", "samples", "concat"))
    seed: int = setting(0, ge=0)
    stage_index: int = setting(0, ge=0)
    kind: str = setting("tokens", choices=("tokens", "frames"))
    dim: int = setting(1024, ge=1, le=65536)
    min_frames: int = setting(1, ge=1)
    max_frames: int = setting(512, ge=1)
    max_len: int = setting(32768, ge=1, le=2**24)
    label_mode: str = setting("assistant", choices=("assistant", "qwen_2", "plain"), aliases={"llava": "qwen_2"})
    # how a shuffle window is cut into batches (see StageLoader._batches): none | length | modality_length
    group_by: str = setting("length", choices=GROUP_BY)
    accum: int = setting(1, ge=1, le=65536)  # micro-batches per optimizer step (gradient accumulation)
    prefetch: int = setting(2, ge=0, le=1024)
    # False: samples are not scanned for NaN/inf here (the scan is most of the loader's CPU time); the consumer
    # must check the batch itself, e.g. on the device after the copy. Not used by the trainer: an evaluation knob.
    check_finite: bool = True

    def validate(self) -> None:
        check_fields(self)
        if self.min_frames > self.max_frames:
            raise ConfigError(f"min_frames/max_frames: need min <= max, got {self.min_frames}, {self.max_frames}")


class StageLoader:
    """Endless, exactly resumable batches for one rank in one stage.

    `iter(loader)` yields Batch objects; `batch.state` restores the stream to right after that batch
    (`StageLoader(..., state=batch.state)`). With `prefetch > 0` a background thread reads ahead.
    """

    def __init__(self, cfg: LoaderConfig, rank: int, world: int, tokenizer: Any, exclude: frozenset[str] = frozenset(),
                 state: dict[str, Any] | None = None, image_token_id: int | None = None):
        from longvid.model.tokenizer import image_token_id as _img

        tune_malloc()
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.tokenizer = FastTokenizer(tokenizer) if not isinstance(tokenizer, FastTokenizer) else tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.opts = DecodeOptions(cfg.kind, cfg.dim, cfg.min_frames, cfg.max_frames, cfg.max_len, cfg.label_mode,
                                  image_token_id if image_token_id is not None else _img(tokenizer),
                                  cfg.check_finite)
        self.plans = [SourcePlan.from_dict(d) for d in cfg.sources]
        # a window holds whole optimizer steps (accum x batch_size samples), so a step never spans two windows
        step = cfg.accum * cfg.batch_size
        self.block_size = max(1, math.ceil(cfg.buffer / step)) * step
        self.counters: Counter = Counter()
        self.shared_sources: list[str] = []
        self.streams: list[SourceStream] = []
        exts = (JSON_EXT, TOKEN_EXT if cfg.kind == "tokens" else FRAME_EXT)
        for si, plan in enumerate(self.plans):
            pieces, shared = rank_pieces(plan.pieces, rank, world)
            if shared:
                self.shared_sources.append(plan.name)
            self.streams.append(SourceStream(plan, pieces, [cfg.seed, cfg.stage_index, si, rank], exclude,
                                             self.counters, want_exts=exts))
        self.probs = self._probs()
        # token samples: NaN/inf scans after the block's other work (see _read_block); False: scan as read
        self.defer_scan = cfg.kind == "tokens" and cfg.check_finite
        self.block = 0
        self.skip_batches = 0
        if state:
            self._restore(state)

    def _probs(self) -> np.ndarray:
        w = np.array([max(p.weight, 0.0) for p in self.plans], dtype=np.float64)
        if self.cfg.mix == "duration":  # weights are shares of video seconds: fewer draws of long sources
            w = w / np.array([max(p.mean_duration, 1e-3) for p in self.plans])
        elif self.cfg.mix == "concat":  # LLaVA: datasets concatenated, every selected sample equally likely
            w = w * np.array([p.nsamples for p in self.plans], dtype=np.float64)
        if not w.sum() > 0:
            raise DataError("mixture weights must not all be zero")
        return w / w.sum()

    # ------------------------------------------------------------------ state
    def _cursors(self) -> list[list[int]]:
        return [s.cursor.to_list() for s in self.streams]

    def _restore(self, st: dict[str, Any]) -> None:
        if st.get("world") != self.world or st.get("rank") != self.rank or len(st.get("cursors", [])) != len(self.streams):
            raise DataError(f"loader state is for rank {st.get('rank')} of {st.get('world')} with "
                            f"{len(st.get('cursors', []))} sources; this is rank {self.rank} of {self.world} with "
                            f"{len(self.streams)}")
        for s, c in zip(self.streams, st["cursors"]):
            s.cursor = Cursor(*[int(x) for x in c])
        self.block = int(st["block"])
        self.skip_batches = int(st["batch"])
        self.counters.update({k: int(v) for k, v in st.get("counters", {}).items()})

    def _state(self, block: int, cursors: list[list[int]], batch: int, counters: dict[str, int]) -> dict[str, Any]:
        return {"rank": self.rank, "world": self.world, "block": block, "cursors": cursors, "batch": batch,
                "counters": counters}

    # ------------------------------------------------------------------ reading
    def _next_sample(self, si: int, defer: bool = False, pending: list[tuple[Any, ...]] | None = None) -> TrainSample:
        stream = self.streams[si]
        skipped = 0
        while True:
            g = stream.next_group()
            try:
                return decode_sample(g, self.tokenizer, self.opts, defer_scan=defer)
            except SampleError as e:
                url = stream.pieces[stream.order(stream.cursor.epoch)[stream.cursor.piece]].url
                _warn(self.counters, e.reason, g.key, e.detail, url, pending)
                skipped += 1
                if skipped > 2 * stream.total:  # a whole epoch without one usable sample: never loop on
                    raise DataError(f"{stream.plan.name}: no usable sample in this worker's shards (the last "
                                    f"{skipped} were all skipped; see the skip counters)") from None

    def _read_samples(self, choice: np.ndarray, defer: bool, pending: list[tuple[Any, ...]] | None) -> list[TrainSample]:
        out = []
        for si in choice:
            s = self._next_sample(int(si), defer, pending)
            out.append(s)
            if s.splits is None and s.num_frames < self.cfg.min_frames:  # videos only: tiles and text have none
                self.counters["below min frames"] += 1
        return out

    def _read_block(self, block: int) -> list[TrainSample]:
        """The block's samples, drawn across sources by the mixture.

        Token samples are read in two passes: members, json, npy header, chat tokens and every other check for
        the whole block first, then the NaN/inf scans of all its samples. A scan streams megabytes through the CPU
        caches; between samples it leaves the tokenizer and the Python code cold for the next sample (~0.1 ms per
        sample on the bench). When a scan finds a bad sample (or the first pass raises), the block is read again
        from its start with each sample scanned as it is read, so batches, counters, warnings and errors are
        exactly those of one pass."""
        rng = np.random.default_rng([self.cfg.seed, self.cfg.stage_index, self.rank, block, 1])
        choice = rng.choice(len(self.streams), size=self.block_size, p=self.probs)
        if not self.defer_scan:
            return self._read_samples(choice, False, None)
        start = [s.cursor.to_list() for s in self.streams]
        counters0 = dict(self.counters)
        pending: list[tuple[Any, ...]] = []  # warnings, logged once the block stands
        for st in self.streams:
            st.pending = pending
        try:
            out = self._read_samples(choice, True, pending)
            clean = not any(s.unscanned is not None and non_finite(s.unscanned) for s in out)
        except Exception:  # the scan-as-read order below raises it (or not) where it would have
            clean = False
        finally:
            for st in self.streams:
                st.pending = None
        if clean:
            for s in out:
                s.unscanned = None
            for item in pending:
                log.warning(*item)
            return out
        for st, c in zip(self.streams, start):  # a bad sample: back to the block start, scan in sample order
            st.close()
            st.cursor = Cursor(*c)
        self.counters.clear()
        self.counters.update(counters0)
        return self._read_samples(choice, False, None)

    def _batches(self, block: int, samples: list[TrainSample]) -> list[list[TrainSample]]:
        """The window's samples cut into micro-batches, in the order they are trained (`group_by`):
        none             random batches (the reference without grouping: stage 1);
        length           the window sorted by sequence length (text + visual tokens), cut into batches, the batches
                         in random order (least padding; not a reference mode);
        modality_length  `group_by_modality_length` over the window (modality_length_batches): each optimizer step's
                         `accum` micro-batches hold one modality, sorted by length (stages 2-4)."""
        rng = np.random.default_rng([self.cfg.seed, self.cfg.stage_index, self.rank, block, 2])
        bs = self.cfg.batch_size
        if self.cfg.group_by == "modality_length":
            idx = modality_length_batches([s.modality == "text" for s in samples], [s.words for s in samples],
                                          bs, self.cfg.accum, rng)
            return [[samples[i] for i in b] for b in idx]
        if self.cfg.group_by == "none":
            order = [int(i) for i in rng.permutation(len(samples))]
            return [[samples[i] for i in order[k:k + bs]] for k in range(0, len(order), bs)]
        tie = rng.random(len(samples))
        order = sorted(range(len(samples)), key=lambda i: (samples[i].length, tie[i]))
        batches = [[samples[i] for i in order[k:k + bs]] for k in range(0, len(order), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self) -> Iterator[Batch]:
        """The batch stream (synchronous)."""
        block, skip = self.block, self.skip_batches
        while True:
            start = self._cursors()
            counters0 = dict(self.counters)
            samples = self._read_block(block)
            end = self._cursors()
            counters1 = dict(self.counters)
            bl = self._batches(block, samples)
            for j, group in enumerate(bl):
                if j < skip:
                    continue
                b = collate(group, self.pad_id)
                if j + 1 < len(bl):
                    b.state = self._state(block, start, j + 1, counters0)
                else:
                    b.state = self._state(block + 1, end, 0, counters1)
                b.state["counters_now"] = counters1
                yield b
            skip = 0
            block += 1

    def __iter__(self) -> Iterator[Batch]:
        if self.cfg.prefetch <= 0:
            return self.batches()
        return _prefetch(self.batches(), self.cfg.prefetch)

    def close(self) -> None:
        for s in self.streams:
            s.close()


def modality_length_batches(text_only: list[bool], lengths: list[int], batch_size: int, accum: int,
                            rng: np.random.Generator) -> list[list[int]]:
    """`group_by_modality_length` (LLaVA's LengthGroupedSampler with group_by_modality) over one shuffle window of
    one worker -> micro-batches of indices, in training order; every `accum` consecutive ones are one optimizer step.

    As the reference: samples are split into multimodal (video or image) and text-only; each part is shuffled and cut
    into mega-batches of one step's samples (the reference: a global batch, workers x accumulation x batch); the
    leftovers of both parts form one mixed mega-batch that comes last (the reference: one per epoch; here at most
    one per window); the others are shuffled together. Each mega-batch is sorted by length, longest first, and dealt
    into `accum` micro-batches of `batch_size` with balanced total length (each to the lightest micro-batch that
    still has room; a mega-batch that does not divide evenly is dealt round-robin). `lengths` are the reference's
    modality lengths (words of the turns, `modality_words`)."""
    mega = batch_size * accum
    full: list[list[int]] = []
    rest: list[int] = []
    for part in (False, True):  # multimodal, then text-only: a fixed order, so the draws are reproducible
        idx = [i for i, t in enumerate(text_only) if t == part]
        idx = [idx[int(j)] for j in rng.permutation(len(idx))]
        cut = len(idx) // mega * mega
        full += [idx[k:k + mega] for k in range(0, cut, mega)]
        rest += idx[cut:]
    megas = [full[int(j)] for j in rng.permutation(len(full))] + ([rest] if rest else [])
    out: list[list[int]] = []
    for m in megas:
        m = sorted(m, key=lambda i: -lengths[i])  # stable: equal lengths keep their shuffled order
        if len(m) % accum:
            out += [m[c::accum] for c in range(accum) if m[c::accum]]
            continue
        room = len(m) // accum
        chunks: list[list[int]] = [[] for _ in range(accum)]
        load = [0] * accum
        for i in m:
            c = min((c for c in range(accum) if len(chunks[c]) < room), key=lambda c: (load[c], c))
            chunks[c].append(i)
            load[c] += lengths[i]
        out += chunks
    return out


def _prefetch(it: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Batches of `it` read ahead by a background thread, at most `depth` waiting. A C queue and a semaphore for
    the bound: queue.Queue's Python-level locking cost ~15 us more per batch. Closing the generator stops the
    reader after the batch it is making."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    room = threading.Semaphore(depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for b in it:
                while not room.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=work, name="longvid-loader", daemon=True)
    t.start()

    def gen() -> Iterator[Batch]:
        try:
            while True:
                item = q.get()
                room.release()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            room.release()
            t.join()

    return gen()


# ======================================================================================================== drop lists


def read_exclude(uris: list[str]) -> frozenset[str]:
    """Keys of drop lists (audit's drop_list.txt; the grammar is longvid.manifests.droplist's)."""
    from longvid.manifests.droplist import DropListError, parse_drop_list

    keys: set[str] = set()
    for u in uris:
        try:
            keys |= parse_drop_list(storage.read_text(u), f"exclude: {storage.redact(u)}")
        except (FileNotFoundError, storage.StorageError) as e:
            raise DataError(f"exclude: {storage.redact(u)}: cannot read the drop list ({e})") from None
        except DropListError as e:
            raise DataError(str(e)) from None
    return frozenset(keys)


# ======================================================================================================== fixtures


_WORDS = ["red car", "blue kite", "green door", "yellow bird", "white cat", "black dog", "orange ball", "grey boat"]


def synthetic_sample_info(key: str, source: str, n_frames: int, duration: float, label: int,
                          long_msg: bool = False) -> dict[str, Any]:
    """An ingest-style json for a synthetic sample whose answer depends on `label` (learnable from tokens)."""
    from longvid.operators.prompt import time_msg

    times = [round(duration * (i + 0.5) / n_frames, 1) for i in range(n_frames)]
    msg = time_msg(duration, n_frames, frame_times=times, long=long_msg)
    what = _WORDS[label % len(_WORDS)]
    return {
        "key": key, "source": source, "video_id": key, "start": 0.0, "end": duration, "duration": duration,
        "num_frames": n_frames, "frame_times": times, "time_msg": msg,
        "conversations": [
            {"from": "human", "value": "<image>" + msg + "\nWhat happens in this video?"},
            {"from": "gpt", "value": f"A {what} moves across the scene."},
        ],
    }


def write_synthetic_token_shards(out: str, n_samples: int, *, source: str = "webvid", dim: int = 64,
                                 frames: tuple[int, int] = (4, 16), duration: tuple[float, float] = (4.0, 20.0),
                                 per_shard: int = 8, dtype: str = "float16", seed: int = 0,
                                 key_prefix: str | None = None, write_index: bool = True,
                                 corrupt: dict[str, str] | None = None, long_msg: bool = False,
                                 profile: str | None = None, text_only: int = 0) -> list[str]:
    """Write a small encode-style token job (shards/, manifests/, index.json) for tests and benchmarks.

    Each sample's tokens are a label-specific pattern plus noise, and its answer names the label, so a model
    can learn it. `corrupt` maps a sample key to a defect: "shape" (wrong token width), "nan", "nan_end" / "inf_end"
    (NaN / -inf in the last token of the last clip), "missing_json", "missing_tokens", "bad_json", "clips"
    (num_clips disagrees). `profile`: the ingest profile the jsons record (none by default). `text_only`: every
    text_only-th sample (1-based) is a text-only sample (`media_type: text`, json only, no <image>). Returns the
    keys in write order.
    """
    from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
    from longvid.operators.write import UnitWriter, sample_members

    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).standard_normal((len(_WORDS), TOKENS_PER_CLIP, dim)).astype(np.float32)
    corrupt = corrupt or {}
    keys: list[str] = []
    prefix = key_prefix or source
    unit = 0
    n = 0
    while n < n_samples:
        w = UnitWriter(out, unit, shard_size_bytes=1 << 40, manifest_schema=TOKEN_MANIFEST_SCHEMA)
        for _ in range(min(per_shard, n_samples - n)):
            key = f"{prefix}_v{n:06d}_full"
            label = int(rng.integers(len(_WORDS)))
            nf = int(rng.integers(frames[0] // 4, frames[1] // 4 + 1)) * 4
            dur = float(np.round(rng.uniform(*duration), 2))
            info = synthetic_sample_info(key, source, nf, dur, label, long_msg=long_msg)
            c = nf // 4
            tok = protos[label][None] + 0.3 * rng.standard_normal((c, TOKENS_PER_CLIP, dim)).astype(np.float32)
            tok = tok.astype(dtype)
            info.update({"encoder": "synthetic", "resolution": 224, "tokens_per_frame": 16, "num_clips": c})
            if profile is not None:
                info["profile"] = profile
            text = bool(text_only and (n + 1) % text_only == 0)
            if text:  # as encode writes a text-only sample: json only, no <image>, no time message
                info = {k: v for k, v in info.items() if k not in ("time_msg", "frame_times", "num_clips",
                                                                   "num_frames", "tokens_per_frame")}
                info["media_type"] = "text"
                info["conversations"] = [{"from": "human", "value": "Which thing moves across the scene?"},
                                         info["conversations"][1]]
            defect = corrupt.get(key)
            if defect == "shape":
                tok = tok[:, :, : dim // 2].copy()
            elif defect == "nan":
                tok = tok.copy()
                tok[0, 1, 2] = np.nan
            elif defect in ("nan_end", "inf_end"):  # in the last clip: dropped by a tight frame bound, yet bad
                tok = tok.copy()
                tok[-1, -1, -1] = np.nan if defect == "nan_end" else -np.inf
            elif defect == "clips":
                info["num_clips"] = c + 1
            buf = io.BytesIO()
            np.save(buf, tok, allow_pickle=False)
            members = sample_members(info, {} if text else {TOKEN_EXT: buf.getvalue()})
            if defect == "missing_json":
                members.pop(JSON_EXT)
            elif defect == "missing_tokens":
                members.pop(TOKEN_EXT)
            elif defect == "bad_json":
                members[JSON_EXT] = b"{not json"
            row = {"key": key, "source": source, "video_id": key, "start": 0.0, "end": dur, "duration": dur,
                   "num_frames": nf, "num_clips": c, "tokens_per_frame": 16, "dim": dim, "encoder": "synthetic",
                   "resolution": 224, "dtype": dtype, "bytes": len(members.get(TOKEN_EXT, b"")), "text": ""}
            w.add(key, members, row)
            keys.append(key)
            n += 1
        w.commit()
        unit += 1
    if write_index:
        from longvid.pipelines.outputs import finalize

        finalize(out, job="encode", config={"synthetic": True}, elapsed=1.0, cpus=1)
    return keys


def write_synthetic_frame_shards(out: str, n_samples: int, *, source: str = "webvid", size: int = 32,
                                 frames: tuple[int, int] = (4, 8), per_shard: int = 8, seed: int = 0) -> list[str]:
    """An ingest-style frame job (<key>.json + <key>.mp4) with label-coloured frames, for encoder-in-the-loop
    stages in tests. Returns the keys."""
    from longvid.operators.mp4 import encode_mp4
    from longvid.operators.write import UnitWriter, sample_members

    rng = np.random.default_rng(seed)
    colors = np.random.default_rng(99).integers(0, 256, (len(_WORDS), 3))
    keys: list[str] = []
    unit = n = 0
    while n < n_samples:
        w = UnitWriter(out, unit, shard_size_bytes=1 << 40)
        for _ in range(min(per_shard, n_samples - n)):
            key = f"{source}_f{n:06d}_full"
            label = int(rng.integers(len(_WORDS)))
            nf = int(rng.integers(frames[0] // 4, frames[1] // 4 + 1)) * 4
            dur = float(np.round(rng.uniform(4, 20), 2))
            info = synthetic_sample_info(key, source, nf, dur, label)
            img = np.broadcast_to(colors[label].astype(np.uint8), (nf, size, size, 3)).copy()
            img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            mp4 = encode_mp4(img, fps=max(nf / dur, 0.5), crf=23)
            w.add(key, sample_members(info, {FRAME_EXT: mp4}),
                  {"key": key, "source": source, "video_id": key, "start": 0.0, "end": dur, "duration": dur,
                   "num_frames": nf, "bytes": len(mp4)})
            keys.append(key)
            n += 1
        w.commit()
        unit += 1
    from longvid.pipelines.outputs import finalize

    finalize(out, job="ingest", config={"synthetic": True}, elapsed=1.0, cpus=1)
    return keys
