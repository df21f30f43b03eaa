"""Duplicates inside the corpus, across jobs and sources.

Three methods, each with its own evidence:
- `sha256`: the same sample mp4 bytes (manifest `sha256`), any sources.
- `video_id_span`: the same normalised video (e.g. one YouTube id reached through HD-VILA and MiraData) with
  overlapping spans, in different sources (overlapping windows inside one source are that source's own design).
- `frame_hash`: samples of different videos whose frames are near-duplicates (dHash within `threshold` bits) on at
  least `min_frames` frames; up to `frames_per_sample` evenly spaced frames per sample are indexed.

Memory is bounded by `memory_budget` (bytes), not by the corpus: `add` spills each batch's identity columns (key,
source, id key, span, sha256) to an Arrow IPC file and its informative frame hashes to a flat binary file in a
temporary directory. `finish` knows the totals, so it re-partitions the spilled records by a hash of what is
compared into as many partition files as keep one partition within the budget: sha256 groups by the sha256, video
id groups by the normalised id, frame hashes once per multi-index key of `phash.HashIndex` (a band, or a pair of
bands) by the key's value, so every run of equal keys (the only candidates) lands in one partition and is verified
by popcount there. What stays in memory is the findings: verified frame pairs and the duplicate rows. The rows and
their order are those of a single in-memory pass (each finding carries the position it would have had there).
For each duplicate group the smallest key is kept; every other member is reported with `dup_of`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .phash import _key, _keys_layout, informative, list_parts, popcount

DUP_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("dup_of", pa.string()), ("dup_source", pa.string()),
    ("method", pa.string()), ("evidence", pa.string()), ("score", pa.float64()),
])


def _even(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)) if n > 0 else np.array([], np.int64)


MAX_BUCKET = 4096  # runs of equal keys longer than this are skipped (phash.HashIndex's max_bucket)
MAX_PARTS = 256  # partition files open at once
_HASH_REC = np.dtype([("h", "<u8"), ("row", "<i8"), ("frame", "<i4")])  # spilled frame hash, in index order
_PART_REC = np.dtype([("h", "<u8"), ("pos", "<i8")])  # a frame hash in a partition: hash, position in the index
_IDENT = pa.schema([("key", pa.string()), ("source", pa.string()), ("idkey", pa.string()), ("start", pa.float64()),
                    ("end", pa.float64()), ("sha256", pa.string()), ("row", pa.int64())])
_MIX = np.uint64(0x9E3779B97F4A7C15)


class DuplicateFinder:
    """add() batches, then finish() once. `memory_budget` bounds the working set of one partition (bytes);
    spill files go to a temporary directory under `spill_dir` (default: the system temp dir), removed by finish()
    or close()."""

    def __init__(self, threshold: int = 2, frames_per_sample: int = 8, min_frames: int = 2, min_bits: int = 8,
                 memory_budget: int = 256 << 20, spill_dir: str | Path | None = None):
        if memory_budget <= 0:
            raise ValueError(f"memory_budget: must be > 0, got {memory_budget}")
        self.threshold, self.frames_per_sample, self.min_frames, self.min_bits = threshold, frames_per_sample, min_frames, min_bits
        self.memory_budget = int(memory_budget)
        self._spill_root = spill_dir
        self._dir: Path | None = None
        self._ident_w: pa.ipc.RecordBatchFileWriter | None = None
        self._hash_f = None
        self.n = 0  # rows added
        self.n_hashes = 0  # informative frame hashes spilled
        self.partitions: dict[str, int] = {}  # method -> partitions used by finish (for tests and logs)

    # ------------------------------------------------------------ spill

    def _tmp(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="longvid-dups-", dir=self._spill_root))
        return self._dir

    def add(self, batch: pa.RecordBatch, id_keys: list[str | None]) -> None:
        n = batch.num_rows
        ident = pa.record_batch([
            batch.column("key").cast(pa.string()), batch.column("source").cast(pa.string()),
            pa.array(id_keys, pa.string()), batch.column("start").cast(pa.float64()),
            batch.column("end").cast(pa.float64()), batch.column("sha256").cast(pa.string()),
            pa.array(np.arange(self.n, self.n + n, dtype=np.int64)),
        ], schema=_IDENT)
        if self._ident_w is None:
            self._ident_w = pa.ipc.new_file(str(self._tmp() / "ident.arrow"), _IDENT)
        self._ident_w.write_batch(ident)
        if "frame_hashes" in batch.schema.names and self.frames_per_sample > 0:
            offs, vals = list_parts(batch.column("frame_hashes"))
            lens = np.diff(offs)
            # evenly spaced frame positions per row, vectorised over rows grouped by length (this order is the
            # index order of the one-pass algorithm, kept as each hash's position)
            for L in np.unique(lens):
                if L == 0:
                    continue
                rows = np.flatnonzero(lens == L)
                pick = _even(int(L), self.frames_per_sample)
                pos = (offs[rows][:, None] + pick[None, :]).reshape(-1)
                rec = np.empty(len(pos), _HASH_REC)
                rec["h"] = vals[pos]
                rec["row"] = np.repeat(rows + self.n, len(pick))
                rec["frame"] = np.tile(pick, len(rows))
                rec = rec[informative(rec["h"], self.min_bits)]  # flat frames are never indexed
                if len(rec):
                    if self._hash_f is None:
                        self._hash_f = open(self._tmp() / "hashes.bin", "wb")
                    rec.tofile(self._hash_f)
                    self.n_hashes += len(rec)
        self.n += n

    def close(self) -> None:
        """Close and remove the spill files (finish() does this; call it when abandoning a finder)."""
        for h in (self._ident_w, self._hash_f):
            if h is not None:
                try:
                    h.close()
                except Exception:
                    pass
        self._ident_w = self._hash_f = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _nparts(self, nbytes: float) -> int:
        return max(1, min(MAX_PARTS, math.ceil(nbytes / self.memory_budget)))

    def _ident_batches(self, columns: list[str]):
        with pa.OSFile(str(self._dir / "ident.arrow")) as src:  # read, not mapped: touched pages would stay in RSS
            r = pa.ipc.open_file(src)
            for i in range(r.num_record_batches):
                b = r.get_batch(i)
                yield b.select(columns)

    def _partitions(self, name: str, batches, col: str, nparts: int):
        """Tables of the records of `batches`, one per partition of crc32(col) (each value in one partition)."""
        if nparts == 1:
            bs = [b for b in batches if b.num_rows]
            if bs:
                yield pa.Table.from_batches(bs).combine_chunks()
            return
        paths = [self._dir / f"{name}-{p:04d}.arrows" for p in range(nparts)]
        writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        try:
            for b in batches:
                if not b.num_rows:
                    continue
                part = np.fromiter((zlib.crc32(s.encode()) for s in b.column(col).to_pylist()), np.int64, b.num_rows) % nparts
                order = np.argsort(part, kind="stable")
                b = b.take(pa.array(order))
                counts = np.bincount(part, minlength=nparts)
                start = 0
                for p in np.flatnonzero(counts).tolist():
                    if p not in writers:
                        writers[p] = pa.ipc.new_stream(str(paths[p]), b.schema)
                    writers[p].write_batch(b.slice(start, int(counts[p])))
                    start += int(counts[p])
        finally:
            for w in writers.values():
                w.close()
        for p in sorted(writers):
            with pa.OSFile(str(paths[p])) as f:
                t = pa.ipc.open_stream(f).read_all()
            os.remove(paths[p])
            yield t.combine_chunks()
            del t
            pa.default_memory_pool().release_unused()  # hand freed partition buffers back to the OS

    # ------------------------------------------------------------ finish

    def finish(self) -> pa.Table:
        try:
            return self._finish()
        finally:
            self.close()

    def _finish(self) -> pa.Table:
        if self._ident_w is None:
            return DUP_SCHEMA.empty_table()
        self._ident_w.close()
        self._ident_w = None
        if self._hash_f is not None:
            self._hash_f.close()
            self._hash_f = None
        found: list[tuple] = []  # (order, key, source, dup_of, dup_source, method, evidence, score)
        self._find_sha(found)
        self._find_spans(found)
        self._find_frames(found)
        found.sort(key=lambda r: r[0])
        out, seen = [], set()
        for _, k, s, dk, ds, m, ev, sc in found:
            if (k, dk, m) in seen:
                continue
            seen.add((k, dk, m))
            out.append({"key": k, "source": s, "dup_of": dk, "dup_source": ds, "method": m, "evidence": ev, "score": sc})
        if not out:
            return DUP_SCHEMA.empty_table()
        return pa.Table.from_pylist(out, schema=DUP_SCHEMA)

    @staticmethod
    def _emit(found: list, order: tuple, members: list[tuple], method: str, evidence: dict, score: float) -> None:
        """members: (key, source, row); the smallest key is kept, every other member reported once."""
        members = sorted(set(members), key=lambda m: (m[0], m[2]))
        keep = members[0]
        ev = json.dumps(evidence, sort_keys=True)
        for rank, m in enumerate(members[1:]):
            if m[0] != keep[0]:
                found.append(((*order, rank), m[0], m[1], keep[0], keep[1], method, ev, score))

    def _ident_bytes(self) -> int:
        return os.path.getsize(self._dir / "ident.arrow")

    def _find_sha(self, found: list) -> None:
        """1. exact bytes: groups of equal sha256, partitioned by the sha256."""
        def batches():
            for b in self._ident_batches(["sha256", "key", "source", "row"]):
                sha = b.column(0)
                yield b.filter(pc.and_(pc.is_valid(sha), pc.not_equal(pc.fill_null(sha, ""), "")))
        nparts = self._nparts(self._ident_bytes() * 3)
        self.partitions["sha256"] = nparts
        for t in self._partitions("sha", batches(), "sha256", nparts):
            c = t.group_by("sha256").aggregate([("row", "count")])  # counts first: lists only for repeated hashes
            c = c.filter(pc.greater(c.column("row_count"), 1))
            if not len(c):
                continue
            sel = t.filter(pc.is_in(t.column("sha256"), value_set=c.column("sha256"))).sort_by("row")
            groups: dict[str, list[tuple]] = defaultdict(list)
            for s, k, src, r in zip(*(sel.column(x).to_pylist() for x in ("sha256", "key", "source", "row"))):
                groups[s].append((k, src, r))
            for s, mem in groups.items():
                self._emit(found, (0, mem[0][2]), mem, "sha256", {"sha256": s, "members": len(mem)}, 1.0)

    def _find_spans(self, found: list) -> None:
        """2. same normalised video id, overlapping spans, different sources; partitioned by the id."""
        def batches():
            for b in self._ident_batches(["idkey", "source", "start", "end", "key", "row"]):
                yield b.filter(pc.is_valid(b.column(0)))
        nparts = self._nparts(self._ident_bytes() * 3)
        self.partitions["video_id_span"] = nparts
        for t in self._partitions("span", batches(), "idkey", nparts):
            g = t.group_by("idkey").aggregate([("source", "count_distinct")])
            multi = g.filter(pc.greater(g.column("source_count_distinct"), 1)).column("idkey")
            if not len(multi):
                continue
            sel = t.filter(pc.is_in(t.column("idkey"), value_set=multi)).sort_by("row")
            groups: dict[str, list[tuple]] = defaultdict(list)
            starts = sel.column("start").to_numpy(zero_copy_only=False)
            ends = sel.column("end").to_numpy(zero_copy_only=False)
            for i, (k, src, key, r) in enumerate(zip(*(sel.column(x).to_pylist() for x in ("idkey", "source", "key", "row")))):
                groups[k].append((starts[i], ends[i], src, key, r))
            for k, members in groups.items():
                first_row, seq = members[0][4], 0
                members.sort(key=lambda m: (np.nan_to_num(m[0], nan=0.0), m[3]))
                for a_i, a in enumerate(members):
                    sa, ea = np.nan_to_num(a[0], nan=0.0), np.nan_to_num(a[1], nan=np.inf)
                    for b in members[a_i + 1:]:
                        sb, eb = np.nan_to_num(b[0], nan=0.0), np.nan_to_num(b[1], nan=np.inf)
                        if sb >= ea:
                            break
                        if a[2] == b[2]:
                            continue
                        ov = min(ea, eb) - max(sa, sb)
                        if ov <= 0:
                            continue
                        shorter = min(ea - sa, eb - sb)
                        score = float(ov / shorter) if np.isfinite(shorter) and shorter > 0 else 1.0
                        self._emit(found, (1, first_row, seq), [(a[3], a[2], a[4]), (b[3], b[2], b[4])], "video_id_span",
                                   {"video": k, "span_a": [_f(sa), _f(ea)], "span_b": [_f(sb), _f(eb)], "overlap_s": _f(ov)},
                                   round(min(score, 1.0), 4))
                        seq += 1

    def _hash_partitions(self, bands: list[tuple[int, int]], nparts: int):
        """(hashes, index positions) per partition of the key value of `bands`."""
        path = self._dir / "hashes.bin"
        n = self.n_hashes
        chunk = max(4096, self.memory_budget // 160)
        if nparts == 1:
            rec = np.fromfile(path, _HASH_REC)
            yield rec["h"].copy(), np.arange(n, dtype=np.int64)
            return
        files = {}
        paths = [self._dir / f"frames-{p:04d}.bin" for p in range(nparts)]
        try:
            for s in range(0, n, chunk):
                h = np.fromfile(path, _HASH_REC, count=min(chunk, n - s), offset=s * _HASH_REC.itemsize)["h"]
                part = (((_key(h, bands) * _MIX) >> np.uint64(32)) % np.uint64(nparts)).astype(np.int64)
                order = np.argsort(part, kind="stable")
                out = np.empty(len(h), _PART_REC)
                out["h"], out["pos"] = h[order], order + s
                counts = np.bincount(part, minlength=nparts)
                start = 0
                for p in np.flatnonzero(counts).tolist():
                    if p not in files:
                        files[p] = open(paths[p], "wb")
                    out[start:start + int(counts[p])].tofile(files[p])
                    start += int(counts[p])
        finally:
            for f in files.values():
                f.close()
        for p in sorted(files):
            rec = np.fromfile(paths[p], _PART_REC)
            os.remove(paths[p])
            yield rec["h"].copy(), rec["pos"].copy()

    def _find_frames(self, found: list) -> None:
        """3. near-duplicate frames between different videos (multi-index hashing, see phash.HashIndex)."""
        n = self.n_hashes
        if n < 2:
            return
        layout = _keys_layout(self.threshold, n)
        nparts = self._nparts(n * 160.0)  # measured peak per record: hash, position, key, order, run bookkeeping
        self.partitions["frame_hash"] = nparts
        pa_, pb_ = [], []
        for bands in layout:
            for h, pos in self._hash_partitions(bands, nparts):
                if len(h) < 2:
                    continue
                v = _key(h, bands)
                order = np.argsort(v, kind="stable")
                vals = v[order]
                del v
                brk = np.flatnonzero(np.diff(vals)) + 1
                starts = np.concatenate([[0], brk])
                sizes = np.diff(np.concatenate([starts, [len(vals)]]))
                big = sizes > MAX_BUCKET
                for size in np.unique(sizes[(sizes >= 2) & ~big]):
                    st = starts[sizes == size]
                    a, b = np.triu_indices(int(size), 1)
                    ia = order[(st[:, None] + a[None, :]).ravel()]
                    ib = order[(st[:, None] + b[None, :]).ravel()]
                    ok = popcount(h[ia] ^ h[ib]) <= self.threshold
                    pa_.append(np.minimum(pos[ia[ok]], pos[ib[ok]]))
                    pb_.append(np.maximum(pos[ia[ok]], pos[ib[ok]]))
        if not pa_:
            return
        key = np.unique(np.concatenate(pa_) * np.int64(n) + np.concatenate(pb_))  # a pair can agree on several keys
        del pa_, pb_
        qi, ii = key // n, key % n
        rec = np.memmap(self._dir / "hashes.bin", _HASH_REC, mode="r")
        hq, hi_, rq, ri, fq, fi = (np.asarray(rec[f][x]) for f in ("h", "row", "frame") for x in (qi, ii))
        del rec
        d = popcount(hq ^ hi_)
        swap = rq > ri
        ra, rb = np.where(swap, ri, rq), np.where(swap, rq, ri)
        fa, fb = np.where(swap, fi, fq), np.where(swap, fq, fi)
        keep = ra < rb  # frames of the same sample are not duplicates of each other
        ra, rb, fa, fb, d = ra[keep], rb[keep], fa[keep], fb[keep], d[keep]
        if not len(ra):
            return
        pairs: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
        for a, b, x, y, dd in zip(ra.tolist(), rb.tolist(), fa.tolist(), fb.tolist(), d.tolist()):
            pairs[(a, b)].append((x, y, dd))
        info = self._rows_info(np.unique(np.concatenate([ra, rb])))
        for seq, ((a, b), m) in enumerate(pairs.items()):
            (ka, sa, ia), (kb, sb, ib) = info[a], info[b]
            if ia is not None and ia == ib and sa == sb:  # neighbouring clips
                continue
            fa_set = {x for x, _, _ in m}
            if len(fa_set) < self.min_frames:
                continue
            m.sort(key=lambda t: t[2])
            self._emit(found, (2, seq), [(ka, sa, a), (kb, sb, b)], "frame_hash",
                       {"matched_frames": len(fa_set), "pairs": [list(p) for p in m[:8]], "threshold": self.threshold},
                       round(1.0 - float(np.mean([p[2] for p in m])) / 64.0, 4))

    def _rows_info(self, rows: np.ndarray) -> dict[int, tuple]:
        """row -> (key, source, idkey) for sorted unique `rows`, read from the spilled identity columns."""
        info: dict[int, tuple] = {}
        for b in self._ident_batches(["key", "source", "idkey", "row"]):
            if not b.num_rows:
                continue
            r0 = int(b.column(3)[0].as_py())
            lo, hi = np.searchsorted(rows, [r0, r0 + b.num_rows])
            if hi > lo:
                t = b.take(pa.array(rows[lo:hi] - r0))
                for r, k, s, i in zip(rows[lo:hi].tolist(), *(t.column(x).to_pylist() for x in ("key", "source", "idkey"))):
                    info[r] = (k, s, i)
        return info


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 3)
