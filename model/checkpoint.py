"""Load the released VideoChat-Flash weight layouts by name, with a report of every key.

Layouts:
- stand-alone encoder file (`UMT-L_f4_vision.pt`, torch.load with weights_only=True): keys `encoder.*`; its final
  norm is `encoder.norm.*` (renamed to `vision_layernorm`, as the released loader does) or already
  `encoder.vision_layernorm.*`. Blocks past the used depth (blocks.23 of UMT-L: select layer -2) are skipped.
- LLaVA-style checkpoint (safetensors, one file or shards with `model.safetensors.index.json`):
  `model.vision_tower.vision_tower.encoder.*` (encoder), `model.mm_projector.mlp.{0,2}.*` (projector),
  `model.embed_tokens.*`, `model.layers.*`, `model.norm.*`, `lm_head.*` (the Qwen2 LLM).

Every checkpoint key ends up `loaded`, `skipped` (known and deliberately not used, with the reason) or `unused`
(not understood); every model key not loaded is `missing` (a tied lm_head counts as loaded with the embeddings).
`strict=True` raises CheckpointError when anything is missing or unused. A shape mismatch is always an error
naming the file, the key and both shapes. Tensors are read one at a time (safetensors) and copied into the
existing parameters, converting dtype. Paths are local: downloading from object storage is the job layer's work.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from longvid.model.hico import HiCoEncoder
from longvid.model.umt import UMT

if TYPE_CHECKING:  # model.llm imports transformers: keep `load_encoder` light for the encode workers
    from longvid.model.llm import VideoLLM

ENCODER_PREFIXES = ("model.vision_tower.vision_tower.encoder.", "encoder.")
LLAVA_VISION = "model.vision_tower.vision_tower.encoder."
LLAVA_PROJECTOR = "model.mm_projector."
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and the key."""


@dataclass
class LoadReport:
    """What happened to every key: `loaded` / `missing` are model keys (prefixed as in the target module),
    `unused` and `skipped` ({key: reason}) are checkpoint keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unused

    def summary(self) -> str:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")

        parts = [f"{self.source}: {len(self.loaded)} loaded, {len(self.skipped)} skipped"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing [{head(self.missing)}]")
        if self.unused:
            parts.append(f"{len(self.unused)} unused [{head(self.unused)}]")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def checkpoint_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint: a single file, or a directory with an index (shards) or one file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise CheckpointError(f"{p}: checkpoint not found")
    index = p / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (weight_map): {e}") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map must be a mapping of key -> shard file")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files not found: {', '.join(missing)}")
        return [p / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).is_file():
            return [p / name]
    raise CheckpointError(f"{p}: no {INDEX_FILE}, model.safetensors or pytorch_model.bin in this directory")


def iter_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (key, tensor, file) over a checkpoint, one tensor at a time for safetensors."""
    for f in checkpoint_files(path):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    for k in sf.keys():
                        yield k, sf.get_tensor(k), f
            except (OSError, RuntimeError, ValueError) as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{f}: not a readable safetensors file: {e}") from None
        else:
            try:
                obj = torch.load(str(f), map_location="cpu", weights_only=True)
            except Exception as e:  # pickle / zip errors come in many types
                raise CheckpointError(f"{f}: not a readable torch weights file: {e}") from None
            for k, v in _state_dict_of(obj, f).items():
                yield k, v, f


def _state_dict_of(obj: object, f: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj  # type: ignore[return-value]
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict", "module"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise CheckpointError(f"{f}: expected a mapping of key -> tensor (or under 'model' / 'state_dict')")


# --------------------------------------------------------------------------------------------------------------
# Assigning
# --------------------------------------------------------------------------------------------------------------

# A key mapper returns ("load", target key) | ("skip", reason) | ("unused", "").
Mapper = Callable[[str], tuple[str, str]]


def _assign(target: nn.Module, path: str | Path, mapper: Mapper, strict: bool, tied: dict[str, str]) -> LoadReport:
    params = target.state_dict(keep_vars=True)
    report = LoadReport(source=str(path))
    seen: set[str] = set()
    for key, tensor, f in iter_tensors(path):
        action, value = mapper(key)
        if action == "skip":
            report.skipped[key] = value
            continue
        if action != "load" or value not in params:
            report.unused.append(key)
            continue
        dest = params[value]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{f}: key {key} -> {value}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(dest.shape)}"
            )
        with torch.no_grad():
            dest.copy_(tensor)
        seen.add(value)
        report.loaded.append(value)
    for name in params:
        if name in seen:
            continue
        if name in tied and tied[name] in seen:
            continue
        report.missing.append(name)
    if strict and not report.ok:
        raise CheckpointError("strict load failed: " + report.summary())
    return report


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _encoder_key(rest: str, used_depth: int) -> tuple[str, str]:
    """Checkpoint key inside the encoder (prefix removed) -> action for a UMT with `used_depth` blocks."""
    if rest.startswith("norm."):
        rest = "vision_layernorm." + rest[len("norm.") :]
    m = _BLOCK.match(rest)
    if m and int(m.group(1)) >= used_depth:
        return "skip", f"block {m.group(1)} is past the {used_depth} used blocks (select layer)"
    return "load", rest


def load_encoder(model: HiCoEncoder | UMT, path: str | Path, *, strict: bool = False) -> LoadReport:
    """Load UMT weights from the stand-alone `.pt` (keys `encoder.*`) or a LLaVA-style checkpoint
    (`model.vision_tower.vision_tower.encoder.*`; other keys there are skipped as not the encoder's)."""
    umt = model.encoder if isinstance(model, HiCoEncoder) else model
    used = umt.cfg.used_depth

    def mapper(key: str) -> tuple[str, str]:
        for prefix in ENCODER_PREFIXES:
            if key.startswith(prefix):
                return _encoder_key(key[len(prefix) :], used)
        if key.startswith(("model.", "lm_head.")):
            return "skip", "not an encoder key (LLaVA checkpoint: projector / LLM)"
        return "unused", ""

    return _assign(umt, path, mapper, strict, tied={})


def load_videochat_flash(
    model: "VideoLLM",
    path: str | Path,
    *,
    encoder: HiCoEncoder | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load a LLaVA-style VideoChat-Flash checkpoint into `model` (projector + LLM) and, when given, `encoder`.

    Model key names in the report: `projector.*`, `llm.*`, `encoder.*`. Without `encoder` the vision-tower keys
    are skipped (the encode job loads them with `load_encoder`).
    """
    used = encoder.cfg.used_depth if encoder is not None else 0

    class _Joint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projector = model.projector
            self.llm = model.llm
            if encoder is not None:
                self.encoder = encoder.encoder

    joint = _Joint()

    def mapper(key: str) -> tuple[str, str]:
        if key.startswith(LLAVA_VISION):
            if encoder is None:
                return "skip", "vision tower (no encoder given)"
            action, value = _encoder_key(key[len(LLAVA_VISION) :], used)
            return (action, "encoder." + value) if action == "load" else (action, value)
        if key.startswith(LLAVA_PROJECTOR):
            return "load", "projector." + key[len(LLAVA_PROJECTOR) :]
        if key.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")):
            return "load", "llm." + key
        if key.startswith("lm_head."):
            return "load", "llm." + key
        return "unused", ""

    tied = {}
    if getattr(model.llm.config, "tie_word_embeddings", False):
        tied["llm.lm_head.weight"] = "llm.model.embed_tokens.weight"
    return _assign(joint, path, mapper, strict, tied)
