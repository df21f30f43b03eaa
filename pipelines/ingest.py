"""Ingest: metadata -> SourceRecords -> work units -> Ray tasks -> committed shards + manifests + failures.

    adapter.read()  ──▶ item stream (SourceRecord | Failure), deterministic order
    cut into units by a fixed schedule of sizes (8 x 8 units, 16 x 8, 32 x 8, ... up to a shard-filling size,
    or a fixed --records-per-unit): unit N's rows depend only on N     ◀── resume: committed units are skipped
    Ray task per unit: each record through process_record (a mixture's: process_annotation, pipelines/mixture.py)
                       in an isolated child (crash/timeout = one failure),
                       UnitWriter commits shards, failures, manifest (last)
    driver: bounded number of units in flight, progress line, then index.json + summary.json

Every input item ends as one manifest row or one failure row: written + failed = inputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from longvid.operators import storage
from longvid.operators.annotation import AnnotatedSample, media_field, process_annotation, record_video_id
from longvid.operators.errors import ConfigError, MetadataError, RecordError, TransientError
from longvid.operators.isolate import IsolatedRunner
from longvid.operators.mixture import AnnotationRecord
from longvid.operators.process import ProcessOptions, manifest_row, process_record
from longvid.operators.records import Failure, SourceRecord
from longvid.operators.sources import get_adapter
from longvid.operators.write import SampleWriteError, UnitWriter, manifest_name, sample_members
from longvid.pipelines.ingest_config import IngestConfig, UnitSchedule
from longvid.pipelines.out_claim import UnitGuard, unit_guard
from longvid.pipelines.outputs import JobOutput
from longvid.pipelines.progress import Progress

# ---------------------------------------------------------------------------------------------------- units


def cut_units(items: Iterator[SourceRecord | Failure], schedule: int | UnitSchedule,
              limit: int = 0) -> Iterator[tuple[int, list]]:
    """Unit N = the next schedule.size(N) items of the stream (an int k: items [N*k, (N+1)*k)); the last unit may
    be short. Duplicate keys become metadata failures of the later row."""
    if isinstance(schedule, int):
        schedule = UnitSchedule(schedule, 0, schedule)
    if schedule.first < 1 or schedule.cap < 1 or schedule.repeat < 0:
        raise ConfigError(f"records_per_unit: unit sizes must be >= 1, got {schedule}")
    seen: set[int] = set()
    unit: list = []
    n_unit = 0
    k = schedule.size(0)
    for n, item in enumerate(items):
        if limit and n >= limit:
            break
        if isinstance(item, SourceRecord):
            h = int.from_bytes(hashlib.blake2b(item.key.encode(), digest_size=8).digest(), "little")
            if h in seen:
                item = Failure(item.source, item.video_id, "", "metadata",
                               "duplicate row: same video and span as an earlier row (same key)",
                               item.origin, "video_id", item.key, item.start, item.end)
            else:
                seen.add(h)
        unit.append(item)
        if len(unit) == k:
            yield n_unit, unit
            n_unit += 1
            unit = []
            k = schedule.size(n_unit)
    if unit:
        yield n_unit, unit


def _process_in_child(item: SourceRecord | AnnotationRecord, opts: ProcessOptions, s3: dict) -> Any:
    """process_record (a raw source's record) or process_annotation (a mixture's annotation record) in the isolated
    child: a spawned process starts with default S3 options, so set them first (the same options again keep the
    cached client)."""
    storage.configure_s3(s3 or None)
    if isinstance(item, AnnotationRecord):
        return process_annotation(item, opts)
    return process_record(item, opts)


def _item_failure(item: SourceRecord | AnnotationRecord, uri: str, stage: str, reason: str, file: str = "",
                  field: str = "", span: bool = True) -> Failure:
    """The failure row of an item that gave no sample. A raw record's names `file` (else its metadata row); an
    annotation record's always names its annotation file and line, and the annotation field at fault (the media
    path when the processing named no field)."""
    start, end = (item.start, item.end) if span else (None, None)
    if isinstance(item, AnnotationRecord):
        return Failure(item.dataset, record_video_id(item), uri, stage, reason, item.origin,
                       field or media_field(item), item.key, start, end)
    return Failure(item.source, item.video_id, uri, stage, reason, file or item.origin, field, item.key, start, end)


# The decoder child of a task worker (operators.isolate) outlives a unit: starting one (spawn, importing av, numpy,
# torch) costs about 2 CPU-seconds, as much as 30 short clips. The worker keeps it for its next units and replaces
# it after a crash or a timeout, and after DECODER_RECYCLE records. It exits with its worker (end of pipe).
DECODER_RECYCLE = 2000
REUSE_DECODER = True  # False: one decoder child per unit (the cost above per unit; for the benchmark)
_decoder: dict[str, Any] = {}  # per worker process: {"key": (timeout, memory), "runner": ..., "served": n}


def _decoder_runner(timeout_s: float, memory_mb: int) -> IsolatedRunner:
    key = (float(timeout_s), int(memory_mb))
    d = _decoder
    if d and (d["key"] != key or d["served"] >= DECODER_RECYCLE):
        _close_decoder()
    if not d:
        d.update(key=key, runner=IsolatedRunner(timeout_s, memory_limit_mb=memory_mb), served=0)
    return d["runner"]


def _close_decoder() -> None:
    if _decoder:
        _decoder.pop("runner").close()
        _decoder.clear()


def _child_cpu(runner: IsolatedRunner) -> tuple[int, float]:
    """(pid, CPU seconds) of the runner's live child, from /proc; (0, 0.0) when there is none."""
    pid = runner.pid
    if not pid:
        return 0, 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0, 0.0


def run_unit(out: str, unit: int, items: list, opts: ProcessOptions, shard_size: int, timeout_s: float,
             memory_mb: int, s3: dict, reuse_decoder: bool = True, guard: UnitGuard | None = None) -> dict[str, Any]:
    """Process and commit one unit (idempotent: a retry rewrites the same files). `guard` (the driver's
    out_claim.unit_guard): on a node that does not see the claimed output folder or the videos as the driver does,
    NotShared before anything is read or written."""
    storage.configure_s3(s3 or None)
    if guard is not None:
        guard.check()
    writer = UnitWriter(out, unit, shard_size)
    t0 = time.time()
    if reuse_decoder:
        runner = _decoder_runner(timeout_s, memory_mb)
    else:
        _close_decoder()
        runner = IsolatedRunner(timeout_s, memory_limit_mb=memory_mb)
    cpu0, (pid0, child0) = _cpu_seconds(), _child_cpu(runner)
    try:
        try:
            for item in items:
                if isinstance(item, Failure):
                    writer.fail(item)
                    continue
                try:
                    sample = runner.run(_process_in_child, item, opts, s3, what=item.origin)
                except RecordError as e:
                    writer.fail(_item_failure(item, e.file or "", e.stage, e.reason, e.file, e.field))
                    continue
                uri = sample.info.get("uri", "")
                try:  # a sample that cannot be written is its own failure row; the rest of the unit is written
                    if isinstance(sample, AnnotatedSample):  # an annotation's: mp4, images or json only
                        payload, row = sample.payload, sample.manifest_row(unit)
                    else:
                        payload, row = {"mp4": sample.mp4}, manifest_row(sample, "", unit)
                    added = writer.add(sample.key, sample_members(sample.info, payload), row)
                except SampleWriteError as e:
                    writer.fail(_item_failure(item, uri, "write", f"cannot write the sample: {e.reason}",
                                              item.origin, e.field))
                    continue
                if not added:
                    writer.fail(_item_failure(item, uri, "write", "duplicate key inside the unit", item.origin,
                                              "video_id", span=False))
        finally:
            if reuse_decoder:
                _decoder["served"] = _decoder.get("served", 0) + len(items)
            if reuse_decoder:
                _, child1 = _child_cpu(runner)
            else:  # closed: reaped, so its CPU is in RUSAGE_CHILDREN
                runner.close()
                child1 = 0.0
        stats = writer.commit()
    except BaseException as e:
        writer.abort()
        if reuse_decoder and not isinstance(e, Exception):  # interrupted: do not keep a child in an unknown state
            _close_decoder()
        raise
    stats["elapsed"] = time.time() - t0
    # CPU of this unit: the worker, its reaped decoder children (a crashed or replaced one: its whole life, so its
    # CPU before this unit is taken off) and the live child's CPU during the unit
    stats["cpu_s"] = _cpu_seconds() - cpu0 + child1 - (child0 if pid0 else 0.0)
    stats["inputs"] = len(items)
    return stats


def _no_space(e: BaseException) -> storage.NoSpace | None:
    """The NoSpace behind a failed unit (Ray hands it over as the cause of a RayTaskError), if any."""
    for x in (e, getattr(e, "cause", None)):
        if isinstance(x, storage.NoSpace):
            return storage.NoSpace(x.uri, x.reason)
    return None


def _cpu_seconds() -> float:
    import resource

    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        t += r.ru_utime + r.ru_stime
    return t


# ---------------------------------------------------------------------------------------------------- driver


def _check_inputs(cfg: IngestConfig) -> Iterator[SourceRecord | Failure]:
    """Fail before any work when a metadata file is missing or unreadable; returns the primed item stream."""
    for m in cfg.metadata:
        if not storage.exists(m):
            raise ConfigError(f"metadata: file not found: {m}")
    adapter = get_adapter(cfg.source)
    try:
        it = iter(adapter.read(list(cfg.metadata), dict(cfg.source_options)))
        first = next(it)
    except StopIteration:
        return iter(())
    except MetadataError as e:
        raise ConfigError(f"metadata: {e}") from None

    def chain():
        yield first
        try:
            yield from it
        except MetadataError as e:
            raise ConfigError(f"metadata: {e}") from None

    return chain()


def run_ingest(cfg: IngestConfig, log=print) -> dict[str, Any]:
    """Run the whole job on Ray (embedded when no cluster address is given). Returns the summary dict."""
    import ray

    s3 = storage.configure_s3(storage.S3Options(endpoint_url=cfg.s3_endpoint_url or None,
                                                profile=cfg.s3_profile or None,
                                                region=cfg.s3_region or None)).to_dict()
    items = _check_inputs(cfg)
    job = JobOutput(cfg.out, "ingest", log=log, quiet=cfg.quiet)
    job.prepare(cfg.fingerprint())
    with job.running(cfg.ray_address, cfg.num_cpus, unit="inputs", desc=f"[ingest {cfg.source}]",
                     inputs={"videos": cfg.videos}) as prog, \
            _counting_inputs(cfg, prog):
        cpus = job.cpus
        max_in_flight = cfg.max_in_flight or 2 * cpus
        committed = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(cfg.out, "manifests"), ".parquet")}
        opts = ProcessOptions(videos_root=cfg.videos, profile=cfg.profile, backend=cfg.backend,
                              decode_mode=cfg.decode_mode, hwaccel=cfg.hwaccel, deblock=cfg.deblock,
                              crf=cfg.crf,
                              long_time_msg=cfg.long_time_msg,
                              resize=cfg.resize,
                              decoder_threads=cfg.decoder_threads or None)
        schedule = cfg.unit_schedule()
        prog.write(f"[ingest {cfg.source}] units: {schedule.describe()}; up to {max_in_flight} units in flight on "
                   f"{cpus} CPUs; decoder threads {cfg.decoder_threads or 'auto'}")
        # a killed worker (system failure) or a storage outage (TransientError) re-runs the unit from scratch
        task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[TransientError])(run_unit)
        shard_bytes = int(cfg.shard_size_mb * 2**20)
        guard = unit_guard(cfg.out, videos=cfg.videos)  # a node that joins without the shared folders: no unit there
        pending: dict[Any, int] = {}
        done = {"units": 0, "skipped": 0, "inputs": 0, "samples": 0, "failures": 0, "seconds": 0.0, "cpu_s": 0.0}
        uncommitted: list[int] = []
        full: list[storage.NoSpace] = []  # the output's disk is full: no unit can commit, stop submitting

        def drain(block_until: int) -> None:
            while len(pending) > block_until:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        st = ray.get(ref)
                    except (ray.exceptions.RayError, TransientError) as e:  # retries exhausted: not committed
                        uncommitted.append(unit)
                        if _no_space(e) is not None:  # reported once, when the units in flight have ended
                            full.append(_no_space(e))
                            continue
                        prog.write(f"[ingest {cfg.source}] unit {unit} NOT committed after retries: "
                                   f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}",
                                   important=True)
                        continue
                    done["units"] += 1
                    for k in ("inputs", "samples", "failures", "seconds", "cpu_s"):
                        done[k] += st.get(k, 0.0)
                    prog.update(st.get("inputs", 0))
                    prog.emit(progress_line(cfg.source, st, done, time.time() - t_work, cpus, prog.meter()),
                              postfix=f"{done['samples']} samples, {done['failures']} failures")

        read = [0]

        def counted(it):
            for x in it:
                read[0] += 1
                yield x

        t_work = time.time()
        for unit, unit_items in cut_units(counted(items), schedule, cfg.limit):
            if full:
                break
            if manifest_name(unit).rsplit("/", 1)[-1] in committed:
                done["skipped"] += 1
                prog.skip(len(unit_items))
                continue
            ref = task.remote(cfg.out, unit, unit_items, opts, shard_bytes, cfg.decode_timeout_s,
                              cfg.decoder_memory_mb, s3, REUSE_DECODER, guard)
            pending[ref] = unit
            drain(max_in_flight - 1)
        drain(0)  # every unit in flight ends (and removes its temporary files) before the job stops
        if full:
            e = full[0]
            raise storage.NoSpace(e.uri, f"{e.reason} (the job stopped; {done['units']} units committed in this run)")
        summary = job.finalize(_public_config(cfg),
                                   extra={"units_run": done["units"], "units_skipped": done["skipped"],
                                          "units_uncommitted": sorted(uncommitted),
                                          "unit_schedule": schedule.describe(), "max_in_flight": max_in_flight,
                                          "unit_cpu_seconds": round(done["cpu_s"], 3),
                                          "inputs_read": min(read[0], cfg.limit) if cfg.limit else read[0]})
        if not summary["complete"]:
            prog.write(f"[ingest] INCOMPLETE: {summary['inputs_read']} inputs read but {summary['samples']} samples + "
                f"{summary['failures']} failures committed; units not committed: {sorted(uncommitted)}. "
                "Re-run the same command: committed units are skipped, the others are retried.", important=True)
    job.report(summary)
    return summary


@contextmanager
def _counting_inputs(cfg: IngestConfig, prog: Progress) -> Iterator[None]:
    """The progress total: the input rows, counted by a second pass of the adapter in a background thread (the
    job streams the metadata and knows the total only at its end) while the block runs."""
    stop = threading.Event()

    def count() -> None:
        n = 0
        try:
            for _ in get_adapter(cfg.source).read(list(cfg.metadata), dict(cfg.source_options)):
                n += 1
                if stop.is_set() or (cfg.limit and n >= cfg.limit):
                    break
        except Exception:  # noqa: BLE001 - the job reports bad metadata itself; the bar just has no total
            return
        if not stop.is_set():
            prog.set_total(n)

    threading.Thread(target=count, name="ingest-count", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def progress_line(source: str, st: dict[str, Any], done: dict[str, Any], elapsed: float, cpus: int,
                  meter: str = "") -> str:
    """One line per committed unit: the unit, the running totals, and the progress meter (done/total inputs
    [elapsed<ETA, inputs/s], see pipelines/progress.py) with the other rates since the first unit started."""
    el = max(elapsed, 1e-9)
    meter = meter or f"{done['inputs'] / el:.1f} inputs/s"
    return (f"[ingest {source}] unit {st['unit']}: {st['samples']} samples, {st['failures']} failures in"
            f" {st.get('elapsed', 0.0):.1f} s ({st.get('cpu_s', 0.0):.1f} CPU-s)"
            f" | total {done['samples']} samples, {done['failures']} failures, {done['units']} units"
            f" | {meter}, {done['seconds'] / el:.2f} video-h/h, CPU {100 * done['cpu_s'] / (el * cpus):.0f}% of {cpus}")


def _public_config(cfg: IngestConfig) -> dict[str, Any]:
    """The settings summary.json records (storage.write_json redacts them)."""
    return dataclasses.asdict(cfg)

