"""`longvid audit`: benchmark leakage and duplicates in built corpora, with a report people can look at.

    longvid audit --manifests /data/corpus/howto100m s3://corpus/miradata --benchmarks ../shared/data/benchmarks
                  --out audit/ [--benchmark-videos /data/bench_videos] [--ngram 13] [--config audit.yaml]

Writes leakage.parquet, duplicates.parquet, drop_list.txt (read by training), summary.json and report.html
(self-contained: open it offline). Exit status: 0, or 1 with --fail-on-leak when anything leaked.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from longvid.jobs.config import ConfigError, add_config_flag, add_flags, config_from_args
from longvid.operators.audit.config import AuditConfig
from longvid.operators.settings import Settings, Shared, like


def register(sub) -> None:
    p = sub.add_parser("audit", help="benchmark leakage, duplicates, drop list and an HTML dataset report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to audit and where the report goes: flags of the run, not settings a job file holds
    p.add_argument("--manifests", action="extend", nargs="+", required=True, metavar="DIR_OR_S3",
                   help="job directories (or manifests/ dirs, parquet parts, folders of jobs), local or s3://")
    p.add_argument("--benchmarks", action="extend", nargs="+", required=True, metavar="PATH",
                   help="benchmark annotation files or folders (formats recognised by content)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="report folder: leakage.parquet, duplicates.parquet, drop_list.txt, summary.json, report.html")
    p.add_argument("--benchmark-videos", metavar="DIR", help="benchmark video files, for frame-hash matching")
    add_config_flag(p, help="YAML with the settings below (underscored names); flags override it")
    add_flags(p, AuditConfig)
    p.add_argument("--strict-benchmarks", action="store_true", help="fail when a benchmark file is not recognised")
    p.add_argument("--fail-on-leak", action="store_true", help="exit 1 when any leakage is found")
    add_flags(p, AuditRun, Shared, skip=("num_cpus", "quiet"))
    p.set_defaults(func=run)


@dataclasses.dataclass
class AuditRun(Settings):
    """The audit's own word on the shared Ray setting: without a cluster it reads in this process (no embedded Ray)."""

    ray_address: str = like(Shared, "ray_address", help="a Ray cluster whose tasks read the shards and benchmark "
                                                         "videos (default: RAY_ADDRESS, else this process reads them)")


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.operators.audit.benchmarks import BenchmarkFormatError
    from longvid.manifests.readers import ManifestError
    from longvid.pipelines.audit import audit

    cfg = config_from_args(AuditConfig, args)
    preflight.use_s3(args.s3_endpoint_url or "", args.s3_profile or "", args.s3_region or "")
    preflight.readable("manifests", args.manifests)
    preflight.readable("benchmarks", args.benchmarks)
    if args.benchmark_videos:
        preflight.readable("benchmark_videos", args.benchmark_videos, folder=True)
    preflight.writable("out", args.out)
    try:  # S3 settings: this process's, set by preflight.use_s3 above (storage.configure_s3)
        res = audit(args.manifests, args.benchmarks, args.out, cfg, args.benchmark_videos,
                    strict_benchmarks=args.strict_benchmarks, ray_address=args.ray_address or "")
    except (ManifestError, BenchmarkFormatError, FileNotFoundError, ValueError) as e:  # the CLI's error line, exit 2
        raise ConfigError(str(e)) from None
    s = res.summary
    print(f"audited {res.rows:,} rows in {res.seconds:.1f} s ({s['rows_per_second']} rows/s)")
    for bm, c in s["leakage"].items():
        print(f"  {bm}: {c['keys']} samples (video_id {c['video_id']}, text_ngram {c['text_ngram']}, frame_hash {c['frame_hash']})")
    for p, why in ((u["path"], u["why"]) for u in s["unknown_benchmark_files"]):
        print(f"  not recognised: {p}: {why}")
    print(f"  duplicates: {s['duplicates'] or 'none'}; drop list: {s['drop_list']}")
    print(f"wrote {res.out_dir}/leakage.parquet duplicates.parquet drop_list.txt summary.json report.html")
    return 1 if args.fail_on_leak and res.leakage.num_rows else 0


if __name__ == "__main__":
    from longvid.jobs.cli import main

    sys.exit(main(["audit", *sys.argv[1:]]))
