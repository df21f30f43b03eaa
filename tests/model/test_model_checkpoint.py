"""Loading the released layouts by name, from generated state dicts with the real key names at tiny sizes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from longvid.model.checkpoint import CheckpointError, checkpoint_files, load_encoder, load_videochat_flash
from longvid.model.config import get_config
from longvid.model.hico import HiCoEncoder
from longvid.model.llm import VideoLLM
from longvid.model.umt import UMT, UMTConfig

CFG = get_config("tiny")


def _umt_state(prefix: str, blocks: int = 3, norm_name: str = "norm", seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-depth UMT state dict (all `blocks` of the pretrained model) under `prefix`, final norm as given."""
    torch.manual_seed(seed)
    cfg = UMTConfig.tiny()
    src = UMT(UMTConfig(**{**cfg.__dict__, "select_layer": -1}))  # builds every block
    assert len(src.blocks) == blocks
    out = {}
    for k, v in src.state_dict().items():
        if k.startswith("vision_layernorm."):
            k = norm_name + k[len("vision_layernorm") :]
        out[prefix + k] = torch.randn_like(v)
    return out


def _llava_state(seed: int = 1, with_vision: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ref = VideoLLM(CFG)
    sd: dict[str, torch.Tensor] = {}
    for k, v in ref.llm.state_dict().items():
        sd[k] = torch.randn_like(v)  # model.embed_tokens / model.layers / model.norm / lm_head: the real names
    for k, v in ref.projector.state_dict().items():
        sd["model.mm_projector." + k] = torch.randn_like(v)
    if with_vision:
        sd.update(_umt_state("model.vision_tower.vision_tower.encoder.", norm_name="vision_layernorm", seed=seed))
    return sd


def test_standalone_encoder_file(tmp_path):
    sd = _umt_state("encoder.")
    f = tmp_path / "UMT-L_f4_vision.pt"
    torch.save(sd, f)
    enc = HiCoEncoder(UMTConfig.tiny())
    rep = load_encoder(enc, f, strict=True)
    assert rep.ok and not rep.missing and not rep.unused
    assert set(rep.skipped) == {k for k in sd if k.startswith("encoder.blocks.2.")}  # past select layer -2
    assert len(rep.loaded) == len(enc.encoder.state_dict())
    assert torch.equal(enc.encoder.vision_layernorm.weight, sd["encoder.norm.weight"])  # norm -> vision_layernorm
    assert torch.equal(enc.encoder.blocks[1].attn.q_bias, sd["encoder.blocks.1.attn.q_bias"])
    assert torch.equal(enc.encoder.patch_embed.proj.weight, sd["encoder.patch_embed.proj.weight"])
    # the stand-alone layout is exactly HiCoEncoder's own state dict names (plus the norm alias)
    assert {k.replace("encoder.norm.", "encoder.vision_layernorm.") for k in sd} - set(rep.skipped) == set(
        enc.state_dict()
    )


def test_unknown_and_missing_keys_are_reported_and_strict_raises(tmp_path):
    sd = _umt_state("encoder.")
    sd["encoder.clip_pos_embed"] = torch.zeros(3)
    sd["decoder.head.weight"] = torch.zeros(2)
    del sd["encoder.blocks.0.mlp.fc2.bias"]
    f = tmp_path / "enc.pt"
    torch.save({"model": sd}, f)  # wrapped state dicts are accepted
    enc = HiCoEncoder(UMTConfig.tiny())
    rep = load_encoder(enc, f)
    assert sorted(rep.unused) == ["decoder.head.weight", "encoder.clip_pos_embed"]
    assert rep.missing == ["blocks.0.mlp.fc2.bias"]
    assert "1 missing" in rep.summary() and "2 unused" in rep.summary()
    with pytest.raises(CheckpointError, match="strict load failed.*blocks.0.mlp.fc2.bias"):
        load_encoder(enc, f, strict=True)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = _umt_state("encoder.")
    sd["encoder.blocks.1.attn.qkv.weight"] = torch.zeros(10, 64)
    f = tmp_path / "enc.pt"
    torch.save(sd, f)
    with pytest.raises(CheckpointError, match=r"enc\.pt: key encoder\.blocks\.1\.attn\.qkv\.weight -> "
                       r"blocks\.1\.attn\.qkv\.weight: checkpoint shape \(10, 64\) != model shape \(192, 64\)"):
        load_encoder(UMT(UMTConfig.tiny()), f)


def test_llava_checkpoint_single_file(tmp_path):
    sd = _llava_state()
    sd["model.image_newline"] = torch.zeros(64)
    save_file(sd, str(tmp_path / "model.safetensors"))
    model, enc = VideoLLM(CFG), HiCoEncoder(CFG.umt)
    rep = load_videochat_flash(model, tmp_path, encoder=enc)
    assert rep.unused == ["model.image_newline"] and rep.missing == []
    assert all(k.startswith("model.vision_tower.vision_tower.encoder.blocks.2.") for k in rep.skipped)
    assert torch.equal(model.projector.mlp[0].weight, sd["model.mm_projector.mlp.0.weight"])
    assert torch.equal(model.projector.mlp[2].bias, sd["model.mm_projector.mlp.2.bias"])
    assert torch.equal(model.llm.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(model.llm.model.layers[1].self_attn.k_proj.bias, sd["model.layers.1.self_attn.k_proj.bias"])
    assert torch.equal(enc.encoder.blocks[0].attn.v_bias, sd["model.vision_tower.vision_tower.encoder.blocks.0.attn.v_bias"])
    with pytest.raises(CheckpointError, match="model.image_newline"):
        load_videochat_flash(model, tmp_path, encoder=enc, strict=True)
    # the same file feeds the encode job's encoder alone
    enc2 = HiCoEncoder(CFG.umt)
    rep2 = load_encoder(enc2, tmp_path / "model.safetensors", strict=True)
    assert rep2.ok and torch.equal(enc2.encoder.vision_layernorm.bias, enc.encoder.vision_layernorm.bias)


def test_llava_checkpoint_sharded_without_encoder(tmp_path):
    sd = _llava_state(seed=5)
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
        weight_map.update({k: name for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert [p.name for p in checkpoint_files(tmp_path)] == sorted(shards)
    model = VideoLLM(CFG)
    rep = load_videochat_flash(model, tmp_path, strict=True)
    assert rep.ok
    assert all(k.startswith("model.vision_tower.") for k in rep.skipped)  # no encoder given: reported as skipped
    assert len(rep.loaded) == len(model.projector.state_dict()) + len(model.llm.state_dict())
    assert torch.equal(model.llm.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    # a shard listed in the index but absent is a clear error
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard files not found: model-00002-of-00002.safetensors"):
        load_videochat_flash(model, tmp_path)


def test_tied_lm_head_counts_as_loaded(tmp_path):
    cfg = CFG.with_(llm={**CFG.llm, "tie_word_embeddings": True})
    sd = _llava_state(with_vision=False)
    del sd["lm_head.weight"]  # Qwen2.5-1.5B checkpoints tie lm_head to the embeddings
    save_file(sd, str(tmp_path / "model.safetensors"))
    model = VideoLLM(cfg)
    rep = load_videochat_flash(model, tmp_path, strict=True)
    assert rep.ok
    assert torch.equal(model.llm.lm_head.weight, sd["model.embed_tokens.weight"])


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_encoder(UMT(UMTConfig.tiny()), tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        checkpoint_files(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: not a readable torch weights file"):
        load_encoder(UMT(UMTConfig.tiny()), bad)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: expected a mapping"):
        load_encoder(UMT(UMTConfig.tiny()), tmp_path / "list.pt")
