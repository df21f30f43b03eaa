"""HiCo clip-level compression: UMT-L over 4-frame clips, then token merging down to 16 tokens per frame.

Where the merge happens (read from the released VideoChat-Flash code, `tome16_mlp_hd64` projector): not inside
the ViT blocks. The ViT runs all of its used blocks (23 of 24) and `vision_layernorm` on the whole clip
(784 tokens at 224, 3136 at 448); the clip's tokens are then merged with ToMe (model/tome.py) to 16 x frames =
64 tokens, and only then does the projector MLP run. So the HiCo tokens stored by the encode job are the merged
ViT features (width 1024 for UMT-L) and the projector stays with the LLM (model/projector.py, model/llm.py).

Images: the training code encodes a lone image as T = 1 with its own position table and merges its 196 (or 784)
tokens to 64 (`image_mode="single"`); NIAH needles are the image repeated 4 times and encoded as a clip
(`image_mode="repeat"`, the default here). Both give 64 tokens.

bf16 autocast is used only when the input is on a CUDA device; on CPU everything stays float32.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from longvid.model.constants import TOKENS_PER_FRAME
from longvid.model.tome import merge_tokens
from longvid.model.umt import UMT, UMTConfig

ImageMode = Literal["repeat", "single"]


class HiCoEncoder(nn.Module):
    """Frames [B, 3, T, S, S] (T a multiple of 4, or 1 for an image) -> tokens [B, T / 4, 64, D].

    `self.encoder` is the UMT ViT, so `state_dict()` keys are `encoder.patch_embed.proj.weight`, ... exactly the
    stand-alone `UMT-L_f4_vision.pt` layout (with `vision_layernorm` for its `norm`).
    """

    def __init__(self, cfg: UMTConfig, tokens_per_frame: int = TOKENS_PER_FRAME) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens_per_frame = tokens_per_frame
        self.encoder = UMT(cfg)

    @property
    def tokens_per_clip(self) -> int:
        """Merged tokens per clip: tokens_per_frame x num_frames = 64."""
        return self.tokens_per_frame * self.cfg.num_frames

    @property
    def out_dim(self) -> int:
        """Width D of the output tokens (1024 for UMT-L)."""
        return self.cfg.width

    def encode_clips(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clips [N, 3, F, S, S] (F = num_frames, or 1 for single images) -> (tokens [N, 64, D], sizes [N, 64]).

        `sizes` is how many ViT tokens each merged token averages (float32, summing to F * L per clip).
        """
        feats = self.encoder(clips)  # [N, F * L, D]
        return merge_tokens(feats, self.tokens_per_clip, chunks=self.cfg.heads)

    def forward(
        self,
        frames: torch.Tensor,
        *,
        image_mode: ImageMode = "repeat",
        clips_per_pass: int | None = None,
        return_sizes: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """frames [B, 3, T, S, S] float (see `model.umt.preprocess`) -> tokens [B, T / 4, 64, D].

        T = 1 (an image) gives [B, 1, 64, D]: `image_mode="repeat"` encodes the image repeated to a 4-frame clip
        (NIAH needles), `"single"` encodes it alone with the image position table (the training path for
        images). `clips_per_pass` bounds how many clips go through the ViT at once (memory); None = all.
        With `return_sizes` also returns sizes [B, T / 4, 64].
        Output dtype: float32 on CPU, bfloat16 under CUDA autocast.
        """
        f = self.cfg.num_frames
        if frames.ndim != 5 or frames.shape[1] != 3:
            raise ValueError(f"HiCoEncoder: frames must be [B, 3, T, H, W], got {tuple(frames.shape)}")
        b, _, t, h, w = frames.shape
        if t == 1:
            if image_mode == "repeat":
                frames = frames.expand(b, 3, f, h, w)
                t = f
            elif image_mode != "single":
                raise ValueError(f"HiCoEncoder: image_mode must be 'repeat' or 'single', got {image_mode!r}")
        elif t % f:
            raise ValueError(f"HiCoEncoder: T must be a multiple of {f} (frames per clip) or 1, got T={t}")
        clip_len = t if t == 1 else f
        n_clips = t // clip_len
        # [B, 3, C * F, S, S] -> [B * C, 3, F, S, S]: consecutive frames form a clip
        clips = frames.reshape(b, 3, n_clips, clip_len, h, w).permute(0, 2, 1, 3, 4, 5)
        clips = clips.reshape(b * n_clips, 3, clip_len, h, w)
        step = clips.shape[0] if not clips_per_pass else clips_per_pass
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=frames.device.type == "cuda"):
            parts = [self.encode_clips(clips[i : i + step]) for i in range(0, clips.shape[0], step)]
        tokens = torch.cat([p[0] for p in parts]).reshape(b, n_clips, self.tokens_per_clip, -1)
        if return_sizes:
            sizes = torch.cat([p[1] for p in parts]).reshape(b, n_clips, self.tokens_per_clip)
            return tokens, sizes
        return tokens
