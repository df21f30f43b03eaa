"""64-bit dHash of frames, and a Hamming-radius index that does not compare all pairs.

`dhash64` is the same function as ingest's (operators/frames.py documents the layout; manifests/ sits below
operators/ so it carries its own copy, checked equal in tests/test_audit.py): grey (PIL "L"), box-resized to
9 x 8, bit (r, c) = grey[r, c+1] > grey[r, c], row-major with (0, 0) the most significant bit.

`HashIndex` is multi-index hashing: the 64 bits are cut into `threshold + 1` bands; two hashes within Hamming
distance `threshold` agree exactly on at least one band (pigeonhole), so candidates are looked up per band in
sorted arrays and only candidates are compared (popcount of the xor). Hashes with fewer than `min_bits` or more
than `64 - min_bits` set bits (flat or nearly flat frames: black, white, a single colour) carry no evidence and are
left out on both sides; buckets holding more than `max_bucket` entries are skipped and counted.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def dhash64(frame: np.ndarray) -> int:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"dhash64 needs a uint8 [H, W] or [H, W, 3] frame, got {a.dtype} {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    if img.mode != "L":
        img = img.convert("L")
    g = np.asarray(img.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1).astype(np.uint64)
    return int((bits << np.arange(63, -1, -1, dtype=np.uint64)).sum())


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(x, np.uint64)).astype(np.int32)


def informative(h: np.ndarray, min_bits: int) -> np.ndarray:
    pc = popcount(h)
    return (pc >= min_bits) & (pc <= 64 - min_bits)


def _bands(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of threshold+1 bands covering 64 bits as evenly as possible."""
    k = threshold + 1
    if not 1 <= k <= 64:
        raise ValueError(f"Hamming threshold must be in 0..63, got {threshold}")
    widths = [64 // k + (1 if i < 64 % k else 0) for i in range(k)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _band(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (h >> np.uint64(shift)) & mask


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
                 max_bucket: int = 4096):
        h = np.asarray(hashes, np.uint64)
        p = np.asarray(payload, np.int64)
        keep = informative(h, min_bits)
        self.dropped_uninformative = int((~keep).sum())
        self.hashes, self.payload = h[keep], p[keep]
        self.threshold, self.min_bits, self.max_bucket = threshold, min_bits, max_bucket
        self.bands = _bands(threshold)
        self.sorted: list[tuple[np.ndarray, np.ndarray]] = []
        for shift, width in self.bands:
            v = _band(self.hashes, shift, width)
            order = np.argsort(v, kind="stable")
            self.sorted.append((v[order], order))
        self.skipped_buckets = 0

    def __len__(self) -> int:
        return len(self.hashes)

    def query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query position, index position, distance) with distance <= threshold, each pair once."""
        q = np.asarray(q, np.uint64)
        empty = np.array([], np.int64)
        if len(self.hashes) == 0 or len(q) == 0:
            return empty, empty, empty.astype(np.int32)
        qpos = np.flatnonzero(informative(q, self.min_bits))
        qq = q[qpos]
        pairs_q, pairs_i = [], []
        for (shift, width), (vals, order) in zip(self.bands, self.sorted):
            b = _band(qq, shift, width)
            lo = np.searchsorted(vals, b, "left")
            hi = np.searchsorted(vals, b, "right")
            big = (hi - lo) > self.max_bucket
            if big.any():
                self.skipped_buckets += int(big.sum())
                hi = np.where(big, lo, hi)
            qi, pos = _expand(lo, hi)
            if len(qi) == 0:
                continue
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
