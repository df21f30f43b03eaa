"""Progressive visual-token dropout: our decoder loop equals HF without dropout; kept counts and indices."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen2ForCausalLM

from longvid.model.config import get_config
from longvid.model.dropout import RELEASED, DropoutConfig, prefill, uniform_keep


def _llm(layers: int = 4, attn: str = "sdpa") -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = get_config("tiny").qwen2_config(num_hidden_layers=layers, attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loop_without_dropout_equals_hf_forward(attn):
    llm = _llm(attn=attn)
    torch.manual_seed(1)
    emb = torch.randn(2, 40, 64)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 31:] = 0  # right padding on row 1
    with torch.no_grad():
        want = llm(inputs_embeds=emb, attention_mask=mask).logits
        got = prefill(llm, emb, mask)
        got_nomask = prefill(llm, emb[:1]).logits
        want_nomask = llm(inputs_embeds=emb[:1]).logits
    torch.testing.assert_close(got.logits[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits[1, :31], want[1, :31], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_nomask, want_nomask, atol=1e-5, rtol=1e-5)
    assert got.positions.tolist() == [list(range(40))] * 2 and got.kept_visual == []


def test_released_setting_and_validation():
    assert (RELEASED.mode, RELEASED.layers, RELEASED.ratios) == ("uniform0_attention", (4, 18), (1.0, 0.75, 0.25))
    assert RELEASED.kept_counts(1024) == [1024, 768, 256]
    assert RELEASED.kept_counts(100) == [100, 75, 25]
    assert [RELEASED.stage_mode(s) for s in (0, 1)] == ["uniform", "attention"]
    assert [DropoutConfig(mode="attention0_uniform").stage_mode(s) for s in (0, 1)] == ["attention", "uniform"]
    with pytest.raises(ValueError, match="mode"):
        DropoutConfig(mode="random")
    with pytest.raises(ValueError, match="ratios"):
        DropoutConfig(ratios=(1.0, 0.5))
    with pytest.raises(ValueError, match="ratios"):
        DropoutConfig(ratios=(1.0, 0.25, 0.75))
    with pytest.raises(ValueError, match="layers"):
        DropoutConfig(layers=(18, 4))


def test_uniform_keep_is_evenly_spaced():
    idx = uniform_keep(1024, 768)
    assert idx.dtype == torch.int64 and len(idx) == 768
    assert idx[0] == 0 and idx[-1] == 1023 and (idx.diff() > 0).all()
    assert torch.equal(idx, torch.linspace(0, 1023, 768, dtype=torch.long))  # the released call
    assert uniform_keep(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_keep(769, 257).diff().unique().tolist() == [3]
    assert set(uniform_keep(768, 256).diff().tolist()) == {3, 4}


def _prompt(n_vis: int = 64, before: int = 5, after: int = 7) -> tuple[torch.Tensor, int, int]:
    torch.manual_seed(2)
    return torch.randn(1, before + n_vis + after, 64), before, n_vis


def test_counts_follow_ratios_and_uniform_indices():
    llm = _llm(layers=4)
    emb, start, n = _prompt()
    cfg = DropoutConfig(mode="uniform", layers=(1, 3), ratios=(1.0, 0.75, 0.25))
    with torch.no_grad():
        out = prefill(llm, emb, dropout=cfg, visual_start=start, visual_len=n)
    assert [len(k) for k in out.kept_visual] == [48, 16]
    assert out.logits.shape == (1, 5 + 16 + 7, 512)
    first = uniform_keep(64, 48)
    assert torch.equal(out.kept_visual[0], first)
    assert torch.equal(out.kept_visual[1], first[uniform_keep(48, 16)])
    # text positions all survive, in order; visual ones are the kept originals
    pos = out.positions[0]
    assert pos[:5].tolist() == list(range(5)) and pos[-7:].tolist() == list(range(69, 76))
    assert torch.equal(pos[5:21] - 5, out.kept_visual[1])


def test_attention_mode_keeps_the_top_scored_tokens_sorted():
    llm = _llm(layers=4, attn="eager")
    emb, start, n = _prompt()
    cfg = DropoutConfig(mode="attention", layers=(1,), ratios=(1.0, 0.25))
    with torch.no_grad():
        out = prefill(llm, emb, dropout=cfg, visual_start=start, visual_len=n)
        # independent reference: HF's eager attention probabilities of layer index 1 (the layer after the drop
        # point), row of the last token, averaged over heads, restricted to the visual span
        att = llm(inputs_embeds=emb, output_attentions=True).attentions[1]
    score = att[0, :, -1, start : start + n].mean(0)
    want = score.topk(16).indices.sort().values
    kept = out.kept_visual[0]
    assert len(kept) == 16 and (kept.diff() > 0).all()
    assert kept.tolist() == want.tolist()
    assert kept.tolist() != uniform_keep(64, 16).tolist()


def test_uniform0_attention_mixes_and_matches_the_no_drop_prefix():
    llm = _llm(layers=4)
    emb, start, n = _prompt()
    cfg = DropoutConfig(mode="uniform0_attention", layers=(1, 2), ratios=(1.0, 0.5, 0.25))
    with torch.no_grad():
        out = prefill(llm, emb, dropout=cfg, visual_start=start, visual_len=n)
        keep_all = prefill(llm, emb, dropout=DropoutConfig(mode="uniform", layers=(1,), ratios=(1.0, 1.0)),
                           visual_start=start, visual_len=n)
        plain = prefill(llm, emb)
    assert torch.equal(out.kept_visual[0], uniform_keep(64, 32))
    assert len(out.kept_visual[1]) == 16 and set(out.kept_visual[1].tolist()) <= set(out.kept_visual[0].tolist())
    torch.testing.assert_close(keep_all.logits, plain.logits)  # ratio 1 drops nothing
    # tokens before the visual span never see a drop: their logits match the plain run
    torch.testing.assert_close(out.logits[0, :start], plain.logits[0, :start], atol=1e-5, rtol=1e-5)


def test_dropout_errors():
    llm = _llm(layers=4)
    emb, start, n = _prompt()
    with pytest.raises(ValueError, match="batch size 1"):
        prefill(llm, emb.expand(2, -1, -1), dropout=RELEASED, visual_start=start, visual_len=n)
    with pytest.raises(ValueError, match="below the LLM's 4 layers"):
        prefill(llm, emb, dropout=RELEASED, visual_start=start, visual_len=n)
    with pytest.raises(ValueError, match="query_index"):
        prefill(llm, emb, dropout=DropoutConfig(layers=(1,), ratios=(1.0, 0.5)), visual_start=start,
                visual_len=n, query_index=start + 3)
    with pytest.raises(ValueError, match="visual_start"):
        prefill(llm, emb, dropout=DropoutConfig(layers=(1,), ratios=(1.0, 0.5)))
