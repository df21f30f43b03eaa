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

from longvid.jobs.config import add_config_flag, add_flags, config_from_args, job_log, read_yaml
from longvid.operators.errors import ConfigError
from longvid.pipelines.ingest_config import IngestConfig, MixtureConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_flags(p, IngestConfig, MixtureConfig)


# the settings only one kind of ingest has (a flag or job file key of the other kind is refused, naming it)
RAW_ONLY = [f for f in IngestConfig.__dataclass_fields__ if f not in MixtureConfig.__dataclass_fields__]
MIXTURE_ONLY = [f for f in MixtureConfig.__dataclass_fields__ if f not in IngestConfig.__dataclass_fields__]


def run(args: argparse.Namespace) -> int:
    from longvid.jobs import preflight
    from longvid.pipelines.ingest import run_ingest

    file_values = read_yaml(args.config) if getattr(args, "config", None) else {}
    if getattr(args, "mixture", None) is not None or "mixture" in file_values:
        return run_mixture_job(args, file_values)
    given = [k for k in MIXTURE_ONLY if getattr(args, k, None) is not None]
    if given:
        raise ConfigError(f"{given[0]}: only with --mixture (a raw-source ingest reads --metadata and --videos)")
    cfg = config_from_args(IngestConfig, args, file_values)
    if cfg.hwaccel == "cuda" and not cfg.ray_address:  # embedded Ray: the job decodes on this machine
        from longvid.operators.decode import cuda_unavailable

        why = cuda_unavailable()
        if why:
            raise ConfigError(f"hwaccel: cuda, but {why} on this machine, where the job decodes; use --hwaccel auto "
                              "(NVDEC only where a device is present) or none")
    if cfg.deblock != "all" and not cfg.ray_address:
        from longvid.operators.loop_filter import loop_filter_unavailable

        why = loop_filter_unavailable()
        if why:
            raise ConfigError(f"deblock: {cfg.deblock}, but the loop filter cannot be switched per picture here: {why}; "
                              "use --deblock all")
    preflight.use_s3(cfg.s3_endpoint_url, cfg.s3_profile, cfg.s3_region)
    preflight.readable("metadata", cfg.metadata)
    preflight.readable("videos", cfg.videos, folder=True)
    preflight.writable("out", cfg.out)
    summary = run_ingest(cfg, log=job_log("ingest"))
    return 0 if summary["complete"] else 1


def run_mixture_job(args: argparse.Namespace, file_values: dict) -> int:
    """`longvid ingest --mixture ...`: the flags and the job file as a MixtureConfig, pre-flight, run."""
    from longvid.jobs import preflight
    from longvid.pipelines.mixture import run_mixture

    given = [k for k in RAW_ONLY if getattr(args, k, None) is not None or k in file_values]
    if given:
        raise ConfigError(f"{given[0]}: not used with --mixture (the mixture names its annotation files and data "
                          "roots; give --roots to map the data roots)")
    cfg = config_from_args(MixtureConfig, args, file_values)
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
