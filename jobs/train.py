"""`longvid train`: a short-to-long training recipe on Ray Train, streaming precomputed token shards.

    longvid train --config jobs/configs/train-tiny.yaml --data-root longvid-demo --out longvid-demo/train
    longvid train --config jobs/configs/train-7b.yaml --resume --num-workers 8 --use-gpu
    longvid train --config ... --exclude audit/drop_list.txt        # keys never reach a batch
    ray job submit --working-dir . -- longvid train --config ...     # the same, as a Ray job (RAY_ADDRESS)

The recipe lists stages in order; each names its data (shard globs with weights and LLaVA sampling
strategies), frame bounds, max_len, template and labels, learning rates, trainable parts, per-worker and global
batch (gradient accumulation = global / (workers x per-worker batch): --num-workers must divide it), batch grouping
and steps or epochs. Flags override the recipe's top-level fields. A recipe file's relative paths are taken from
--data-root (default: the cwd).
Shipped recipes: jobs/configs/train-tiny.yaml (`--config tiny`), jobs/configs/train-7b.yaml, jobs/configs/train-2b.yaml.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from longvid.jobs.config import ConfigError, add_config_flag, add_flags, flag_values, job_log, load_config, read_yaml
from longvid.operators.settings import label, show
from longvid.pipelines.train_config import DataEntry, StageConfig, TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def find_recipe(name_or_path: str) -> Path:
    """A recipe path, or a shipped recipe by name (`tiny` -> jobs/configs/train-tiny.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"train-{name_or_path}.yaml", CONFIG_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config: {name_or_path}: recipe not found (a path, or one of "
                      f"{', '.join(sorted(q.stem[6:] for q in CONFIG_DIR.glob('train-*.yaml')))})")


def parse_recipe(raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = ""):
    """YAML mapping (+ flag overrides) -> TrainConfig; ConfigError names the file, stage, entry and field."""
    raw = dict(raw)
    where = f"{source}: " if source else ""
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}stages: a list of stages is required")
    stages = []
    for i, s in enumerate(stages_raw):
        at = f"{source}: stages[{i}]" if source else f"stages[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{at}: a stage must be a mapping, got {type(s).__name__}")
        s = dict(s)
        data_raw = s.pop("data", None)
        if not isinstance(data_raw, list) or not data_raw:
            raise ConfigError(f"{at}: data: a list of data entries is required")
        data = []
        for j, e in enumerate(data_raw):
            if isinstance(e, str):
                e = {"shards": [e]}
            if not isinstance(e, dict):
                raise ConfigError(f"{at}.data[{j}]: must be a mapping or a glob, got {show(e)}")
            if isinstance(e.get("shards"), str):
                e = {**e, "shards": [e["shards"]]}
            data.append(load_config(DataEntry, e, source=f"{at}.data[{j}]"))
        stages.append(load_config(StageConfig, {**s, "data": data}, source=f"{at} ({label(s.get('name', '?'))})"))
    cfg = load_config(TrainConfig, {**raw, "stages": stages, "out": raw.get("out", "")}, overrides or {},
                      source=source)
    cfg.stages = stages
    return cfg


def load_recipe(path: str | Path, **overrides: Any):
    """Read a recipe file (or a shipped recipe name) with top-level overrides (None = not given)."""
    p = find_recipe(str(path))
    return parse_recipe(read_yaml(p), overrides, source=str(p))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, help="recipe YAML (or a shipped name: tiny, 7b, 2b)", required=True)
    add_flags(p, TrainConfig)


def config_from_args(args: argparse.Namespace):
    return load_recipe(args.config, **flag_values(TrainConfig, args))


def _preflight(cfg) -> None:
    """The run's folders and files exist (relative ones under --data-root) and --out can be written."""
    from longvid.jobs import preflight

    if cfg.data_root:
        preflight.readable("data_root", cfg.data_root, folder=True)
    for name in ("llm_path", "init_checkpoint", "encoder_checkpoint"):
        if getattr(cfg, name):
            preflight.readable(name, cfg.resolve(getattr(cfg, name)))
    if cfg.tokenizer != "test":
        preflight.readable("tokenizer", cfg.resolve(cfg.tokenizer), folder=True)
    for i, p in enumerate(cfg.exclude):
        preflight.readable(f"exclude[{i}]", cfg.resolve(p))
    preflight.writable("out", cfg.out)


def run(args: argparse.Namespace) -> int:
    from longvid.pipelines.train import run_train

    cfg = config_from_args(args)
    _preflight(cfg)
    summary = run_train(cfg, log_fn=job_log("train"))
    return 0 if len(summary["stages"]) == len(cfg.stages) else 1


def register(sub) -> None:
    p = sub.add_parser("train", help="short-to-long training on Ray Train from token shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.train ARGS` is `longvid train ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
