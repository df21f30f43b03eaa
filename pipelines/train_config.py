"""Train: the recipe a run is given (TrainConfig: model, tokenizer, out, stages in order; StageConfig; DataEntry) and
its schedule (stage_schedule: every stage's sources indexed, accumulation and optimizer step count).

The dataclasses are declared once: jobs/train.py reads a recipe YAML and flag overrides into them
(jobs.config.load_config), and the Ray Train workers get them back from `TrainConfig.to_dict()`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from longvid.model.constants import MODEL_PRESETS
from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.operators.mixture import parse_strategy, read_mixture
from longvid.operators.settings import Settings, Shared, label, like, ordered, rule, setting, show

log = logging.getLogger("longvid.train")

PARTS = ("projector", "llm", "encoder")


def _group_by() -> tuple[str, ...]:
    """The loader's batch groupings (pipelines/loader.py; read when a recipe is checked, never for --help)."""
    from longvid.pipelines.loader import GROUP_BY

    return GROUP_BY


# ======================================================================================================== config


@dataclass
class DataEntry(Settings):
    """One source of a stage's mixture: shard globs (local or s3://), its weight, LLaVA sampling strategy.

    Or a whole released LLaVA-style mixture: `mixture` names its YAML (read by operators.mixture.read_mixture, as
    `ingest --mixture` reads it) and `shards` are templates with `{name}` (the json file's stem), one source per
    dataset with that dataset's sampling strategy; `missing: skip` drops datasets without shards. A dataset folder
    written by `ingest --mixture` (or encoded from one) has the strategy applied already: all its samples are
    taken, never selected twice.
    """

    shards: list[str] = setting(required=True)
    weight: float = setting(1.0, ge=0)
    sampling: str = "all"  # operators.mixture.parse_strategy: all | first:N[%] | first2:N .. first4:N | end:N[%]
    name: str = ""
    mixture: str = ""
    missing: str = setting("error", choices=("error", "skip"))  # error | skip (a dataset of a mixture with no shard)

    @rule
    def mixture_globs_name_the_dataset(self) -> None:
        if self.mixture and not any("{name}" in s for s in self.shards):
            raise ConfigError("shards: with a mixture, the globs need a {name} placeholder")

    @rule
    def sampling_strategy(self) -> None:
        parse_strategy(self.sampling, "sampling")


@dataclass
class StageConfig(Settings):
    """One stage of the curriculum (see jobs/configs/train-*.yaml)."""

    name: str
    data: list[DataEntry] = setting(required=True)
    input: str = setting("tokens", choices=("tokens", "frames"))  # tokens: HiCo tokens | frames: encoder in the loop
    encoder: str = setting("", choices=("", "frozen", "trained"))  # must agree with input/train (the recipe states it)
    train: list[str] = setting(default_factory=lambda: ["projector"], choices=PARTS, required=True)
    min_frames: int = setting(1, ge=1, le=1_000_000)
    max_frames: int = setting(512, ge=4, le=1_000_000)  # at least one 4-frame clip
    max_len: int = setting(32768, ge=1, le=2**24)
    lr: float = setting(1e-5, gt=0)
    lr_projector: float = setting(0.0, ge=0)  # 0: lr
    lr_llm: float = setting(0.0, ge=0)
    lr_encoder: float = setting(0.0, ge=0)
    steps: int = setting(0, ge=0)  # optimizer steps; exactly one of steps / epochs
    epochs: float = setting(0.0, ge=0, le=1e6)
    batch_size: int = setting(1, ge=1, le=65536)  # per worker and micro-step (the reference's per_device batch)
    # samples per optimizer step over all workers; accumulation = global / (workers x batch_size); 0: no accumulation
    global_batch_size: int = setting(0, ge=0, le=2**24)
    warmup_ratio: float = setting(0.03, ge=0, lt=1)
    schedule: str = setting("cosine", choices=("cosine", "constant"))
    # micro_batch: each micro-batch's mean over its label tokens, averaged over micro-steps and workers (the
    # reference: HF Trainer with a model whose forward takes no num_items_in_batch); tokens: one mean over all
    # label tokens of the global batch (HF Trainer >= 4.46 for models that take it, average_tokens_across_devices)
    loss_average: str = setting("micro_batch", choices=("micro_batch", "tokens"))
    weight_decay: float = setting(0.0, ge=0)
    grad_clip: float = setting(1.0, ge=0)
    # duration: weights are shares of video seconds | samples: of samples | concat: weight x count
    mix: str = setting("duration", choices=("duration", "samples", "concat"))
    shuffle_buffer: int = setting(256, ge=1, le=2**24)
    resolution: int = setting(0, ge=0, le=4096)  # frames stages: encoder input side (0: the model preset's)
    # the reference's conversation template (--version): plain (stage 1) | qwen_2 (stages 2-4)
    template: str = setting("qwen_2", choices=("qwen_2", "plain"))
    # reference: the template's own labels (qwen_2: assistant turns + every <|im_start|>, <|im_end|>, newline;
    # plain: everything after <image>) | assistant: qwen_2 with the answer text and its <|im_end|> only
    label_mode: str = setting("reference", choices=("reference", "assistant"),
                              aliases={"qwen_2": "reference", "llava": "reference"})
    # how a shuffle window becomes batches: none (random, stage 1) | length | modality_length (stages 2-4)
    group_by: str = setting("length", choices=_group_by)
    # shards ingested with other frame bounds than [min_frames, max_frames]: error (stop, exit 2) | ignore (warn)
    frame_bounds: str = setting("error", choices=("error", "ignore"))
    checkpoint_every: int = setting(0, ge=0)  # 0: the run's checkpoint_every
    exclude: list[str] = field(default_factory=list)

    @rule
    def plain_folder_name(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name: a plain folder name is required, got {show(self.name)}")

    @rule
    def encoder_trained_from_frames(self) -> None:
        if "encoder" in self.train and self.input == "tokens":
            raise ConfigError("train: the encoder cannot be trained from token shards (they hold a frozen "
                              "encoder's output); use input: frames for an encoder stage")

    @rule
    def encoder_as_stated(self) -> None:
        want = "trained" if "encoder" in self.train else "frozen"
        if self.encoder and self.encoder != want:
            raise ConfigError(f"encoder: says {self.encoder!r} but this stage's input/train make it {want!r}")

    frames_in_order = ordered("min_frames", "max_frames")

    @rule
    def steps_or_epochs(self) -> None:
        if (self.steps > 0) == (self.epochs > 0):
            raise ConfigError("steps/epochs: give exactly one of them (positive)")

    @rule
    def labels_of_the_template(self) -> None:
        if self.template == "plain" and self.label_mode == "assistant":
            raise ConfigError("label_mode: assistant applies to the qwen_2 template; plain has its own labels "
                              "(everything after <image>)")

    @rule
    def whole_micro_batches(self) -> None:
        if self.global_batch_size and self.global_batch_size % self.batch_size:
            raise ConfigError(f"global_batch_size: {self.global_batch_size} is not a multiple of batch_size "
                              f"{self.batch_size}")

    def part_lr(self, part: str) -> float:
        return float(getattr(self, f"lr_{part}") or self.lr)

    def chat_mode(self) -> str:
        """model.tokenizer.format_chat's label_mode for this stage's template and labels."""
        if self.template == "plain":
            return "plain"
        return "qwen_2" if self.label_mode == "reference" else "assistant"

    def accumulation(self, world: int) -> int:
        """Micro-steps per optimizer step on `world` workers: global_batch_size / (world x batch_size), which
        must be a whole number (ConfigError naming global_batch_size otherwise); 1 without a global batch."""
        if not self.global_batch_size:
            return 1
        per_step = max(1, world) * self.batch_size
        if self.global_batch_size % per_step:
            ok = [w for w in range(1, self.global_batch_size // self.batch_size + 1)
                  if self.global_batch_size % (w * self.batch_size) == 0]
            raise ConfigError(f"global_batch_size: {self.global_batch_size} is not a multiple of workers x "
                              f"batch_size = {max(1, world)} x {self.batch_size} = {per_step}; worker counts that "
                              f"divide it: {show(ok, 80)}")
        return self.global_batch_size // per_step


@dataclass
class TrainConfig(Settings):
    """A training recipe plus how to run it: `longvid train`'s flags override the recipe's top-level fields."""

    out: str = setting(required=True, help="output folder (stages/, ray/, summary.json): a local or shared path every "
                                           "worker can write (not s3://; shards may be on S3)")
    stages: list[StageConfig] = setting(required=True, flags=(),
                                        help="the curriculum's stages in order (only a recipe file holds them)")
    name: str = setting("train", help="the run's name (its Ray Train folder out/ray/NAME, plot titles; default train)")
    data_root: str = setting("", help="folder that relative shard globs and drop lists are taken from (default: the "
                                      "cwd)")
    model: str = setting("tiny", choices=MODEL_PRESETS, help="model preset (default tiny)")
    llm_path: str = setting("", help="local Qwen2 directory to start from (default: a randomly initialised LLM, for "
                                     "tests and the demo)")
    tokenizer: str = setting("test", help="'test' (built-in, the default) or a local tokenizer directory")
    init_checkpoint: str = setting("", help="LLaVA-style VideoChat-Flash checkpoint to start from (projector + LLM "
                                            "[+ encoder])")
    encoder_checkpoint: str = setting("", help="stand-alone UMT .pt for frame stages")
    num_workers: int = setting(2, ge=0, le=65536, help="Ray Train workers (default 2; 0: in this process, no Ray)")
    use_gpu: bool = setting(False, help="one GPU per worker (NCCL)")
    cpus_per_worker: float = setting(1.0, gt=0, le=1024, help="CPUs per Ray Train worker (1)")
    strategy: str = setting("ddp", choices=("ddp", "fsdp"), help="data parallel strategy (default ddp)")
    checkpoint_every: int = setting(100, ge=1, help="steps between checkpoints (100; a stage may set its own)")
    keep_checkpoints: int = setting(2, ge=1, help="Ray Train checkpoints kept (2)")
    max_failures: int = setting(3, ge=0, help="worker failures Ray Train recovers from (default 3)")
    seed: int = setting(0, ge=0, help="seed of the initial weights and the data order (recipe's, else 0)")
    exclude: list[str] = setting(default_factory=list, adds=True,
                                 help="audit drop list for every stage (one key per line, '#' comments); repeatable, "
                                      "added to the recipe's")
    torch_threads: int = setting(1, ge=0, le=4096, help="torch threads of a CPU worker (1)")
    prefetch: int = setting(2, ge=0, le=1024, help="batches each worker's loader reads ahead (2)")
    resume: bool = setting(False, help="continue from the last checkpoint in --out")
    ray_address: str = like(Shared, "ray_address")
    num_cpus: int = like(Shared, "num_cpus")
    record_keys: bool = setting(False, help="every rank writes the sample keys of each step to "
                                            "stages/<stage>/keys-rank<r>.jsonl")
    export: bool = setting(True, help="do not also write the final weights in the Hugging Face layout (out/export/: "
                                      "llm/ for transformers, vision.safetensors under the released names)")
    quiet: bool = like(Shared, "quiet")

    @rule
    def out_not_on_s3(self) -> None:
        if storage.is_s3(self.out):
            raise ConfigError("out: must be a local or shared path that every worker can write (not s3://); "
                              "shards may be on S3")

    @rule
    def stage_names_distinct(self) -> None:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"stages: duplicate stage names {show(dup)}")

    # ------------------------------------------------------------------ (de)serialisation for workers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        stages = [StageConfig(**{**s, "data": [DataEntry(**e) for e in s["data"]]}) for s in d["stages"]]
        return cls(**{**d, "stages": stages})

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        d = self.to_dict()
        keep = ("model", "llm_path", "tokenizer", "init_checkpoint", "encoder_checkpoint", "seed", "stages",
                "strategy", "exclude")
        return json.loads(json.dumps({k: d[k] for k in keep}))

    def resolve(self, p: str) -> str:
        if not p or storage.is_s3(p) or os.path.isabs(p) or not self.data_root:
            return p
        return os.path.join(self.data_root, p)


# ======================================================================================================== planning


def mixture_datasets(uri: str) -> list[tuple[str, str]]:
    """A LLaVA-style data mixture YAML (operators.mixture.read_mixture: safe YAML, validated) -> [(dataset name =
    json file stem, sampling strategy)]. ConfigError names the mixture file, the dataset and the field."""
    try:
        mix = read_mixture(uri)
    except ConfigError as e:
        raise ConfigError(f"mixture: {e}") from None
    return [(ds.name, str(ds.strategy)) for ds in mix.datasets]


def stage_schedule(cfg: TrainConfig, world: int) -> list[dict[str, Any]]:
    """Per stage: its sources indexed (counts, ranges, durations, frame bounds checked), the accumulation and the
    optimizer step count. ConfigError names the stage.

    Steps from epochs as HF Trainer counts them (dataloader_drop_last, as the released scripts): micro-batches per
    worker and epoch = samples // (workers x batch_size), optimizer steps per epoch = that // accumulation (at
    least 1), steps = ceil(epochs x steps per epoch)."""
    from longvid.pipelines.train_sources import DataError, index_source, source_media_type

    out = []
    for i, st in enumerate(cfg.stages):
        try:
            accum = st.accumulation(world)
        except ConfigError as e:
            raise ConfigError(f"stages[{i}] ({label(st.name)}): {e}") from None
        sources = []
        differ: list[str] = []
        for j, e in enumerate(st.data):
            applied: list[str] | None = None
            if e.mixture:
                items = [(n, [g.replace("{name}", n) for g in e.shards], samp)
                         for n, samp in mixture_datasets(cfg.resolve(e.mixture))]
                applied = []
            else:
                items = [(e.name or f"{st.name}.data[{j}]", list(e.shards), e.sampling)]
            for name, globs, samp in items:
                try:
                    sp = index_source(name, globs, kind=st.input, weight=e.weight, sampling=samp, root=cfg.data_root,
                                     frame_bounds=(st.min_frames, st.max_frames), bounds_policy=st.frame_bounds,
                                     applied=applied, bounds_found=differ)
                except DataError as err:
                    if e.mixture and e.missing == "skip" and "no shard matches" in str(err):
                        log.warning("stage %s: mixture dataset %s has no shards; skipped", st.name, name)
                        continue
                    raise ConfigError(f"stages[{i}] ({st.name}): data[{j}]: {err}") from None
                if e.mixture and st.mix == "duration" and source_media_type(sp) != "video":
                    raise ConfigError(f"stages[{i}] ({st.name}): mix: duration weighs sources by video seconds, but "
                                      f"mixture dataset {name} holds {source_media_type(sp)} samples; use mix: "
                                      "concat (the reference concatenates a mixture's datasets)")
                if applied and applied[-1] == name:
                    log.debug("stage %s: mixture dataset %s: sampling_strategy %s was applied at ingest; all %d "
                             "samples taken", st.name, name, samp, sp.nsamples)
                sources.append(sp)
        if not sources:
            raise ConfigError(f"stages[{i}] ({st.name}): data: no source has any shard")
        if differ:  # frame_bounds: ignore (an error otherwise): said once, the shards at --log-level debug
            log.warning("stage %s: %d shard folder(s) were ingested with other frame bounds than the stage's %d-%d; "
                        "frame_bounds: ignore: trained as they are (--log-level debug names them)", st.name,
                        len(differ), st.min_frames, st.max_frames)
        total = sum(s.nsamples for s in sources)
        per_epoch = max(1, total // (max(1, world) * st.batch_size) // accum)
        steps = st.steps or math.ceil(st.epochs * per_epoch)
        out.append({"stage": st.name, "sources": [s.to_dict() for s in sources], "samples": total, "steps": steps,
                    "accum": accum, "global_batch": max(1, world) * st.batch_size * accum})
    return out


def stage_dir(cfg: TrainConfig, st: StageConfig) -> str:
    """out/stages/<stage>: the stage's metrics, plot, final weights and done.json."""
    return os.path.join(cfg.out, "stages", st.name)
