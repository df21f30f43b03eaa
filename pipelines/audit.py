"""Audit glue: the S3 settings, then the audit itself (operators/audit/core.py).

The audit is one streaming pass in this process (pyarrow reads row groups; numpy does the matching): it needs no
Ray cluster. Manifests, failures and shards, local or on S3, are read through operators/storage/ like every other
job's inputs; its S3 settings are this process's (`storage.configure_s3`, set by `longvid audit` from its flags).

Given a Ray cluster (`ray_address`, RAY_ADDRESS, or a Ray this process already has), the reads of files run as Ray
tasks on the cluster (pipelines/remote_reads.py) that return small results: each benchmark video's frame hashes
(8 bytes a frame), each flagged shard's contact sheets (thumbnails of the flagged samples only). The driver never
receives a video or a shard; summary.json `remote_reads` says how many tasks ran and the bytes the driver took. The
manifests' columns (ids, texts, the stored frames' hashes) are still streamed here, batch by batch, in bounded
memory. Without Ray the same functions run here, in the same order: the same outputs.
"""
from __future__ import annotations

from pathlib import Path

from longvid.manifests.readers import find_jobs
from longvid.operators import storage
from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, AuditResult, run_audit
from longvid.pipelines.progress import Progress
from longvid.pipelines.remote_reads import RemoteReads


def audit(manifests: list[str], benchmarks: list[str], out: str | Path, cfg: AuditConfig | None = None,
          benchmark_videos: str | None = None, s3: storage.S3Options | dict | None = None,
          strict_benchmarks: bool = False, log=print, quiet: bool = False, ray_address: str = "") -> AuditResult:
    """Run `longvid audit`: find the jobs, read the benchmarks, audit, write the outputs into `out`.

    `s3`: S3 settings for s3:// paths (`storage.configure_s3`); None keeps this process's (the environment's
    AWS_* variables unless configured). Progress (pipelines/progress.py): rows of all manifests, one line per
    batch, kept in `out`/logs/audit.log."""
    if s3 is not None:
        storage.configure_s3(s3)
    jobs = [j for m in manifests for j in find_jobs(m)]
    bench = scan_benchmarks(benchmarks)
    if strict_benchmarks and bench.unknown:
        raise ValueError("benchmark files not recognised: " + "; ".join(f"{p}: {w}" for p, w in bench.unknown))
    if not bench.files:
        raise ValueError(f"--benchmarks {' '.join(map(str, benchmarks))}: no benchmark file recognised")
    prog = Progress("audit", "rows", total=_manifest_rows(jobs), out=str(out), console=log, quiet=quiet)
    batches = [0]

    def progress(rows: int, findings: int) -> None:
        prog.update(rows)
        prog.emit(f"[audit] batch {batches[0]}: {rows} rows | {findings} findings so far | {prog.meter()}",
                  postfix=f"{findings} findings")
        batches[0] += 1

    reads = RemoteReads.start(ray_address, job="audit", log=log, inputs={
        "manifests": [j.root for j in jobs], **({"benchmark_videos": str(benchmark_videos)} if benchmark_videos else {})})
    try:
        res = run_audit(jobs, bench, out, cfg, benchmark_videos, progress=progress,
                        map_fn=reads.map if reads is not None else None)
        if reads is not None:  # the counts of the reads that ran on the cluster, report included
            res.summary["remote_reads"] = reads.summary()
            storage.write_json(str(Path(out) / "summary.json"), res.summary, indent=1, default=str)
        return res
    finally:
        prog.close()
        if reads is not None:
            reads.close()


def _manifest_rows(jobs: list) -> int | None:
    """The rows of every manifest part (their parquet footers), for the progress total; None when unknown."""
    n = 0
    try:
        for job in jobs:
            for f in job.manifest_files:
                with storage.open_parquet(f, block_size=256 * 1024) as pf:  # the footer only
                    n += pf.metadata.num_rows
    except Exception:  # noqa: BLE001 - a bad part is reported by the audit itself; the bar just has no total
        return None
    return n
