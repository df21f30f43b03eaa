"""`longvid plan`: the cost of a corpus and of long-video inference, from the manifests alone.

    longvid plan --manifests /data/corpus                       # every job dir below, streamed with pyarrow
    longvid plan --manifests /data/corpus/webvid --resolution 448 --gpu A100 --frames 10000
    longvid plan --frames 2048 --model videochat-flash-2b        # inference table only
    longvid plan --manifests /data/corpus --nodes 8 --cpus 64 --gpus 8 --network-gbps 25   # + the cluster view
    python -m longvid plan ...                                       # the same

Prints tokens per frame dense vs HiCo, token storage (fp16), encoder FLOPs and GPU-hours, then LLM prefill FLOPs
and KV-cache memory at N frames with and without HiCo and with the released visual dropout. The formulas are in
pipelines/plan.py. With --nodes (and --cpus, --gpus, --network-gbps per node; or the same fields in a --config
YAML file): the predicted wall time of ingest and encode of the corpus on that cluster, stage by stage (CPU decode,
GPU encode, CPU prep, network/S3, driver), the bottleneck, and which rates were measured here and which are estimates.
"""
from __future__ import annotations

import argparse
import os
import sys

from longvid.jobs.config import MODEL_PRESETS, ConfigError, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file (fields as the long flags, with underscores); flags override it")
    p.add_argument("--manifests", help="an ingest or encode job dir (or a folder of them, or s3://...)")
    p.add_argument("--frames", type=int, help="frames per video for the inference table (10000)")
    p.add_argument("--resolution", type=int, choices=[224, 448], help="frame side (default: the manifests')")
    p.add_argument("--gpu", help="GPU for the hours (default H100; A100, H200, B200, L40S, L4 and A10 are known)")
    p.add_argument("--model", help=f"one model preset: {' | '.join(MODEL_PRESETS)} (default: both released models)")
    p.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation, in (0, 1] (default 0.4)")
    p.add_argument("--text-tokens", type=int, help="text tokens added to the prompt (0)")
    p.add_argument("--json", help="also write every number to this JSON file")
    g = p.add_argument_group("cluster view", "predicted wall time of ingest and encode of the corpus (--manifests) on "
                                             "a cluster of --nodes nodes, and the bottleneck")
    g.add_argument("--nodes", type=int, help="cluster view: number of nodes (0: no cluster view); needs --manifests")
    g.add_argument("--cpus", type=int, help="cluster view: CPUs per node (default 32)")
    g.add_argument("--gpus", type=int, help="cluster view: GPUs per node (default 8; 0: encode on the CPUs)")
    g.add_argument("--network-gbps", type=float, help="cluster view: network of each node, Gbit/s each way "
                                                      "(default 25)")
    g.add_argument("--source-mbps", type=float, help="cluster view: bitrate of the source videos in Mbit/s (default "
                                                     "5, an estimate: the manifests do not record it)")
    g.add_argument("--gpu-fps", type=float, help="cluster view: HiCo frames/s of one GPU, if measured (default: an "
                                                 "estimate from the FLOPs at 150 TFLOP/s sustained, ~1,200 at 224 px)")



def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.plan import PlanConfig, run_plan

    cfg = config_from_args(PlanConfig, args)
    if cfg.manifests:
        preflight.readable("manifests", cfg.manifests)
    if cfg.json:
        if os.path.isdir(cfg.json):
            raise ConfigError(f"json: {cfg.json}: is a folder; give a file name")
        preflight.writable("json", os.path.dirname(os.path.abspath(cfg.json)))
    run_plan(cfg)
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="corpus and inference cost from the manifests (tokens, bytes, FLOPs, GPU-hours)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.plan ARGS` is `longvid plan ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["plan", *sys.argv[1:]]))
