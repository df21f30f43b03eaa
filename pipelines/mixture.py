"""`longvid ingest --mixture MIX.yaml --out DIR`: every dataset of a released annotation mixture -> `DIR/<json stem>/`.

    read_mixture + resolve_dataset for EVERY dataset (exit 2 naming the dataset before any work: an unmapped data_root
    that is not a readable folder, a missing annotation file, a `random` strategy, ...)
    every dataset folder checked against its job.json (settings fingerprint), then written
    one Ray session: each dataset's selected records (operators.mixture.iter_records) cut into units exactly as the
    raw ingest cuts its rows (pipelines/ingest.py: cut_units, the unit schedule), each unit a Ray task (run_unit:
    process_annotation per record in the isolated decoder child, UnitWriter commit), units of all datasets sharing
    one bound of units in flight; committed units of a dataset folder are skipped (resume)
    each dataset folder finalized (index.json, summary.json: the usual output contract), then DIR/summary.json adds
    them up (per dataset counts and the totals)

In each dataset folder, samples written + failures recorded = records selected by the strategy (`complete`); a
record that gives no sample is a failure row naming the annotation file, the line and the field
(operators.mixture for the record itself, operators.annotation for its media).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from longvid.operators import storage
from longvid.operators.errors import ConfigError, TransientError
from longvid.operators.mixture import ResolvedDataset, MixtureError, iter_records, resolve_dataset, read_mixture, read_roots
from longvid.operators.write import manifest_name
from longvid.pipelines import ingest as raw
from longvid.pipelines.ingest_config import MixtureConfig
from longvid.pipelines.out_claim import unit_guard
from longvid.pipelines.outputs import JobOutput, versions

MIXTURE_JOB = "ingest-mixture"  # DIR/job.json of a mixture ingest (each dataset folder's is an "ingest" job.json)
@dataclass
class _Dataset:
    resolved: ResolvedDataset
    out: str  # DIR/<name>
    selected: int  # records this run reads (the strategy's selection, cut by --limit)

    @property
    def name(self) -> str:
        return self.resolved.dataset.name


def resolve_mixture(cfg: MixtureConfig) -> list[_Dataset]:
    """Read the mixture and resolved every dataset; check DIR and every dataset folder. Writes nothing.
    ConfigError (MixtureError) naming the file, the dataset and the field for anything that stops the job."""
    roots = read_roots(cfg.roots) if cfg.roots else None
    mix = read_mixture(cfg.mixture, roots, cfg.annotations or None)
    datasets = []
    for ds in mix.datasets:
        resolved = resolve_dataset(ds)
        n = len(resolved.selected)
        datasets.append(_Dataset(resolved, storage.join(cfg.out, ds.name), min(n, cfg.limit) if cfg.limit else n))
    top = storage.join(cfg.out, "job.json")
    if storage.exists(top):
        job = json.loads(storage.read_text(top)).get("job")
        if job != MIXTURE_JOB:
            raise ConfigError(f"out: {cfg.out} holds another kind of job ({job!r}, not a mixture "
                              "ingest); use a new --out")
    for d in datasets:
        JobOutput(d.out, "ingest").check(cfg.fingerprint(d.resolved), what=f"out ({d.resolved.dataset.where})")
    return datasets


def _write_folders(cfg: MixtureConfig, datasets: list[_Dataset]) -> None:
    storage.makedirs(cfg.out)
    for d in datasets:
        JobOutput(d.out, "ingest").prepare(cfg.fingerprint(d.resolved))
    top = {"job": MIXTURE_JOB, "mixture": cfg.mixture, "datasets": [d.name for d in datasets]}
    storage.write_json(storage.join(cfg.out, "job.json"), top, indent=2, sort_keys=True)


def run_mixture(cfg: MixtureConfig, log=print) -> dict[str, Any]:
    """Ingest every dataset of the mixture on Ray (embedded when no cluster address is given). Returns DIR's
    summary dict (`complete`: every dataset complete)."""
    import ray

    s3 = storage.configure_s3(storage.S3Options(endpoint_url=cfg.s3_endpoint_url or None,
                                                profile=cfg.s3_profile or None,
                                                region=cfg.s3_region or None)).to_dict()
    datasets = resolve_mixture(cfg)
    _write_folders(cfg, datasets)
    job = JobOutput(cfg.out, "ingest", log=log, quiet=cfg.quiet)
    roots = sorted({d.resolved.dataset.media_root for d in datasets if d.resolved.dataset.media_root})
    with job.running(cfg.ray_address, cfg.num_cpus, unit="records", total=sum(d.selected for d in datasets),
                     desc="[ingest mixture]", inputs={"data_root": roots}) as prog:
        cpus = job.cpus
        max_in_flight = cfg.max_in_flight or 2 * cpus
        schedule = cfg.unit_schedule()
        opts = cfg.process_options()
        prog.write(f"[ingest mixture] {len(datasets)} datasets, {sum(d.selected for d in datasets)} records "
                   f"selected; units: {schedule.describe()}; up to {max_in_flight} units in flight on {cpus} CPUs")
        task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[TransientError])(raw.run_unit)
        shard_bytes = int(cfg.shard_size_mb * 2**20)
        guard = unit_guard(cfg.out)  # each dataset folder is below the claimed one; data roots vary per dataset
        pending: dict[Any, tuple[_Dataset, int]] = {}
        done = {"units": 0, "skipped": 0, "inputs": 0, "samples": 0, "failures": 0, "seconds": 0.0, "cpu_s": 0.0}
        per = {d.name: {"units_run": 0, "units_skipped": 0, "units_uncommitted": []} for d in datasets}
        full: list[storage.NoSpace] = []
        t_work = time.time()

        def drain(block_until: int) -> None:
            while len(pending) > block_until:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    d, unit = pending.pop(ref)
                    try:
                        st = ray.get(ref)
                    except (ray.exceptions.RayError, TransientError) as e:  # retries exhausted: not committed
                        per[d.name]["units_uncommitted"].append(unit)
                        if raw._no_space(e) is not None:
                            full.append(raw._no_space(e))
                            continue
                        prog.write(f"[ingest {d.name}] unit {unit} NOT committed after retries: "
                                   f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}",
                                   important=True)
                        continue
                    done["units"] += 1
                    per[d.name]["units_run"] += 1
                    for k in ("inputs", "samples", "failures", "seconds", "cpu_s"):
                        done[k] += st.get(k, 0.0)
                    prog.update(st.get("inputs", 0))
                    prog.emit(raw.progress_line(d.name, st, done, time.time() - t_work, cpus, prog.meter()),
                              postfix=f"{done['samples']} samples, {done['failures']} failures")

        for d in datasets:
            if full:
                break
            committed = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(d.out, "manifests"),
                                                                        ".parquet")}
            for unit, items in raw.cut_units(iter_records(d.resolved, 0, d.selected), schedule):
                if full:
                    break
                if manifest_name(unit).rsplit("/", 1)[-1] in committed:
                    done["skipped"] += 1
                    per[d.name]["units_skipped"] += 1
                    prog.skip(len(items))
                    continue
                ref = task.remote(d.out, unit, items, opts, shard_bytes, cfg.decode_timeout_s,
                                  cfg.decoder_memory_mb, s3, raw.REUSE_DECODER, guard)
                pending[ref] = (d, unit)
                drain(max_in_flight - 1)
        drain(0)  # every unit in flight ends (and removes its temporary files) before the job stops
        if full:
            e = full[0]
            raise storage.NoSpace(e.uri, f"{e.reason} (the job stopped; {done['units']} units committed in this run)")
        summaries = []
        for d in datasets:
            summaries.append(job.finalize(
                _public_config(cfg), out=d.out,
                extra={**per[d.name], "units_uncommitted": sorted(per[d.name]["units_uncommitted"]),
                       "unit_schedule": schedule.describe(), "max_in_flight": max_in_flight,
                       "dataset": _dataset_facts(d), "inputs_read": d.selected}))
        summary = _mixture_summary(cfg, datasets, summaries, job.elapsed(), cpus)
        storage.write_json(storage.join(cfg.out, "summary.json"), summary, indent=2, default=str)
        if not summary["complete"]:
            bad = [s["name"] for s in summary["datasets"] if not s["complete"]]
            prog.write(f"[ingest mixture] INCOMPLETE: {', '.join(bad)} did not commit every unit. Re-run the same "
                       "command: committed units are skipped, the others are retried.", important=True)
    job.report(summary)
    return summary


def _dataset_facts(d: _Dataset) -> dict[str, Any]:
    ds = d.resolved.dataset
    return {"name": ds.name, "json_path": ds.json_path, "annotation": d.resolved.annotation,
            "sampling_strategy": str(ds.strategy), "data_root": ds.data_root,
            "media_root": ds.media_root or "", "video_read_type": ds.video_read_type,
            "media_type": d.resolved.media_type, "records": d.resolved.total, "selected": d.selected}


def _mixture_summary(cfg: MixtureConfig, datasets: list[_Dataset], summaries: list[dict[str, Any]],
                     elapsed: float, cpus: int) -> dict[str, Any]:
    """DIR/summary.json: each dataset's counts (from its own summary.json) and the totals."""
    rows = []
    stages: Counter = Counter()
    by_media: Counter = Counter()
    for d, s in zip(datasets, summaries):
        rows.append({**_dataset_facts(d), "folder": d.name,
                     **{k: s[k] for k in ("samples", "failures", "failures_by_stage", "shards", "frames", "bytes",
                                          "video_hours", "complete", "units_uncommitted")}})
        stages.update(s["failures_by_stage"])
        by_media[d.resolved.media_type] += s["samples"]
    total = {k: sum(r[k] for r in rows) for k in ("selected", "samples", "failures", "shards", "frames", "bytes")}
    hours = sum(r["video_hours"] for r in rows)
    return {
        "job": MIXTURE_JOB,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mixture": cfg.mixture,
        "datasets": rows,
        "inputs": total["selected"],
        **{k: total[k] for k in ("samples", "failures", "shards", "frames", "bytes")},
        "failures_by_stage": dict(sorted(stages.items())),
        "samples_by_media_type": dict(sorted(by_media.items())),
        "video_hours": round(hours, 4),
        "complete": all(r["complete"] for r in rows),
        "elapsed_s": round(elapsed, 2),
        "cpus": cpus,
        "samples_per_s": round(total["samples"] / elapsed, 3) if elapsed > 0 else None,
        "video_hours_per_core_hour": round(hours / (elapsed / 3600 * cpus), 3) if elapsed > 0 else None,
        "config": _public_config(cfg),
        "versions": versions(),
    }


def _public_config(cfg: MixtureConfig) -> dict[str, Any]:
    """The settings summary.json records (storage.write_json redacts them)."""
    return dataclasses.asdict(cfg)


__all__ = ["MixtureConfig", "MixtureError", "resolve_mixture", "run_mixture"]
