"""The settings of `longvid niah build` and `longvid niah eval` (NiahBuildConfig, NiahEvalConfig), declared once: the
job files' keys, the flags, their help and checks; `parse_dropout` reads the eval's --visual-dropout.

A module of its own, apart from pipelines/niah_build.py and niah_eval.py (which import pyarrow), so that
`longvid niah ... --help` imports nothing heavy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from longvid.model.constants import MODEL_PRESETS
from longvid.operators import niah, storage
from longvid.operators.errors import ConfigError
from longvid.operators.settings import TORCH_DTYPES, Settings, Shared, like, rule, setting, show

DTYPES = ("float16", "float32")  # the stored token dtypes of a set (numpy names)
SCORING = ("greedy", "options")


@dataclass
class NiahBuildConfig(Settings):
    """The settings of `longvid niah build`."""

    haystack: str = setting(required=True, help="ingest job folder, shards folder, one .tar shard, or a long video "
                                                "file")
    needles: str = setting(required=True, help="NIAH spec JSON in the released format (niah-coco-singlehop_20.json "
                                               "/ niah-coco-multihop-100.json)")
    images: str = setting(required=True, help="folder with the needle images, named as the spec's image fields")
    out: str = setting(required=True, help="output folder of the set (local)")
    frames: list[int] = setting(default_factory=lambda: list(niah.DEFAULT_LENGTHS), ge=1, le=10_000_000, comma=True,
                                help="haystack lengths in frames, comma-separated (default 1000,2000,...,10000)")
    depths: list[float] = setting(default_factory=lambda: list(niah.DEFAULT_DEPTHS), ge=0, le=1, comma=True,
                                  help="single-hop needle depths in [0, 1], comma-separated (default 0,0.2,...,1.0)")
    multi_hop: bool = setting(False, help="the spec is multi-hop (images chains)")
    model: str = setting("videochat-flash-7b", choices=MODEL_PRESETS,
                         help="model preset whose encoder makes the tokens (default videochat-flash-7b)")
    img_size: int = setting(0, ge=0, le=4096, help="encoder input size (default: the preset's)")
    encoder: str = setting("", help="encoder weights: UMT-L_f4_vision.pt or a VideoChat-Flash checkpoint (required "
                                    "except with --model tiny, which may use random weights)")
    seed: int = setting(0, ge=0, help="seed of random encoder weights (tiny only)")
    device: str = setting("auto", help="auto (default), cpu, cuda, cuda:N")
    clips_per_pass: int = setting(8, ge=1, le=65536, help="4-frame clips per encoder pass (default 8)")
    # the stored token dtype, spelled as every --dtype (fp16 | fp32); kept as its numpy name
    dtype: str = setting("float16", choices=DTYPES, aliases={n: TORCH_DTYPES[n] for n in ("fp16", "fp32")},
                         metavar="{fp16,fp32}", help="stored token dtype (default fp16; or the torch names "
                                                     "float16, float32)")
    limit_items: int = setting(0, ge=0, help="only the first N spec items (default 0: all)")
    threads: int = setting(0, ge=0, le=4096, help="torch CPU threads while encoding (default: torch's)")
    ray_address: str = setting("", help="a Ray cluster whose tasks read and decode the haystack shards (default: "
                                        "RAY_ADDRESS, else read here; a video file is always decoded here)")
    quiet: bool = like(Shared, "quiet")

    @rule
    def out_is_local(self) -> None:
        if storage.is_s3(self.out):
            raise ConfigError(f"out: {self.out}: a NIAH set is written to a local folder (the eval memory-maps it)")

    @rule
    def lengths_and_depths(self) -> None:
        """Distinct lengths and depths (kept as the numbers they are)."""
        self.frames = niah.check_lengths(self.frames)
        self.depths = niah.check_depths(self.depths)

    @rule
    def encoder_weights(self) -> None:
        if not self.encoder and self.model != "tiny":
            raise ConfigError(f"encoder: give the encoder weights for model preset {self.model!r} (UMT-L_f4_vision.pt "
                              "or a VideoChat-Flash checkpoint); random weights are only allowed with --model tiny")

    @rule
    def device_name(self) -> None:
        n = self.device[5:] if self.device.startswith("cuda:") else "0"
        if not (self.device in ("auto", "cpu", "cuda") or n.isascii() and n.isdigit() and len(n) <= 4):
            raise ConfigError(f"device: must be auto, cpu or cuda[:N], got {show(self.device)}")


@dataclass
class NiahEvalConfig(Settings):
    """The settings of `longvid niah eval`."""

    set: str = setting(required=True, help="a NIAH set folder (niah build --out)")
    checkpoint: str = setting(required=True, help="VideoChat-Flash (LLaVA-style) checkpoint file/folder, a "
                                                  "`longvid train` stage model.safetensors, or random:SEED "
                                                  "(untrained, for demos)")
    out: str = setting("", help="results folder (default <set>/eval)")
    model: str = setting("", choices=("", *MODEL_PRESETS), help="model preset (default: the preset that built the set)")
    tokenizer: str = setting("", help="tokenizer folder, or 'test' (tiny model); default: the checkpoint folder")
    visual_dropout: str = setting("off", help="off (default), released, or MODE[:LAYERS[:RATIOS]], "
                                              "e.g. uniform0_attention:4,18:1,0.75,0.25")
    scoring: str = setting("greedy", choices=SCORING,
                           help="greedy (default: greedy decoding over the whole vocabulary, correct when the decoded "
                                "answer matches the letter, as the released eval) | options (teacher-forced argmax "
                                "over the option letters)")
    max_new_tokens: int = setting(16, ge=1, le=4096, help="greedy decoding stops at EOS or after N tokens (default 16)")
    num_actors: int = setting(0, ge=0, le=65536, help="scoring actors (default: one per GPU, else 1)")
    rows_per_task: int = setting(4, ge=1, le=65536, help="inputs per actor call (default 4)")
    limit: int = setting(0, ge=0, help="only the first N inputs of the index (default 0: all)")
    device: str = setting("auto", choices=("auto", "cpu", "cuda"),
                          help="auto (default: GPU actors when the cluster has GPUs), cpu or cuda")
    ray_address: str = like(Shared, "ray_address")
    num_cpus: int = like(Shared, "num_cpus")
    threads: int = setting(0, ge=0, le=4096,
                           help="torch threads of a CPU actor (default 0: Ray's, 1 for a 1-CPU actor)")
    use_ray: bool = setting(True, flags=("--no-ray",),
                            help="score in this process instead of Ray actors (debugging, small sets)")
    quiet: bool = like(Shared, "quiet")

    @rule
    def set_is_built(self) -> None:
        if not os.path.isfile(os.path.join(self.set, "set.json")):  # os.path: False for a name too long, no raise
            raise ConfigError(f"set: {self.set}: no set.json (not a finished NIAH set; run `longvid niah build`)")

    @rule
    def checkpoint_exists(self) -> None:
        if not os.path.exists(self.checkpoint) and not self.checkpoint.startswith("random:"):
            raise ConfigError(f"checkpoint: {self.checkpoint}: not found")

    @rule
    def dropout_spec(self) -> None:
        parse_dropout(self.visual_dropout)


def parse_dropout(spec: str, num_layers: int | None = None):
    """`off` -> None; `released` -> DropoutConfig(); `MODE[:LAYERS[:RATIOS]]` -> DropoutConfig(MODE, ...)."""
    from longvid.model.dropout import DropoutConfig

    s = (spec or "off").strip()
    if s in ("off", "none", ""):
        return None
    try:
        if s == "released":
            d = DropoutConfig()
        else:
            parts = s.split(":")
            if len(parts) > 3:
                raise ValueError("expected MODE[:LAYERS[:RATIOS]]")
            kw: dict[str, Any] = {"mode": parts[0]}
            if len(parts) > 1:
                kw["layers"] = tuple(int(x) for x in parts[1].split(",") if x)
            if len(parts) > 2:
                kw["ratios"] = tuple(float(x) for x in parts[2].split(",") if x)
            d = DropoutConfig(**kw)
    except ValueError as e:
        raise ConfigError(f"visual_dropout: {spec!r}: {e}") from None
    if num_layers is not None and max(d.layers) >= num_layers:
        raise ConfigError(f"visual_dropout: layers {d.layers} must stay below the LLM's {num_layers} layers")
    return d
