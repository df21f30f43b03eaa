"""UMT ViT + HiCo merging: names, position tables, preprocess, shapes and token counts at 224 and 448."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longvid.model.hico import HiCoEncoder
from longvid.model.projector import Projector
from longvid.model.umt import UMT, UMTConfig, clip_pos_embed, preprocess, sincos_table


@pytest.fixture(scope="module")
def enc224() -> HiCoEncoder:
    torch.manual_seed(0)
    return HiCoEncoder(UMTConfig.tiny(224)).eval()


def test_config_presets():
    l224, l448 = UMTConfig.umt_l(224), UMTConfig.umt_l(448)
    assert (l224.width, l224.heads, l224.depth, l224.used_depth, l224.head_dim) == (1024, 16, 24, 23, 64)
    assert (l224.tokens_per_frame, l224.tokens_per_clip) == (196, 784)
    assert (l448.tokens_per_frame, l448.tokens_per_clip) == (784, 3136)
    assert (l224.ln_eps, l224.final_ln_eps) == (1e-6, 1e-12)
    with pytest.raises(ValueError, match="img_size"):
        UMTConfig.umt_l(336)


def test_checkpoint_module_names():
    m = UMT(UMTConfig.tiny())
    keys = set(m.state_dict())
    want = {
        "patch_embed.proj.weight", "patch_embed.proj.bias",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
        "vision_layernorm.weight", "vision_layernorm.bias",
    }
    assert want <= keys
    assert "blocks.0.attn.qkv.bias" not in keys  # qkv Linear has no bias
    assert not any(k.startswith("blocks.2.") for k in keys)  # depth 3, select -2: 2 blocks built
    assert not any("pos_embed" in k for k in keys)  # fixed tables are not checkpoint entries
    assert m.patch_embed.proj.kernel_size == (1, 16, 16)
    assert m.vision_layernorm.eps == 1e-12 and m.blocks[0].norm1.eps == 1e-6
    with torch.device("meta"):
        full = UMT(UMTConfig.umt_l(224))
    assert len(full.blocks) == 23
    assert tuple(full.state_dict()["blocks.22.attn.qkv.weight"].shape) == (3072, 1024)


def test_sincos_table_formula():
    t = sincos_table(784, 1024)
    assert t.shape == (784, 1024)
    assert torch.equal(t[0, 0::2], torch.zeros(512)) and torch.equal(t[0, 1::2], torch.ones(512))
    p, j = 123, 10
    angle = p / 10000 ** (2 * (j // 2) / 1024)
    assert t[p, j].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert t[p, j + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_pos_embed_224_is_the_flat_table_and_448_is_resized_per_frame():
    assert torch.equal(clip_pos_embed(4, 14, 64), sincos_table(784, 64))
    assert torch.equal(clip_pos_embed(1, 14, 64), sincos_table(196, 64))
    big = clip_pos_embed(4, 28, 64)
    assert big.shape == (3136, 64)
    # frame 1 of the 448 table is frame 1 of the 224 table upsampled: its mean is preserved roughly and it
    # differs from frame 0 (temporal positions survive the spatial resize)
    f0, f1 = big[:784], big[784:1568]
    assert not torch.allclose(f0, f1)
    small_f1 = sincos_table(784, 64)[196:392]
    torch.testing.assert_close(f1.mean(0), small_f1.mean(0), atol=0.05, rtol=0)


def test_attention_uses_q_and_v_bias_and_no_k_bias():
    torch.manual_seed(0)
    cfg = UMTConfig.tiny()
    attn = UMT(cfg).blocks[0].attn
    assert attn.qkv.bias is None
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, cfg.width)
    d, h = cfg.width, cfg.heads
    wq, wk, wv = attn.qkv.weight.split(d)
    q = (x @ wq.T + attn.q_bias).view(2, 5, h, -1).transpose(1, 2)
    k = (x @ wk.T).view(2, 5, h, -1).transpose(1, 2)
    v = (x @ wv.T + attn.v_bias).view(2, 5, h, -1).transpose(1, 2)
    a = ((q @ k.transpose(-1, -2)) / math.sqrt(d // h)).softmax(-1)
    want = attn.proj((a @ v).transpose(1, 2).reshape(2, 5, d))
    torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-4)


def test_preprocess_resize_and_normalise():
    frames = np.full((3, 120, 160, 3), 255, dtype=np.uint8)
    frames[..., 1] = 0
    x = preprocess(frames, 224)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.full((3, 224, 224), (1 - 0.485) / 0.229))
    torch.testing.assert_close(x[1], torch.full((3, 224, 224), (0 - 0.456) / 0.224))
    padded = preprocess(frames, 224, pad_to_square=True)
    # top rows are the mean-colour padding: normalised value (int(0.485*255)/255 - 0.485) / 0.229 ~ 0
    assert padded[:, :, 0, :].abs().max() < 0.02
    with pytest.raises(ValueError, match="uint8"):
        preprocess(frames.astype(np.float32), 224)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        preprocess(frames[..., :2], 224)


@pytest.mark.parametrize("size,vit_tokens", [(224, 784), (448, 3136)])
def test_token_counts(size, vit_tokens):
    torch.manual_seed(0)
    enc = HiCoEncoder(UMTConfig.tiny(size)).eval()
    x = torch.randn(1, 3, 8, size, size)
    with torch.no_grad():
        assert enc.encoder(x[:, :, :4]).shape == (1, vit_tokens, 64)
        tok, sizes = enc(x, return_sizes=True)
    assert tok.shape == (1, 2, 64, 64)  # [B, T/4, 64, D]: 16 per frame
    assert torch.equal(sizes.sum(-1), torch.full((1, 2), float(vit_tokens)))


def test_clips_are_consecutive_frames_and_independent(enc224):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 224, 224)
    with torch.no_grad():
        full = enc224(x)
        second = enc224(x[1:, :, 4:8])
        chunked = enc224(x, clips_per_pass=1)
    assert full.shape == (2, 2, 64, 64)
    torch.testing.assert_close(full[1, 1], second[0, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full, chunked, atol=1e-5, rtol=1e-4)


def test_image_modes(enc224):
    torch.manual_seed(2)
    img = torch.randn(2, 3, 1, 224, 224)
    with torch.no_grad():
        rep = enc224(img)
        as_clip = enc224(img.repeat(1, 1, 4, 1, 1))
        single, sizes = enc224(img, image_mode="single", return_sizes=True)
    assert rep.shape == single.shape == (2, 1, 64, 64)
    torch.testing.assert_close(rep, as_clip)
    assert torch.equal(sizes.sum(-1), torch.full((2, 1), 196.0))
    with pytest.raises(ValueError, match="image_mode"):
        enc224(img, image_mode="tile")


def test_bad_inputs_are_named(enc224):
    with pytest.raises(ValueError, match="multiple of 4"):
        enc224(torch.zeros(1, 3, 6, 224, 224))
    with pytest.raises(ValueError, match="224x224"):
        enc224(torch.zeros(1, 3, 4, 112, 112))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        enc224(torch.zeros(3, 4, 224, 224))


def test_projector_names_and_shape():
    p = Projector(64, 96)
    assert set(p.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    assert p(torch.zeros(5, 64)).shape == (5, 96)
    assert isinstance(p.mlp[1], torch.nn.GELU)


@pytest.mark.slow
def test_full_umt_l_one_clip_at_224():
    torch.manual_seed(0)
    enc = HiCoEncoder(UMTConfig.umt_l(224)).eval()
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 180, 320, 3), dtype=np.uint8)
    x = preprocess(frames, 224)[None]
    with torch.no_grad():
        tok, sizes = enc(x, return_sizes=True)
    assert tok.shape == (1, 1, 64, 1024)  # 784 ViT tokens -> 64, 1024 wide
    assert torch.isfinite(tok).all()
    assert torch.equal(sizes.sum(-1), torch.full((1, 1), 784.0))
