"""Token merging (ToMe) as HiCo uses it: bipartite soft matching with a size-weighted average.

The released VideoChat-Flash code merges the ViT's output tokens of one clip (after `vision_layernorm`, before
the projector MLP) in rounds until 16 tokens per frame remain:

- schedule: while more than `target` tokens remain, remove half of them (floor), or just the excess when the
  excess is at most half: 784 -> 64 removes [392, 196, 98, 34]; 3136 -> 64 removes [1568, 784, 392, 196, 98, 34];
  an image's 196 -> 64 removes [98, 34].
- one round: the similarity metric is the tokens reshaped to (B, N, chunks, D / chunks) and averaged over the
  chunks (chunks = the ViT's head count, 16 for UMT-L, giving 64-d metrics), L2-normalised. Tokens at even
  positions (A) are matched to tokens at odd positions (B) by cosine similarity; each A token keeps its best B
  partner; the r A tokens with the highest best-scores merge into their partners; no token is protected.
- merge: sums of (token * size) and of sizes, then division: a size-weighted average. Sizes start at 1, so
  they always add up to the original token count.
- output order: the unmerged A tokens in descending-score order, then all B tokens in their original order
  (merged tokens are therefore not in spatial order).

Everything here is deterministic: the descending sort is stable and ties in the best partner go to the lowest
index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def merge_schedule(num_tokens: int, target: int) -> list[int]:
    """Tokens removed per round to go from `num_tokens` to `target` (halving until the excess fits)."""
    if target < 1 or num_tokens <= target:
        raise ValueError(f"merge_schedule: need num_tokens > target >= 1, got {num_tokens} -> {target}")
    rounds: list[int] = []
    n = num_tokens
    while n != target:
        if n - target <= n // 2:
            rounds.append(n - target)
            break
        rounds.append(n // 2)
        n -= n // 2
    return rounds


def similarity_metric(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """x [B, N, D] -> [B, N, D / chunks]: the features cut into `chunks` pieces and averaged over them."""
    b, n, d = x.shape
    if d % chunks:
        raise ValueError(f"similarity_metric: width {d} is not divisible by chunks {chunks}")
    return x.reshape(b, n, chunks, d // chunks).mean(2)


@dataclass(frozen=True)
class Matching:
    """Result of one bipartite matching round on N tokens (A = even positions, B = odd positions).

    unm_idx [B, |A| - r]: A tokens kept, in output order; src_idx [B, r]: A tokens merged away;
    dst_idx [B, r]: their partners, as indices into B.
    """

    unm_idx: torch.Tensor
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    r: int


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Matching:
    """Plan one round removing `r` tokens; metric [B, N, C]. r is capped at N // 2 and must end up >= 1."""
    n = metric.shape[1]
    r = min(r, n // 2)
    if r <= 0:
        raise ValueError(f"bipartite_soft_matching: nothing to merge (N={n}, r={r})")
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        a, b = m[:, ::2, :], m[:, 1::2, :]
        scores = a @ b.transpose(-1, -2)  # [B, |A|, |B|]
        node_max, node_idx = scores.max(dim=-1)  # best partner of every A token
        order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # [B, |A|]
        src_idx = order[:, :r]
        unm_idx = order[:, r:]
        dst_idx = node_idx.gather(dim=-1, index=src_idx)
    return Matching(unm_idx=unm_idx, src_idx=src_idx, dst_idx=dst_idx, r=r)


def merge_sum(m: Matching, x: torch.Tensor) -> torch.Tensor:
    """Apply a matching by summation: x [B, N, C] -> [B, N - r, C] (unmerged A tokens, then B tokens)."""
    src, dst = x[:, ::2, :], x[:, 1::2, :]
    b, _, c = src.shape
    unm = src.gather(1, m.unm_idx[..., None].expand(b, m.unm_idx.shape[1], c))
    moved = src.gather(1, m.src_idx[..., None].expand(b, m.r, c))
    dst = dst.scatter_add(1, m.dst_idx[..., None].expand(b, m.r, c), moved)
    return torch.cat([unm, dst], dim=1)


def merge_wavg(m: Matching, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: x [B, N, C], size [B, N, 1] -> ([B, N - r, C], [B, N - r, 1]).

    The weighted sums are taken in float32 (sizes reach hundreds, beyond bf16's exact integers); the tokens
    come back in x's dtype.
    """
    size = size.float()
    merged = merge_sum(m, x.float() * size)
    size = merge_sum(m, size)
    return (merged / size).to(x.dtype), size


def merge_tokens(x: torch.Tensor, target: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge x [B, N, D] down to exactly `target` tokens: returns (tokens [B, target, D], sizes [B, target]).

    `sizes` (float32) count how many input tokens each output token averages (they sum to N per row). The rows
    of the batch are independent (one clip each).
    """
    b, n, _ = x.shape
    size = torch.ones(b, n, 1, dtype=torch.float32, device=x.device)
    for r in merge_schedule(n, target):
        plan = bipartite_soft_matching(similarity_metric(x, chunks), r)
        x, size = merge_wavg(plan, x, size)
    return x, size[..., 0]
