"""The settings of `longvid encode` (EncodeConfig), declared once: the job file's keys, the flags, their help, checks.

A module of its own, apart from pipelines/encode.py (which imports pyarrow), so that `longvid encode --help`
imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longvid.model.constants import MODEL_PRESETS
from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.operators.settings import DTYPE_ALIASES, DTYPE_NAMES, TORCH_DTYPES, Settings, Shared, like, rule, setting

DTYPES = {"bf16": "float16", "fp16": "float16", "fp32": "float32"}  # --dtype -> stored numpy dtype


@dataclass
class EncodeConfig(Settings):
    """The settings of one encode job."""

    # an ingest job's output folder (or s3://bucket/prefix): manifests/ + shards/
    shards: str = setting(required=True, help="ingest output folder or s3://bucket/prefix (its manifests/ and shards/)")
    out: str = setting(required=True, help="output folder or s3://bucket/prefix")
    checkpoint: str = setting("", help="UMT-L .pt file or LLaVA-style safetensors folder (local or s3://); default: "
                                       "random weights (tests only)")
    model: str = setting("videochat-flash-7b", choices=MODEL_PRESETS,
                         help="encoder sizes: a model preset (default videochat-flash-7b: UMT-L; tiny: tests)")
    resolution: int = setting(0, choices=(0, 224, 448), help="frame side (default 0: the ingest frames')")
    actors: int = setting(0, ge=0, help="encoder actors (default: one per --gpus-per-actor GPUs; on CPU, the CPUs "
                                        "minus one, per --cpus-per-actor)")
    gpus_per_actor: float = setting(1.0, ge=0, le=1024, help="GPUs per encoder actor when the cluster has GPUs (1)")
    cpus_per_actor: float = setting(1.0, gt=0, le=1024, help="CPUs per encoder actor (1)")
    batch_clips: int = setting(16, ge=1, le=65536, help="4-frame clips per forward pass, across samples (16)")
    dtype: str = setting("bf16", choices=DTYPE_NAMES, aliases=DTYPE_ALIASES,
                         help="compute dtype (default bf16; or the torch names "
                              f"{', '.join(TORCH_DTYPES[n] for n in DTYPE_NAMES)}): autocast on CUDA only (the CPU "
                              "computes in fp32), tokens stored float16 (float32 for fp32)")
    shard_size_mb: float = setting(1024.0, gt=0, le=2**20, help="target token tar size in MB (1024)")
    limit_units: int = setting(0, ge=0, help="only the first N ingest units (default 0: all; smoke runs)")
    seed: int = setting(0, help="seed of the random weights when there is no checkpoint, the same in every actor (0)")
    cache_dir: str = setting("", help="where S3 checkpoints are downloaded on each node (default "
                                      "~/.cache/longvid/checkpoints)")
    scratch_dir: str = setting("", help="with an s3:// --out: the local folder, on each actor's node, where a unit's "
                                        "token tars wait for their upload (default: the system temp folder)")
    ray_address: str = like(Shared, "ray_address")
    num_cpus: int = like(Shared, "num_cpus")
    s3_endpoint_url: str = like(Shared, "s3_endpoint_url")
    s3_profile: str = like(Shared, "s3_profile")
    s3_region: str = like(Shared, "s3_region")
    quiet: bool = like(Shared, "quiet")

    @rule
    def out_is_not_shards(self) -> None:
        if storage.join(self.shards, "") == storage.join(self.out, ""):
            raise ConfigError("out: must differ from shards (the ingest output is read, never written)")

    @property
    def store_dtype(self) -> str:
        return DTYPES[self.dtype]

    def fingerprint(self, resolution: int) -> dict[str, Any]:
        """Settings that change what is written: a re-run into the same --out must match them."""
        return {"shards": self.shards, "checkpoint": self.checkpoint,  # job.json holds them redacted (JobOutput)
                "model": self.model, "resolution": resolution, "dtype": self.dtype,
                "shard_size_mb": self.shard_size_mb, "seed": self.seed if not self.checkpoint else None}
