"""64-bit dHash of frames, and a Hamming-radius index that does not compare all pairs.

The hashes are the manifest's `frame_hashes`, made by `operators/frames.py::dhash64` (one definition, for ingest
and the audit).

`HashIndex` is multi-index hashing. Cut the 64 bits into `threshold + 1` bands: two hashes within Hamming
distance `threshold` agree exactly on at least one band (pigeonhole). Cut them into `threshold + 2` bands: they
agree on at least two, so every pair of bands, concatenated, is a longer key with far fewer chance candidates.
The index picks whichever layout its size makes cheaper, looks candidates up per key in sorted arrays and
compares only candidates (popcount of the xor). Hashes with fewer than `min_bits` or more
than `64 - min_bits` set bits (flat or nearly flat frames: black, white, a single colour) carry no evidence and are
left out on both sides; buckets holding more than `max_bucket` entries are skipped and counted.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(x, np.uint64)).astype(np.int32)


def informative(h: np.ndarray, min_bits: int) -> np.ndarray:
    pc = popcount(h)
    return (pc >= min_bits) & (pc <= 64 - min_bits)


def _bands(k: int) -> list[tuple[int, int]]:
    """(shift, width) of k bands covering 64 bits as evenly as possible."""
    if not 1 <= k <= 64:
        raise ValueError(f"Hamming threshold out of range: {k} bands")
    widths = [64 // k + (1 if i < 64 % k else 0) for i in range(k)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _keys_layout(threshold: int, n: int) -> list[list[tuple[int, int]]]:
    """Each lookup key is a list of bands concatenated: single bands (t+1) or all pairs of t+2 bands,
    whichever costs fewer searches + expected chance candidates for an index of n hashes."""
    single = [[b] for b in _bands(threshold + 1)]
    if threshold + 2 > 64:
        return single
    b2 = _bands(threshold + 2)
    pairs = [[b2[i], b2[j]] for i in range(len(b2)) for j in range(i + 1, len(b2))]

    chance = sum(n / 2.0 ** sum(w for _, w in k) for k in single)  # chance candidates per query, single bands
    return pairs if chance > 1.0 else single


_FILTER_BITS = 24  # per-key prefilter: one bit per value of a multiplicative hash of the key (2 MiB)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _slot(key: np.ndarray) -> np.ndarray:
    return (key * _MIX) >> np.uint64(64 - _FILTER_BITS)


def _band(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (h >> np.uint64(shift)) & mask


def _key(h: np.ndarray, bands: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros(len(h), np.uint64)
    for shift, width in bands:
        out = (out << np.uint64(width)) | _band(h, shift, width)
    return out


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [lo[i], hi[i]): (i repeated, every position) without a Python loop."""
    counts = hi - lo
    qi = np.repeat(np.arange(len(lo), dtype=np.int64), counts)
    if len(qi) == 0:
        return qi, qi
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return qi, starts + np.arange(len(qi), dtype=np.int64)


class HashIndex:
    """Hashes (uint64) with an integer payload each, searchable within a Hamming radius."""

    def __init__(self, hashes: np.ndarray, payload: np.ndarray, threshold: int = 4, min_bits: int = 8,
                 max_bucket: int = 4096, lookup: bool = True):
        """lookup=False builds nothing for `query` (for `self_pairs` only, which sorts one key at a time)."""
        h = np.asarray(hashes, np.uint64)
        p = np.asarray(payload, np.int64)
        keep = informative(h, min_bits)
        self.dropped_uninformative = int((~keep).sum())
        self.hashes, self.payload = h[keep], p[keep]
        self.threshold, self.min_bits, self.max_bucket = threshold, min_bits, max_bucket
        self.keys = _keys_layout(threshold, len(self.hashes))
        self.sorted: list[tuple[np.ndarray, np.ndarray]] = []
        self.filters: list[np.ndarray] = []
        for bands in self.keys if lookup else []:
            v = _key(self.hashes, bands)
            order = np.argsort(v, kind="stable")
            self.sorted.append((v[order], order))
            bits = np.zeros(1 << _FILTER_BITS, bool)
            bits[_slot(v)] = True
            self.filters.append(np.packbits(bits, bitorder="little"))
        self.skipped_buckets = 0

    def __len__(self) -> int:
        return len(self.hashes)

    def self_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (i, j, distance), i < j, of indexed hashes within the threshold of each other (a self-join that
        only looks inside runs of equal keys)."""
        empty = np.array([], np.int64)
        pa_, pb_ = [], []
        for bands in self.keys:
            v = _key(self.hashes, bands)
            order = np.argsort(v, kind="stable")
            vals = v[order]
            del v
            if len(vals) < 2:
                continue
            brk = np.flatnonzero(np.diff(vals)) + 1
            starts = np.concatenate([[0], brk])
            sizes = np.diff(np.concatenate([starts, [len(vals)]]))
            big = sizes > self.max_bucket
            self.skipped_buckets += int(big.sum())
            for size in np.unique(sizes[(sizes >= 2) & ~big]):
                st = starts[sizes == size]
                a, b = np.triu_indices(int(size), 1)
                ia = order[(st[:, None] + a[None, :]).ravel()]
                ib = order[(st[:, None] + b[None, :]).ravel()]
                d = popcount(self.hashes[ia] ^ self.hashes[ib])
                ok = d <= self.threshold
                pa_.append(np.minimum(ia[ok], ib[ok]))
                pb_.append(np.maximum(ia[ok], ib[ok]))
        if not pa_:
            return empty, empty, empty.astype(np.int32)
        key = np.unique(np.concatenate(pa_) * np.int64(len(self.hashes)) + np.concatenate(pb_))
        i, j = key // len(self.hashes), key % len(self.hashes)
        return i, j, popcount(self.hashes[i] ^ self.hashes[j])

    def query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query position, index position, distance) with distance <= threshold, each pair once."""
        q = np.asarray(q, np.uint64)
        empty = np.array([], np.int64)
        if len(self.hashes) == 0 or len(q) == 0:
            return empty, empty, empty.astype(np.int32)
        qpos = np.flatnonzero(informative(q, self.min_bits))
        qq = q[qpos]
        pairs_q, pairs_i = [], []
        for bands, (vals, order), filt in zip(self.keys, self.sorted, self.filters):
            b = _key(qq, bands)
            slot = _slot(b)
            maybe = np.flatnonzero((filt[slot >> np.uint64(3)] >> (slot & np.uint64(7)).astype(np.uint8)) & 1)
            b = b[maybe]
            lo = np.searchsorted(vals, b, "left")
            hi = np.searchsorted(vals, b, "right")
            big = (hi - lo) > self.max_bucket
            if big.any():
                self.skipped_buckets += int(big.sum())
                hi = np.where(big, lo, hi)
            qi, pos = _expand(lo, hi)
            if len(qi) == 0:
                continue
            qi = maybe[qi]
            ii = order[pos]
            d = popcount(qq[qi] ^ self.hashes[ii])
            ok = d <= self.threshold
            pairs_q.append(qi[ok])
            pairs_i.append(ii[ok])
        if not pairs_q:
            return empty, empty, empty.astype(np.int32)
        qi = np.concatenate(pairs_q)
        ii = np.concatenate(pairs_i)
        key = np.unique(qi * np.int64(len(self.hashes)) + ii)  # a pair can agree on several bands
        qi, ii = key // len(self.hashes), key % len(self.hashes)
        d = popcount(qq[qi] ^ self.hashes[ii])
        return qpos[qi], ii, d


def list_parts(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, uint64 values) of a list<uint64> column of a batch, slicing offsets and nulls handled:
    a null row has no values."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        col = pc.if_else(col.is_null(), pa.scalar([], col.type), col)
    offs = col.offsets.to_numpy().astype(np.int64)
    base, end = int(offs[0]), int(offs[-1])
    vals = col.values.slice(base, end - base)
    vals = vals.to_numpy(zero_copy_only=False).astype(np.uint64) if len(vals) else np.array([], np.uint64)
    return offs - base, vals
