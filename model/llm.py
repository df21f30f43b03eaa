"""VideoLLM: a transformers `Qwen2ForCausalLM` fed with projected HiCo tokens (read top to bottom).

A sample's token ids hold exactly one image placeholder (`image_token_id`, the `<image>` token). Its visual input
is the sample's precomputed HiCo tokens, clips flattened: [n_i, D] with n_i = 64 x clips (D = 1024 for UMT-L).
`splice` projects them (`Projector`: D -> H) and puts them where the placeholder was, so the sequence grows by
n_i - 1; the labels there are -100 and the attention mask 1. Rows are then right-padded to the longest.

Training uses `forward` (HF loss: next-token cross-entropy, mean over labelled tokens). NIAH scores by greedy
decoding over the whole vocabulary by default (pipelines/niah_eval.py, as the released eval); its labelled
`--scoring options` mode and multiple-choice evaluation use `score_options`: the summed log-probability of each
candidate answer under teacher forcing (the prompt is run once, then each candidate on a cropped KV cache; with
visual-token dropout each candidate runs the full prefill of model/dropout.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen2ForCausalLM

from longvid.model.config import ModelConfig
from longvid.model.dropout import DropoutConfig, prefill
from longvid.model.projector import Projector
from longvid.model.constants import IGNORE_INDEX


@dataclass
class Spliced:
    """inputs_embeds [B, L', H], attention_mask [B, L'] (long), labels [B, L'] or None,
    visual_spans: per row (start, length) of the visual tokens in the spliced sequence."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    visual_spans: list[tuple[int, int]]


@dataclass
class VideoLLMOutput:
    """loss (scalar, None without labels), logits [B, L', V], and the spliced labels / mask / spans."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    attention_mask: torch.Tensor
    visual_spans: list[tuple[int, int]]


class VideoLLM(nn.Module):
    """`self.llm` (Qwen2ForCausalLM) + `self.projector` (mlp.0 / mlp.2), joined at the image placeholder."""

    def __init__(self, cfg: ModelConfig, llm: Qwen2ForCausalLM | None = None, image_token_id: int | None = None):
        super().__init__()
        self.cfg = cfg
        tid = image_token_id if image_token_id is not None else cfg.image_token_id
        if tid is None:
            raise ValueError("VideoLLM: image_token_id is not set (give it, or set ModelConfig.image_token_id)")
        self.image_token_id = int(tid)
        self.llm = llm if llm is not None else Qwen2ForCausalLM(cfg.qwen2_config())
        hidden = self.llm.config.hidden_size
        if hidden != cfg.hidden_size:
            raise ValueError(f"VideoLLM: LLM hidden_size {hidden} != ModelConfig {cfg.name} hidden size {cfg.hidden_size}")
        self.projector = Projector(cfg.encoder_dim, hidden)

    @classmethod
    def from_pretrained(
        cls,
        cfg: ModelConfig,
        llm_path: str | Path,
        image_token_id: int,
        *,
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
    ) -> "VideoLLM":
        """Load the LLM from a local directory (e.g. Qwen2-7B-Instruct); the projector starts random (stage 1)
        or is loaded with `model.checkpoint.load_videochat_flash`. Vocab grows if `image_token_id` needs it."""
        p = Path(llm_path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"VideoLLM.from_pretrained: {p}/config.json not found (need a local LLM directory)")
        llm = Qwen2ForCausalLM.from_pretrained(
            str(p), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
        if image_token_id >= llm.config.vocab_size:
            llm.resize_token_embeddings(image_token_id + 1)
        model = cls(cfg, llm, image_token_id)
        model.projector.to(dtype)
        return model

    # ---------------------------------------------------------------------------------------------------------

    def splice(
        self,
        input_ids: torch.Tensor,
        visual: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Spliced:
        """input_ids [B, L] with one placeholder per row, visual[i] [n_i, D] -> embeddings with the projected
        visual tokens in place of the placeholder (rows right-padded to the longest; pad embeddings are 0).
        A row may also hold no placeholder (visual[i] with 0 rows: a text-only sample) or several (visual[i] a
        sequence of [n_ij, D], one per placeholder in order: a multi-image sample); its span is then (first
        placeholder, all its visual tokens)."""
        if input_ids.ndim != 2:
            raise ValueError(f"VideoLLM: input_ids must be [B, L], got {tuple(input_ids.shape)}")
        b, seq = input_ids.shape
        if len(visual) != b:
            raise ValueError(f"VideoLLM: visual has {len(visual)} entries for a batch of {b}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        embed = self.llm.get_input_embeddings()
        text = embed(input_ids.masked_fill(input_ids == self.image_token_id, 0))  # placeholder rows get replaced
        rows_e, rows_m, rows_l, spans = [], [], [], []
        for i in range(b):
            where = (input_ids[i] == self.image_token_id).nonzero().flatten().tolist()
            v = visual[i]
            # one tensor: one placeholder (or none, with no rows: a text-only sample); a sequence: one per placeholder
            parts = list(v) if isinstance(v, (list, tuple)) else ([v] if where or v.shape[0] else [])
            if len(where) != len(parts):
                raise ValueError(f"VideoLLM: sample {i} has {len(where)} image tokens (id {self.image_token_id}) for "
                                 f"{len(parts)} visual inputs")
            e, m, lab, at = [], [], [], 0
            for p, part in zip(where, parts):
                if not bool(mask[i, p]):
                    raise ValueError(f"VideoLLM: sample {i}: the image token at {p} is under attention_mask 0")
                if part.ndim != 2 or part.shape[1] != self.cfg.encoder_dim:
                    raise ValueError(f"VideoLLM: visual[{i}] must be [n, {self.cfg.encoder_dim}], got {tuple(part.shape)}")
                proj = self.projector(part.to(device=text.device, dtype=self.projector.mlp[0].weight.dtype)).to(text.dtype)
                n = proj.shape[0]
                e += [text[i, at:p], proj]
                m += [mask[i, at:p], mask.new_ones(n)]
                if labels is not None:
                    lab += [labels[i, at:p], labels.new_full((n,), IGNORE_INDEX)]
                at = p + 1
            rows_e.append(torch.cat(e + [text[i, at:]]))
            rows_m.append(torch.cat(m + [mask[i, at:]]))
            if labels is not None:
                rows_l.append(torch.cat(lab + [labels[i, at:]]))
            spans.append((where[0], sum(int(x.shape[0]) for x in parts)) if where else (0, 0))
        width = max(r.shape[0] for r in rows_e)
        emb = torch.stack([F.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows_e])
        att = torch.stack([F.pad(r, (0, width - r.shape[0])) for r in rows_m])
        lab = (
            torch.stack([F.pad(r, (0, width - r.shape[0]), value=IGNORE_INDEX) for r in rows_l]) if labels is not None else None
        )
        return Spliced(emb, att, lab, spans)

    def forward(
        self,
        input_ids: torch.Tensor,
        visual: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> VideoLLMOutput:
        """input_ids [B, L], visual list of [n_i, D], attention_mask [B, L], labels [B, L] (-100 = not trained)
        -> loss (mean next-token cross-entropy over labelled tokens) and logits [B, L + max(n_i - 1), V]."""
        s = self.splice(input_ids, visual, attention_mask, labels)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=s.inputs_embeds.device.type == "cuda"):
            out = self.llm(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, labels=s.labels)
        return VideoLLMOutput(out.loss, out.logits, s.labels, s.attention_mask, s.visual_spans)

    # ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score_options(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
        visual: torch.Tensor,
        options: Sequence[Sequence[int]],
        *,
        dropout: DropoutConfig | None = None,
    ) -> torch.Tensor:
        """Teacher-forced option scoring for one sample: float32 [K], sum of log p(option tokens | prompt).

        prompt_ids: the prompt with one image placeholder, ending where the answer starts (e.g. after
        `<|im_start|>assistant\\n`); visual [n, D]; options: K candidate answers as token-id lists. The argmax is
        the predicted option. With `dropout`, visual tokens are dropped during each candidate's prefill with the
        last prompt token as the attention query.
        """
        dev = self.projector.mlp[0].weight.device
        prompt = torch.as_tensor(list(prompt_ids) if not torch.is_tensor(prompt_ids) else prompt_ids, device=dev)
        if any(len(o) == 0 for o in options):
            raise ValueError("score_options: every option needs at least one token")
        s = self.splice(prompt[None], [visual])
        emb = s.inputs_embeds  # [1, P, H]
        p_len = emb.shape[1]
        start, n_vis = s.visual_spans[0]
        embed = self.llm.get_input_embeddings()
        scores = []
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            if dropout is None:
                out = self.llm(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
                first = out.logits[0, -1].float().log_softmax(-1)
                cache = out.cache
                for opt in options:
                    ids = torch.as_tensor(list(opt), device=dev)
                    total = first[ids[0]]
                    if len(ids) > 1:
                        pos = torch.arange(p_len, p_len + len(ids) - 1, device=dev)[None]
                        o = self.llm(input_ids=ids[None, :-1], cache=cache, position_ids=pos, use_cache=True)
                        lp = o.logits[0].float().log_softmax(-1)
                        total = total + lp.gather(1, ids[1:, None]).sum()
                        cache.crop(-(len(ids) - 1))  # back to the prompt (negative = tokens to drop)
                    scores.append(total)
            else:
                for opt in options:
                    ids = torch.as_tensor(list(opt), device=dev)
                    full = torch.cat([emb, embed(ids[None, :-1])], dim=1) if len(ids) > 1 else emb
                    out = prefill(
                        self.llm, full, dropout=dropout, visual_start=start, visual_len=n_vis,
                        query_index=p_len - 1, logits_to_keep=len(ids),
                    )
                    lp = out.logits[0].float().log_softmax(-1)
                    scores.append(lp.gather(1, ids[:, None]).sum())
        return torch.stack(scores).float()
