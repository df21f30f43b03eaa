"""A stage's data entries indexed: which samples of which shards each source takes, and each rank's share.

    recipe data entry {shards: globs, weight, sampling}            (one "source" of a stage's mixture)
      index_source(): expand the globs (local or s3://), count samples per shard (index.json, else manifests/,
                     else the tar headers), cut the sampling strategy (operators.mixture.parse_strategy: all |
                     first:N[%] | first2:N .. first4:N | end:N[%]; a mixture's dataset written by `ingest --mixture`
                     has it applied already: all of it is taken) into per-shard sample ranges, mean duration
                     (manifests, else the first samples' json),
                     and compare the frame bounds the shards were ingested with to the stage's (check_frame_bounds)
      rank_pieces(): this worker's disjoint part: whole shards when there are at least as many as workers, else
                     shards cut into sample ranges (more workers than shards); balanced by sample count
The indexes (SourceIndex.to_dict) go to the workers, whose loader (pipelines/loader.py) reads them.
"""
from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.operators.mixture import parse_strategy
from longvid.operators.shards import TarError, iter_groups
from longvid.operators.train_sample import JSON_EXT, load_sample_json

log = storage.get_logger("longvid.train.data")  # its records are redacted in any process (Ray workers too)


class DataError(ValueError):
    """A data entry of a recipe that cannot be indexed: the message names the stage, the entry and the file."""


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
class SourceIndex:
    """One data entry of a stage, indexed: the selected samples as per-shard ranges, plus mixture facts."""

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
    def from_dict(cls, d: dict[str, Any]) -> "SourceIndex":
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
                raise DataError(f"{pat}: shard not found")
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
        log.warning("%s: unreadable wids index (%s); counting another way", uri, e)
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
            log.warning("%s: unreadable manifest part (%s)", uri, e)
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
        log.warning("%s: unreadable job.json (%s)", uri, e)
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
            f"{j or '(loose shards)'}: {v or 'not recorded'}" for j, v in sorted(
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
            log.warning("%s: unreadable after %d samples (%s)", uri, n, e)
            n += 1
    return n


def index_source(name: str, patterns: list[str], *, kind: str = "tokens", weight: float = 1.0,
                sampling: str = "all", root: str = "", frame_bounds: tuple[int, int] | None = None,
                bounds_policy: str = "error", applied: list[str] | None = None,
                bounds_found: list[str] | None = None) -> SourceIndex:
    """Expand, count and cut one data entry (raises DataError naming what is wrong). `frame_bounds`: the stage's
    (min_frames, max_frames), compared with the shards' ingest bounds (check_frame_bounds, `bounds_policy`).
    `sampling`: operators.mixture.parse_strategy's strings. `applied` (a mixture's datasets): when the shards' job
    folders say `ingest --mixture` already applied the strategy (ingest_strategy), every sample is taken, the
    name is appended to `applied`, and a different recorded strategy is a DataError. `bounds_found` collects the
    frame-bound differences that policy "ignore" let through."""
    shards = expand_shards(patterns, root)
    if not shards:
        raise DataError(f"{name}: no shard matches {', '.join(patterns)}")
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
    return SourceIndex(name, kind, float(weight), pieces, float(mean), "+".join(sorted(how)))


def _shard_infos(uri: str, limit: int = 8) -> Iterator[dict[str, Any]]:
    """The parsed json members of the first `limit` samples of a shard (unreadable ones skipped: the loader counts
    them when it reads them; a corrupt tar ends the walk)."""
    with storage.open_read(uri) as f:
        try:
            for n, g in enumerate(iter_groups(f, 0, want=lambda k: True, exts=(JSON_EXT,))):
                if n >= limit:
                    return
                try:
                    info = load_sample_json(g.members[JSON_EXT]) if JSON_EXT in g.members else None
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


def source_media_type(index: SourceIndex) -> str:
    """video | image | text: the media_type of a source's first selected shard's first sample (video when unsaid)."""
    first = next(_shard_infos(index.pieces[0].url, 1), {}) if index.pieces else {}
    mt = first.get("media_type")
    return mt if mt in ("image", "text") else "video"


def ingest_bounds(info: dict[str, Any]) -> tuple[int, int, str] | None:
    """(lo, hi, profile) of the frame bounds a video sample was ingested with, from the `profile` its json records
    (ingest writes it, encode keeps it); None for image and text samples and when no known profile is recorded."""
    from longvid.operators.frame_rule import PROFILES

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
            msg = (f"{name}: shard {uri} was ingested with frame bounds {got[0]}-{got[1]} (profile "
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
