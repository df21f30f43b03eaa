"""Encode's worker side: the encoder actor, which encodes whole ingest units and commits them itself.

    UnitEncoder                a Ray actor (num_gpus = --gpus-per-actor on a GPU cluster, else CPU); the driver gives
                               it units and gets back a few hundred bytes of counts per unit, nothing else
      encode_unit(unit)        one call per unit (several units in flight per actor, each call in its own thread):
                               reads the unit's ingest manifest part, starts one decode task per input shard (a Ray
                               streaming generator, num_cpus=1, on this actor's node when it has a free CPU:
                               encode_samples.read_shard -> encoder_rows), feeds the rows it yields to the actor's
                               queue (back-pressured), waits for the writer, commits the unit (UnitWriter:
                               shards/shard-N-P.tar, failures/part-N, manifests/part-N last) and returns its counts
      decoded(unit)            returns when that unit's decode has ended: the driver then gives the actor its next
                               unit, so a unit waiting for its last batch never leaves the queue without rows
      GPU loop (one thread)    takes the rows of every unit the actor holds, in arrival order, until it has exactly
                               batch_clips clips or tiles (rows with nothing to encode, failures and text, ride
                               along free): one forward pass per kind; a smaller batch only when no unit of the
                               actor is decoding and the driver has none left (the end of the job; or none came
                               for IDLE_WAIT_S), or when the queue is full of rows without frames
      writer (one thread)      tokens -> complete samples -> the unit's tar parts in the ingest manifest's order (a
                               sample that completes early waits in memory for those before it; with shards that
                               ingest wrote, none does)

Tokens, frames and samples never leave the actor's node except as committed files (local or S3). What the
driver receives per unit is constant whatever the unit's size. A unit whose call fails (its actor or node lost, a
storage outage) is committed by nobody: the driver gives it to an actor again; committed files are rewritten
byte for byte by a retry (UnitWriter is deterministic) and a killed attempt's temporary files are cleaned by the
next commit of the unit.
"""
from __future__ import annotations

import io
import json
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
from longvid.model.constants import TOKENS_PER_FRAME
from longvid.operators import storage
from longvid.operators.records import Failure
from longvid.operators.write import SampleWriteError, UnitWriter, sample_members
from longvid.pipelines.encode_model import HiCoBatchEncoder
from longvid.pipelines.out_claim import UnitGuard
from longvid.pipelines.encode_samples import INGEST_COLUMNS, encoder_rows, read_shard

# ------------------------------------------------------------------------------------------------- decode tasks

IDLE_WAIT_S = 2.0  # how long a short batch waits for the next unit when the driver may still have one


def decode_shard(unit: int, shard: str, manifest: str, shards_root: str, resolution: int, s3: dict | None,
                 chunk: int) -> Iterator[list[dict[str, Any]]]:
    """The encoder rows of one input shard of a unit (read_shard -> encoder_rows), in lists of `chunk` rows with
    frames to encode (rows without, failures and text, carry no frames). Run as a Ray streaming generator task."""
    rows: list[dict[str, Any]] = []
    n = 0
    for sample in read_shard({"unit": unit, "shard": shard, "manifest": manifest}, shards_root, resolution, s3):
        for row in encoder_rows(sample, resolution):
            if _encodable(row):
                n += 1
            else:
                row["frames"] = None
            rows.append(row)
            if n >= chunk:
                yield rows
                rows, n = [], 0
    if rows:
        yield rows


def _encodable(row: dict[str, Any]) -> bool:
    return row["status"] == "ok" and row["num_clips"] > 0


# ------------------------------------------------------------------------------------------------- one unit


@dataclass(frozen=True)
class UnitSettings:
    """What an encoder actor needs to write units (the same for every unit of a job)."""

    out: str
    shards: str  # the ingest job's folder (failure rows name its shards)
    resolution: int
    dim: int
    encoder: str  # "<model>/<weights name>", in every json and manifest row
    model: str
    dtype: str  # compute dtype (--dtype)
    store_dtype: str  # numpy dtype of the stored tokens
    shard_size: int  # bytes of a token tar part
    batch_clips: int
    scratch_dir: str = ""  # S3 output: where the tar parts of a unit wait for their upload
    s3: dict | None = None
    guard: UnitGuard | None = None  # the driver's out_claim.unit_guard: checked on the actor's node before each unit


@dataclass
class _Sample:
    num_clips: int
    clips: dict[int, np.ndarray] = field(default_factory=dict)
    info: str = ""
    failure: tuple[str, str, str] | None = None  # (stage, reason, field)
    received: int = 0


class UnitState:
    """One unit in an actor: rows with tokens in, samples written in the ingest manifest's order, failures named.

    `take(row, tokens)` per row in arrival order, `end()` once every row of the unit has arrived; the writer
    (UnitWriter) is committed by the caller. Plain Python: tests drive it without Ray."""

    def __init__(self, unit: int, rows: list[dict[str, Any]], writer: UnitWriter, settings: UnitSettings):
        self.unit, self.rows, self.writer, self.s = unit, rows, writer, settings
        self.pos = 0  # the next manifest row to write
        self.partial: dict[str, _Sample] = {}  # samples with clips still to come
        self.ready: dict[str, tuple[tuple[str, str, str] | None, _Sample | None]] = {}  # complete, not yet written
        self.done: dict[str, tuple[str, str, str] | None] = {}  # written: key -> its failure (None: a sample)
        self.clips = self.tiles = 0
        self.error: BaseException | None = None  # the unit cannot commit (storage error, a lost decode task)
        self.decoded = threading.Event()  # every row has been queued (or the decode failed)
        self.finished = threading.Event()  # every row written (or the unit failed)

    def take(self, row: dict[str, Any], tokens: np.ndarray | None) -> None:
        key = row["key"]
        if key in self.done or key in self.ready:  # listed under two shards: the first one read counts
            return
        if row["num_clips"] == 0:
            if row["status"] == "ok":  # nothing to encode (text-only): the json passes through
                self._complete(key, None, _Sample(0, info=row["info"]))
            else:  # failed before decoding into clips
                self._complete(key, (row["status"], row["reason"], row["field"]), None)
            return
        s = self.partial.setdefault(key, _Sample(int(row["num_clips"])))
        s.received += 1
        if row["status"] != "ok" and s.failure is None:
            s.failure = (row["status"], row["reason"], row["field"])
        if s.failure is None and tokens is not None:
            s.clips[int(row["clip"])] = tokens
        if row["info"]:
            s.info = row["info"]
        if s.received == s.num_clips:
            del self.partial[key]
            self._complete(key, s.failure, s)

    def end(self) -> None:
        """Every row of the unit has arrived: a sample still missing clips, or never seen, is a failure."""
        for key, s in self.partial.items():
            self.ready[key] = (("encode", f"only {s.received} of {s.num_clips} clips came back", "tokens"), None)
        self.partial.clear()
        for r in self.rows[self.pos:]:
            if r["key"] not in self.ready and r["key"] not in self.done:
                self.ready[r["key"]] = (("encode", "no output for this sample (lost in the pipeline)", "tokens"), None)
        self._advance()

    def _complete(self, key: str, failure: tuple[str, str, str] | None, s: _Sample | None) -> None:
        if failure is None and s is not None and (len(s.clips) != s.num_clips or not s.info):
            failure = ("encode", f"clips missing from the encoder output ({len(s.clips)} of {s.num_clips})", "tokens")
        self.ready[key] = (failure, s if failure is None else None)
        self._advance()

    def _advance(self) -> None:
        """Write the manifest rows whose samples are complete, in the manifest's order, up to the first that is not."""
        while self.pos < len(self.rows):
            r = self.rows[self.pos]
            key = r["key"]
            if key in self.done:  # a key listed twice in the manifest
                failure = self.done[key] or ("write", "duplicate key inside the unit", "key")
            elif key in self.ready:
                failure, s = self.ready.pop(key)
                if failure is None:
                    failure = self._write(r, s)
                self.done[key] = failure
            else:
                return
            if failure is not None:
                stage, reason, fld = failure
                shard = storage.join(self.s.shards, r["shard"] or "")
                self.writer.fail(Failure(r["source"], r["video_id"], r["uri"], stage, reason, f"{shard}#{key}", fld,
                                         key, r["start"], r["end"]))
            self.pos += 1

    def _write(self, r: dict[str, Any], s: _Sample) -> tuple[str, str, str] | None:
        """Add one complete sample to the unit's tar; its failure when the writer refuses it."""
        info = json.loads(s.info)
        npy = None
        if s.num_clips:  # a text sample has no tokens: its json is written as the ingest wrote it
            tokens = np.stack([s.clips[c] for c in range(s.num_clips)])
            buf = io.BytesIO()
            np.save(buf, tokens)
            npy = buf.getvalue()
            info.update({"encoder": self.s.encoder, "model": self.s.model, "resolution": self.s.resolution,
                         "dtype": self.s.store_dtype, "compute_dtype": self.s.dtype, "num_clips": s.num_clips,
                         "dim": self.s.dim, "tokens_shape": list(tokens.shape)})
            if info.get("media_type") != "image":
                info["tokens_per_frame"] = TOKENS_PER_FRAME
        info = json.loads(json.dumps(info, sort_keys=True, ensure_ascii=False))  # what a JSON reader gets back
        try:
            members = sample_members(info, {"tokens.npy": npy} if npy is not None else {})
            if not self.writer.add(r["key"], members, self._token_row(r, info, npy)):
                return ("write", "duplicate key inside the unit", "key")
        except SampleWriteError as e:  # nothing of the sample was written; the unit goes on
            return ("write", e.reason, e.field or "")
        n = int(info.get("num_clips") or 0) if npy is not None else 0
        self.clips += n
        self.tiles += n if info.get("media_type") == "image" else 0
        return None

    def _token_row(self, r: dict[str, Any], info: dict[str, Any], npy: bytes | None) -> dict[str, Any]:
        """The token manifest row of a written sample (ingest identity columns + what the encoder did). Image
        samples: num_clips = tiles, no num_frames / tokens_per_frame; text samples: no encoder columns."""
        media = info.get("media_type") or "video"
        row = {"key": r["key"], "source": r["source"], "video_id": r["video_id"], "start": r["start"], "end": r["end"],
               "duration": r["duration"], "num_frames": r["num_frames"], "num_clips": 0, "text": r["text"],
               "bytes": len(npy) if npy is not None else 0, "media_type": media}
        if npy is not None:
            row.update({"num_clips": info["num_clips"], "dim": self.s.dim, "encoder": self.s.encoder,
                        "resolution": self.s.resolution, "dtype": self.s.store_dtype,
                        "tokens_per_frame": TOKENS_PER_FRAME if media == "video" else None})
        return row


# ------------------------------------------------------------------------------------------------- the actor


class EncoderBroken(RuntimeError):
    """The actor's encoder failed (e.g. CUDA out of memory): every unit it holds fails; the driver restarts it."""


class UnitEncoder:
    """The encoder actor (see the module doc). `encoder_cls(**encoder_kwargs)` is the model it holds
    (HiCoBatchEncoder unless a benchmark or test gives another with the same call). Methods run in threads:
    encode_unit in the "units" concurrency group, decoded / ready / stats in "control"."""

    def __init__(self, settings: UnitSettings, encoder_kwargs: dict[str, Any], encoder_cls: type | None = None):
        import ray

        storage.configure_s3(settings.s3 or None)
        self.s = settings
        self.encoder = (encoder_cls or HiCoBatchEncoder)(**encoder_kwargs)
        self.node = ray.get_runtime_context().get_node_id()
        self.decode_task = ray.remote(num_cpus=1, max_retries=0)(decode_shard)
        self.cond = threading.Condition()
        self.queue: deque[tuple[UnitState, dict[str, Any] | None]] = deque()  # rows; None: the unit's end
        self.queued_clips = 0
        self.feeding = 0  # units of this actor still decoding
        self.limit = max(4 * settings.batch_clips, 64)  # rows in the queue before the feeders wait
        self.out: queue.Queue = queue.Queue(maxsize=4)  # encoded batches for the writer
        self.decoded_events: dict[tuple[int, int], threading.Event] = {}
        self.units: dict[tuple[int, int], UnitState] = {}
        self.broken: BaseException | None = None
        self.draining = False  # the driver has no unit left to give: a short batch need not wait
        self.idle_since = time.monotonic()  # when the last unit of this actor ended decoding
        self.batches = {"calls": 0, "clips": 0, "partial": 0}  # forward calls with something to encode
        threading.Thread(target=self._gpu_loop, name="encode-gpu", daemon=True).start()
        threading.Thread(target=self._writer_loop, name="encode-writer", daemon=True).start()

    def ready(self) -> dict[str, Any]:
        return {"device": str(getattr(self.encoder, "device", "cpu")), "node": self.node,
                "report": getattr(self.encoder, "report", "")}

    def last_units(self) -> None:
        """The driver has given every unit out: when no unit of this actor is decoding, encode what is queued."""
        with self.cond:
            self.draining = True
            self.cond.notify_all()

    def stats(self) -> dict[str, int]:
        """Forward calls, the clips (and tiles) they encoded, and how many calls had fewer than batch_clips."""
        return dict(self.batches)

    # ------------------------------------------------------------------ a unit
    def _decoded_event(self, key: tuple[int, int]) -> threading.Event:
        with self.cond:
            return self.decoded_events.setdefault(key, threading.Event())

    def decoded(self, unit: int, attempt: int) -> None:
        """Returns when the decode of that attempt of the unit has ended (every row queued, or it failed)."""
        self._decoded_event((unit, attempt)).wait()
        with self.cond:
            self.decoded_events.pop((unit, attempt), None)

    def encode_unit(self, unit: int, attempt: int, manifest: str, shards: list[str]) -> dict[str, Any]:
        """Decode, encode, write and commit one unit; returns its counts."""
        import ray

        t0 = time.time()
        feeding = False
        writer = None
        try:
            if self.broken is not None:
                raise EncoderBroken(f"the encoder of this actor failed: {self.broken!r}")
            if self.s.guard is not None:  # a node without the shared folders reads and writes nothing
                self.s.guard.check()
            rows = pq.read_table(io.BytesIO(storage.read_bytes(manifest)), columns=INGEST_COLUMNS).to_pylist()
            writer = UnitWriter(self.s.out, unit, self.s.shard_size, TOKEN_MANIFEST_SCHEMA,
                                scratch=self.s.scratch_dir or None)
            st = UnitState(unit, rows, writer, self.s)
            with self.cond:
                self.units[(unit, attempt)] = st
                self.feeding += 1
                feeding = True
            try:
                for rel in shards:
                    gen = self.decode_task.options(num_returns="streaming", _generator_backpressure_num_objects=2,
                                                   scheduling_strategy=self._near()).remote(
                        unit, rel, manifest, self.s.shards, self.s.resolution, self.s.s3, self.s.batch_clips)
                    for ref in gen:
                        self._put(st, ray.get(ref))
                        if st.error is not None:
                            ray.cancel(gen)
                            break
                    if st.error is not None:
                        break
            except BaseException as e:  # a decode task lost (its worker or node), or this actor broken
                st.error = st.error or e
            finally:
                with self.cond:
                    self.queue.append((st, None))
                    self.feeding -= 1
                    feeding = False
                    self.idle_since = time.monotonic()
                    self.cond.notify_all()
                self._decoded_event((unit, attempt)).set()
            while not st.finished.wait(0.5):
                if self.broken is not None:  # nobody will write this unit
                    st.error = st.error or EncoderBroken(f"the encoder of this actor failed: {self.broken!r}")
                    break
            if st.error is not None:
                raise st.error
            stats = writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            with self.cond:
                self.units.pop((unit, attempt), None)
                if feeding:
                    self.feeding -= 1
                    self.cond.notify_all()
            self._decoded_event((unit, attempt)).set()  # also when the unit failed before decoding
        return {"unit": unit, "samples": stats["samples"], "failures": stats["failures"], "frames": stats["frames"],
                "bytes": stats["bytes"], "clips": st.clips, "tiles": st.tiles, "elapsed": round(time.time() - t0, 3)}

    def _near(self):
        """Decode tasks on this actor's node when it has a free CPU (decoded frames are large; mp4s are small),
        on another node otherwise. _spill_on_unavailable: a soft affinity alone waits for a node that could run the
        task but is busy (its CPUs held by the actors), forever on a node whose every CPU an actor holds."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=self.node, soft=True, _spill_on_unavailable=True)

    def _put(self, st: UnitState, rows: list[dict[str, Any]]) -> None:
        with self.cond:
            while len(self.queue) >= self.limit and self.broken is None:
                self.cond.wait()
            if self.broken is not None:
                raise EncoderBroken(f"the encoder of this actor failed: {self.broken!r}")
            for r in rows:
                self.queue.append((st, r))
                self.queued_clips += _encodable(r)
            self.cond.notify_all()

    # ------------------------------------------------------------------ the GPU loop
    def _batch_ready(self) -> bool:
        """A full batch; or fewer clips when the queue is full of rows without frames, or when no unit of this
        actor is decoding and either the driver has none left or none came for IDLE_WAIT_S (the driver gives a
        unit to an actor when one of its units has been decoded: the next one is normally on its way)."""
        if self.queued_clips >= self.s.batch_clips:
            return True
        if not self.queue:
            return False
        if len(self.queue) >= self.limit:
            return True
        return self.feeding == 0 and (self.draining or time.monotonic() - self.idle_since >= IDLE_WAIT_S)

    def _gpu_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self._batch_ready():
                        self.cond.wait(0.1)
                    items, n = [], 0
                    while self.queue and n < self.s.batch_clips:
                        st, r = self.queue.popleft()
                        items.append((st, r))
                        n += r is not None and _encodable(r)
                    self.queued_clips -= n
                    self.cond.notify_all()
                self.out.put((items, self._encode([r for _, r in items if r is not None and _encodable(r)])))
        except BaseException as e:  # noqa: BLE001 - e.g. CUDA out of memory: every unit of this actor fails
            with self.cond:
                self.broken = e
                self.cond.notify_all()
            self.out.put(e)

    def _encode(self, rows: list[dict[str, Any]]) -> list[tuple[np.ndarray | None, dict[str, Any]]]:
        """One call of the encoder on rows with frames: per row (its tokens, the row with its encode status)."""
        if not rows:
            return []
        cols = ("unit", "key", "clip", "num_clips", "status", "reason", "field", "info", "mode")
        batch: dict[str, np.ndarray] = {c: np.array([r[c] for r in rows], dtype=object) for c in cols}
        batch["num_clips"] = np.array([r["num_clips"] for r in rows])
        batch["clip"] = np.array([r["clip"] for r in rows])
        batch["frames"] = np.stack([r["frames"] for r in rows])
        res = self.encoder(batch)
        self.batches["calls"] += 1
        self.batches["clips"] += len(rows)
        self.batches["partial"] += len(rows) < self.s.batch_clips
        out = []
        for i, r in enumerate(rows):
            row = {**r, "frames": None, "status": str(res["status"][i]), "reason": str(res["reason"][i]),
                   "field": str(res["field"][i])}
            out.append((np.array(res["tokens"][i]) if row["status"] == "ok" else None, row))
        return out

    # ------------------------------------------------------------------ the writer
    def _writer_loop(self) -> None:
        while True:
            got = self.out.get()
            if isinstance(got, BaseException):
                with self.cond:
                    states = list(self.units.values())
                for st in states:
                    st.error = st.error or EncoderBroken(f"the encoder of this actor failed: {got!r}")
                    st.finished.set()
                return
            items, encoded = got
            results = iter(encoded)
            for st, r in items:
                tokens = None
                if r is not None and _encodable(r):
                    tokens, r = next(results)
                if st.error is not None:
                    if r is None:
                        st.finished.set()
                    continue
                try:
                    if r is None:
                        st.end()
                        st.finished.set()
                    else:
                        st.take(r, tokens)
                except BaseException as e:  # noqa: BLE001 - a storage error (e.g. a full disk) fails this unit only
                    st.error = e
                    if r is None:
                        st.finished.set()
