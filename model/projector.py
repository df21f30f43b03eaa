"""The VideoChat-Flash projector: merged HiCo tokens (width D, 1024 for UMT-L) -> LLM hidden size H.

`Linear(D, H) -> GELU -> Linear(H, H)`, held in `self.mlp` so its parameters are `mlp.0.*` and `mlp.2.*`, the
names under `model.mm_projector.` in the released checkpoints. H is 3584 for Qwen2-7B, 1536 for Qwen2.5-1.5B.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Projector(nn.Module):
    """tokens [..., D] -> [..., H]."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
