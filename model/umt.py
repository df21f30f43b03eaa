"""UMT-L video ViT, the vision encoder of VideoChat-Flash (read top to bottom).

What the released encoder is (facts from the public VideoChat-Flash code, re-implemented here):

- ViT-L/16: width 1024, 16 heads, MLP ratio 4, 24 blocks of which the first 23 run (select layer -2), then a
  final LayerNorm named `vision_layernorm` (eps 1e-12). Block LayerNorms use eps 1e-6. No class token.
- Patch embedding is a Conv3d with kernel (tubelet=1, 16, 16): every frame is patchified on its own.
- qkv is one bias-free Linear plus two separate vectors `q_bias` and `v_bias` (k has no bias).
- Position embeddings are fixed (not learned) 1-D sin-cos tables over the flattened (t, h, w) token order of a
  4-frame clip at 224 (4 x 14 x 14 = 784 positions). At 448 the table is built for 14 x 14 and each frame's
  grid is resized bicubically to 28 x 28. A single image (T = 1) uses its own table over 14 x 14 positions
  (`img_pos_embed`), resized the same way at 448.
- Preprocess: resize to a square (no crop, aspect ratio not kept, bicubic), /255, ImageNet mean/std.

Checkpoint module names are kept exactly: `patch_embed.proj`, `blocks.N.{norm1, attn.qkv, attn.q_bias,
attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `vision_layernorm`. Position tables are non-persistent
buffers (they are not in any checkpoint).

Shapes: B batch, T frames (4 per clip, or 1 for an image), S image side, G = S / 16 grid side,
L = G * G tokens per frame, D width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from longvid.model.constants import FRAMES_PER_CLIP

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UMTConfig:
    """Sizes of the UMT ViT. `umt_l(img_size)` is the released encoder, `tiny(img_size)` a test-sized one."""

    img_size: int = 224  # square input side: 224 or 448 for the released model
    patch_size: int = 16
    width: int = 1024
    depth: int = 24  # blocks in the pretrained model; only `used_depth` of them are built and run
    select_layer: int = -2  # -1 = output of the last block, -2 = of the one before (the released choice)
    heads: int = 16
    mlp_ratio: float = 4.0
    num_frames: int = FRAMES_PER_CLIP  # frames per clip (mm_local_num_frames)
    tubelet: int = 1
    ln_eps: float = 1e-6  # block LayerNorms
    final_ln_eps: float = 1e-12  # vision_layernorm
    pos_grid: int = 14  # grid side the sin-cos tables are defined on before any bicubic resize

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"UMTConfig.img_size: {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"UMTConfig.width: {self.width} is not divisible by heads {self.heads}")
        if self.tubelet != 1:
            raise ValueError(f"UMTConfig.tubelet: only tubelet 1 is supported (released UMT-L), got {self.tubelet}")
        if not 1 <= self.used_depth <= self.depth:
            raise ValueError(f"UMTConfig.select_layer: {self.select_layer} leaves {self.used_depth} of {self.depth} blocks")

    @property
    def used_depth(self) -> int:
        """Blocks actually built and run: depth + select_layer + 1 (23 for UMT-L)."""
        return self.depth + self.select_layer + 1

    @property
    def grid(self) -> int:
        """Patches per side: 14 at 224, 28 at 448."""
        return self.img_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one frame gives out of the ViT: 196 at 224, 784 at 448."""
        return self.grid * self.grid

    @property
    def tokens_per_clip(self) -> int:
        """Tokens one clip gives out of the ViT: 784 at 224, 3136 at 448."""
        return self.num_frames * self.tokens_per_frame

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def umt_l(cls, img_size: int = 224) -> "UMTConfig":
        """The released UMT-L/16 (VideoChat-Flash): 224 for the 7B stages 1-3, 448 for stage 4 and the 2B model."""
        if img_size not in (224, 448):
            raise ValueError(f"UMTConfig.img_size: UMT-L is released for 224 or 448, got {img_size}")
        return cls(img_size=img_size)

    @classmethod
    def tiny(cls, img_size: int = 224) -> "UMTConfig":
        """Test size: the real token counts (patch 16) with width 64, 4 heads and 2 running blocks."""
        return cls(img_size=img_size, width=64, depth=3, heads=4)

    def with_img_size(self, img_size: int) -> "UMTConfig":
        return replace(self, img_size=img_size)


# --------------------------------------------------------------------------------------------------------------
# Preprocess
# --------------------------------------------------------------------------------------------------------------


def resize_levels(x: torch.Tensor, size: int) -> torch.Tensor:
    """float [T, 3, H, W] of 0..255 levels -> [T, 3, size, size]: bicubic, antialiased when it shrinks, rounded back
    to whole levels (the one resize of the encoder's input: `preprocess`, and encode's frames stored before it)."""
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp_(0, 255)


def preprocess(
    frames: np.ndarray | torch.Tensor,
    size: int,
    *,
    pad_to_square: bool = False,
) -> torch.Tensor:
    """Frames uint8 [T, H, W, 3] (RGB) -> float32 [3, T, size, size], ready for `UMT` / `HiCoEncoder`.

    Bicubic resize to a square (no crop, aspect ratio not kept), rounded back to 0..255 as the reference's
    PIL resize of uint8 images is, then /255 and ImageNet mean/std. `pad_to_square=True` first pads to a
    square with the ImageNet-mean colour, centred (LLaVA's `expand2square`, used for NIAH needle images).
    The resize is antialiased (like PIL) when it shrinks.
    """
    if isinstance(frames, np.ndarray) and not frames.flags.writeable:
        frames = frames.copy()  # read-only (frames from Ray's object store): torch warns on a shared view
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess: frames must be [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess: frames must be uint8, got {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    t, _, h, w = x.shape
    if pad_to_square and h != w:
        side = max(h, w)
        fill = torch.tensor([int(m * 255) for m in IMAGENET_MEAN], dtype=x.dtype).view(1, 3, 1, 1)
        canvas = fill.expand(t, 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top : top + h, left : left + w] = x
        x, h, w = canvas, side, side
    if (h, w) != (size, size):
        x = resize_levels(x, size)
    x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.permute(1, 0, 2, 3).contiguous()  # [3, T, size, size]


# --------------------------------------------------------------------------------------------------------------
# Fixed sin-cos position embeddings
# --------------------------------------------------------------------------------------------------------------


def sincos_table(n_positions: int, dim: int) -> torch.Tensor:
    """1-D sin-cos table [n_positions, dim] (float32, computed in float64).

    angle(p, j) = p / 10000 ** (2 * (j // 2) / dim); even j take sin, odd j take cos.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def clip_pos_embed(frames: int, grid: int, dim: int, pos_grid: int = 14) -> torch.Tensor:
    """Position embedding [frames * grid * grid, dim] for a clip of `frames` frames (1 for an image).

    The table runs over frames * pos_grid^2 positions in (t, h, w) order; when `grid != pos_grid` every frame's
    pos_grid x pos_grid block is resized to grid x grid bicubically (align_corners=False), as the released
    code does at 448.
    """
    table = sincos_table(frames * pos_grid * pos_grid, dim)
    if grid == pos_grid:
        return table
    t = table.view(frames, pos_grid, pos_grid, dim).permute(0, 3, 1, 2)  # [T, C, P, P]
    t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(frames * grid * grid, dim)


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """[B, 3, T, S, S] -> [B, T * L, D] with a Conv3d of kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        k = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.width, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; qkv has no Linear bias but separate q_bias and v_bias (k gets none)."""

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.width))
        self.v_bias = nn.Parameter(torch.zeros(cfg.width))
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        y = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (no layer scale, no drop path at inference)."""

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UMT(nn.Module):
    """The UMT ViT: clip [B, 3, T, S, S] (T = num_frames, or 1 for an image) -> tokens [B, T * L, D].

    Tokens come out in (t, h, w) order after `used_depth` blocks and `vision_layernorm`. Its state dict keys are
    the checkpoint's names without the `encoder.` prefix.
    """

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.register_buffer(
            "pos_embed", clip_pos_embed(cfg.num_frames, cfg.grid, cfg.width, cfg.pos_grid), persistent=False
        )
        self.register_buffer("img_pos_embed", clip_pos_embed(1, cfg.grid, cfg.width, cfg.pos_grid), persistent=False)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.used_depth)])
        self.vision_layernorm = nn.LayerNorm(cfg.width, eps=cfg.final_ln_eps)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, T, S, S] float -> [B, T * L, D]; T must be cfg.num_frames (a clip) or 1 (an image)."""
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"UMT: input must be [B, 3, T, H, W], got {tuple(x.shape)}")
        _, _, t, h, w = x.shape
        if (h, w) != (cfg.img_size, cfg.img_size):
            raise ValueError(f"UMT: frames must be {cfg.img_size}x{cfg.img_size} (UMTConfig.img_size), got {h}x{w}")
        if t == cfg.num_frames:
            pos = self.pos_embed
        elif t == 1:
            pos = self.img_pos_embed
        else:
            raise ValueError(f"UMT: T must be {cfg.num_frames} (one clip) or 1 (an image), got {t}")
        x = self.patch_embed(x)
        x = x + pos.to(dtype=x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.vision_layernorm(x)


def _init_weights(m: nn.Module) -> None:
    """Random init for tests and from-scratch use (real runs load the released weights)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv3d):
        fan_in = m.in_channels * math.prod(m.kernel_size)
        nn.init.uniform_(m.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
