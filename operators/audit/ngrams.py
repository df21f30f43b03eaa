"""Text n-gram overlap between manifest texts and benchmark questions, options and answers.

Normalisation (the same pyarrow kernels on both sides): NFKC, lower case, every run of characters that are not
letters or digits becomes one space, split on spaces. A benchmark text of at least `n` tokens contributes its
n-grams (default 13, as in GPT-3's and lm-evaluation-harness's decontamination). A text shorter than `n` but of at
least `min_tokens` tokens (default 8) contributes itself, whole: it matches when the sample text contains that
exact token sequence. Shorter texts ("Yellow", "What will the person do next?") are not used: they are too common
to be evidence. A sequence shared by more than `max_videos` distinct benchmark videos is a question template
("what is the action performed by the person in the video") and is not used either; both counts are reported.

Scanning is vectorised: tokens of a whole batch become ids in the benchmark vocabulary (tokens outside it can
never be part of a match), window hashes are polynomial rolling hashes in uint64 computed with numpy over the
batch, looked up in sorted arrays; only the rare hits go back to Python, where they are verified token by token.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .benchmarks import BenchText

_BASE = np.uint64(0x9E3779B97F4A7C15)
_BITMAP_BITS = 24  # prefilter: one bit per value of a hash's top 24 bits (16 MiB of bools per window length)


def normalise_array(texts: pa.Array) -> pa.ListArray:
    """Token lists of a string array (see module docstring). Nulls are empty texts."""
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    a = pc.fill_null(texts, "")
    if pc.all(pc.string_is_ascii(a)).as_py() is not False:  # same result, much cheaper character classes
        a = pc.ascii_lower(a)
        a = pc.replace_substring_regex(a, r"[^a-z0-9]+", " ")
    else:
        a = pc.utf8_normalize(a, "NFKC")
        a = pc.utf8_lower(a)
        a = pc.replace_substring_regex(a, r"[^\p{L}\p{N}]+", " ")
    a = pc.utf8_trim_whitespace(a)
    return pc.utf8_split_whitespace(a)


def normalise_text(text: str) -> list[str]:
    return [t for t in normalise_array(pa.array([text]))[0].as_py() if t]


def _window_hashes(tok: np.ndarray, m: int) -> np.ndarray:
    """Polynomial hash of every window of `m` consecutive token ids (uint64, wrapping)."""
    w = len(tok) - m + 1
    h = np.zeros(max(w, 0), np.uint64)
    if w <= 0:
        return h
    for j in range(m):
        h *= _BASE
        h += tok[j : j + w]
    return h


@dataclass
class TextHit:
    row: int  # row in the batch
    text_index: int  # into NgramIndex.texts
    gram: str  # the matched token sequence, space-joined
    whole: bool  # True: a short text matched whole; False: an n-gram


class NgramIndex:
    def __init__(self, texts: list[BenchText], n: int = 13, min_tokens: int = 8, max_videos: int = 5):
        if n < 1 or min_tokens < 1:
            raise ValueError("n and min_tokens must be positive")
        self.n, self.min_tokens, self.max_videos = n, min_tokens, max_videos
        self.texts = texts
        toks = normalise_array(pa.array([t.text for t in texts], pa.string())) if texts else pa.array([], pa.list_(pa.string()))
        flat = toks.flatten()
        vocab = pc.unique(flat.filter(pc.not_equal(flat, ""))) if len(flat) else pa.array([], pa.string())
        self.vocab = vocab
        ids = pc.index_in(flat, value_set=vocab).to_numpy(zero_copy_only=False) if len(flat) else np.array([])
        ids = np.where(np.isnan(ids.astype(float)), 0, ids + 1).astype(np.uint64) if len(ids) else np.array([], np.uint64)
        offs = toks.offsets.to_numpy()
        # hash -> (token tuple, set of text indices); per window length
        grams: dict[int, dict[int, tuple[tuple[int, ...], list[int]]]] = defaultdict(dict)
        self.ngrams_per_text = np.zeros(len(texts), np.int32)
        self.short_texts = self.too_short = 0
        for i in range(len(texts)):
            t = ids[offs[i] : offs[i + 1]]
            t = t[t > 0]
            L = len(t)
            if L >= n:
                m, hs = n, _window_hashes(t, n)
            elif L >= min_tokens:
                m, hs = L, _window_hashes(t, L)
                self.short_texts += 1
            else:
                self.too_short += 1
                continue
            uniq = {}
            for k, h in enumerate(hs.tolist()):
                uniq.setdefault(h, k)
            self.ngrams_per_text[i] = len(uniq)
            for h, k in uniq.items():
                e = grams[m].get(h)
                if e is None:
                    grams[m][h] = (tuple(t[k : k + m].tolist()), [i])
                else:
                    e[1].append(i)
        # drop templates: sequences used for more than max_videos distinct benchmark videos
        self.templates = 0
        self.grams: dict[int, dict[int, tuple[tuple[int, ...], list[int]]]] = {}
        self.keys: dict[int, np.ndarray] = {}
        self.bitmaps: dict[int, np.ndarray] = {}
        for m, d in grams.items():
            kept = {}
            for h, (tt, idx) in d.items():
                vids = {(texts[j].benchmark, texts[j].video or texts[j].ref) for j in idx}
                if len(vids) > max_videos:
                    self.templates += 1
                    continue
                kept[h] = (tt, idx)
            self.grams[m] = kept
            self.keys[m] = np.array(sorted(kept), np.uint64)
            bm = np.zeros(1 << _BITMAP_BITS, bool)
            bm[self.keys[m] >> np.uint64(64 - _BITMAP_BITS)] = True
            self.bitmaps[m] = bm
        self._vocab_py = vocab.to_pylist()

    def describe(self) -> dict:
        return {"n": self.n, "min_tokens": self.min_tokens, "max_videos": self.max_videos,
                "texts": len(self.texts), "short_texts_used_whole": self.short_texts,
                "texts_too_short": self.too_short, "template_sequences_ignored": self.templates,
                "sequences": int(sum(len(k) for k in self.keys.values()))}

    def words(self, ids: tuple[int, ...]) -> str:
        return " ".join(self._vocab_py[i - 1] for i in ids)

    def scan(self, texts: pa.Array) -> list[TextHit]:
        """Hits of one batch of sample texts (verified token by token)."""
        if not self.keys or len(texts) == 0:
            return []
        toks = normalise_array(texts)
        flat = toks.flatten()
        if len(flat) == 0:
            return []
        idx = pc.index_in(flat, value_set=self.vocab)
        tok = pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.uint64)
        offs = toks.offsets.to_numpy().astype(np.int64)
        lens = np.diff(offs)
        row_of = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
        room = np.repeat(offs[1:], lens) - np.arange(len(tok), dtype=np.int64)  # tokens left in the row
        oov = np.concatenate([[0], np.cumsum(tok == 0)])
        hits: list[TextHit] = []
        for m, keys in self.keys.items():
            if len(keys) == 0 or len(tok) < m:
                continue
            h = _window_hashes(tok, m)
            w = len(h)
            ok = (room[:w] >= m) & (oov[m : m + w] == oov[:w])
            ok &= self.bitmaps[m][h >> np.uint64(64 - _BITMAP_BITS)]
            cand = np.flatnonzero(ok)
            hv = h[cand]
            pos = np.searchsorted(keys, hv)
            pos[pos >= len(keys)] = 0
            found = cand[keys[pos] == hv]
            table = self.grams[m]
            for s in found.tolist():
                tt, text_idx = table[int(h[s])]
                if tuple(tok[s : s + m].tolist()) != tt:  # a hash collision
                    continue
                gram = self.words(tt)
                r = int(row_of[s])
                for ti in text_idx:
                    hits.append(TextHit(r, ti, gram, m < self.n))
        return hits
