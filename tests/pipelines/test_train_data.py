"""The streaming training loader: planning (pipelines/train_sources.py), worker partitioning, sample checks
(operators/train_sample.py), frame bounds, labels, exclusion, malformed shards, exact resume (pipelines/loader.py).
No Ray. The tar parser itself: tests/operators/test_shards.py."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from longvid.model.tokenizer import IGNORE_INDEX, FastTokenizer, build_test_tokenizer, chat_encoder
from longvid.operators.shards import Group
from longvid.operators.train_sample import (
    ParseOptions,
    SampleError,
    TrainSample,
    keep_clips,
    non_finite,
    parse_train_sample,
)
from longvid.pipelines.loader import LoaderConfig, StageLoader, collate, read_exclude
from longvid.pipelines.train_sources import (
    DataError,
    Piece,
    count_tar_samples,
    expand_shards,
    index_source,
    rank_pieces,
)
from longvid.synthetic.shards import synthetic_sample_info, write_synthetic_token_shards


@pytest.fixture(scope="module")
def tok():
    return build_test_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    keys = write_synthetic_token_shards(str(root / "webvid"), 20, source="webvid", dim=64, per_shard=6,
                                        frames=(4, 16), duration=(4, 12))
    return root, keys


def _loader(plan, tok, batch=2, buffer=4, rank=0, world=1, exclude=frozenset(), state=None, prefetch=0, **kw):
    cfg = LoaderConfig(sources=[plan.to_dict()], batch_size=batch, buffer=buffer, mix="samples", dim=64,
                       prefetch=prefetch, **kw)
    return StageLoader(cfg, rank, world, tok, exclude, state=state)


def _take(loader, n):
    out = []
    it = iter(loader)
    for _ in range(n):
        out.append(next(it))
    return out


# ---------------------------------------------------------------------------------------------------- planning


def test_plan_source_cuts_with_the_mixture_strategies(corpus):
    """index_source cuts the shared operators.mixture strategy (one parser for ingest and train) over the samples in
    shard order; a bad strategy is a DataError naming the entry."""
    root, _ = corpus
    from longvid.operators.mixture import parse_strategy

    def ranges(samp):
        plan = index_source("w", ["webvid/shards/*.tar"], root=str(root), sampling=samp)
        return [(p.url.rsplit("/", 1)[-1], p.lo, p.hi) for p in plan.pieces]

    flat = [(u, i) for u, lo, hi in ranges("all") for i in range(lo, hi)]
    assert len(flat) == 20
    for samp in ("all", "first:30%", "first:25%", "first:4", "first2:4", "first4:6", "end:4", "end:50%", "first:40"):
        sel = parse_strategy(samp).select(20)
        want = flat[sel.start:sel.stop]
        got = [(u, i) for u, lo, hi in ranges(samp) for i in range(lo, hi)]
        assert got == want, samp
    assert len([1 for u, lo, hi in ranges("first:25%") for _ in range(lo, hi)]) == 5  # rounded up
    for bad in ("some", "first:", "first:0", "first:1.5", "end:120%", "random:10"):
        with pytest.raises(DataError, match=r"^w: sampling"):
            index_source("w", ["webvid/shards/*.tar"], root=str(root), sampling=bad)
    with pytest.raises(DataError, match="selects no sample"):
        index_source("w", ["webvid/shards/*.tar"], root=str(root), sampling="first4:10")


def test_plan_counts_ranges_and_durations(corpus):
    root, keys = corpus
    plan = index_source("w", ["webvid/shards/*.tar"], root=str(root))
    assert plan.count_from == "index.json"
    assert [p.n for p in plan.pieces] == [6, 6, 6, 2] and plan.nsamples == 20
    assert 4 <= plan.mean_duration <= 12
    cut = index_source("w", ["webvid/shards/*.tar"], root=str(root), sampling="end:8")
    assert [(p.url.rsplit("/", 1)[-1], p.lo, p.hi) for p in cut.pieces] == [
        ("shard-000002-000.tar", 4, 6), ("shard-000003-000.tar", 0, 2)] or cut.nsamples == 8
    assert cut.nsamples == 8
    first = index_source("w", [str(root / "webvid/shards/shard-000000-000.tar")], sampling="first:50%")
    assert first.nsamples == 3
    with pytest.raises(DataError, match="no shard matches"):
        index_source("w", ["nothing/*.tar"], root=str(root))
    with pytest.raises(DataError, match="shard not found"):
        expand_shards([str(root / "webvid/shards/absent.tar")])


def test_counts_without_index_or_manifests(tmp_path):
    write_synthetic_token_shards(str(tmp_path / "j"), 7, per_shard=3, write_index=False)
    for p in (tmp_path / "j" / "manifests").iterdir():
        p.unlink()
    plan = index_source("j", [str(tmp_path / "j/shards/*.tar")])
    assert plan.count_from == "tar" and [p.n for p in plan.pieces] == [3, 3, 1]
    assert count_tar_samples(plan.pieces[0].url) == 3


@pytest.mark.parametrize("shards,world", [([6, 6, 6, 2], 2), ([6, 6, 6, 2], 3), ([5], 4), ([3, 2], 5), ([7], 3), ([10, 1], 4),
                                          ([10, 1, 1, 1, 1], 2)])
def test_rank_pieces_are_disjoint_and_cover_everything(shards, world):
    pieces = [Piece(f"s{i}.tar", 0, n) for i, n in enumerate(shards)]
    owned: dict[tuple[str, int], int] = {}
    loads = []
    for r in range(world):
        mine, shared = rank_pieces(pieces, r, world)
        assert not shared and mine
        loads.append(sum(p.n for p in mine))
        for p in mine:
            for i in range(p.lo, p.hi):
                assert (p.url, i) not in owned, "two workers own one sample"
                owned[(p.url, i)] = r
    assert len(owned) == sum(shards)
    if len(shards) < world:  # more workers than shards: shards are cut, the load stays balanced
        assert max(loads) - min(loads) <= max(1, sum(shards) // world)


def test_rank_pieces_share_only_when_fewer_samples_than_workers():
    mine, shared = rank_pieces([Piece("a.tar", 0, 2)], 2, 3)
    assert shared and mine[0].n == 1


# ---------------------------------------------------------------------------------------------------- samples


def _group(info: dict | None, tokens: np.ndarray | None, key="s_1_full") -> Group:
    m = {}
    if info is not None:
        m["json"] = bytearray(json.dumps(info).encode())
    if tokens is not None:
        b = io.BytesIO()
        np.save(b, tokens)
        m["tokens.npy"] = bytearray(b.getvalue())
    return Group(key, m, 0, 0)


def test_non_finite_detects_every_kind():
    for dt in (np.float16, np.float32):
        a = np.random.default_rng(0).standard_normal(1000).astype(dt)
        assert not non_finite(a)
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            b = a.copy()
            b[123] = bad
            assert non_finite(b), (dt, bad)
        assert not non_finite(np.array([65504, -65504, 0, -0.0], dtype=np.float16))


@pytest.mark.parametrize("dt", [np.float16, np.float32])
def test_non_finite_every_chunk_and_position(dt):
    a = np.random.default_rng(1).standard_normal(10_007).astype(dt)  # not a whole number of chunks
    chunk = 1024  # bytes: the scan goes chunk by chunk
    assert not non_finite(a, chunk) and not non_finite(a)
    for at in (0, 511, 512, 5000, 9999, 10_006):  # first, chunk edges, middle, inside the last (partial) chunk
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            b = a.copy()
            b[at] = bad
            assert non_finite(b, chunk) and non_finite(b), (dt, at, bad)
    big = np.array([np.finfo(dt).max, np.finfo(dt).min, np.finfo(dt).tiny, -0.0], dtype=dt)
    assert not non_finite(big, 4)


def test_npy_views_cached_headers_and_fallback():
    from longvid.operators.train_sample import _npy

    def blob(arr, version=None):
        b = io.BytesIO()
        if version is None:
            np.save(b, arr)
        else:
            np.lib.format.write_array(b, arr, version=version)
        return np.frombuffer(bytearray(b.getvalue()), dtype=np.uint8)

    for arr in (np.arange(24, dtype=np.float16).reshape(2, 3, 4), np.ones((5, 64, 8), np.float32),
                np.arange(6, dtype=np.float16).reshape(3, 2)):
        for _ in range(2):  # the second time the parsed header comes from the cache
            out = _npy(blob(arr))
            assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    v2 = _npy(blob(np.arange(8, dtype=np.float32).reshape(2, 4), version=(2, 0)))  # numpy's own reader
    assert v2.shape == (2, 4) and v2[1, 3] == 7
    scalar = _npy(blob(np.array(3.5, np.float32)))
    assert scalar.shape == () and float(scalar) == 3.5
    short = blob(np.zeros((4, 64, 8), np.float16))[:-2]  # data cut short
    with pytest.raises(SampleError, match="bad npy"):
        _npy(short)
    with pytest.raises(SampleError, match="bad npy"):
        _npy(np.frombuffer(bytearray(b"not an npy at all"), dtype=np.uint8))


def test_collate_pads_and_batch_of_one_is_the_same(tok):
    def sample(n, key):
        ids = np.arange(1, n + 1, dtype=np.int64)
        lab = np.where(ids % 2 == 0, ids, IGNORE_INDEX).astype(np.int64)
        return TrainSample(key, "w", ids, lab, np.ones((64, 8), np.float16), 64, 4, 1.0)

    a, b = sample(5, "a"), sample(3, "b")
    two = collate([a, b], pad_id=7)
    assert two.input_ids.dtype == torch.long and two.labels.dtype == torch.long and two.attention_mask.dtype == torch.long
    assert two.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 7, 7]]
    assert two.labels.tolist() == [a.labels.tolist(), b.labels.tolist() + [IGNORE_INDEX] * 2]
    assert two.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert two.keys == ["a", "b"] and two.n_tokens == a.length + b.length and two.n_visual == 128
    one = collate([b], pad_id=7)
    ref = collate([b, sample(2, "c")], pad_id=7)  # the general path, first row
    assert one.input_ids.shape == (1, 3) and one.input_ids.dtype == torch.long
    assert torch.equal(one.input_ids[0], ref.input_ids[0]) and torch.equal(one.labels[0], ref.labels[0])
    assert torch.equal(one.attention_mask[0], ref.attention_mask[0])
    assert torch.equal(one.visual[0], torch.from_numpy(b.visual)) and one.n_tokens == b.length


def test_fast_tokenizer_memoises_only_known_tokens(tok):
    import copy

    ft = FastTokenizer(copy.deepcopy(tok))
    img = ft.convert_tokens_to_ids("<image>")
    assert img == tok.convert_tokens_to_ids("<image>") and ft.convert_tokens_to_ids(["<image>"]) == [img]
    before = ft.convert_tokens_to_ids("<frame_sep>")  # unknown now: not memoised
    ft.add_special_tokens({"additional_special_tokens": ["<frame_sep>"]})
    after = ft.convert_tokens_to_ids("<frame_sep>")
    assert after not in (None, before) and after == ft._tok.convert_tokens_to_ids("<frame_sep>")


def test_keep_clips_even_whole_clips():
    assert keep_clips(4, 8) == [0, 1, 2, 3]
    assert keep_clips(8, 2) == [2, 6]
    assert keep_clips(10, 4) == [1, 3, 6, 8]
    k = keep_clips(128, 16)
    assert len(set(k)) == 16 and k == sorted(k) and np.diff(k).max() - np.diff(k).min() <= 1


def test_decode_frame_bounds_rewrite_time_msg_and_labels(tok):
    chat = chat_encoder(tok)
    info = synthetic_sample_info("s_1_full", "webvid", 16, 12.5, label=2)
    tokens = np.stack([np.full((64, 64), c, np.float16) for c in range(4)])  # clip c holds value c
    opts = ParseOptions(dim=64, max_frames=8, image_token_id=3)
    s = parse_train_sample(_group(info, tokens), chat, opts)
    assert s.num_frames == 8 and s.n_visual == 128 and s.visual.shape == (128, 64)
    assert sorted(set(s.visual[:, 0].tolist())) == [1.0, 3.0]  # clips 1 and 3 of 4 kept (even spread)
    text = tok.decode(s.input_ids)
    assert "and 8 frames are uniformly sampled from it." in text and "16 frames" not in text
    assert "The video lasts for 12.50 seconds" in text
    trained = tok.decode([i for i, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX])
    assert trained == "A green door moves across the scene.<|im_end|>"
    assert s.length == len(s.input_ids) - 1 + 128
    # the long timestamp message lists the kept frames' times
    info_l = synthetic_sample_info("s_1_full", "webvid", 16, 16.0, label=2, long_msg=True)
    s = parse_train_sample(_group(info_l, tokens), chat, opts)
    kept_times = [info_l["frame_times"][c * 4 + j] for c in (1, 3) for j in range(4)]
    assert ", ".join(str(t) for t in kept_times) in tok.decode(s.input_ids)


def test_templates_feed_plain_bare_and_qwen2_with_the_time_message(tok):
    """plain (stage 1): the bare <image> + answer + newline, no system turn, question or timestamp message, labels
    everything after <image>. qwen_2 (stages 2-4): the chat with the timestamp message where the reference puts it
    (right after the leading <image>, its frame count rewritten to the frames kept), the reference's labels."""
    chat = chat_encoder(tok)
    from longvid.model.tokenizer import format_chat

    info = synthetic_sample_info("s_1_full", "webvid", 16, 12.5, label=2)
    tokens = np.zeros((4, 64, 64), np.float16)
    answer = "A green door moves across the scene."
    s = parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, max_frames=8, image_token_id=3,
                                                               label_mode="plain"))
    want = [3] + tok(answer + "\n", add_special_tokens=False)["input_ids"]
    assert s.input_ids.tolist() == want and s.labels.tolist() == [IGNORE_INDEX] + want[1:]
    assert s.n_visual == 128 and s.length == len(want) - 1 + 128
    s = parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, max_frames=8, image_token_id=3,
                                                               label_mode="qwen_2"))
    prompt = ("<image>\nThe video lasts for 12.50 seconds, and 8 frames are uniformly sampled from it. \n"
              "What happens in this video?")
    assert tok.decode(s.input_ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                       f"{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    ids, labels = format_chat([{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}], tok,
                              label_mode="qwen_2")
    assert s.input_ids.tolist() == ids and s.labels.tolist() == labels
    assert (s.modality, s.words) == ("video", 6 + 7)  # "<image>" + 5 + 7: the timestamp message not counted
    # plain takes exactly two turns (preprocess_plain): a multi-turn sample is a counted skip
    multi = dict(info, conversations=info["conversations"] + [{"from": "human", "value": "And then?"},
                                                               {"from": "gpt", "value": "Nothing."}])
    with pytest.raises(SampleError, match="bad conversations.*exactly 2 turns"):
        parse_train_sample(_group(multi, tokens), chat, ParseOptions(dim=64, image_token_id=3, label_mode="plain"))


def test_modality_length_batches_group_sort_and_balance():
    from longvid.pipelines.loader import modality_length_batches

    rng = np.random.default_rng(0)
    text = [bool(x) for x in rng.random(40) < 0.3]
    lengths = [int(x) for x in rng.integers(1, 100, 40)]
    out = modality_length_batches(text, lengths, 2, 3, np.random.default_rng(1))
    assert sorted(i for b in out for i in b) == list(range(40)) and all(len(b) == 2 for b in out[:-3])
    steps = [out[k:k + 3] for k in range(0, len(out), 3)]
    n_text = sum(text)
    mixed = [st for st in steps if len({text[i] for b in st for i in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is steps[-1])  # leftovers of both: one step, last
    assert n_text % 6 or not mixed
    for st in steps:
        idx = [i for b in st for i in b]
        loads = [sum(lengths[i] for i in b) for b in st]
        assert max(loads) - min(loads) <= max(lengths[i] for i in idx)  # balanced deal of the sorted mega-batch
        assert [lengths[b[0]] for b in st] == sorted((lengths[b[0]] for b in st), reverse=True) or len(idx) % 3
    # the same draws give the same batches (exact resume); another window, another order
    assert modality_length_batches(text, lengths, 2, 3, np.random.default_rng(1)) == out
    assert modality_length_batches(text, lengths, 2, 3, np.random.default_rng(2)) != out
    # one modality only: every step is pure, whole mega-batches
    assert len(modality_length_batches([False] * 12, [1] * 12, 2, 3, rng)) == 6


def test_loader_grouping_modes_and_exact_resume_with_accumulation(tmp_path, tok):
    write_synthetic_token_shards(str(tmp_path / "m"), 30, dim=64, per_shard=5, text_only=3)
    plan = index_source("m", [str(tmp_path / "m/shards/*.tar")])
    lo = _loader(plan, tok, batch=2, buffer=10, group_by="modality_length", accum=2)
    assert lo.block_size == 12  # whole optimizer steps: 3 of 2 x 2
    full = _take(lo, 18)
    steps = [full[k:k + 2] for k in range(0, 18, 2)]
    pure = [len({int(k[8:14]) % 3 == 2 for b in st for k in b.keys}) == 1 for st in steps]  # every 3rd: text
    assert all(p for k, p in enumerate(pure) if k % 3 != 2)  # only a window's last step is mixed
    assert sum(pure) >= 6
    for st in steps:  # a step's micro-batches come from one window
        assert len({b.state["block"] - (b.state["batch"] == 0) for b in st}) == 1
    for cut in (1, 3, 8):  # inside a step, at a step boundary, inside a later window
        resumed = _take(_loader(plan, tok, batch=2, buffer=10, group_by="modality_length", accum=2,
                                state=json.loads(json.dumps(full[cut - 1].state))), 18 - cut)
        assert [b.keys for b in resumed] == [b.keys for b in full[cut:]]
    # none: random batches (the reference's stage 1); the same seed, the same batches
    a = [b.keys for b in _take(_loader(plan, tok, batch=3, buffer=9, group_by="none"), 6)]
    assert a == [b.keys for b in _take(_loader(plan, tok, batch=3, buffer=9, group_by="none"), 6)]
    assert a != [b.keys for b in _take(_loader(plan, tok, batch=3, buffer=9), 6)]  # length: sorted windows


def test_decode_accepts_encoder_padded_frames(tok):
    chat = chat_encoder(tok)
    info = synthetic_sample_info("s_1_full", "webvid", 6, 6.0, label=1)
    info["frame_times"] = info["frame_times"][:6]
    tokens = np.zeros((2, 64, 64), np.float32)  # 6 frames padded to 2 clips by the encoder
    with pytest.raises(SampleError, match="clip count mismatch"):
        parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, image_token_id=3))
    info["padded_frames"] = 2
    s = parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, image_token_id=3, max_frames=4))
    assert s.num_frames == 4 and "and 4 frames are uniformly sampled" in tok.decode(s.input_ids)


def test_decode_max_len_truncates_or_skips(tok):
    chat = chat_encoder(tok)
    info = synthetic_sample_info("s_1_full", "webvid", 8, 8.0, label=1)
    tokens = np.zeros((2, 64, 64), np.float32)
    full = parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, image_token_id=3))
    # room for the prompt and part of the answer: truncated, still has labels
    cut = parse_train_sample(_group(info, tokens), chat,
                             ParseOptions(dim=64, image_token_id=3, max_len=full.length - 3))
    assert cut.length == full.length - 3 and (cut.labels != IGNORE_INDEX).any()
    with pytest.raises(SampleError, match="too long"):
        parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, image_token_id=3, max_len=100))


@pytest.mark.parametrize("defect,reason", [
    ("shape", "wrong shape"), ("nan", "non-finite tokens"), ("missing_json", "missing json"),
    ("missing_tokens", "missing tokens.npy"), ("bad_json", "bad json"), ("clips", "clip count mismatch")])
def test_decode_rejects_malformed(tok, defect, reason):
    chat = chat_encoder(tok)
    info = synthetic_sample_info("s_1_full", "webvid", 8, 8.0, label=1)
    tokens = np.zeros((2, 64, 64), np.float16)
    if defect == "shape":
        tokens = np.zeros((2, 64, 32), np.float16)
    elif defect == "nan":
        tokens[1, 5, 5] = np.nan
    elif defect == "clips":
        info["num_clips"] = 3
    g = _group(None if defect == "missing_json" else info, None if defect == "missing_tokens" else tokens)
    if defect == "bad_json":
        g.members["json"] = bytearray(b"{oops")
    with pytest.raises(SampleError) as e:
        parse_train_sample(g, chat, ParseOptions(dim=64, image_token_id=3))
    assert e.value.reason == reason


def test_decode_answer_checks_and_finite_scan_switch(tok):
    chat = chat_encoder(tok)
    info = synthetic_sample_info("s_1_full", "webvid", 8, 8.0, label=1)
    tokens = np.zeros((2, 64, 64), np.float32)
    opts = ParseOptions(dim=64, image_token_id=3)
    only_q = dict(info, conversations=info["conversations"][:1])
    with pytest.raises(SampleError, match="no answer"):
        parse_train_sample(_group(only_q, tokens), chat, opts)
    full = parse_train_sample(_group(info, tokens), chat, opts)
    answer = int((full.labels != IGNORE_INDEX).sum())
    # cut inside the prompt, after the image token: nothing left to train on
    with pytest.raises(SampleError, match="no answer token left"):
        parse_train_sample(_group(info, tokens), chat, ParseOptions(dim=64, image_token_id=3,
                                                               max_len=full.length - answer - 1))
    two = dict(info, conversations=[dict(info["conversations"][0]), dict(info["conversations"][1])])
    two["conversations"][1]["value"] = "<image> twice"
    with pytest.raises(SampleError, match="image placeholder"):
        parse_train_sample(_group(two, tokens), chat, opts)
    # NaN in the last element of a sample larger than one scan chunk (512 KiB)
    wide = np.zeros((5, 64, 1024), np.float16)
    wide[-1, -1, -1] = np.nan
    info5 = synthetic_sample_info("s_1_full", "webvid", 20, 8.0, label=1)
    with pytest.raises(SampleError, match="non-finite"):
        parse_train_sample(_group(info5, wide), chat, ParseOptions(dim=1024, image_token_id=3))
    # check_finite=False leaves the scan to the consumer: the sample comes through, NaN and all
    s = parse_train_sample(_group(info5, wide), chat, ParseOptions(dim=1024, image_token_id=3, check_finite=False))
    assert np.isnan(s.visual[-1, -1])


# ---------------------------------------------------------------------------------------------------- loader


def test_malformed_shards_are_skipped_and_counted(tmp_path, tok):
    corrupt = {"webvid_v000001_full": "shape", "webvid_v000003_full": "nan", "webvid_v000005_full": "missing_json",
               "webvid_v000007_full": "missing_tokens", "webvid_v000008_full": "bad_json"}
    write_synthetic_token_shards(str(tmp_path / "j"), 12, per_shard=4, corrupt=corrupt)
    # a truncated shard as well: its readable samples count, the rest is a counted warning
    extra = tmp_path / "j" / "shards" / "shard-000009-000.tar"
    data = (tmp_path / "j" / "shards" / "shard-000000-000.tar").read_bytes()
    extra.write_bytes(data[: len(data) // 2])
    plan = index_source("j", [str(tmp_path / "j/shards/*.tar")])
    loader = _loader(plan, tok, batch=2, buffer=8)
    seen = {k for b in _take(loader, 12) for k in b.keys}
    assert not seen & set(corrupt)
    c = loader.counters
    assert c["wrong shape"] and c["non-finite tokens"] and c["missing json"] and c["bad json"]
    assert c["missing tokens.npy"] and (c["corrupt tar"] or c["short shard"])
    assert c["skipped"] == sum(c[r] for r in ("wrong shape", "non-finite tokens", "missing json", "bad json",
                                               "missing tokens.npy"))


def test_excluded_keys_never_reach_a_batch(corpus, tok, tmp_path):
    root, keys = corpus
    drop = tmp_path / "drop_list.txt"
    drop.write_text("# audit drop list\n" + "\n".join(keys[::3]) + "\n\n# duplicates\n" + keys[1] + "  # a comment\n")
    excl = read_exclude([str(drop)])
    assert excl == frozenset(keys[::3] + [keys[1]])
    plan = index_source("w", ["webvid/shards/*.tar"], root=str(root))
    loader = _loader(plan, tok, batch=3, buffer=6, exclude=excl, prefetch=2)
    seen = [k for b in _take(loader, 20) for k in b.keys]  # 60 samples: more than 4 epochs of the 13 kept
    assert not set(seen) & excl
    assert set(seen) == set(keys) - excl
    assert loader.counters["excluded"] >= 4 * len(excl)
    with pytest.raises(DataError, match="cannot read the drop list"):
        read_exclude([str(tmp_path / "absent.txt")])


def test_workers_read_disjoint_parts(corpus, tok):
    root, keys = corpus
    plan = index_source("w", ["webvid/shards/*.tar"], root=str(root))
    for world in (2, 3):
        per_rank = []
        for r in range(world):
            lo = _loader(plan, tok, batch=1, buffer=1, rank=r, world=world)
            mine = set()
            # one epoch of this rank's pieces
            n = sum(p.n for p in lo.streams[0].pieces)
            for b in _take(lo, n):
                mine.update(b.keys)
            lo.close()
            per_rank.append(mine)
        for a in range(world):
            for b in range(a + 1, world):
                assert not per_rank[a] & per_rank[b]
        assert set().union(*per_rank) == set(keys)


def test_more_workers_than_shards(tmp_path, tok):
    keys = write_synthetic_token_shards(str(tmp_path / "j"), 6, per_shard=6)  # one shard
    plan = index_source("j", [str(tmp_path / "j/shards/*.tar")])
    seen = []
    for r in range(3):
        lo = _loader(plan, tok, batch=1, buffer=1, rank=r, world=3)
        assert lo.streams[0].pieces[0].n == 2
        seen.append({k for b in _take(lo, 2) for k in b.keys})
        lo.close()
    assert set().union(*seen) == set(keys) and sum(len(s) for s in seen) == 6


def test_batches_are_length_bucketed(corpus, tok):
    root, _ = corpus
    plan = index_source("w", ["webvid/shards/*.tar"], root=str(root))
    lo = _loader(plan, tok, batch=2, buffer=8)
    blocks = lo._batches(0, lo._read_block(0))
    spans = [(min(s.length for s in g), max(s.length for s in g)) for g in blocks]
    spans.sort()
    assert len(blocks) == 4 and all(len(g) == 2 for g in blocks)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # batches hold neighbours in length order


def test_resume_from_state_gives_the_same_batches(corpus, tok):
    root, _ = corpus
    plan = index_source("w", ["webvid/shards/*.tar"], root=str(root))
    full = _take(_loader(plan, tok, batch=2, buffer=6, rank=1, world=2), 14)
    for cut in (2, 3, 7):  # inside a block, at a block boundary, a later epoch
        state = json.loads(json.dumps(full[cut - 1].state))  # what a checkpoint stores
        resumed = _take(_loader(plan, tok, batch=2, buffer=6, rank=1, world=2, state=state, prefetch=2), 14 - cut)
        for a, b in zip(full[cut:], resumed):
            assert a.keys == b.keys
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert all(torch.equal(x, y) for x, y in zip(a.visual, b.visual))
    with pytest.raises(DataError, match="rank 1 of 2"):
        _loader(plan, tok, rank=0, world=2, state=full[0].state)


def test_duration_mix_draws_by_video_seconds(tmp_path, tok):
    write_synthetic_token_shards(str(tmp_path / "short"), 8, source="webvid", duration=(5, 5))
    write_synthetic_token_shards(str(tmp_path / "long"), 8, source="ego4d", duration=(50, 50), key_prefix="ego4d")
    plans = [index_source(n, [str(tmp_path / n / "shards/*.tar")]) for n in ("short", "long")]
    assert plans[0].mean_duration == pytest.approx(5) and plans[1].mean_duration == pytest.approx(50)
    cfg = LoaderConfig(sources=[p.to_dict() for p in plans], batch_size=4, buffer=200, mix="duration", dim=64,
                       prefetch=0)
    lo = StageLoader(cfg, 0, 1, tok)
    assert lo.probs == pytest.approx([10 / 11, 1 / 11])
    keys = [k for b in _take(lo, 50) for k in b.keys]
    n_long = sum(k.startswith("ego4d") for k in keys)
    secs_long, secs_short = 50 * n_long, 5 * (len(keys) - n_long)
    assert 0.6 < secs_long / secs_short < 1.6  # equal weights: about equal video seconds
    cfg2 = LoaderConfig(sources=[p.to_dict() for p in plans], batch_size=4, buffer=8, mix="samples", dim=64)
    assert StageLoader(cfg2, 0, 1, tok).probs == pytest.approx([0.5, 0.5])


def test_token_shards_on_s3(s3, tok, tmp_path):
    job = s3.prefix + "tokens/webvid"
    keys = write_synthetic_token_shards(job, 10, per_shard=4)
    plan = index_source("s3", [job + "/shards/*.tar"], sampling="end:8")
    assert plan.count_from == "index.json" and plan.nsamples == 8
    assert all(p.url.startswith("s3://") for p in plan.pieces)
    drop = tmp_path / "drop.txt"
    drop.write_text(keys[5] + "\n")
    lo = _loader(plan, tok, batch=2, buffer=4, exclude=read_exclude([str(drop)]))
    seen = {k for b in _take(lo, 6) for k in b.keys}
    lo.close()
    assert seen == set(keys[2:]) - {keys[5]}


@pytest.mark.parametrize("batch,kw", [(1, {}), (2, {"max_frames": 8}), (3, {"max_len": 150}),
                                      (2, {"max_frames": 8, "max_len": 170})])
def test_deferred_scan_gives_the_batches_of_scan_as_read(tmp_path_factory, tok, caplog, batch, kw):
    """Scans after the block's other work (rolled back to the block start on a bad sample) against scanning each
    sample as it is read: the same batches, tokens, states, counters and warnings, over NaN and inf anywhere,
    bad samples that are also too long, and clips dropped by the frame bound."""
    import logging

    root = tmp_path_factory.mktemp("defer")
    defects = ["nan", "nan_end", "inf_end", "shape", "bad_json", "nan", "missing_tokens", "inf_end", "clips"]
    corrupt = {f"webvid_v{i:06d}_full": d for i, d in zip(range(1, 40, 4), defects)}
    write_synthetic_token_shards(str(root / "a"), 40, per_shard=6, frames=(4, 32), dim=64, corrupt=corrupt)
    write_synthetic_token_shards(str(root / "b"), 12, per_shard=5, frames=(4, 24), dim=64, dtype="float32",
                                 key_prefix="b", corrupt={"b_v000004_full": "inf_end", "b_v000007_full": "nan"},
                                 long_msg=True)
    plans = [index_source(n, [str(root / n / "shards/*.tar")]) for n in ("a", "b")]
    runs = []
    for defer in (True, False):
        cfg = LoaderConfig(sources=[p.to_dict() for p in plans], batch_size=batch, buffer=5, mix="samples", dim=64,
                           prefetch=0, **kw)
        lo = StageLoader(cfg, 0, 1, tok)
        assert lo.defer_scan
        lo.defer_scan = defer
        replays = []
        read = lo._read_samples
        lo._read_samples = lambda choice, d, pending: (replays.append(defer and not d), read(choice, d, pending))[1]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longvid.train.data"):
            got = _take(lo, 40)
        runs.append((got, dict(lo.counters), [r.getMessage() for r in caplog.records]))
        assert any(replays) == defer  # bad samples were found after the fact: blocks were read again
        lo.close()
    (a, ca, la), (b, cb, lb) = runs
    assert ca == cb and la == lb
    assert ca["non-finite tokens"] >= 4
    for x, y in zip(a, b):
        assert x.keys == y.keys and x.state == y.state and x.n_tokens == y.n_tokens
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
        assert all(torch.equal(v, w) for v, w in zip(x.visual, y.visual))
    assert not {k for x in a for k in x.keys} & {k for k, d in corrupt.items()}


def test_resume_inside_a_block_with_a_bad_sample(tmp_path, tok):
    corrupt = {"webvid_v000002_full": "nan_end", "webvid_v000009_full": "inf_end"}
    write_synthetic_token_shards(str(tmp_path / "j"), 16, per_shard=5, frames=(4, 16), dim=64, corrupt=corrupt)
    plan = index_source("j", [str(tmp_path / "j/shards/*.tar")])
    full = _take(_loader(plan, tok, batch=2, buffer=6), 12)
    for cut in (1, 2, 4, 7):  # inside the first block (which holds a bad sample), at its end, later blocks
        state = json.loads(json.dumps(full[cut - 1].state))
        resumed = _take(_loader(plan, tok, batch=2, buffer=6, state=state, prefetch=2), 12 - cut)
        for a, b in zip(full[cut:], resumed):
            assert a.keys == b.keys and a.state == b.state
            assert all(torch.equal(x, y) for x, y in zip(a.visual, b.visual))
    assert not {k for b in full for k in b.keys} & set(corrupt)
    assert full[5].state["counters_now"]["non-finite tokens"] == 2  # both met in the first three blocks


def test_deferred_scan_errors_come_out_as_in_one_pass(tmp_path, tok, caplog):
    """A source whose shards start with a garbage header: counted as corrupt (not a crash in the header walk), and
    once nothing is readable the same DataError, counters and warnings in both scan orders."""
    import logging

    write_synthetic_token_shards(str(tmp_path / "a"), 8, per_shard=4, dim=64,
                                 corrupt={"webvid_v000001_full": "nan", "webvid_v000002_full": "bad_json"})
    write_synthetic_token_shards(str(tmp_path / "b"), 4, per_shard=2, dim=64, key_prefix="b")
    for tar in (tmp_path / "b" / "shards").glob("*.tar"):  # every shard of source b unreadable
        tar.write_bytes(b"\x01" * 512)
    plans = [index_source(n, [str(tmp_path / n / "shards/*.tar")]) for n in ("a", "b")]
    seen = []
    for defer in (True, False):
        cfg = LoaderConfig(sources=[p.to_dict() for p in plans], batch_size=1, buffer=6, mix="samples", dim=64,
                           prefetch=0)
        lo = StageLoader(cfg, 0, 1, tok)
        lo.defer_scan = defer
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longvid.train.data"):
            with pytest.raises(DataError, match="no readable sample") as e:
                _take(lo, 6)
        seen.append((str(e.value), dict(lo.counters), [r.getMessage() for r in caplog.records]))
    assert seen[0] == seen[1]
    assert seen[0][1]["corrupt tar"] >= 2 and any("unreadable from sample 0 on" in m for m in seen[0][2])


def test_prefetch_bounds_hands_errors_over_and_stops_on_close():
    import threading
    import time

    from longvid.pipelines.loader import _prefetch

    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    before = set(threading.enumerate())
    g = _prefetch(endless(), 2)
    assert next(g) == 0
    time.sleep(0.3)
    assert len(made) <= 4  # one taken, two waiting, one being offered: the bound holds
    t0 = time.time()
    g.close()
    assert time.time() - t0 < 1.0
    assert not [t for t in set(threading.enumerate()) - before if t.name == "longvid-loader" and t.is_alive()]

    def failing():
        yield 1
        yield 2
        raise ValueError("shard broke")

    g = _prefetch(failing(), 1)
    assert next(g) == 1 and next(g) == 2
    with pytest.raises(ValueError, match="shard broke"):
        next(g)
    assert list(_prefetch(iter([7, 8]), 3)) == [7, 8]
