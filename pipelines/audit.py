"""Audit glue: S3 access for manifests and shards, then the audit itself (operators/audit/core.py).

The audit is one streaming pass in this process (pyarrow reads row groups; numpy does the matching): it needs no
Ray cluster. This module only decides which filesystem serves each --manifests path.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, AuditResult, run_audit
from longvid.manifests.readers import find_jobs
from longvid.pipelines.progress import Progress


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem; endpoint and region default to AWS_ENDPOINT_URL(_S3) and AWS_REGION."""
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kw: dict = {"region": region}
    if profile:
        import boto3  # resolve the profile's keys once; pyarrow does not read AWS profiles itself

        creds = boto3.Session(profile_name=profile).get_credentials()
        if creds is not None:
            f = creds.get_frozen_credentials()
            kw.update(access_key=f.access_key, secret_key=f.secret_key, session_token=f.token)
    if endpoint_url:
        u = urlparse(endpoint_url)
        kw.update(endpoint_override=u.netloc or u.path, scheme=u.scheme or "https")
    return pafs.S3FileSystem(**kw)


def audit(manifests: list[str], benchmarks: list[str], out: str | Path, cfg: AuditConfig | None = None,
          benchmark_videos: str | None = None, s3: pafs.FileSystem | None = None,
          strict_benchmarks: bool = False, log=print, quiet: bool = False) -> AuditResult:
    """Run `longvid audit`: find the jobs, read the benchmarks, audit, write the outputs into `out`.

    Progress (pipelines/progress.py): rows of all manifests, one line per batch, kept in `out`/logs/audit.log."""
    if any(m.startswith("s3://") for m in manifests) and s3 is None:
        s3 = s3_filesystem()
    jobs = [j for m in manifests for j in find_jobs(m, s3 if m.startswith("s3://") else None)]
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

    try:
        return run_audit(jobs, bench, out, cfg, benchmark_videos, progress=progress)
    finally:
        prog.close()


def _manifest_rows(jobs: list) -> int | None:
    """The rows of every manifest part (their parquet footers), for the progress total; None when unknown."""
    n = 0
    try:
        for job in jobs:
            for f in job.manifest_files:
                with job.filesystem.open_input_file(f) as fh:
                    n += pq.ParquetFile(fh).metadata.num_rows
    except Exception:  # noqa: BLE001 - a bad part is reported by the audit itself; the bar just has no total
        return None
    return n
