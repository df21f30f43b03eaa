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

from longvid.jobs.config import MODEL_PRESETS, dtype_help, job_log, load_config, read_yaml


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job file (fields as the long flags, with underscores); flags override it")
    p.add_argument("--haystack", help="ingest job folder, shards folder, one .tar shard, or a long video file")
    p.add_argument("--needles", help="NIAH spec JSON (niah-coco-singlehop_20.json / niah-coco-multihop-100.json)")
    p.add_argument("--images", help="folder with the needle images, named as the spec's image fields")
    p.add_argument("--out", help="output folder of the set (local)")
    p.add_argument("--frames", help="haystack lengths in frames, comma-separated (default 1000,2000,...,10000)")
    p.add_argument("--depths", help="single-hop needle depths in [0, 1], comma-separated (default 0,0.2,...,1.0)")
    p.add_argument("--multi-hop", action="store_true", default=None, help="the spec is multi-hop (images chains)")
    p.add_argument("--model", help=f"model preset of the encoder: {' | '.join(MODEL_PRESETS)} "
                                   "(default videochat-flash-7b)")
    p.add_argument("--img-size", type=int, help="encoder input size (default: the preset's)")
    p.add_argument("--encoder", help="encoder weights: UMT-L_f4_vision.pt or a VideoChat-Flash checkpoint "
                                     "(required except with --model tiny, which may use random weights)")
    p.add_argument("--seed", type=int, help="seed of random encoder weights (tiny only)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--clips-per-pass", type=int, help="4-frame clips per encoder pass (default 8)")
    p.add_argument("--dtype", help=dtype_help("stored token dtype (default fp16)", ("fp16", "fp32")))
    p.add_argument("--limit-items", type=int, help="only the first N spec items")
    p.add_argument("--threads", type=int, help="torch CPU threads while encoding (default: torch's)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress lines")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job file (fields as the long flags, with underscores); flags override it")
    p.add_argument("--set", help="a NIAH set folder (niah build --out)")
    p.add_argument("--checkpoint", help="VideoChat-Flash (LLaVA-style) checkpoint file/folder, a `longvid train` "
                                        "stage model.safetensors, or random:SEED (untrained, for demos)")
    p.add_argument("--out", help="results folder (default <set>/eval)")
    p.add_argument("--model", help=f"model preset: {' | '.join(MODEL_PRESETS)} (default: the preset that built "
                                   "the set)")
    p.add_argument("--tokenizer", help="tokenizer folder, or 'test' (tiny model); default: the checkpoint folder")
    p.add_argument("--visual-dropout", help="off (default), released, or MODE[:LAYERS[:RATIOS]], "
                                            "e.g. uniform0_attention:4,18:1,0.75,0.25")
    p.add_argument("--scoring", help="greedy (default: greedy decoding over the whole vocabulary, correct when the "
                                     "decoded answer matches the letter, as the released eval) | options "
                                     "(teacher-forced argmax over the option letters)")
    p.add_argument("--max-new-tokens", type=int, help="greedy decoding stops at EOS or after N tokens (default 16)")
    p.add_argument("--num-actors", type=int, help="scoring actors (default: one per GPU, else 1)")
    p.add_argument("--rows-per-task", type=int, help="inputs per actor call (default 4)")
    p.add_argument("--limit", type=int, help="only the first N inputs of the index")
    p.add_argument("--device", help="auto (default: GPU actors when the cluster has GPUs), cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads of a CPU actor (default 1)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--no-ray", dest="use_ray", action="store_false", default=None,
                   help="score in this process instead of Ray actors (debugging, small sets)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress lines")


def _config(cls, args: argparse.Namespace):
    file_values = read_yaml(args.config) if args.config else {}
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "func", "command", "niah_command", "log_level")}
    return load_config(cls, file_values, overrides, source=args.config or "")


def run_build(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.niah_build import NiahBuildConfig, run_niah_build

    cfg = _config(NiahBuildConfig, args)
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
    from longvid.pipelines.niah_eval import NiahEvalConfig, run_niah_eval

    cfg = _config(NiahEvalConfig, args)
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
