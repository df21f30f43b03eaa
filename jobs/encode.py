"""`longvid encode`: an ingest job's shards -> HiCo tokens (16 per frame) in token shards + Parquet manifests, on Ray.

    longvid encode --shards /data/corpus/webvid --out /data/tokens/webvid --checkpoint UMT-L_f4_vision.pt
    longvid encode --shards s3://b/corpus/webvid --out s3://b/tokens/webvid --checkpoint s3://b/ckpt/videochat-flash-7b/
    longvid encode --config encode.yaml --actors 8 --gpus-per-actor 0.5     # a YAML of the flags; flags override it
    python -m longvid encode ...                                             # the same

Output unit N holds the samples of ingest unit N; a re-run skips the committed units. Without --checkpoint the
encoder has random weights (a loud warning; for tests and benchmarks only).
"""
from __future__ import annotations

import argparse
import sys

from longvid.jobs.config import add_config_flag, add_flags, config_from_args, job_log
from longvid.pipelines.encode_config import EncodeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_flags(p, EncodeConfig)


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.encode import run_encode

    cfg = config_from_args(EncodeConfig, args)
    preflight.use_s3(cfg.s3_endpoint_url, cfg.s3_profile, cfg.s3_region)
    preflight.readable("shards", cfg.shards, folder=True)
    if cfg.checkpoint:
        preflight.readable("checkpoint", cfg.checkpoint)
    preflight.writable("out", cfg.out)
    for name in ("cache_dir", "scratch_dir"):
        if getattr(cfg, name):
            preflight.writable(name, getattr(cfg, name))
    summary = run_encode(cfg, log=job_log("encode"))
    # every ingest manifest row of the encoded units is a token sample or a failure row
    return 0 if summary["inputs"] == summary["ingest_rows"] == summary["samples"] + summary["failures"] else 1


def register(sub) -> None:
    p = sub.add_parser("encode", help="ingest shards -> HiCo token shards and Parquet manifests (encoder actors commit units)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.encode ARGS` is `longvid encode ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["encode", *sys.argv[1:]]))
