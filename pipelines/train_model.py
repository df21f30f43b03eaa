"""Train: the model a stage trains (TrainModel: the VLM and, on recipes with frame stages, the encoder), which of
its parts train, how it is wrapped for data parallelism (DDP or FSDP), and the export of a run's final weights.

The parts are built by model/build.py (preset + weights -> encoder, projector, LLM); parameters are named
`vlm.projector.*`, `vlm.llm.*` and `encoder.*` (model/constants.py), and `part_of` maps a name to its part.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from longvid.model.constants import ENCODER_PREFIX, LLM_PREFIX, PROJECTOR_PREFIX, VLM_PREFIX
from longvid.operators.errors import ConfigError
from longvid.pipelines.train_config import PARTS, TrainConfig

log = logging.getLogger("longvid.train")


def build_tokenizer(cfg: TrainConfig):
    from longvid.model.tokenizer import build_test_tokenizer, load_tokenizer

    if cfg.tokenizer == "test":
        return build_test_tokenizer()
    return load_tokenizer(cfg.resolve(cfg.tokenizer))


def needs_encoder(cfg: TrainConfig) -> bool:
    return any(s.input == "frames" for s in cfg.stages)


class TrainModel(nn.Module):
    """`vlm` (VideoLLM: projector + Qwen2) and, on recipes with frame stages, `encoder` (HiCoEncoder)."""

    def __init__(self, vlm, encoder=None):
        super().__init__()
        self.vlm = vlm
        self.encoder = encoder

    def visual_tokens(self, visual, kind: str, side: int):
        """Token stages: the stored tokens. Frame stages: frames -> UMT -> merged tokens [clips * 64, D]."""
        if kind == "tokens":
            return visual
        from longvid.model.umt import preprocess

        out = []
        for v in visual:
            if v.ndim == 2:  # a text-only sample: no frames, no tokens [0, D]
                out.append(v.float())
                continue
            x = preprocess(v, side).to(next(self.encoder.parameters()).device)  # [3, T, S, S]
            tok = self.encoder(x[None])  # [1, C, 64, D]
            out.append(tok.reshape(-1, tok.shape[-1]))
        return out

    def forward(self, input_ids, attention_mask, labels, visual, kind: str = "tokens", side: int = 224,
                splits=None):
        vis = self.visual_tokens(visual, kind, side)
        if splits:  # a multi-image sample: one part per <image>, in order (VideoLLM.splice)
            vis = [v if sp is None or len(sp) < 2 else list(v.split(list(sp))) for v, sp in zip(vis, splits)]
        loss = self.vlm(input_ids, vis, attention_mask=attention_mask, labels=labels).loss
        if all(v.shape[0] == 0 for v in visual if v.ndim == 2) and all(v.ndim == 2 for v in visual):
            # text-only micro-batch: the visual parts take part with a zero gradient, as the reference's
            # cur_image_features[0:0], so DDP finds every trained parameter used
            parts = [self.vlm.projector] + ([self.encoder] if self.encoder is not None else [])
            loss = loss + 0.0 * sum(p.sum() for m in parts for p in m.parameters() if p.requires_grad)
        return loss


def build_model(cfg: TrainConfig, tokenizer) -> TrainModel:
    """The stage-0 model (model/build.py): preset (random, seeded) or local LLM, optional released checkpoint and
    encoder."""
    from longvid.model.build import build_encoder, build_vlm
    from longvid.model.checkpoint import load_vlm
    from longvid.model.config import get_config
    from longvid.model.tokenizer import image_token_id

    mcfg = get_config(cfg.model)
    tid = image_token_id(tokenizer)
    if not cfg.llm_path and tid >= mcfg.llm["vocab_size"]:
        raise ConfigError(f"tokenizer: image token id {tid} is outside the {cfg.model} vocabulary")
    vlm, _ = build_vlm(cfg.model, tid, llm_path=cfg.resolve(cfg.llm_path) if cfg.llm_path else None, seed=cfg.seed)
    encoder = None
    if needs_encoder(cfg):
        side = max([s.resolution for s in cfg.stages if s.input == "frames"] + [0]) or mcfg.umt.img_size
        weights = cfg.resolve(cfg.encoder_checkpoint) if cfg.encoder_checkpoint else None
        encoder, _ = build_encoder(cfg.model, img_size=side, weights=weights)
    if cfg.init_checkpoint:
        rep = load_vlm(vlm, cfg.resolve(cfg.init_checkpoint), encoder=encoder)
        log.info("init checkpoint: %s", rep.summary())
    return TrainModel(vlm, encoder)


def export_final(cfg: TrainConfig, model_path: str) -> str:
    """The run's final weights as a checkpoint other trainers load (model/checkpoint.py export_checkpoint):
    `out/export/llm/` in the Hugging Face layout and `out/export/vision.safetensors` under the released names.
    An export an earlier run of this recipe wrote is kept as it is (an export never overwrites)."""
    from longvid.model.checkpoint import export_checkpoint, load_vlm

    dest = os.path.join(cfg.out, "export")
    if os.path.isdir(dest) and os.listdir(dest):
        return dest
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tok)
    load_vlm(model.vlm, model_path, encoder=model.encoder, strict=True)
    return str(export_checkpoint(model.vlm, dest, encoder=model.encoder,
                                 tokenizer=None if cfg.tokenizer == "test" else tok))


def part_of(name: str) -> str:
    if name.startswith(VLM_PREFIX + PROJECTOR_PREFIX):
        return "projector"
    if name.startswith(VLM_PREFIX + LLM_PREFIX):
        return "llm"
    if name.startswith(ENCODER_PREFIX):
        return "encoder"
    raise ValueError(f"parameter {name} belongs to no part")


def set_trainable(model, parts: list[str]) -> dict[str, int]:
    """requires_grad on the parameters of `parts` only; returns the trained parameter count per part."""
    counts = {p: 0 for p in PARTS}
    for n, p in model.named_parameters():
        part = part_of(n)
        p.requires_grad_(part in parts)
        if part in parts:
            counts[part] += p.numel()
    return counts


def wrap(model, strategy: str, device, world: int):
    """The model on `device`, wrapped for `world` > 1 workers: DDP, or FSDP over the decoder and UMT blocks."""
    import torch.distributed as dist

    model.to(device)
    if world <= 1 or not dist.is_initialized():
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

        from longvid.model.umt import Block

        dev = device if device.type == "cuda" else torch.device("cpu")
        return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({Qwen2DecoderLayer, Block}), use_orig_params=True,
                    device_id=dev)
    from torch.nn.parallel import DistributedDataParallel as DDP

    kw = {"device_ids": [device]} if device.type == "cuda" else {}
    return DDP(model, **kw)


def clean_name(n: str) -> str:
    """A parameter name without DDP / FSDP wrapper prefixes."""
    n = n.replace("_fsdp_wrapped_module.", "")
    return n[len("module."):] if n.startswith("module.") else n
