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

from longvid.jobs.config import ConfigError, add_config_flag, add_flags, config_from_args
from longvid.pipelines.plan_config import CLUSTER_VIEW, PlanConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, help="YAML file (its keys are the long flags, with underscores); flags override it")
    add_flags(p, PlanConfig, groups={CLUSTER_VIEW: "predicted wall time of ingest and encode of the corpus "
                                                   "(--manifests) on a cluster of --nodes nodes, and the bottleneck"})


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.plan import run_plan

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
