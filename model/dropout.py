"""Video-level compression for inference: progressive visual-token dropout in the Qwen2 prefill.

Re-implemented from the released VideoChat-Flash LLM code. The decoder layers of a transformers
`Qwen2ForCausalLM` are run here one by one (our own loop, our own causal mask and rotary embeddings), so the
visual span can shrink between layers:

- `layers` are 1-based "after layer i" points: after decoder layer index i - 1 has run, for i in `layers`, the
  visual span keeps `int(N * ratios[s + 1])` of its `int(N * ratios[s])` tokens (N = visual tokens at the input,
  s = the stage). Released setting: layers (4, 18), ratios (1, 0.75, 0.25). Off by default everywhere.
- `uniform` keeps indices `linspace(0, cur - 1, keep)` (cast to integers, evenly spaced, first and last kept).
- `attention` scores each visual token by the attention it gets from the query token (the last prompt token,
  i.e. the one predicting the first answer token), computed with the *next* layer's input_layernorm and q/k
  projections with RoPE, softmax over the causal row, averaged over heads; keeps the top-k, re-sorted into
  their original order.
- mixes `<first>0_<rest>` use `<first>` at the first drop and `<rest>` after it (`uniform0_attention` is the
  released choice; `attention0_uniform` is accepted too).
- After a drop the sequence is re-numbered: position ids become 0..L'-1 again (as the released code does).

With `dropout=None` the loop is the plain Qwen2 forward (tests check the logits equal the HF forward). Dropout
needs batch size 1 (one video per sample) and an sdpa or eager attention implementation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

BASE_MODES = ("uniform", "attention")


@dataclass(frozen=True)
class DropoutConfig:
    """Where and how much to drop; `DropoutConfig()` is the released setting."""

    mode: str = "uniform0_attention"
    layers: tuple[int, ...] = (4, 18)
    ratios: tuple[float, ...] = (1.0, 0.75, 0.25)

    def __post_init__(self) -> None:
        if self.mode not in BASE_MODES:
            first, sep, rest = self.mode.partition("0_")
            if not sep or first not in BASE_MODES or rest not in BASE_MODES:
                raise ValueError(
                    f"DropoutConfig.mode: {self.mode!r} is not uniform, attention or a mix like uniform0_attention"
                )
        if len(self.ratios) != len(self.layers) + 1:
            raise ValueError(
                f"DropoutConfig.ratios: need len(layers) + 1 = {len(self.layers) + 1} ratios, got {len(self.ratios)}"
            )
        if self.ratios[0] != 1:
            raise ValueError(f"DropoutConfig.ratios: the first ratio must be 1 (all tokens enter), got {self.ratios[0]}")
        if any(not 0 < r <= 1 for r in self.ratios) or any(b > a for a, b in zip(self.ratios, self.ratios[1:])):
            raise ValueError(f"DropoutConfig.ratios: must be non-increasing in (0, 1], got {self.ratios}")
        if any(i < 1 for i in self.layers) or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"DropoutConfig.layers: must be strictly increasing layer numbers >= 1, got {self.layers}")

    def stage_mode(self, stage: int) -> str:
        """'uniform' or 'attention' for drop number `stage` (0-based)."""
        if self.mode in BASE_MODES:
            return self.mode
        first, _, rest = self.mode.partition("0_")
        return first if stage == 0 else rest

    def kept_counts(self, n_visual: int) -> list[int]:
        """Visual tokens present before the first drop and after each: [int(N * r) for r in ratios]."""
        return [int(n_visual * r) for r in self.ratios]


RELEASED = DropoutConfig()


def uniform_keep(cur: int, keep: int) -> torch.Tensor:
    """Evenly spaced indices linspace(0, cur - 1, keep) as int64 (truncated), ascending."""
    return torch.linspace(0, cur - 1, keep, dtype=torch.float64).long()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, L, hd]; cos/sin [B, L, hd]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def attention_keep(
    next_layer: nn.Module,
    rotary_emb: nn.Module,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    query_index: int,
    start: int,
    cur: int,
    keep: int,
) -> torch.Tensor:
    """Top-`keep` of the `cur` visual tokens at [start, start + cur) by the query token's attention.

    hidden [1, L, H] is the input of `next_layer`; returns sorted int64 indices in 0..cur-1.
    """
    attn = next_layer.self_attn
    hd = attn.head_dim
    x = next_layer.input_layernorm(hidden)
    seq = x.shape[1]
    q = attn.q_proj(x[:, query_index : query_index + 1]).view(1, 1, -1, hd).transpose(1, 2)  # [1, nh, 1, hd]
    k = attn.k_proj(x).view(1, seq, -1, hd).transpose(1, 2)  # [1, nkv, L, hd]
    cos, sin = rotary_emb(x, position_ids)
    q = _rope(q, cos[:, query_index : query_index + 1], sin[:, query_index : query_index + 1])
    k = _rope(k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(hd)  # [1, nh, 1, L]
    scores[..., query_index + 1 :] = float("-inf")  # causal row of the query
    probs = scores.softmax(-1).mean(1)[0, 0]  # [L], averaged over heads
    top = probs[start : start + cur].topk(keep).indices
    return top.sort().values


def _mask(mask2d: torch.Tensor, dtype: torch.dtype, impl: str) -> torch.Tensor | None:
    """Causal + key-padding mask [B, 1, L, L]: None (sdpa's own causal path) when nothing is padded."""
    if impl == "sdpa" and bool(mask2d.all()):
        return None
    seq = mask2d.shape[1]
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=mask2d.device).tril()[None] & mask2d[:, None, :]
    allowed = allowed[:, None]
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=mask2d.device).masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass
class PrefillOutput:
    """logits [B, L', V] (the last `logits_to_keep` positions when set); positions [B, L']: the input position
    each surviving token came from; kept_visual: per drop, indices into the input's visual tokens still present;
    attention_mask [B, L'] (bool)."""

    logits: torch.Tensor
    positions: torch.Tensor
    attention_mask: torch.Tensor
    kept_visual: list[torch.Tensor] = field(default_factory=list)


def prefill(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    dropout: DropoutConfig | None = None,
    visual_start: int | None = None,
    visual_len: int = 0,
    query_index: int | None = None,
    logits_to_keep: int = 0,
) -> PrefillOutput:
    """Run a `Qwen2ForCausalLM`'s decoder layers over inputs_embeds [B, L, H] (right padding, mask [B, L]).

    With `dropout`, the visual span [visual_start, visual_start + visual_len) shrinks after the configured
    layers (B must be 1); `query_index` (default: the last position) is the token whose attention scores the
    visual tokens; it must come after the visual span.
    """
    model = llm.model
    impl = llm.config._attn_implementation or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"prefill: attention implementation {impl!r} is not supported (use sdpa or eager)")
    if "sliding_attention" in getattr(llm.config, "layer_types", []):
        raise ValueError("prefill: sliding-window layers are not supported")
    b, seq, _ = inputs_embeds.shape
    dev = inputs_embeds.device
    mask2d = (
        torch.ones(b, seq, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.to(dev).bool()
    )
    positions = torch.arange(seq, device=dev)[None].expand(b, seq)
    counts: list[int] = []
    if dropout is not None:
        if b != 1:
            raise ValueError(f"prefill: visual-token dropout needs batch size 1 (one video per sample), got {b}")
        if visual_start is None or visual_len <= 0:
            raise ValueError("prefill: dropout needs visual_start and visual_len > 0")
        n_layers = len(model.layers)
        if max(dropout.layers) >= n_layers:
            raise ValueError(
                f"DropoutConfig.layers: {dropout.layers} must stay below the LLM's {n_layers} layers "
                "(attention scoring uses the next layer)"
            )
        query_index = seq - 1 if query_index is None else query_index
        if not visual_start + visual_len <= query_index < seq:
            raise ValueError(f"prefill: query_index {query_index} must lie after the visual span and inside the input")
        counts = dropout.kept_counts(visual_len)

    h = inputs_embeds
    pos_ids = positions
    cos_sin = model.rotary_emb(h, pos_ids)
    mask = _mask(mask2d, h.dtype, impl)
    kept_visual: list[torch.Tensor] = []
    vis_idx = torch.arange(visual_len, device=dev)
    for i, layer in enumerate(model.layers):
        h = layer(h, attention_mask=mask, position_ids=pos_ids, position_embeddings=cos_sin)
        if dropout is None or (i + 1) not in dropout.layers:
            continue
        stage = dropout.layers.index(i + 1)
        cur, keep = counts[stage], counts[stage + 1]
        if keep == cur:
            kept_visual.append(vis_idx)
            continue
        if dropout.stage_mode(stage) == "uniform":
            sel = uniform_keep(cur, keep).to(dev)
        else:
            sel = attention_keep(
                model.layers[i + 1], model.rotary_emb, h, pos_ids, query_index, visual_start, cur, keep
            )
        length = h.shape[1]
        rows = torch.cat(
            [
                torch.arange(visual_start, device=dev),
                visual_start + sel,
                torch.arange(visual_start + cur, length, device=dev),
            ]
        )
        h, mask2d, positions = h[:, rows], mask2d[:, rows], positions[:, rows]
        vis_idx = vis_idx[sel]
        kept_visual.append(vis_idx)
        query_index -= cur - keep
        pos_ids = torch.arange(h.shape[1], device=dev)[None]
        cos_sin = model.rotary_emb(h, pos_ids)
        mask = _mask(mask2d, h.dtype, impl)

    h = model.norm(h)
    if logits_to_keep:
        h = h[:, -logits_to_keep:]
    return PrefillOutput(
        logits=llm.lm_head(h), positions=positions, attention_mask=mask2d, kept_visual=kept_visual
    )
