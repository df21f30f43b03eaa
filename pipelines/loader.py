"""The training loader: per-worker, exactly resumable batches of a stage's sources (read top to bottom).

    per worker (the source indexes: pipelines/train_sources.py):
      SourceStream   reads its pieces in a per-epoch shuffled order, tar member groups one at a time
                     (never a whole shard; operators.shards' mapped mode), skips drop-listed keys without reading
                     them, cycles epochs forever
      parse_train_sample (operators/train_sample.py) json + tokens.npy (or mp4) -> checked sample (malformed:
                     counted warning, skipped), frame bounds, chat tokens and labels of the stage's template
                     (model.tokenizer.format_chat: plain, qwen_2 with the reference's labels, or assistant-only)
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
Over ~500 lines: the stream cursors, the block reading and the batch state that resumes exactly are one mechanism.
"""
from __future__ import annotations

import math
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from longvid.model.constants import IGNORE_INDEX
from longvid.operators import storage
from longvid.operators.settings import Settings, ordered, setting
from longvid.operators.shards import Group, TarError, iter_groups, open_shard, tune_malloc
from longvid.operators.train_sample import (
    FRAME_EXT,
    JSON_EXT,
    TOKEN_EXT,
    ParseOptions,
    SampleError,
    TrainSample,
    non_finite,
    parse_train_sample,
)
from longvid.pipelines.train_sources import DataError, Piece, SourceIndex, rank_pieces

log = storage.get_logger("longvid.train.data")  # its records are redacted in any process (Ray workers too)


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

    def __init__(self, index: SourceIndex, pieces: list[Piece], seed_key: list[int], exclude: frozenset[str],
                 counters: Counter, cursor: Cursor | None = None, want_exts: tuple[str, ...] | None = None):
        self.index = index
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
                    _log(self.pending, "%s: shard ended after %d samples (expected %d)", piece.url,
                         c.sample, piece.hi)
                empty_pieces += 1
                if empty_pieces > 2 * len(self.pieces):
                    raise DataError(f"{self.index.name}: no readable sample in this worker's shards")
                self._advance_piece()
                continue
            except (TarError, storage.StorageError, UnicodeDecodeError, ValueError) as e:
                if not opened and isinstance(e, storage.StorageError):
                    raise  # the shard cannot be opened (or walked): as before, not a corrupt tar
                # also a corrupt header met while walking to the piece's first sample (inside _open)
                piece = self.pieces[self.order(c.epoch)[c.piece]]
                self.counters["corrupt tar"] += 1
                _log(self.pending, "%s: unreadable from sample %d on (%s); skipping the rest of this piece",
                     piece.url, max(c.sample, piece.lo), e)
                empty_pieces += 1
                if empty_pieces > 2 * len(self.pieces):
                    raise DataError(f"{self.index.name}: no readable sample in this worker's shards") from None
                self._advance_piece()
                continue
            c.sample += 1
            c.offset = g.end
            if "__skipped__" in g.members:
                self.counters["excluded"] += 1
                excluded += 1
                if excluded > 2 * self.total:  # a whole epoch went by: every sample is excluded
                    raise DataError(f"{self.index.name}: every sample of this worker's shards is excluded")
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
        _log(pending, "skipping sample %s in %s: %s%s", key, url, reason,
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
class LoaderConfig(Settings):
    """What one worker's loader for one stage needs (JSON-friendly); constraints as in operators/settings.py."""

    sources: list[dict[str, Any]]  # SourceIndex.to_dict()
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

    frames_in_order = ordered("min_frames", "max_frames")


class StageLoader:
    """Endless, exactly resumable batches for one rank in one stage.

    `iter(loader)` yields Batch objects; `batch.state` restores the stream to right after that batch
    (`StageLoader(..., state=batch.state)`). With `prefetch > 0` a background thread reads ahead.
    """

    def __init__(self, cfg: LoaderConfig, rank: int, world: int, tokenizer: Any, exclude: frozenset[str] = frozenset(),
                 state: dict[str, Any] | None = None, image_token_id: int | None = None):
        from longvid.model.tokenizer import FastTokenizer, chat_encoder
        from longvid.model.tokenizer import image_token_id as _img

        tune_malloc()
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.tokenizer = FastTokenizer(tokenizer) if not isinstance(tokenizer, FastTokenizer) else tokenizer
        self.chat = chat_encoder(self.tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.opts = ParseOptions(cfg.kind, cfg.dim, cfg.min_frames, cfg.max_frames, cfg.max_len, cfg.label_mode,
                                  image_token_id if image_token_id is not None else _img(tokenizer),
                                  cfg.check_finite)
        self.indexes = [SourceIndex.from_dict(d) for d in cfg.sources]
        # a window holds whole optimizer steps (accum x batch_size samples), so a step never spans two windows
        step = cfg.accum * cfg.batch_size
        self.block_size = max(1, math.ceil(cfg.buffer / step)) * step
        self.counters: Counter = Counter()
        self.shared_sources: list[str] = []
        self.streams: list[SourceStream] = []
        exts = (JSON_EXT, TOKEN_EXT if cfg.kind == "tokens" else FRAME_EXT)
        for si, index in enumerate(self.indexes):
            pieces, shared = rank_pieces(index.pieces, rank, world)
            if shared:
                self.shared_sources.append(index.name)
            self.streams.append(SourceStream(index, pieces, [cfg.seed, cfg.stage_index, si, rank], exclude,
                                             self.counters, want_exts=exts))
        self.probs = self._probs()
        # token samples: NaN/inf scans after the block's other work (see _read_block); False: scan as read
        self.defer_scan = cfg.kind == "tokens" and cfg.check_finite
        self.block = 0
        self.skip_batches = 0
        if state:
            self._restore(state)

    def _probs(self) -> np.ndarray:
        w = np.array([max(p.weight, 0.0) for p in self.indexes], dtype=np.float64)
        if self.cfg.mix == "duration":  # weights are shares of video seconds: fewer draws of long sources
            w = w / np.array([max(p.mean_duration, 1e-3) for p in self.indexes])
        elif self.cfg.mix == "concat":  # LLaVA: datasets concatenated, every selected sample equally likely
            w = w * np.array([p.nsamples for p in self.indexes], dtype=np.float64)
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
                return parse_train_sample(g, self.chat, self.opts, defer_scan=defer)
            except SampleError as e:
                url = stream.pieces[stream.order(stream.cursor.epoch)[stream.cursor.piece]].url
                _warn(self.counters, e.reason, g.key, e.detail, url, pending)
                skipped += 1
                if skipped > 2 * stream.total:  # a whole epoch without one usable sample: never loop on
                    raise DataError(f"{stream.index.name}: no usable sample in this worker's shards (the last "
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


def read_exclude(uris: list[str]) -> frozenset[str]:
    """Keys of drop lists (audit's drop_list.txt; the grammar is longvid.manifests.droplist's)."""
    from longvid.manifests.droplist import DropListError, parse_drop_list

    keys: set[str] = set()
    for u in uris:
        try:
            keys |= parse_drop_list(storage.read_text(u), f"exclude: {u}")
        except (FileNotFoundError, storage.StorageError) as e:
            raise DataError(f"exclude: {u}: cannot read the drop list ({e})") from None
        except DropListError as e:
            raise DataError(str(e)) from None
    return frozenset(keys)
