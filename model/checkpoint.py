"""Load the released VideoChat-Flash weight layouts by name, with a report of every key.

Layouts:
- stand-alone encoder file (`UMT-L_f4_vision.pt`, torch.load with weights_only=True): keys `encoder.*`; its final
  norm is `encoder.norm.*` (renamed to `vision_layernorm`, as the released loader does) or already
  `encoder.vision_layernorm.*`. Blocks past the used depth (blocks.23 of UMT-L: select layer -2) are skipped.
- LLaVA-style checkpoint (safetensors, one file or shards with `model.safetensors.index.json`):
  `model.vision_tower.vision_tower.encoder.*` (encoder), `model.mm_projector.mlp.{0,2}.*` (projector),
  `model.embed_tokens.*`, `model.layers.*`, `model.norm.*`, `lm_head.*` (the Qwen2 LLM).
- LongVid's own: `VideoLLM.state_dict()` (`llm.*`, `projector.*`) or the train job's stage weights (`vlm.*`, with
  `encoder.*` on recipes with frame stages), in safetensors or a torch file.
- An exported folder (`export_checkpoint`): `llm/` a Hugging Face Qwen2 checkpoint (`config.json` + safetensors,
  whose keys are the LLaVA LLM names) and `vision.safetensors` (encoder + projector under the released names):
  together exactly a LLaVA-style checkpoint, read as one.

`load_vlm` recognises the layout from the key names; nothing outside this module reads checkpoint key names.

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

from longvid.model.constants import (
    ENCODER_PREFIX,
    LLAVA_LLM_PREFIXES,
    LLAVA_PROJECTOR_PREFIX,
    LLAVA_VISION_PREFIX,
    LLM_PREFIX,
    PROJECTOR_PREFIX,
    STANDALONE_ENCODER_PREFIX,
    VLM_PREFIX,
)

ENCODER_PREFIXES = (LLAVA_VISION_PREFIX, STANDALONE_ENCODER_PREFIX)
INDEX_FILE = "model.safetensors.index.json"
VISION_FILE = "vision.safetensors"  # an exported folder's encoder + projector (export_checkpoint)
LLM_DIR = "llm"  # an exported folder's Hugging Face LLM


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and the key."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint that does not fit the model: a shape differs, or (strict) keys are missing / unused."""


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
    if (p / VISION_FILE).is_file() and (p / LLM_DIR / "config.json").is_file():  # an exported folder
        return [p / VISION_FILE, *checkpoint_files(p / LLM_DIR)]
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
    for name in ("model.safetensors", "pytorch_model.bin", VISION_FILE):  # VISION_FILE: an export's encoder only
        if (p / name).is_file():
            return [p / name]
    raise CheckpointError(f"{p}: no {INDEX_FILE}, model.safetensors, pytorch_model.bin or {VISION_FILE} in this "
                          "directory")


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
            raise CheckpointMismatch(
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
        raise CheckpointMismatch("strict load failed: " + report.summary())
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


class _Joint(nn.Module):
    """The parts one checkpoint fills, under the report's names: `projector.*`, `llm.*` and, when given, `encoder.*`
    (`umt`: the ViT itself, as the released names hold it; otherwise the HiCoEncoder, as the train job saves it)."""

    def __init__(self, model: "VideoLLM", encoder: HiCoEncoder | None, umt: bool) -> None:
        super().__init__()
        self.projector = model.projector
        self.llm = model.llm
        if encoder is not None:
            self.encoder = encoder.encoder if umt else encoder


def _tied(model: "VideoLLM") -> dict[str, str]:
    """A tied lm_head is loaded with the embeddings (and the other way round: a deduplicated save keeps either)."""
    if not getattr(model.llm.config, "tie_word_embeddings", False):
        return {}
    head, emb = "llm.lm_head.weight", "llm.model.embed_tokens.weight"
    return {head: emb, emb: head}


def load_videochat_flash(
    model: "VideoLLM",
    path: str | Path,
    *,
    encoder: HiCoEncoder | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load a LLaVA-style VideoChat-Flash checkpoint (or an exported folder) into `model` (projector + LLM) and,
    when given, `encoder`.

    Model key names in the report: `projector.*`, `llm.*`, `encoder.*`. Without `encoder` the vision-tower keys
    are skipped (the encode job loads them with `load_encoder`).
    """
    used = encoder.cfg.used_depth if encoder is not None else 0

    def mapper(key: str) -> tuple[str, str]:
        if key.startswith(LLAVA_VISION_PREFIX):
            if encoder is None:
                return "skip", "vision tower (no encoder given)"
            action, value = _encoder_key(key[len(LLAVA_VISION_PREFIX) :], used)
            return (action, "encoder." + value) if action == "load" else (action, value)
        if key.startswith(LLAVA_PROJECTOR_PREFIX):
            return "load", "projector." + key[len(LLAVA_PROJECTOR_PREFIX) :]
        if key.startswith(LLAVA_LLM_PREFIXES):
            return "load", "llm." + key
        return "unused", ""

    tied = {k: v for k, v in _tied(model).items() if k.endswith("lm_head.weight")}
    return _assign(_Joint(model, encoder, umt=True), path, mapper, strict, tied)


def load_longvid(
    model: "VideoLLM",
    path: str | Path,
    *,
    encoder: HiCoEncoder | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load LongVid's own weights: `VideoLLM.state_dict()` names (`llm.*`, `projector.*`) or the train job's stage
    weights (`vlm.llm.*`, `vlm.projector.*`, `encoder.*`). Without `encoder` the `encoder.*` keys are skipped."""

    def mapper(key: str) -> tuple[str, str]:
        k = key[len(VLM_PREFIX) :] if key.startswith(VLM_PREFIX) else key
        if k.startswith((LLM_PREFIX, PROJECTOR_PREFIX)):
            return "load", k
        if k.startswith(ENCODER_PREFIX):
            return ("load", k) if encoder is not None else ("skip", "encoder (no encoder given)")
        return "unused", ""

    return _assign(_Joint(model, encoder, umt=False), path, mapper, strict, _tied(model))


def checkpoint_keys(path: str | Path) -> list[str]:
    """The key names of a checkpoint (safetensors: read from the headers only)."""
    keys: list[str] = []
    for f in checkpoint_files(path):
        if f.suffix != ".safetensors":
            return [k for k, _, _ in iter_tensors(path)]
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                keys += list(sf.keys())
        except (OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{f}: not a readable safetensors file: {e}") from None
    return keys


def checkpoint_layout(path: str | Path) -> str:
    """"videochat-flash" (the released LLaVA-style names, or an exported folder) or "longvid" (our own names)."""
    keys = checkpoint_keys(path)
    if any(k.startswith((LLAVA_PROJECTOR_PREFIX, "model.layers.", "model.embed_tokens.")) for k in keys):
        return "videochat-flash"
    if any(k.startswith((LLM_PREFIX, PROJECTOR_PREFIX, VLM_PREFIX + LLM_PREFIX, VLM_PREFIX + PROJECTOR_PREFIX))
           for k in keys):
        return "longvid"
    raise CheckpointError(f"{path}: neither a VideoChat-Flash (model.mm_projector.*, model.layers.*) nor a LongVid "
                          f"VideoLLM (llm.*, projector.*) checkpoint")


def load_vlm(
    model: "VideoLLM",
    path: str | Path,
    *,
    encoder: HiCoEncoder | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load any VideoLLM checkpoint (the layout recognised from its key names) into `model` and, when given,
    `encoder`."""
    load = load_videochat_flash if checkpoint_layout(path) == "videochat-flash" else load_longvid
    return load(model, path, encoder=encoder, strict=strict)


def tokenizer_dir(path: str | Path) -> Path | None:
    """The folder holding a checkpoint's tokenizer files (a checkpoint folder, or an exported folder's `llm/`)."""
    p = Path(path)
    for d in (p, p / LLM_DIR):
        if d.is_dir() and (d / "tokenizer_config.json").is_file():
            return d
    return None


def encoder_weight_map(weight_map: dict[str, str]) -> dict[str, str]:
    """The entries of a sharded checkpoint's index that hold vision-tower keys (what the encode job needs)."""
    return {k: v for k, v in weight_map.items() if k.startswith(LLAVA_VISION_PREFIX)}


# --------------------------------------------------------------------------------------------------------------
# Writing: the released names
# --------------------------------------------------------------------------------------------------------------


def released_state_dict(
    model: "VideoLLM | None" = None, encoder: HiCoEncoder | None = None, *, llm: bool = True
) -> dict[str, torch.Tensor]:
    """Our weights under the released VideoChat-Flash names: `model.vision_tower.vision_tower.encoder.*`,
    `model.mm_projector.mlp.{0,2}.*` and (`llm`) the Qwen2 names (`lm_head.weight` left out when tied)."""
    sd: dict[str, torch.Tensor] = {}
    if encoder is not None:
        sd.update({LLAVA_VISION_PREFIX + k: v for k, v in encoder.encoder.state_dict().items()})
    if model is not None:
        sd.update({LLAVA_PROJECTOR_PREFIX + k: v for k, v in model.projector.state_dict().items()})
        if llm:
            sd.update(model.llm.state_dict())
            if getattr(model.llm.config, "tie_word_embeddings", False):
                sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def export_checkpoint(
    model: "VideoLLM", out_dir: str | Path, *, encoder: HiCoEncoder | None = None, tokenizer=None
) -> Path:
    """Write a checkpoint other trainers can use: `out_dir/llm/` the Qwen2 LLM in the Hugging Face layout
    (`config.json`, `generation_config.json`, safetensors; the tokenizer files when `tokenizer` is given), which
    `transformers.AutoModelForCausalLM.from_pretrained` loads, and `out_dir/vision.safetensors`, the projector (and
    `encoder`) under the released names. `load_vlm(model, out_dir, encoder=...)` reads it back.

    `out_dir` must not exist or be empty (an export never overwrites); it is written beside and renamed into place.
    """
    import os
    import shutil

    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: already exists and is not empty (an export never overwrites)")
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar is not the job's progress
    try:
        model.llm.save_pretrained(str(tmp / LLM_DIR), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / LLM_DIR))
        save_file(released_state_dict(model, encoder, llm=False), str(tmp / VISION_FILE), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar:
            hf_logging.enable_progress_bar()
    return out
