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

from longvid.jobs.config import MODEL_PRESETS, add_cluster_arguments, config_from_args, dtype_help, job_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job file (fields as the long flags, with underscores); flags override it")
    p.add_argument("--shards", help="ingest output folder or s3://bucket/prefix (its manifests/ and shards/)")
    p.add_argument("--out", help="output folder or s3://bucket/prefix")
    p.add_argument("--checkpoint", help="UMT-L .pt file or LLaVA-style safetensors folder (local or s3://); "
                                        "default: random weights (tests only)")
    p.add_argument("--model", help=f"encoder sizes: model preset {' | '.join(MODEL_PRESETS)} (default "
                                   "videochat-flash-7b: UMT-L)")
    p.add_argument("--resolution", type=int, choices=[224, 448], help="frame side (default: the ingest frames')")
    p.add_argument("--actors", type=int, help="encoder actors (default: one per --gpus-per-actor GPUs; on CPU, "
                                              "the CPUs minus one)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per encoder actor when the cluster has GPUs (1)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs per encoder actor (1)")
    p.add_argument("--batch-clips", type=int, help="4-frame clips per forward pass, across samples (16)")
    p.add_argument("--dtype", help=dtype_help("compute dtype (default bf16)") + "; autocast on CUDA only, tokens "
                                                                                 "stored float16 (float32 for fp32)")
    p.add_argument("--shard-size-mb", type=float, help="target token tar size in MB (1024)")
    p.add_argument("--limit-units", type=int, help="only the first N ingest units")
    p.add_argument("--seed", type=int, help="seed of the random weights when there is no checkpoint (0)")
    p.add_argument("--cache-dir", help="where S3 checkpoints are downloaded on each node")
    p.add_argument("--scratch-dir", help="local folder for samples of units not yet committed")
    add_cluster_arguments(p)



def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.encode import EncodeConfig, run_encode

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
    p = sub.add_parser("encode", help="ingest shards -> HiCo token shards and Parquet manifests (Ray Data job)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.encode ARGS` is `longvid encode ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["encode", *sys.argv[1:]]))
