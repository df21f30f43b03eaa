"""`longvid niah`: build and score (multi-hop) needle-in-a-video-haystack sets.

    longvid niah build --haystack /data/corpus/ego4d --needles niah-coco-singlehop_20.json --images /data/coco \\
        --out /data/niah/single --model videochat-flash-7b --encoder UMT-L_f4_vision.pt
    longvid niah build --haystack long_video.mp4 --needles niah-coco-multihop-100.json --images /data/coco \\
        --out /data/niah/multi --multi-hop --frames 1000,2000,3000 --encoder ckpt/
    longvid niah eval --set /data/niah/single --checkpoint ckpt/ [--visual-dropout released]

build: the haystack (a long video: every round(fps)-th frame from frame 0, as the reference; or, not
reference-exact, an ingest job folder, a folder of shards or one .tar) is encoded once with the HiCo encoder, each
frame padded to a square (16 tokens per frame; above 7,500 frames the reference's 5,016-frame period repeats),
each needle image padded to a square as a 4-frame clip (64 tokens); index.parquet lists every (item, length,
depth, positions).
eval: scores every input on Ray (one actor per GPU, else one CPU actor); --scoring greedy (default, the released
rule: greedy decoding, the decoded answer compared with the answer letter) or options (argmax over the option
letters); writes results.parquet, summary.json and heatmap.png under <set>/eval (or --out).
"""
from __future__ import annotations

import argparse
import sys

from longvid.jobs.config import add_config_flag, add_flags, config_from_args, job_log
from longvid.pipelines.niah_config import NiahBuildConfig, NiahEvalConfig


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_flags(p, NiahBuildConfig)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_flags(p, NiahEvalConfig)


def run_build(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.niah_build import run_niah_build

    cfg = config_from_args(NiahBuildConfig, args)
    preflight.readable("haystack", cfg.haystack)
    preflight.readable("needles", cfg.needles)
    preflight.readable("images", cfg.images, folder=True)
    if cfg.encoder:
        preflight.readable("encoder", cfg.encoder)
    preflight.writable("out", cfg.out)
    summary = run_niah_build(cfg, log=job_log("niah"))
    return 0 if summary["inputs"] else 1


def run_eval(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.niah_eval import run_niah_eval

    cfg = config_from_args(NiahEvalConfig, args)
    if cfg.tokenizer and cfg.tokenizer != "test":
        preflight.readable("tokenizer", cfg.tokenizer, folder=True)
    if cfg.out:
        preflight.writable("out", cfg.out)
    summary = run_niah_eval(cfg, log=job_log("niah"))
    print(f"heat map: {summary['heatmap']}")
    return 0


def _help(parser: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return run


def _add_subcommands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="niah_command", metavar="{build,eval}")
    b = sub.add_parser("build", help="haystack + needle spec + images -> NIAH token set (index.parquet)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_build_arguments(b)
    b.set_defaults(func=run_build)
    e = sub.add_parser("eval", help="score a checkpoint on a NIAH set (Ray) -> results, summary, heat map",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(e)
    e.set_defaults(func=run_eval)
    p.set_defaults(func=_help(p))


def register(sub) -> None:
    p = sub.add_parser("niah", help="build and score (multi-hop) needle-in-a-video-haystack sets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_subcommands(p)


if __name__ == "__main__":  # `python -m longvid.jobs.niah ARGS` is `longvid niah ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["niah", *sys.argv[1:]]))
