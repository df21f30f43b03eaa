"""Build the model parts from a preset name and weights: the one place every job (train, encode, NIAH build and
eval) makes an encoder or a VideoLLM. Checkpoint layouts are recognised by model/checkpoint.py; callers turn a
`CheckpointError` into their own config error and decide how strict a partial load may be (the `LoadReport`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from longvid.model.checkpoint import LoadReport, load_encoder, load_vlm
from longvid.model.config import get_config
from longvid.model.hico import HiCoEncoder


def build_encoder(
    preset: str,
    *,
    img_size: int | None = None,
    weights: str | Path | None = None,
    seed: int | None = None,
    strict: bool = False,
) -> tuple[HiCoEncoder, LoadReport | None]:
    """The HiCo encoder of `preset` at `img_size` (None: the preset's), with `weights` (a stand-alone UMT file or
    any checkpoint holding the vision tower) loaded, else random (seeded first when `seed` is given)."""
    cfg = get_config(preset, img_size=img_size or None)
    if seed is not None:
        torch.manual_seed(seed)
    enc = HiCoEncoder(cfg.umt, cfg.tokens_per_frame)
    report = load_encoder(enc, weights, strict=strict) if weights else None
    return enc, report


def build_vlm(
    preset: str,
    image_token_id: int,
    *,
    llm_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    encoder: HiCoEncoder | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    strict: bool = False,
):
    """A VideoLLM of `preset` (projector + Qwen2): the LLM from `llm_path` (a local Hugging Face folder) or random
    (seeded first when `seed` is given), the vocabulary grown when `image_token_id` is past it; then `checkpoint`
    (any layout, model/checkpoint.py `load_vlm`) loaded into it and, when given, into `encoder`.
    Returns (model, load report or None)."""
    from longvid.model.llm import VideoLLM  # imports transformers' Qwen2

    cfg = get_config(preset)
    if seed is not None:
        torch.manual_seed(seed)
    if llm_path:
        vlm = VideoLLM.from_pretrained(cfg, llm_path, image_token_id, dtype=dtype)
    else:
        vlm = VideoLLM(cfg, image_token_id=image_token_id)
        if image_token_id >= vlm.llm.config.vocab_size:
            vlm.llm.resize_token_embeddings(image_token_id + 1)
    report = load_vlm(vlm, checkpoint, encoder=encoder, strict=strict) if checkpoint else None
    return vlm, report
