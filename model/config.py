"""Model sizes by preset name: the vision encoder, the LLM, and how they meet.

| preset              | encoder      | LLM                    | H    | use                       |
|---------------------|--------------|------------------------|------|---------------------------|
| tiny                | UMT tiny@224 | Qwen2 2 layers, 64 wide | 64   | tests on CPU, seconds     |
| videochat-flash-7b  | UMT-L@224    | Qwen2-7B-Instruct      | 3584 | stages 1-3 (448 in 4)     |
| videochat-flash-2b  | UMT-L@448    | Qwen2.5-1.5B-Instruct  | 1536 | all stages at 448         |

`ModelConfig.qwen2_config()` builds the transformers `Qwen2Config` (for a from-scratch LLM; real runs load the
weights from a local directory and check that its config agrees in hidden size).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from longvid.model.constants import TOKENS_PER_FRAME
from longvid.model.umt import UMTConfig

# Qwen2-7B-Instruct and Qwen2.5-1.5B-Instruct architecture numbers (their config.json files).
QWEN2_7B: dict[str, Any] = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
QWEN25_1_5B: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
QWEN2_TINY: dict[str, Any] = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class ModelConfig:
    """One VideoChat-Flash-style model: `umt` encoder sizes, `llm` Qwen2Config keyword arguments."""

    name: str
    umt: UMTConfig
    llm: dict[str, Any] = field(default_factory=dict)
    tokens_per_frame: int = TOKENS_PER_FRAME
    image_token_id: int | None = None  # set from the tokenizer (`model.tokenizer.image_token_id`)

    @property
    def hidden_size(self) -> int:
        """LLM hidden size H (projector output)."""
        return int(self.llm["hidden_size"])

    @property
    def encoder_dim(self) -> int:
        """Width D of the HiCo tokens (projector input)."""
        return self.umt.width

    def qwen2_config(self, **overrides: Any):
        """The transformers Qwen2Config for `llm` (plus overrides, e.g. attn_implementation)."""
        from transformers import Qwen2Config

        return Qwen2Config(**{**self.llm, **overrides})

    def with_(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", UMTConfig.tiny(224), dict(QWEN2_TINY), image_token_id=3),
    "videochat-flash-7b": ModelConfig("videochat-flash-7b", UMTConfig.umt_l(224), dict(QWEN2_7B)),
    "videochat-flash-2b": ModelConfig("videochat-flash-2b", UMTConfig.umt_l(448), dict(QWEN25_1_5B)),
}


def get_config(name: str, *, img_size: int | None = None) -> ModelConfig:
    """A preset by name; `img_size` switches the encoder resolution (e.g. 448 for the 7B stage 4)."""
    if name not in PRESETS:
        raise ValueError(f"model preset: unknown name {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if img_size is not None and img_size != cfg.umt.img_size:
        cfg = cfg.with_(umt=cfg.umt.with_img_size(img_size))
    return cfg
