"""`longvid audit`: benchmark leakage and duplicates in built corpora, with a report people can look at.

    longvid audit --manifests /data/corpus/howto100m s3://corpus/miradata --benchmarks ../shared/data/benchmarks
                  --out audit/ [--benchmark-videos /data/bench_videos] [--ngram 13] [--config audit.yaml]

Writes leakage.parquet, duplicates.parquet, drop_list.txt (read by training), summary.json and report.html
(self-contained: open it offline). Exit status: 0, or 1 with --fail-on-leak when anything leaked.
"""
from __future__ import annotations

import argparse
import sys

from longvid.jobs.config import ConfigError, load_config, read_yaml
from longvid.operators.settings import show

_FLAGS = {  # flag -> (AuditConfig field, type, help)
    "--ngram": ("ngram", int, "n of text n-grams (13)"),
    "--min-question-tokens": ("min_question_tokens", int, "texts shorter than n but this long are matched whole (8)"),
    "--max-template-videos": ("max_template_videos", int, "a sequence in more benchmark videos than this is a template (5)"),
    "--phash-threshold": ("phash_threshold", int, "Hamming bits for a benchmark-frame match (4)"),
    "--phash-min-frames": ("phash_min_frames", int, "sample frames that must match one benchmark video (2)"),
    "--benchmark-fps": ("benchmark_fps", float, "frames per second hashed from --benchmark-videos (1)"),
    "--benchmark-max-frames": ("benchmark_max_frames", int, "frames hashed per benchmark video at most (2048)"),
    "--dup-threshold": ("dup_threshold", int, "Hamming bits for corpus near-duplicates (2)"),
    "--dup-frames-per-sample": ("dup_frames_per_sample", int, "frames per sample indexed for near-duplicates (8)"),
    "--dup-memory-mb": ("dup_memory_mb", float, "memory budget of the duplicate finder; the rest spills to TMPDIR (256)"),
    "--batch-size": ("batch_size", int, "manifest rows per batch (16384)"),
    "--report-max-samples": ("report_max_samples", int, "contact sheets in report.html (40)"),
}


def register(sub) -> None:
    p = sub.add_parser("audit", help="benchmark leakage, duplicates, drop list and an HTML dataset report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", action="extend", nargs="+", required=True, metavar="DIR_OR_S3",
                   help="job directories (or manifests/ dirs, parquet parts, folders of jobs), local or s3://")
    p.add_argument("--benchmarks", action="extend", nargs="+", required=True, metavar="PATH",
                   help="benchmark annotation files or folders (formats recognised by content)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="report folder: leakage.parquet, duplicates.parquet, drop_list.txt, summary.json, report.html")
    p.add_argument("--benchmark-videos", metavar="DIR", help="benchmark video files, for frame-hash matching")
    p.add_argument("--config", help="YAML with the settings below (underscored names); flags override it")
    for flag, (_, tp, hlp) in _FLAGS.items():
        p.add_argument(flag, type=tp, help=hlp)
    p.add_argument("--drop-near-duplicates", action="store_true", default=None,
                   help="also drop video-id-span and frame-hash duplicates (exact sha256 duplicates always are)")
    p.add_argument("--namespace", action="append", default=[], metavar="SOURCE=NAMESPACE",
                   help="id namespace of a manifest source (e.g. star=charades); default per source")
    p.add_argument("--strict-benchmarks", action="store_true", help="fail when a benchmark file is not recognised")
    p.add_argument("--fail-on-leak", action="store_true", help="exit 1 when any leakage is found")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--s3-region", help="AWS region for S3")
    p.add_argument("--s3-profile", help="AWS profile for S3")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from longvid.operators.audit.core import AuditConfig

    file_values = read_yaml(args.config) if args.config else {}
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _FLAGS.items()}
    overrides["drop_near_duplicates"] = args.drop_near_duplicates
    ns = file_values.pop("namespaces", None) or {}
    if not isinstance(ns, dict):
        raise ConfigError(f"{args.config}: namespaces: expected a mapping of source: namespace, got {show(ns)}")
    ns = dict(ns)
    for item in args.namespace:
        if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
            raise ConfigError(f"--namespace: expected SOURCE=NAMESPACE, got {item!r}")
        k, v = item.split("=", 1)
        ns[k] = v
    overrides["namespaces"] = ns
    cfg = load_config(AuditConfig, file_values, overrides, source=args.config or "")
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(f"{args.config + ': ' if args.config else ''}{e}") from None
    return cfg


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.operators.audit.benchmarks import BenchmarkFormatError
    from longvid.manifests.readers import ManifestError
    from longvid.pipelines.audit import audit

    cfg = config_from_args(args)
    preflight.use_s3(args.s3_endpoint_url or "", args.s3_profile or "", args.s3_region or "")
    preflight.readable("manifests", args.manifests)
    preflight.readable("benchmarks", args.benchmarks)
    if args.benchmark_videos:
        preflight.readable("benchmark_videos", args.benchmark_videos, folder=True)
    preflight.writable("out", args.out)
    try:  # S3 settings: this process's, set by preflight.use_s3 above (storage.configure_s3)
        res = audit(args.manifests, args.benchmarks, args.out, cfg, args.benchmark_videos,
                    strict_benchmarks=args.strict_benchmarks)
    except (ManifestError, BenchmarkFormatError, FileNotFoundError, ValueError) as e:
        print(f"longvid audit: {e}", file=sys.stderr)
        return 2
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
