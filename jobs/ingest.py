"""`longvid ingest`: one source dataset's metadata + videos -> WebDataset shards + Parquet manifests, on Ray.

    longvid ingest --source webvid --metadata results_2M_val.csv --videos /data/webvid/videos --out /data/corpus/webvid
    longvid ingest --config jobs/configs/ingest-webvid.yaml --limit 1000     # flags override the file
    longvid ingest --mixture stage3.yaml --roots roots.yaml --out /data/corpus/stage3   # a released mixture
    python -m longvid ingest ...                                             # the same, without the console script

Shipped job files: jobs/configs/ingest-{ego4d,hdvila,howto100m,miradata,webvid}.yaml. Before any work the metadata
files and the video root must be readable and --out writable (exit 2 naming the setting otherwise).

With --mixture (a VideoChat-Flash annotation mixture: `datasets: [{json_path, sampling_strategy, data_root, ...}]`)
every dataset becomes DIR/<json stem>/ and DIR/summary.json adds them up (pipelines/mixture.py). Every dataset is
planned before any work: a data_root without a --roots mapping that is not a readable folder, a missing annotation
file or a `random` strategy exits 2 naming the dataset.
"""
from __future__ import annotations

import argparse
import sys

from longvid.jobs.config import add_cluster_arguments, config_from_args, job_log, load_config, read_yaml
from longvid.operators.errors import ConfigError
from longvid.operators.frame_rule import PROFILES
from longvid.operators.settings import label
from longvid.operators.sources import available


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job file (fields as the long flags, with underscores); flags override it")
    p.add_argument("--source", help=f"source dataset: {', '.join(available())}")
    p.add_argument("--mixture",
                   help="a released annotation mixture (YAML `datasets:` list, local or s3://) instead of --source, "
                        "--metadata and --videos: every dataset becomes DIR/<json stem>/")
    p.add_argument("--roots", help="with --mixture: YAML mapping each data_root string of the mixture to a local "
                                   "folder or s3:// prefix (relative folders: to this file)")
    p.add_argument("--annotations", help="with --mixture: the folder json_path is relative to (default: the "
                                         "mixture's folder)")
    p.add_argument("--metadata", action="append", help="metadata file (local or s3://); repeat for several")
    p.add_argument("--videos", help="folder or s3://bucket/prefix holding the videos in the source's own layout")
    p.add_argument("--out", help="output folder or s3://bucket/prefix")
    p.add_argument("--profile", choices=list(PROFILES), help="frame bounds and resolution (default: long)")
    p.add_argument("--shard-size-mb", type=float, help="target tar size in MB (default 1024)")
    p.add_argument("--records-per-unit", type=int, help="input rows per work unit (default: from shard size)")
    p.add_argument("--limit", type=int, help="only the first N input rows")
    p.add_argument("--backend", choices=["pyav", "decord"], help="video decoder (default pyav)")
    p.add_argument("--decode-mode", choices=["auto", "keyframe"],
                   help="keyframe: snap each frame to its nearest keyframe, much faster but not the rule's frames "
                        "(the true times and the snap error are recorded; refused with --mixture)")
    p.add_argument("--hwaccel", choices=["none", "auto", "cuda"],
                   help="GPU decoding (NVDEC), chosen on each node: none (default, software); auto: NVDEC where the "
                        "node has a CUDA device and frames need not be exact (--decode-mode keyframe), else software; "
                        "cuda: NVDEC always (a record decoded where there is no device fails)")
    p.add_argument("--long-time-msg", action="store_true", default=None,
                   help="use the timestamp message that lists every frame time")
    p.add_argument("--decode-timeout-s", type=float, help="per-video limit before the decoder is killed (600)")
    p.add_argument("--resize",
                   help="frame resize: torch (default; antialiased bicubic, much faster at 1080p) or pil (exactly "
                        "the UMT preprocessor's PIL bicubic)")
    p.add_argument("--max-in-flight", type=int, help="work units queued or running at once (default 2x CPUs)")
    p.add_argument("--decoder-threads", type=int,
                   help="FFmpeg threads per decoder (default 1: every CPU already runs a unit; 0: FFmpeg decides)")
    p.add_argument("--decoder-memory-mb", type=int,
                   help="address-space cap of each decoder process in MB (default 4096; 0: none)")
    add_cluster_arguments(p)


RAW_ONLY = ("source", "metadata", "videos")  # flags of a raw-source ingest
# The mixture ingest makes the paper's data: exact frames only. These settings are accepted there with the values
# that keep the frames exact (they change nothing: it always decodes exactly, in software), refused otherwise.
EXACT_FRAMES = {"decode_mode": ("auto",), "hwaccel": ("none", "auto")}
MIXTURE_ONLY = ("mixture", "roots", "annotations")


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.ingest import IngestConfig, run_ingest

    file_values = read_yaml(args.config) if getattr(args, "config", None) else {}
    if getattr(args, "mixture", None) is not None or "mixture" in file_values:
        return run_mixture_job(args, file_values)
    given = [k for k in MIXTURE_ONLY if getattr(args, k, None) is not None]
    if given:
        raise ConfigError(f"{given[0]}: only with --mixture (a raw-source ingest reads --metadata and --videos)")
    cfg = config_from_args(IngestConfig, args)
    if cfg.hwaccel == "cuda" and not cfg.ray_address:  # embedded Ray: the job decodes on this machine
        from longvid.operators.decode import cuda_unavailable

        why = cuda_unavailable()
        if why:
            raise ConfigError(f"hwaccel: cuda, but {why} on this machine, where the job decodes; use --hwaccel auto "
                              "(NVDEC only where a device is present) or none")
    preflight.use_s3(cfg.s3_endpoint_url, cfg.s3_profile, cfg.s3_region)
    preflight.readable("metadata", cfg.metadata)
    preflight.readable("videos", cfg.videos, folder=True)
    preflight.writable("out", cfg.out)
    summary = run_ingest(cfg, log=job_log("ingest"))
    return 0 if summary["complete"] else 1


def run_mixture_job(args: argparse.Namespace, file_values: dict) -> int:
    """`longvid ingest --mixture ...`: the flags and the job file as a MixtureConfig, pre-flight, run."""
    from longvid.jobs import preflight
    from longvid.pipelines.mixture import MixtureConfig, run_mixture

    given = [k for k in RAW_ONLY if getattr(args, k, None) is not None or k in file_values]
    if given:
        raise ConfigError(f"{given[0]}: not used with --mixture (the mixture names its annotation files and data "
                          "roots; give --roots to map the data roots)")
    for k, exact in EXACT_FRAMES.items():
        v = getattr(args, k, None)
        v = file_values.get(k) if v is None else v
        if v is not None and v not in exact:
            raise ConfigError(f"{k}: only {' or '.join(exact)} with --mixture, got {label(v)}: the mixture ingest "
                              "makes the paper's data, which needs exact frames (keyframe snapping and GPU decoding "
                              "are for a raw-source ingest)")
    file_values = {k: v for k, v in file_values.items() if k not in EXACT_FRAMES}
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "func", "command", "log_level", *EXACT_FRAMES)}
    cfg = load_config(MixtureConfig, file_values, overrides, source=args.config or "")
    preflight.use_s3(cfg.s3_endpoint_url, cfg.s3_profile, cfg.s3_region)
    preflight.readable("mixture", cfg.mixture)
    if cfg.roots:
        preflight.readable("roots", cfg.roots)
    if cfg.annotations:
        preflight.readable("annotations", cfg.annotations, folder=True)
    preflight.writable("out", cfg.out)
    summary = run_mixture(cfg, log=job_log("ingest"))
    return 0 if summary["complete"] else 1


def register(sub) -> None:
    p = sub.add_parser("ingest", help="metadata + videos -> WebDataset shards and Parquet manifests (Ray job)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.ingest ARGS` is `longvid ingest ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
