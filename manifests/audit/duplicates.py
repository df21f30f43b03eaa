"""Duplicates inside the corpus, across jobs and sources.

Three methods, each with its own evidence:
- `sha256`: the same sample mp4 bytes (manifest `sha256`), any sources.
- `video_id_span`: the same normalised video (e.g. one YouTube id reached through HD-VILA and MiraData) with
  overlapping spans, in different sources (overlapping windows inside one source are that source's own design).
- `frame_hash`: samples of different videos whose frames are near-duplicates (dHash within `threshold` bits) on at
  least `min_frames` frames; up to `frames_per_sample` evenly spaced frames per sample are indexed.

Memory: one row of identity columns per sample (key, source, id key, span, sha256) plus `frames_per_sample`
(hash, row) pairs; roughly 150 + 16 x frames_per_sample bytes per sample.
For each duplicate group the smallest key is kept; every other member is reported with `dup_of`.
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .phash import HashIndex, list_parts

DUP_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("dup_of", pa.string()), ("dup_source", pa.string()),
    ("method", pa.string()), ("evidence", pa.string()), ("score", pa.float64()),
])


def _even(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)) if n > 0 else np.array([], np.int64)


class DuplicateFinder:
    def __init__(self, threshold: int = 2, frames_per_sample: int = 8, min_frames: int = 2, min_bits: int = 8):
        self.threshold, self.frames_per_sample, self.min_frames, self.min_bits = threshold, frames_per_sample, min_frames, min_bits
        self._ident: list[pa.Table] = []
        self._hashes: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._frames: list[np.ndarray] = []
        self.n = 0

    def add(self, batch: pa.RecordBatch, id_keys: list[str | None]) -> None:
        n = batch.num_rows
        self._ident.append(pa.table({
            "key": batch.column("key"), "source": batch.column("source"),
            "idkey": pa.array(id_keys, pa.string()),
            "start": batch.column("start"), "end": batch.column("end"), "sha256": batch.column("sha256"),
        }))
        if "frame_hashes" in batch.schema.names and self.frames_per_sample > 0:
            offs, vals = list_parts(batch.column("frame_hashes"))
            lens = np.diff(offs)
            # evenly spaced frame positions per row, vectorised over rows grouped by length
            for L in np.unique(lens):
                if L == 0:
                    continue
                rows = np.flatnonzero(lens == L)
                pick = _even(int(L), self.frames_per_sample)
                pos = (offs[rows][:, None] + pick[None, :]).reshape(-1)
                self._hashes.append(vals[pos])
                self._rows.append(np.repeat(rows + self.n, len(pick)))
                self._frames.append(np.tile(pick, len(rows)))
        self.n += n

    def finish(self) -> pa.Table:
        out: list[dict] = []
        if not self._ident:
            return DUP_SCHEMA.empty_table()
        ident = pa.concat_tables(self._ident)
        self._ident = [ident]
        keys = ident.column("key").to_pylist()
        sources = ident.column("source").to_pylist()
        seen: set[tuple[str, str, str]] = set()

        def emit(members: list[int], method: str, evidence: dict, score: float):
            members = sorted(set(members), key=lambda i: keys[i])
            keep = members[0]
            for m in members[1:]:
                if (keys[m], keys[keep], method) in seen or keys[m] == keys[keep]:
                    continue
                seen.add((keys[m], keys[keep], method))
                out.append({"key": keys[m], "source": sources[m], "dup_of": keys[keep], "dup_source": sources[keep],
                            "method": method, "evidence": json.dumps(evidence, sort_keys=True), "score": score})

        # 1. exact bytes
        sha = ident.column("sha256")
        valid = pc.and_(pc.is_valid(sha), pc.not_equal(pc.fill_null(sha, ""), ""))
        idx = pa.array(np.arange(len(ident)))
        t = pa.table({"sha": sha, "i": idx}).filter(valid)
        c = t.group_by("sha").aggregate([("i", "count")])  # counts first: lists only for repeated hashes
        c = c.filter(pc.greater(c.column("i_count"), 1))
        g = t.filter(pc.is_in(t.column("sha"), value_set=c.column("sha"))).group_by("sha").aggregate([("i", "list")])
        for s, members in zip(g.column("sha").to_pylist(), g.column("i_list").to_pylist()):
            emit(members, "sha256", {"sha256": s, "members": len(members)}, 1.0)

        # 2. same normalised video id, overlapping spans, different sources
        t = pa.table({"idkey": ident.column("idkey"), "source": ident.column("source"), "i": idx}).filter(pc.is_valid(ident.column("idkey")))
        g = t.group_by("idkey").aggregate([("source", "count_distinct")])
        multi = g.filter(pc.greater(g.column("source_count_distinct"), 1)).column("idkey")
        if len(multi):
            sel = ident.filter(pc.is_in(ident.column("idkey"), value_set=multi))
            ii = np.flatnonzero(pc.is_in(ident.column("idkey"), value_set=multi).to_numpy(zero_copy_only=False))
            groups: dict[str, list[int]] = defaultdict(list)
            for k, i in zip(sel.column("idkey").to_pylist(), ii.tolist()):
                groups[k].append(i)
            starts = ident.column("start").to_numpy(zero_copy_only=False)
            ends = ident.column("end").to_numpy(zero_copy_only=False)
            for k, members in groups.items():
                members.sort(key=lambda i: (np.nan_to_num(starts[i], nan=0.0), keys[i]))
                for a_i, a in enumerate(members):
                    sa, ea = np.nan_to_num(starts[a], nan=0.0), np.nan_to_num(ends[a], nan=np.inf)
                    for b in members[a_i + 1:]:
                        sb, eb = np.nan_to_num(starts[b], nan=0.0), np.nan_to_num(ends[b], nan=np.inf)
                        if sb >= ea:
                            break
                        if sources[a] == sources[b]:
                            continue
                        ov = min(ea, eb) - max(sa, sb)
                        if ov <= 0:
                            continue
                        shorter = min(ea - sa, eb - sb)
                        score = float(ov / shorter) if np.isfinite(shorter) and shorter > 0 else 1.0
                        emit([a, b], "video_id_span", {"video": k, "span_a": [_f(sa), _f(ea)], "span_b": [_f(sb), _f(eb)],
                                                       "overlap_s": _f(ov)}, round(min(score, 1.0), 4))

        # 3. near-duplicate frames between different videos
        if self._hashes:
            h = np.concatenate(self._hashes)
            rows = np.concatenate(self._rows)
            frames = np.concatenate(self._frames)
            self._hashes, self._rows, self._frames = [h], [rows], [frames]
            ix = HashIndex(h, np.arange(len(h)), self.threshold, self.min_bits, lookup=False)
            rows_ix, frames_ix = rows[ix.payload], frames[ix.payload]
            qi, ii, d = ix.self_pairs()
            ra, rb = rows_ix[qi], rows_ix[ii]
            swap = ra > rb
            qi, ii = np.where(swap, ii, qi), np.where(swap, qi, ii)
            ra, rb = rows_ix[qi], rows_ix[ii]
            keep = ra < rb  # frames of the same sample are not duplicates of each other
            ra, rb, fa, fb, d = ra[keep], rb[keep], frames_ix[qi][keep], frames_ix[ii][keep], d[keep]
            idk = ident.column("idkey").to_pylist()
            pairs: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
            for a, b, x, y, dd in zip(ra.tolist(), rb.tolist(), fa.tolist(), fb.tolist(), d.tolist()):
                pairs[(a, b)].append((x, y, dd))
            for (a, b), m in pairs.items():
                if idk[a] is not None and idk[a] == idk[b] and sources[a] == sources[b]:  # neighbouring clips
                    continue
                fa_set = {x for x, _, _ in m}
                if len(fa_set) < self.min_frames:
                    continue
                m.sort(key=lambda t: t[2])
                emit([a, b], "frame_hash", {"matched_frames": len(fa_set), "pairs": [list(p) for p in m[:8]],
                                            "threshold": self.threshold},
                     round(1.0 - float(np.mean([p[2] for p in m])) / 64.0, 4))
        if not out:
            return DUP_SCHEMA.empty_table()
        return pa.Table.from_pylist(out, schema=DUP_SCHEMA)


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 3)
