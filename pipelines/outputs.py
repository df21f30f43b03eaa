"""The output folder of a job, from the first check to the last line: one home for every job that writes one.

    job = JobOutput(cfg.out, "encode", log=log, quiet=cfg.quiet)
    job.prepare(cfg.fingerprint())       before any work: a folder of other settings -> ConfigError naming them;
                                         a new folder gets its job.json (the settings a re-run must match)
    with job.running(cfg.ray_address, cfg.num_cpus, unit="samples", total=n) as prog:
                                         claim the folder (a second job on it exits 2), join or start Ray,
                                         open the progress (DIR/logs/<job>.log)
        ... units: prog.update / prog.emit ...
        summary = job.finalize(config, extra)      index.json + summary.json from the committed parts
                                         leaving the block: progress closed, the Ray it started shut down,
                                         the claim released, whatever happened inside
    job.report(summary)                  the summary line on the console (unless quiet)

Ingest, the mixture ingest (one JobOutput per dataset folder for the settings, one for DIR's run), encode and the
NIAH build (`claimed()`: the claim alone, no Ray) use it. `finalize` is also callable on its own.
"""
from __future__ import annotations

import io
import json
import platform
import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.pipelines.progress import Progress
from longvid.pipelines.out_claim import claim_out, owner_path, release_out
from longvid.pipelines.ray_session import ensure_ray

JOB_FILE = "job.json"


class JobOutput:
    """The output folder of one job (see the module doc). `job` names the job in job.json, the claim, the progress
    and its log file (ingest, encode, niah-build)."""

    def __init__(self, out: str, job: str, *, log: Callable[[str], None] = print, quiet: bool = False):
        self.out, self.job, self.log, self.quiet = out, job, log, quiet
        self.t0 = time.time()
        self.resources: dict[str, float] = {}  # the cluster's, once running
        self.progress: Progress | None = None

    # ------------------------------------------------------------------------------------- settings (job.json)

    def previous(self) -> dict[str, Any] | None:
        """The fingerprint of the job.json in the folder ({} when it has none), or None when there is no job.json."""
        uri = storage.join(self.out, JOB_FILE)
        if not storage.exists(uri):
            return None
        return json.loads(storage.read_text(uri)).get("fingerprint") or {}

    def check(self, fingerprint: dict[str, Any], what: str = "out") -> bool:
        """True when the folder holds a job.json of these settings, False when it holds none; ConfigError naming
        `what` and the settings that differ when it holds another job's. Writes nothing."""
        old = self.previous()
        if old is None:
            return False
        new = storage.json_record(fingerprint)  # as job.json holds it (redacted)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{what}: {self.out} holds a job with other settings "
                              f"({', '.join(diff)}); use a new --out to {self.job} with these settings")
        return True

    def prepare(self, fingerprint: dict[str, Any], what: str = "out") -> None:
        """check(), then create the folder with the job.json of these settings when it has none."""
        if not self.check(fingerprint, what):
            storage.makedirs(self.out)
            storage.write_json(storage.join(self.out, JOB_FILE), {"job": self.job, "fingerprint": fingerprint},
                               indent=2, sort_keys=True)

    # ------------------------------------------------------------------------------------- the run

    def last_owner(self) -> str:
        """The job named in the folder's claim record ("" when there is none): the job that ran here last, ended
        or killed (a folder a killed job left half-written is that job's to clean)."""
        try:
            with open(owner_path(self.out), encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            return ""
        return str(info.get("job") or "") if isinstance(info, dict) else ""

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Own the folder while the block runs (pipelines.out_claim.claim_out), without Ray."""
        claim_out(self.out, self.job, self.log)
        try:
            yield
        finally:
            release_out(self.out)

    @contextmanager
    def running(self, ray_address: str = "", num_cpus: int = 0, *, unit: str, total: float | None = None,
                desc: str = "", dashboard: bool = False,
                inputs: dict[str, str | list[str]] | None = None) -> Iterator[Progress]:
        """Claim the folder, join or start Ray (`resources`: the cluster's), and yield the job's progress. On a
        cluster of several nodes the folder and the local `inputs` (setting -> paths the tasks read) must be the
        same on every node (ray_session.check_shared: exit 2 before any work otherwise)."""
        import ray

        self.t0 = time.time()
        started = ensure_ray(ray_address, num_cpus, dashboard=dashboard, out=self.out, job=self.job, log=self.log,
                             inputs=inputs)
        try:
            self.resources = dict(ray.cluster_resources())
            self.progress = Progress(self.job, unit, total=total, desc=desc, out=self.out, console=self.log,
                                     quiet=self.quiet)
            try:
                yield self.progress
            finally:
                self.progress.close()
        finally:
            if started:
                ray.shutdown()
            release_out(self.out)

    @property
    def cpus(self) -> int:
        return max(1, int(self.resources.get("CPU", 1)))

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0))

    def elapsed(self) -> float:
        return time.time() - self.t0

    def finalize(self, config: dict[str, Any], extra: dict[str, Any] | None = None, *, out: str = "") -> dict[str, Any]:
        """index.json + summary.json of the folder (or of `out`, a dataset folder of a mixture); the summary."""
        return finalize(out or self.out, job=self.job, config=config, elapsed=self.elapsed(), cpus=self.cpus,
                        extra=extra)

    def report(self, summary: dict[str, Any]) -> None:
        if not self.quiet:
            self.log(format_summary(summary))


def read_parts(out: str, folder: str, columns: list[str] | None = None,
               only: set[str] | None = None) -> pa.Table | None:
    """Concatenate the parquet parts of a job folder (manifests/ or failures/), or None when there are none.

    `only`: part file names to read (others are ignored)."""
    tables = []
    for uri in storage.list_files(storage.join(out, folder), ".parquet"):
        if only is not None and uri.rsplit("/", 1)[-1] not in only:
            continue
        t = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        if columns:
            t = t.select([c for c in columns if c in t.column_names])
        tables.append(t)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("longvid", "ray", "av", "decord", "pyarrow", "webdataset", "numpy", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def finalize(out: str, job: str, config: dict[str, Any], elapsed: float, cpus: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write index.json (every shard with its sample count) and summary.json; return the summary."""
    man = read_parts(out, "manifests", ["key", "shard", "source", "duration", "num_frames", "bytes"])
    # a unit is committed when its manifest part exists (written last); the failures part of a unit that never got
    # one (killed mid-commit, retries exhausted) is not counted: the unit is redone by the next run
    committed = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(out, "manifests"), ".parquet")}
    fail = read_parts(out, "failures", ["stage", "reason", "source"], only=committed)
    nsamples: Counter = Counter()
    samples = frames = nbytes = 0
    seconds = 0.0
    per_source: Counter = Counter()
    if man is not None and man.num_rows:
        nsamples.update(man.column("shard").to_pylist())
        samples = man.num_rows
        if "num_frames" in man.column_names:
            frames = int(pa.compute.sum(man.column("num_frames")).as_py() or 0)
        seconds = float(pa.compute.sum(man.column("duration")).as_py() or 0.0)
        nbytes = int(pa.compute.sum(man.column("bytes")).as_py() or 0)
        per_source.update(man.column("source").to_pylist())
    stages: Counter = Counter()
    n_fail = 0
    if fail is not None and fail.num_rows:
        n_fail = fail.num_rows
        stages.update(fail.column("stage").to_pylist())
    index = {
        "wids_version": 1,
        "name": job,
        "shardlist": [{"url": s, "nsamples": n} for s, n in sorted(nsamples.items())],
    }
    storage.write_text(storage.join(out, "index.json"), json.dumps(index, indent=1))
    hours = seconds / 3600
    summary = {
        "job": job,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": samples + n_fail,
        "samples": samples,
        "failures": n_fail,
        "failures_by_stage": dict(sorted(stages.items())),
        "samples_by_source": dict(sorted(per_source.items())),
        "shards": len(nsamples),
        "frames": frames,
        "bytes": nbytes,
        "video_hours": round(hours, 4),
        "elapsed_s": round(elapsed, 2),
        "cpus": cpus,
        "samples_per_s": round(samples / elapsed, 3) if elapsed > 0 else None,
        "video_hours_per_core_hour": round(hours / (elapsed / 3600 * cpus), 3) if elapsed > 0 else None,
        "config": config,
        "versions": versions(),
        **(extra or {}),
    }
    if "inputs_read" in summary:  # the driver's own count: nothing lost, nothing counted twice
        summary["complete"] = summary["inputs_read"] == summary["inputs"]
    storage.write_json(storage.join(out, "summary.json"), summary, indent=2, default=str)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    fails = ", ".join(f"{k}: {v}" for k, v in s.get("failures_by_stage", {}).items()) or "none"
    return (f"{s['job']}: {s['samples']} samples written, {s['failures']} failures ({fails}) from {s['inputs']} inputs"
            f" | {s['shards']} shards, {s['frames']} frames, {s['video_hours']:.3f} video-hours, "
            f"{s['bytes'] / 2**20:.1f} MiB | {s['elapsed_s']:.1f} s, {s.get('samples_per_s') or 0:.2f} samples/s, "
            f"{s.get('video_hours_per_core_hour') or 0:.2f} video-h per core-h on {s['cpus']} CPUs")
