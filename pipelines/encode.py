"""Encode: ingest shards -> HiCo tokens (16 per frame) -> token shards + manifests, with ingest's shape: the unit of
work is an ingest unit, and the actor that encodes a unit's clips commits it.

    driver     ingest manifests/part-N.parquet -> units to do (committed units skipped: resume)
               schedules units on the encoder actors and counts what they commit (a few hundred bytes per unit)
    actor      UnitEncoder (pipelines/encode_actor.py), num_gpus = gpus_per_actor on a GPU cluster, CPU otherwise:
               per unit, decode tasks on its node (read_shard -> encoder_rows: 4-frame clips, image tiles; CPU)
               feed ONE queue shared by the units it holds -> forward passes of exactly batch_clips clips, across
               samples and units -> samples in the ingest manifest's order -> UnitWriter commits, from the actor:
               shards/shard-N-P.tar (<key>.json + <key>.tokens.npy), failures/part-N, manifests/part-N (last)
    then       index.json + summary.json (pipelines.outputs.JobOutput)

Why this shape:
- Output unit N is input unit N: the inputs of a unit are the rows of the ingest manifest part N (the manifest is
  the truth; a tar member it does not list is ignored). Resume = skip the units whose output manifest part
  exists; an ingest still running can be encoded again later to pick up its new units. A unit is committed
  atomically by one actor; a unit whose actor, node or storage fails is given to an actor again (3 retries).
- No token, frame or sample goes through the driver: its memory and the bytes it receives are the same for a unit
  of 8 samples or of 4,000, and for 1 actor or 64 (BENCHMARKS.md "Encode at scale").
- Rows are clips, not samples, so an actor call gets `batch_clips` clips whatever the samples' lengths: clips of
  different samples and units share a forward pass. The driver gives an actor its next unit as soon as one of its
  units has been decoded (not committed), so the queue holds rows of the next unit before the last batch of the
  previous one: a call has fewer clips only at the end of the job (or when the actor waits on rows without
  frames). A sample's clips stay on one actor (the tokens of a sample are written where they were encoded).
- The tar of a unit lists its samples in the ingest manifest's order. The token values of a re-run match to float
  rounding, not bit for bit: a batched matmul may round differently with another batch composition (keys,
  order, json and shapes are identical; an encoder computing each clip alone gives identical bytes).
- Failures are data: a sample whose tar members are missing or unreadable (`read`), whose mp4 does not decode or
  holds another number of frames than the manifest says, or whose image does not decode (truncated, not an image,
  beyond PIL's MAX_IMAGE_PIXELS; field = the member, e.g. `1.png`) (`decode`), whose tokens are not finite
  (`encode`), or that the writer refuses (`write`, naming the field) becomes one failure row. Inputs of the
  encode job = rows of the ingest manifests = samples + failures.
- Sample kinds, by the ingest json's `media_type` (`longvid ingest --mixture` writes all three; raw-source shards
  are videos without one):
  video  `<key>.mp4` -> clips of 4 frames -> `<key>.tokens.npy` [num_frames / 4, 64, D];
  image  `<key>.0.jpg`, `<key>.1.png`, ... (json `image_members`) -> tiles (image_tiles: `anyres_nopad` = base
         tile + grid tiles chosen from `image_sizes`, `pad` = one padded square per image) -> `<key>.tokens.npy`
         [num_tiles, 64, D]; each tile is encoded as the reference's `encode_video_image` encodes an image: ONE
         frame (T = 1, the ViT's image position table), its 196 (784 at 448) tokens merged to 64. Tiles are rows of
         the same stream as clips (mode "image"), so they share the actor's batches with the clips of videos.
         The json says num_tiles, tiles_per_image, image_grids ([cols, rows] per image, null for `pad`),
         tile_order, tile_size, tokens_per_tile, image_encoding; num_clips = num_tiles.
  text   json only: written as it is, no tokens (a written sample; manifest media_type "text").
- A sample whose frame count is not a multiple of 4 (ingest never writes one: the sampling rule gives multiples of
  4) is padded by repeating its last frame, as the reference sampler repeats its last index; its json says
  `padded_frames`.
- Precision: bf16/fp16 autocast only on CUDA; on CPU the encoder runs in fp32. Tokens are stored as float16 for
  bf16 and fp16 runs, float32 for fp32 runs. `encode_clips` is called under our own autocast so that fp16 and fp32
  runs on CUDA are possible (HiCoEncoder.forward always autocasts to bf16 on CUDA).
- Decoding happens in-process: the mp4s are the ingest job's own H.264 output and the images were decoded once by
  ingest (untrusted sources were decoded in isolated children there); a corrupt file raises and becomes a failure
  row.

Limits: a unit is the smallest piece an actor takes, so a job of fewer units than actors leaves actors idle; each
actor writes the token tars of its units on its own node before commit (local --out: in place; s3://: in
scratch_dir, then uploaded), so an actor's node needs disk for the units it holds.
"""
from __future__ import annotations

import dataclasses
import io
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from longvid.model.constants import TOKENS_PER_FRAME
from longvid.operators import storage
from longvid.operators.errors import ConfigError, TransientError
from longvid.operators.write import MANIFESTS
from longvid.pipelines.encode_actor import EncoderBroken, UnitEncoder, UnitSettings
from longvid.pipelines.encode_config import EncodeConfig
from longvid.pipelines.out_claim import unit_guard
from longvid.pipelines.outputs import JobOutput, read_parts
from longvid.pipelines.progress import Progress

RETRIES = 3  # a unit whose actor, node or storage failed is given to an actor again, up to this many times


def _weights_name(cfg: EncodeConfig) -> str:
    if not cfg.checkpoint:
        return f"random-init-seed{cfg.seed}"
    return cfg.checkpoint.rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------- planning


@dataclass
class _Pending:
    unit: int
    manifest: str
    rows: int
    shards: list[str]
    resolution: set[int]  # of the video frames


def _unit_of(uri: str) -> int | None:
    base = uri.rsplit("/", 1)[-1]
    if not (base.startswith("part-") and base.endswith(".parquet")):
        return None
    try:
        return int(base[len("part-"):-len(".parquet")])
    except ValueError:
        return None


def ingest_units(shards: str) -> dict[int, str]:
    """unit -> ingest manifest part uri, for every committed unit of the ingest job at `shards`."""
    parts = storage.list_files(storage.join(shards, MANIFESTS), ".parquet", recursive=False)
    out = {}
    for p in parts:
        u = _unit_of(p)
        if u is not None:
            out[u] = p
    return dict(sorted(out.items()))


def _read_pending(uri: str, unit: int) -> _Pending:
    try:
        t = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["shard", "resolution", "num_frames"])
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ConfigError(f"shards: {uri}: not an ingest manifest (need columns shard, "
                          f"resolution, num_frames; see manifests/schema.py): {e}") from None
    shards = sorted({s for s in t.column("shard").to_pylist() if s})
    # the frames' resolution, of video rows (num_frames set): images are stored at their own size, text has none
    res = {int(r) for r, n in zip(t.column("resolution").to_pylist(), t.column("num_frames").to_pylist())
           if r is not None and n is not None}
    return _Pending(unit, uri, t.num_rows, shards, res)


def _footer_rows(uri: str) -> int:
    with storage.open_read(uri, block_size=256 * 1024) as f:  # the footer only (ranged reads on S3)
        return pq.ParquetFile(f).metadata.num_rows


def _check_checkpoint(cfg: EncodeConfig) -> None:
    if not cfg.checkpoint or storage.is_s3(cfg.checkpoint):
        return
    from longvid.model.checkpoint import CheckpointError, checkpoint_files

    try:
        checkpoint_files(cfg.checkpoint)
    except CheckpointError as e:
        raise ConfigError(f"checkpoint: {e}") from None


def _actors(cfg: EncodeConfig, cpus: int, gpus: float) -> tuple[int, float, float]:
    """(actors, num_gpus per actor, num_cpus per actor) for this cluster."""
    if gpus > 0 and cfg.gpus_per_actor > 0:
        n = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        return n, cfg.gpus_per_actor, min(cfg.cpus_per_actor, max(1.0, cpus / (n + 1)))
    n = cfg.actors or max(1, int((cpus - 1) // cfg.cpus_per_actor))
    if n * cfg.cpus_per_actor > cpus - 1 and cpus > 1:
        raise ConfigError(f"actors: {n} CPU actors x {cfg.cpus_per_actor} CPUs leave no CPU for decoding on a "
                          f"cluster with {cpus} CPUs (and no GPU); use --actors {max(1, int((cpus - 1) // cfg.cpus_per_actor))}")
    return n, 0.0, cfg.cpus_per_actor


def run_encode(cfg: EncodeConfig, log=print, encoder_cls: type | None = None) -> dict[str, Any]:
    """Run the whole job on Ray (an embedded Ray unless Ray is already initialised or an address is given; a Ray
    started elsewhere is neither initialised nor shut down here). Returns the summary dict.

    encoder_cls: the model each actor holds (default pipelines.encode_model.HiCoBatchEncoder); a benchmark's
    stand-in takes the same constructor arguments and call."""
    cfg.validate()
    s3 = storage.configure_s3(storage.S3Options(endpoint_url=cfg.s3_endpoint_url or None,
                                                profile=cfg.s3_profile or None,
                                                region=cfg.s3_region or None)).to_dict()
    units = ingest_units(cfg.shards)
    if not units:
        raise ConfigError(f"shards: no committed ingest unit under {cfg.shards} "
                          f"(expected {MANIFESTS}/part-N.parquet, see manifests/schema.py)")
    if cfg.limit_units:
        units = dict(list(units.items())[: cfg.limit_units])
    committed = {_unit_of(u) for u in storage.list_files(storage.join(cfg.out, MANIFESTS), ".parquet", recursive=False)}
    todo = [_read_pending(uri, u) for u, uri in units.items() if u not in committed]
    skipped = len(units) - len(todo)
    ingest_rows = sum(p.rows for p in todo) + sum(_footer_rows(uri) for u, uri in units.items() if u in committed)
    job = JobOutput(cfg.out, "encode", log=log, quiet=cfg.quiet)
    resolution = cfg.resolution
    if todo:
        have = set().union(*(p.resolution for p in todo))
        if not resolution:
            if len(have) > 1:
                raise ConfigError(f"resolution: the ingest frames have several resolutions {sorted(have)}; choose one")
            from longvid.model.config import get_config

            native = get_config(cfg.model).umt.img_size
            resolution = have.pop() if have else native  # no video frames (images, text): the encoder's own
            if native > resolution:
                raise ConfigError(f"resolution: the {cfg.model} encoder runs at {native} px but the ingest frames are "
                                  f"{resolution} px; ingest with a {native} px profile (highres), or pass "
                                  f"--resolution {resolution} to encode at {resolution} anyway")
        elif have and min(have) < resolution:
            raise ConfigError(f"resolution: {resolution} but the ingest frames are {min(have)} px (manifest column "
                              f"resolution of {cfg.shards}); frames are never upsampled")
    elif not resolution:  # nothing to do: keep the resolution of the earlier run so the fingerprint matches
        resolution = int((job.previous() or {}).get("resolution") or 224)
    _check_checkpoint(cfg)
    job.prepare(cfg.fingerprint(resolution))
    from longvid.model.config import get_config

    dim = get_config(cfg.model, img_size=resolution).encoder_dim
    with job.running(cfg.ray_address, cfg.num_cpus, unit="samples", total=ingest_rows,
                     inputs={"shards": cfg.shards}) as prog:
        prog.skip(ingest_rows - sum(p.rows for p in todo))
        if not cfg.checkpoint:
            prog.write(f"[encode] WARNING: no --checkpoint: the {cfg.model} encoder has RANDOM weights (seed {cfg.seed}); "
                       "the tokens are only good for tests and benchmarks")
        n_actors, actor_gpus, actor_cpus = _actors(cfg, job.cpus, job.gpus)
        n_actors = min(n_actors, max(1, len(todo)))  # an actor takes whole units
        decode_cpus = max(1.0, job.cpus - n_actors * actor_cpus)
        per_actor = max(2, math.ceil(decode_cpus / n_actors))  # units decoding at once on an actor
        encoder = f"{cfg.model}/{_weights_name(cfg)}"
        prog.write(f"[encode] {len(todo)} units to encode ({skipped} already committed), "
                   f"{sum(len(p.shards) for p in todo)} input shards, {sum(p.rows for p in todo)} samples | "
                   f"{n_actors} encoder actors on {'GPU x %g' % actor_gpus if actor_gpus else 'CPU'}, "
                   f"{cfg.batch_clips} clips per batch, up to {per_actor} units decoding per actor, "
                   f"{cfg.model} at {resolution} px, {cfg.dtype}")
        settings = UnitSettings(out=cfg.out, shards=cfg.shards, resolution=resolution, dim=dim, encoder=encoder,
                                model=cfg.model, dtype=cfg.dtype, store_dtype=cfg.store_dtype,
                                shard_size=int(cfg.shard_size_mb * 2**20), batch_clips=cfg.batch_clips,
                                scratch_dir=cfg.scratch_dir, s3=s3, guard=unit_guard(cfg.out, shards=cfg.shards))
        model = dict(model=cfg.model, resolution=resolution, checkpoint=cfg.checkpoint, dtype=cfg.dtype,
                     seed=cfg.seed, cache_dir=cfg.cache_dir, s3=s3, cpu_threads=max(1, int(actor_cpus)))
        run = _Scheduler(prog, per_actor)
        if todo:
            run.start(settings, model, encoder_cls, n_actors, actor_gpus, actor_cpus)
        try:
            run.units(todo)
            batches = run.batch_stats()
        finally:
            run.stop()
        t = run.totals
        elapsed = job.elapsed()
        summary = job.finalize(_public_config(cfg, resolution), extra={
            "units_run": t["units"], "units_skipped": skipped, "units_uncommitted": sorted(run.uncommitted),
            "input_units": len(units), "ingest_rows": ingest_rows, "inputs_read": ingest_rows,
            "encoder": encoder, "random_weights": not cfg.checkpoint, "resolution": resolution,
            "dim": dim, "dtype": cfg.store_dtype, "tokens_per_frame": TOKENS_PER_FRAME,
            "actors": n_actors, "gpus_per_actor": actor_gpus, "gpus": job.gpus, "units_decoding_per_actor": per_actor,
            "clips_encoded": t["clips"], "image_tiles_encoded": t["tiles"], "batches": batches,
            "samples_by_media_type": samples_by_media_type(cfg.out),
            "frames_per_s": round(t["frames"] / elapsed, 3) if elapsed > 0 else None})
        if not summary["complete"]:
            prog.write(f"[encode] INCOMPLETE: {summary['samples']} samples + {summary['failures']} failures committed "
                       f"of {ingest_rows} ingest rows; units not committed: {sorted(run.uncommitted)}. Re-run the same "
                       "command: committed units are skipped, the others are retried.", important=True)
    job.report(summary)
    return summary


class _Scheduler:
    """The driver's part: units to actors, counts back. An actor takes a new unit when one of its units has been
    decoded (so its queue is never without rows while units are left); a failed unit goes to an actor again."""

    def __init__(self, prog: Progress, per_actor: int):
        self.prog, self.per_actor = prog, per_actor
        self.actors: list[Any] = []
        self.totals = {"units": 0, "samples": 0, "failures": 0, "frames": 0, "clips": 0, "tiles": 0}
        self.uncommitted: list[int] = []
        self.draining = False
        self.paused: list[float] = []
        self.t0 = time.time()

    def start(self, settings: UnitSettings, model: dict[str, Any], encoder_cls: type | None, n: int, gpus: float,
              cpus: float) -> None:
        import ray

        actor = ray.remote(concurrency_groups={"units": 4 * self.per_actor + 8, "control": self.per_actor + 4})(
            UnitEncoder).options(num_cpus=cpus, num_gpus=gpus, max_restarts=RETRIES)
        self.actors = [actor.remote(settings, model, encoder_cls) for _ in range(n)]
        ready = ray.get([a.ready.options(concurrency_group="control").remote() for a in self.actors])
        devices = sorted({r["device"] for r in ready})
        self.prog.write(f"[encode] {len(ready)} actors ready on {len({r['node'] for r in ready})} node(s), "
                        f"device {', '.join(devices)}" + (f"; weights: {ready[0]['report']}" if ready[0]["report"] else ""))
        self.t0 = time.time()

    def units(self, todo: list[_Pending]) -> None:
        import ray

        waiting: deque[tuple[_Pending, int, int]] = deque((p, 0, -1) for p in todo)  # (unit, attempt, last actor)
        load = [0] * len(self.actors)  # units decoding, per actor
        decoding: dict[Any, int] = {}  # decoded() ref -> actor
        running: dict[Any, tuple[_Pending, int, int]] = {}  # encode_unit() ref -> (unit, attempt, actor)
        full: list[storage.NoSpace] = []
        self.paused = [0.0] * len(self.actors)  # an actor Ray is restarting gets no unit before this time
        while waiting or running:
            while waiting and not full:
                p, attempt, last = waiting[0]
                # the least loaded actor; a retried unit on another one than the one it failed on, when there is one
                now = time.time()
                order = sorted((i for i in range(len(self.actors)) if self.paused[i] <= now),
                               key=lambda i: (i == last and len(self.actors) > 1, load[i]))
                if not order or load[order[0]] >= self.per_actor:
                    break
                i = order[0]
                waiting.popleft()
                a = self.actors[i]
                running[a.encode_unit.options(concurrency_group="units").remote(p.unit, attempt, p.manifest,
                                                                                p.shards)] = (p, attempt, i)
                decoding[a.decoded.options(concurrency_group="control").remote(p.unit, attempt)] = i
                load[i] += 1
            if not running and not decoding:
                if waiting and not full:  # every actor is restarting
                    time.sleep(0.2)
                    continue
                break
            if not waiting and not self.draining:  # every unit given out: actors need not wait for more
                self.draining = True
                for a in self.actors:
                    a.last_units.options(concurrency_group="control").remote()
            paused = waiting and any(t > time.time() for t in self.paused)
            ready, _ = ray.wait(list(decoding) + list(running), num_returns=1, timeout=0.5 if paused else None)
            for ref in ready:
                if ref in decoding:
                    load[decoding.pop(ref)] -= 1
                    continue
                p, attempt, i = running.pop(ref)
                try:
                    st = ray.get(ref)
                except (ray.exceptions.RayError, TransientError) as e:
                    self._failed(e, p, attempt, i, waiting, full)
                    continue
                self._committed(st)
        if full:
            e = full[0]
            raise storage.NoSpace(e.uri, f"{e.reason} (the job stopped; {self.totals['units']} units committed in "
                                         "this run)")

    def _failed(self, e: BaseException, p: _Pending, attempt: int, i: int, waiting: deque, full: list) -> None:
        import ray

        cause = getattr(e, "cause", None) or e
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if isinstance(e, ray.exceptions.ActorUnavailableError):  # restarting: not an attempt; again in a second
            self.paused[i] = time.time() + 1.0
            waiting.append((p, attempt, i))
            return
        if isinstance(cause, storage.NoSpace):  # no unit can commit: stop giving units, report once
            full.append(storage.NoSpace(cause.uri, cause.reason))
            self.uncommitted.append(p.unit)
            return
        if isinstance(cause, EncoderBroken):  # a fresh process for this actor (Ray restarts it)
            ray.kill(self.actors[i], no_restart=False)
            self.paused[i] = time.time() + 1.0
        if attempt < RETRIES:
            self.prog.write(f"[encode] unit {p.unit} failed (attempt {attempt + 1}), retried: {why}")
            waiting.append((p, attempt + 1, i))
            return
        self.uncommitted.append(p.unit)
        self.prog.write(f"[encode] unit {p.unit} NOT committed after {RETRIES} retries: {why}", important=True)

    def _committed(self, st: dict[str, Any]) -> None:
        t = self.totals
        t["units"] += 1
        for k in ("samples", "failures", "frames", "clips", "tiles"):
            t[k] += st[k]
        el = max(time.time() - self.t0, 1e-9)
        self.prog.update(st["samples"] + st["failures"])
        self.prog.emit(f"[encode] unit {st['unit']}: {st['samples']} samples, {st['failures']} failures | "
                       f"total {t['samples']} samples, {t['failures']} failures, {t['units']} units | "
                       f"{self.prog.meter()}, {t['frames'] / el:.1f} frames/s, {t['clips'] / el:.2f} clips/s",
                       postfix=f"{t['samples']} samples, {t['failures']} failures")

    def batch_stats(self) -> dict[str, Any]:
        """Forward calls of every actor: how full they were (clips per call / batch_clips)."""
        import ray

        calls = clips = partial = 0
        for a in self.actors:
            try:
                s = ray.get(a.stats.options(concurrency_group="control").remote())
            except ray.exceptions.RayError:  # a restarted actor's earlier calls are not known
                continue
            calls, clips, partial = calls + s["calls"], clips + s["clips"], partial + s["partial"]
        return {"calls": calls, "clips": clips, "calls_not_full": partial,
                "mean_clips_per_call": round(clips / calls, 3) if calls else None}

    def stop(self) -> None:
        import ray

        for a in self.actors:  # their CPUs and GPUs are free for the next job of this Ray
            ray.kill(a)
        self.actors = []


def samples_by_media_type(out: str) -> dict[str, int]:
    """Written samples per media type, from every committed manifest part (parts written before the column
    existed hold videos only)."""
    t = read_parts(out, MANIFESTS, ["key", "media_type"])
    if t is None:
        return {}
    kinds = t.column("media_type").to_pylist() if "media_type" in t.column_names else [None] * t.num_rows
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k or "video"] = counts.get(k or "video", 0) + 1
    return dict(sorted(counts.items()))


def _public_config(cfg: EncodeConfig, resolution: int) -> dict[str, Any]:
    """The settings summary.json records (storage.write_json redacts them)."""
    return {**dataclasses.asdict(cfg), "resolution": resolution}
