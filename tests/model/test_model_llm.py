"""VideoLLM splicing, loss/backward, option scoring; tokenizer and Qwen2 chat labels; presets."""
from __future__ import annotations

import pytest
import torch

from longvid.model.config import PRESETS, get_config
from longvid.model.llm import VideoLLM
from longvid.model.tokenizer import IGNORE_INDEX, build_test_tokenizer, format_chat, image_token_id, load_tokenizer

CONV = [
    {"from": "human", "value": "<image>\nThe video lasts for 37.50 seconds. What happens?"},
    {"from": "gpt", "value": "A person is cooking."},
    {"from": "human", "value": "Where?"},
    {"from": "gpt", "value": "In a kitchen."},
]


@pytest.fixture(scope="module")
def tok():
    return build_test_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoLLM(get_config("tiny")).eval()


def test_test_tokenizer_specials_and_roundtrip(tok):
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")] == [0, 1, 2, 3]
    assert image_token_id(tok) == 3 == get_config("tiny").image_token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "Hello <image>\nworld é 你好<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(3) == 1 and ids[-1] == 2
    assert tok.decode(ids) == text
    assert build_test_tokenizer()("cooking in a kitchen")["input_ids"] == tok("cooking in a kitchen")["input_ids"]


def test_format_chat_template_text_and_labels(tok):
    ids, labels = format_chat(CONV, tok)
    assert len(ids) == len(labels)
    assert tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nThe video lasts for 37.50 seconds. What happens?<|im_end|>\n"
        "<|im_start|>assistant\nA person is cooking.<|im_end|>\n"
        "<|im_start|>user\nWhere?<|im_end|>\n"
        "<|im_start|>assistant\nIn a kitchen.<|im_end|>\n"
    )
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == "A person is cooking.<|im_end|>In a kitchen.<|im_end|>"
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    assert ids.count(image_token_id(tok)) == 1
    # the labelled spans are exactly the answers: first trained token follows "assistant\n"
    first = next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_format_chat_llava_mode_and_generation_prompt(tok):
    ids, labels = format_chat(CONV[:2], tok, label_mode="llava")
    im_start, im_end = 1, 2
    for i, lab in zip(ids, labels):
        if i in (im_start, im_end):
            assert lab == i  # the released preprocess_qwen trains every <|im_start|> / <|im_end|>
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert "assistant\nA person is cooking.<|im_end|>\n" in trained and "What happens" not in trained
    p_ids, p_labels = format_chat(CONV[:1], tok, add_generation_prompt=True, system=None)
    assert tok.decode(p_ids).endswith("<|im_start|>assistant\n") and set(p_labels) == {IGNORE_INDEX}
    assert not tok.decode(p_ids).startswith("<|im_start|>system")
    with pytest.raises(ValueError, match=r"conversations\[0\]\.from"):
        format_chat([{"from": "robot", "value": "x"}], tok)
    with pytest.raises(ValueError, match="label_mode"):
        format_chat(CONV, tok, label_mode="all")


def test_load_tokenizer_from_a_saved_directory_adds_image(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # a Qwen2-like tokenizer that has the chat specials but no <image>
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(["a video of a cat", "what happens next"], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>").save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    img = image_token_id(loaded)
    assert img >= 259  # appended after the existing vocabulary
    assert loaded("x <image> y", add_special_tokens=False)["input_ids"].count(img) == 1
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "absent")


def test_presets():
    assert set(PRESETS) == {"tiny", "videochat-flash-7b", "videochat-flash-2b"}
    seven, two = get_config("videochat-flash-7b"), get_config("videochat-flash-2b")
    assert (seven.hidden_size, seven.umt.img_size, seven.encoder_dim) == (3584, 224, 1024)
    assert (two.hidden_size, two.umt.img_size) == (1536, 448)
    assert get_config("videochat-flash-7b", img_size=448).umt.tokens_per_clip == 3136
    with pytest.raises(ValueError, match="unknown name"):
        get_config("videochat-flash-13b")


def test_splice_puts_visual_tokens_at_the_placeholder(model):
    torch.manual_seed(1)
    ids = torch.tensor([[5, 6, 3, 7, 8, 0, 0], [3, 9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100, -100], [-100, 9, 10, 11, 12, 13, 14]])
    vis = [torch.randn(64, 64), torch.randn(128, 64)]
    s = model.splice(ids, vis, mask, labels)
    assert s.inputs_embeds.shape == (2, 7 + 127, 64)
    assert s.visual_spans == [(2, 64), (0, 128)]
    proj0 = model.projector(vis[0])
    torch.testing.assert_close(s.inputs_embeds[0, 2:66], proj0)
    emb = model.llm.get_input_embeddings()
    torch.testing.assert_close(s.inputs_embeds[0, :2], emb(ids[0, :2]))
    torch.testing.assert_close(s.inputs_embeds[0, 66:68], emb(ids[0, 3:5]))
    torch.testing.assert_close(s.inputs_embeds[1, 128:], emb(ids[1, 1:]))
    # row 0 grew by 63, original padding kept, then right-padded to the longest row
    assert s.attention_mask[0].tolist() == [1] * 68 + [0] * (134 - 68)
    assert s.attention_mask[1].tolist() == [1] * 134
    assert s.labels[0, 2:66].eq(IGNORE_INDEX).all() and s.labels[0, 66:68].tolist() == [7, 8]
    assert s.labels[1, :128].eq(IGNORE_INDEX).all() and s.labels[1, 128:].tolist() == [9, 10, 11, 12, 13, 14]


def test_splice_errors(model):
    vis = [torch.zeros(64, 64)]
    with pytest.raises(ValueError, match="sample 0 has 0 image tokens"):
        model.splice(torch.tensor([[5, 6]]), vis)
    with pytest.raises(ValueError, match="sample 0 has 2 image tokens"):
        model.splice(torch.tensor([[3, 3]]), vis)
    with pytest.raises(ValueError, match=r"visual\[0\] must be \[n, 64\]"):
        model.splice(torch.tensor([[3, 5]]), [torch.zeros(64, 32)])
    with pytest.raises(ValueError, match="2 entries for a batch of 1"):
        model.splice(torch.tensor([[3, 5]]), vis * 2)


def test_loss_and_backward(tok):
    torch.manual_seed(2)
    m = VideoLLM(get_config("tiny"))
    ids, labels = format_chat(CONV, tok)
    vis = [torch.randn(128, 64)]
    out = m(torch.tensor([ids]), vis, labels=torch.tensor([labels]))
    assert out.logits.shape == (1, len(ids) + 127, 512)
    assert out.loss is not None and torch.isfinite(out.loss)
    # the HF loss equals a hand-computed shifted cross-entropy over the labelled tokens
    lab = out.labels[0]
    want = torch.nn.functional.cross_entropy(out.logits[0, :-1], lab[1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, want)
    out.loss.backward()
    assert m.projector.mlp[0].weight.grad is not None and m.projector.mlp[0].weight.grad.abs().sum() > 0
    assert m.llm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    # visual tokens only matter through the projector: labels never sit on visual positions
    start, n = out.visual_spans[0]
    assert out.labels[0, start : start + n].eq(IGNORE_INDEX).all()


def test_score_options_matches_teacher_forced_loss(model, tok):
    torch.manual_seed(3)
    vis = torch.randn(128, 64)
    prompt, _ = format_chat(CONV[:1], tok, add_generation_prompt=True)
    options = [tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in ("A person is cooking.", "A dog.", "Yes")]
    scores = model.score_options(prompt, vis, options)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    for k, opt in enumerate(options):
        ids = torch.tensor([prompt + opt])
        labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + opt])
        with torch.no_grad():
            out = model(ids, [vis], labels=labels)
        torch.testing.assert_close(scores[k], -out.loss * len(opt), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        model.score_options(prompt, vis, [[]])


def test_score_options_with_dropout(model, tok):
    from longvid.model.dropout import DropoutConfig

    torch.manual_seed(4)
    vis = torch.randn(128, 64)
    prompt, _ = format_chat(CONV[:1], tok, add_generation_prompt=True)
    options = [tok(t, add_special_tokens=False)["input_ids"] for t in ("A person is cooking.", "A dog.")]
    plain = model.score_options(prompt, vis, options)
    no_drop = model.score_options(prompt, vis, options, dropout=DropoutConfig("uniform", (1,), (1.0, 1.0)))
    torch.testing.assert_close(no_drop, plain, atol=1e-4, rtol=1e-4)
    dropped = model.score_options(prompt, vis, options, dropout=DropoutConfig("attention", (1,), (1.0, 0.25)))
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, plain)
