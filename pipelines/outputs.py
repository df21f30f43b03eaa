"""The finishing step every job shares: index.json (wids descriptor) and summary.json from committed parts."""
from __future__ import annotations

import io
import json
import platform
import sys
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longvid.operators import storage


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
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    fails = ", ".join(f"{k}: {v}" for k, v in s.get("failures_by_stage", {}).items()) or "none"
    return (f"{s['job']}: {s['samples']} samples written, {s['failures']} failures ({fails}) from {s['inputs']} inputs"
            f" | {s['shards']} shards, {s['frames']} frames, {s['video_hours']:.3f} video-hours, "
            f"{s['bytes'] / 2**20:.1f} MiB | {s['elapsed_s']:.1f} s, {s.get('samples_per_s') or 0:.2f} samples/s, "
            f"{s.get('video_hours_per_core_hour') or 0:.2f} video-h per core-h on {s['cpus']} CPUs")
