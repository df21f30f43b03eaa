"""model/build.py (preset + weights -> parts) and model/checkpoint.py's layouts and export, at tiny sizes."""
from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from longvid.model.build import build_encoder, build_vlm
from longvid.model.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    checkpoint_layout,
    export_checkpoint,
    load_vlm,
    released_state_dict,
    tokenizer_dir,
)
from longvid.model.config import get_config
from longvid.model.constants import LLAVA_PROJECTOR_PREFIX, LLAVA_VISION_PREFIX
from longvid.model.llm import VideoLLM
from longvid.model.tokenizer import build_test_tokenizer, image_token_id, load_tokenizer

TID = image_token_id(build_test_tokenizer())


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _differ(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def parts():
    vlm, _ = build_vlm("tiny", TID, seed=11)
    enc, _ = build_encoder("tiny", seed=12)
    return vlm.eval(), enc.eval()


def test_builders_are_seeded_and_grow_the_vocabulary():
    a, _ = build_encoder("tiny", seed=3)
    b, _ = build_encoder("tiny", seed=3)
    c, _ = build_encoder("tiny", seed=4)
    _same(a, b)
    assert _differ(a, c)
    assert build_encoder("tiny", img_size=448)[0].cfg.img_size == 448
    v, rep = build_vlm("tiny", 600, seed=0)
    assert rep is None and v.llm.config.vocab_size == 601 and v.image_token_id == 600
    with pytest.raises(ValueError, match="unknown name"):
        build_encoder("no-such-preset")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_loads_in_transformers_and_round_trips(tmp_path, parts, tied):
    from transformers import AutoModelForCausalLM

    vlm, enc = parts
    if tied:
        cfg = get_config("tiny")
        torch.manual_seed(5)
        vlm = VideoLLM(cfg.with_(llm={**cfg.llm, "tie_word_embeddings": True}), image_token_id=TID).eval()
    out = export_checkpoint(vlm, tmp_path / "export", encoder=enc, tokenizer=build_test_tokenizer())
    assert (out / "llm" / "config.json").is_file() and (out / "llm" / "generation_config.json").is_file()

    # the LLM part: transformers loads it to the same weights (same logits on a random input)
    hf = AutoModelForCausalLM.from_pretrained(str(out / "llm"), local_files_only=True).eval()
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, vlm.llm(ids).logits)
    assert hf.config.tie_word_embeddings == tied
    assert tokenizer_dir(out) == out / "llm" and load_tokenizer(out / "llm").convert_tokens_to_ids("<image>") == TID

    # the encoder and projector under the released names
    with safe_open(str(out / "vision.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {LLAVA_PROJECTOR_PREFIX + k for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")} <= keys
    assert LLAVA_VISION_PREFIX + "patch_embed.proj.weight" in keys
    assert LLAVA_VISION_PREFIX + "vision_layernorm.weight" in keys
    assert all(k.startswith((LLAVA_VISION_PREFIX, LLAVA_PROJECTOR_PREFIX)) for k in keys)

    # and our own loader reads the folder back into fresh parts, every key accounted for
    assert checkpoint_layout(out) == "videochat-flash"
    fresh = VideoLLM(vlm.cfg, image_token_id=TID)
    fresh_enc, _ = build_encoder("tiny", seed=99)
    assert _differ(fresh, vlm) and _differ(fresh_enc, enc)
    rep = load_vlm(fresh, out, encoder=fresh_enc, strict=True)
    assert rep.ok and not rep.skipped
    _same(fresh, vlm)
    _same(fresh_enc, enc)
    # the encode job needs only the vision file (it fetches no LLM from S3): a folder holding just that reads too
    (tmp_path / "vision_only").mkdir()
    shutil.copy(out / "vision.safetensors", tmp_path / "vision_only" / "vision.safetensors")
    alone, rep = build_encoder("tiny", weights=tmp_path / "vision_only", strict=False)
    assert not rep.missing and not rep.unused and all(k.startswith(LLAVA_PROJECTOR_PREFIX) for k in rep.skipped)
    _same(alone, enc)
    # the exported LLM also serves as a local LLM folder for a new run
    again, _ = build_vlm("tiny", TID, llm_path=out / "llm", checkpoint=out)
    _same(again, vlm)


def test_export_never_overwrites(tmp_path, parts):
    vlm, _ = parts
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="not empty"):
        export_checkpoint(vlm, mine)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    export_checkpoint(vlm, tmp_path / "empty")  # an empty folder is filled
    assert (tmp_path / "empty" / "vision.safetensors").is_file()


def test_every_layout_gives_the_same_parts(tmp_path, parts):
    vlm, enc = parts
    train = {"vlm." + k: v.contiguous() for k, v in vlm.state_dict().items()}
    train.update({"encoder." + k: v.contiguous() for k, v in enc.state_dict().items()})
    save_file(train, str(tmp_path / "stage.safetensors"))  # the train job's stage weights
    torch.save(vlm.state_dict(), tmp_path / "plain.pt")  # a bare VideoLLM.state_dict()
    save_file(released_state_dict(vlm, enc), str(tmp_path / "released.safetensors"))
    for name, layout, with_encoder in (("stage.safetensors", "longvid", True), ("plain.pt", "longvid", False),
                                       ("released.safetensors", "videochat-flash", True)):
        path = tmp_path / name
        assert checkpoint_layout(path) == layout
        e = build_encoder("tiny", seed=1)[0] if with_encoder else None
        got, rep = build_vlm("tiny", TID, checkpoint=path, encoder=e, seed=2)
        assert rep is not None and rep.ok, (name, rep.summary())
        _same(got, vlm)
        if e is not None:
            _same(e, enc)
    # without an encoder the encoder keys are skipped, by reason, never dropped silently
    _, rep = build_vlm("tiny", TID, checkpoint=tmp_path / "stage.safetensors")
    assert rep.ok and set(rep.skipped) == {k for k in train if k.startswith("encoder.")}
    # the released file also gives the encoder alone (what the encode job loads)
    alone, rep = build_encoder("tiny", weights=tmp_path / "released.safetensors", strict=True)
    assert rep.ok
    _same(alone, enc)


def test_mismatch_and_unknown_layouts_are_named(tmp_path, parts):
    vlm, enc = parts
    sd = released_state_dict(vlm, enc)
    sd["model.mm_projector.mlp.0.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"model\.mm_projector\.mlp\.0\.weight.*\(3, 3\)"):
        build_vlm("tiny", TID, checkpoint=tmp_path / "shape.safetensors")
    partial = {k: v for k, v in released_state_dict(vlm, enc).items() if "blocks.1." not in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointMismatch, match="missing"):
        build_encoder("tiny", weights=tmp_path / "partial.safetensors", strict=True)
    _, rep = build_encoder("tiny", weights=tmp_path / "partial.safetensors")
    assert rep.missing and all("blocks.1." in k for k in rep.missing)
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="neither a VideoChat-Flash"):
        build_vlm("tiny", TID, checkpoint=tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        build_vlm("tiny", TID, checkpoint=tmp_path / "nowhere")


_KEY = st.one_of(
    st.sampled_from(["llm.model.embed_tokens.weight", "projector.mlp.0.weight", "vlm.llm.lm_head.weight",
                     "model.mm_projector.mlp.2.bias", "model.layers.0.mlp.up_proj.weight", "lm_head.weight",
                     "encoder.patch_embed.proj.weight", LLAVA_VISION_PREFIX + "blocks.0.norm1.weight"]),
    st.text("abcdefglmnoprstuvwxyz._0123456789", min_size=1, max_size=30),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.dictionaries(_KEY, st.lists(st.integers(1, 4), min_size=1, max_size=2), min_size=1, max_size=6))
def test_fuzz_any_key_set_loads_or_is_named(tmp_path_factory, keys):
    """Whatever the keys and shapes, loading ends with a report that accounts for every key or a CheckpointError."""
    d = tmp_path_factory.mktemp("fuzz")
    save_file({k: torch.zeros(*shape) for k, shape in keys.items()}, str(d / "x.safetensors"))
    vlm = VideoLLM(get_config("tiny"), image_token_id=TID)
    try:
        rep = load_vlm(vlm, d / "x.safetensors", encoder=build_encoder("tiny")[0])
    except CheckpointError:
        return
    assert set(rep.unused) | set(rep.skipped) <= set(keys)
    assert len(rep.loaded) + len(rep.unused) + len(rep.skipped) == len(keys)
