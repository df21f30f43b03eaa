"""NIAH build and eval: sets from a generated video / shards / the released specs, a scorer with fake models whose
answers are known, and the tiny model end to end on Ray."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from longvid.operators import niah
from longvid.operators.errors import ConfigError
from longvid.operators.niah import SpecError
from longvid.pipelines.niah_build import NiahBuildConfig, make_demo_needles, run_niah_build
from longvid.pipelines.niah_eval import (NiahEvalConfig, NiahSet, build_prompts, load_model, run_niah_eval, score_rows,
                                 write_random_checkpoint)

FIX = Path(__file__).resolve().parent / "fixtures" / "niah"
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_SINGLE = SHARED / "data" / "niah" / "niah-coco-singlehop_20.json"
REAL_MULTI = SHARED / "data" / "niah" / "niah-coco-multihop-100.json"
SIZE = 80  # tiny encoder at 80 px: 25 ViT tokens per frame, 100 per clip merged to 64: fast on CPU
FPS = 4.0


def make_images(spec: Path, folder: Path, seed: int = 0) -> int:
    """One small distinct image per image name of a spec (alternating PNG / JPEG files)."""
    from PIL import Image

    data = json.loads(spec.read_text())
    names = sorted({n for it in data for n in (it.get("images") or [it["image"]])})
    rng = np.random.default_rng(seed)
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(24, 48), rng.integers(24, 48)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, format="JPEG" if n.endswith(".jpg") else "PNG")
    return len(names)


def make_shards(folder: Path, counts=(6, 8)) -> Path:
    """An ingest-style shard: <key>.json + <key>.mp4 per sample, frames stamped with a global number."""
    from longvid.operators.mp4 import encode_mp4
    from longvid.pipelines.synth_video import _frame

    folder.mkdir(parents=True, exist_ok=True)
    tar_path = folder / "shard-000000-000.tar"
    g = 0
    with tarfile.open(tar_path, "w") as tar:
        for s, n in enumerate(counts):
            frames = np.stack([_frame(g + i, 64, 64, seed=s) for i in range(n)])
            g += n
            key = f"webvid_v{s}_full"
            for name, data in ((f"{key}.json", json.dumps({"key": key, "num_frames": n}).encode()),
                               (f"{key}.mp4", encode_mp4(frames, fps=1.0, crf=18))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                import io

                tar.addfile(info, io.BytesIO(data))
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from longvid.pipelines.synth_video import make_video

    root = tmp_path_factory.mktemp("niah")
    video = make_video(root / "haystack.mp4", seconds=20, fps=FPS, width=96, height=64, seed=3)
    make_images(FIX / "singlehop_3.json", root / "images")
    make_images(FIX / "multihop_3.json", root / "images", seed=1)
    shards = make_shards(root / "ingest" / "shards")
    return {"root": root, "video": video, "images": root / "images", "shards": shards.parent}


@pytest.fixture(scope="module")
def single_set(assets):
    out = assets["root"] / "set-single"
    s = run_niah_build(NiahBuildConfig(haystack=str(assets["video"]), needles=str(FIX / "singlehop_3.json"),
                                       images=str(assets["images"]), out=str(out), frames=[8, 16],
                                       depths=[0.0, 0.5, 1.0], model="tiny", img_size=SIZE, dtype="float32",
                                       threads=1, quiet=True))
    return out, s


@pytest.fixture(scope="module")
def multi_set(assets):
    out = assets["root"] / "set-multi"
    s = run_niah_build(NiahBuildConfig(haystack=str(assets["shards"]), needles=str(FIX / "multihop_3.json"),
                                       images=str(assets["images"]), out=str(out), frames=[10, 20], multi_hop=True,
                                       model="tiny", img_size=SIZE, threads=1, quiet=True))
    return out, s


@pytest.fixture
def one_thread():
    """Scoring on CPU in this process: one torch thread (much faster than two on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _encoder(seed=0):
    from longvid.model.config import get_config
    from longvid.model.hico import HiCoEncoder

    cfg = get_config("tiny", img_size=SIZE)
    torch.manual_seed(seed)
    return HiCoEncoder(cfg.umt, cfg.tokens_per_frame).eval()


# -------------------------------------------------------------------------------------------------- build


def test_build_single_hop_from_a_video(single_set, assets):
    from PIL import Image

    from longvid.model.umt import preprocess
    from longvid.operators.decode import decode_frames
    from longvid.operators.probe import probe

    out, s = single_set
    assert s["kind"] == "single" and s["items"] == 3 and s["inputs"] == 3 * 2 * 3
    assert s["haystack"]["type"] == "video" and s["haystack"]["unique_frames"] == 16 and not s["haystack"]["repeated"]
    assert s["dim"] == 64 and s["tokens_per_frame"] == 16 and s["needle_tokens"] == 64
    assert json.loads((out / "set.json").read_text())["inputs"] == 18
    rows = pq.read_table(out / "index.parquet").to_pylist()
    assert len(rows) == 18
    for r in rows:
        assert r["positions"] == [niah.single_hop_position(r["length"], r["depth"])]
        assert r["haystack_frames"] == r["length"] and r["num_tokens"] == r["length"] * 16 + 64
        assert r["token_starts"] == [r["positions"][0] * 16]
    assert {(r["length"], r["depth"], r["positions"][0]) for r in rows if r["item_id"] == 1} == {
        (8, 0.0, 0), (8, 0.5, 4), (8, 1.0, 8), (16, 0.0, 0), (16, 0.5, 8), (16, 1.0, 16)}

    # the haystack is the video at 1 fps, padded to squares, encoded in 4-frame clips, 16 tokens per frame slot
    info = probe(assets["video"])
    idx = niah.video_1fps_indices(info.num_frames, info.fps)[:16]
    assert idx == [int(round(k * FPS)) for k in range(16)]
    prov = pq.read_table(out / "haystack" / "frames.parquet").to_pylist()
    assert [p["frame"] for p in prov] == idx
    frames = decode_frames(str(assets["video"]), idx, info)
    enc = _encoder()
    with torch.no_grad():
        ref = enc(preprocess(frames, SIZE, pad_to_square=True)[None]).reshape(16, 16, -1).numpy()
    hay = np.load(out / "haystack" / "tokens.npy")
    assert hay.shape == (16, 16, 64) and hay.dtype == np.float32
    np.testing.assert_allclose(hay, ref, atol=1e-4)

    # needles: each image padded to a square and repeated to one 4-frame clip -> 64 tokens
    items = {it["id"]: it for it in json.loads((out / "items.json").read_text())}
    ntok = np.load(out / "needles" / "tokens.npy")
    assert ntok.shape == (3, 64, 64)
    img = np.array(Image.open(assets["images"] / items[2]["images"][0]).convert("RGB"))
    with torch.no_grad():
        nref = enc(preprocess(img[None], SIZE, pad_to_square=True)[None], image_mode="repeat")[0, 0].numpy()
    np.testing.assert_allclose(ntok[items[2]["needle_rows"][0]], nref, atol=1e-4)
    assert items[2]["questions"]["single"]["answer"] == "D"


def test_build_multi_hop_from_shards_tiles_a_short_haystack(multi_set):
    out, s = multi_set
    assert s["kind"] == "multi" and s["inputs"] == 3 * 2 and s["depths"] == []
    # the shard holds 6 + 8 = 14 frames; the longest haystack is 20: all 14 are used and repeated
    assert s["haystack"]["type"] == "shards" and s["haystack"]["unique_frames"] == 14 and s["haystack"]["repeated"]
    prov = pq.read_table(out / "haystack" / "frames.parquet").to_pylist()
    assert [(p["key"], p["frame"]) for p in prov] == [("webvid_v0_full", i) for i in range(6)] + [
        ("webvid_v1_full", i) for i in range(8)]
    assert np.load(out / "haystack" / "tokens.npy").dtype == np.float16
    rows = pq.read_table(out / "index.parquet").to_pylist()
    items = {it["id"]: it for it in json.loads((out / "items.json").read_text())}
    for r in rows:
        n = len(items[r["item_id"]]["images"])
        assert r["depth"] is None
        assert r["positions"] == niah.multi_hop_positions(r["length"], n)
        assert r["positions"][0] == 0 and r["positions"][-1] == r["length"] == r["haystack_frames"]
        assert r["token_starts"] == [p * 16 + k * 64 for k, p in enumerate(r["positions"])]
    ntok = np.load(out / "needles" / "tokens.npy")
    assert ntok.shape == (18, 64, 64)  # 5 + 6 + 7 distinct images
    # a slice of the tiled haystack: frame 14 of a 20-frame haystack is slot 0
    nset = NiahSet(out)
    r = next(r for r in nset.rows if r["length"] == 20 and r["item_id"] == 0)  # positions 0, 5, 10, 15, 20
    vis = nset.visual(r)
    assert vis.shape == (20 * 16 + 5 * 64, 64)
    frame14 = 14 * 16 + 3 * 64  # three needles (at 0, 5, 10) come before haystack frame 14
    np.testing.assert_array_equal(vis[frame14 : frame14 + 16], nset.haystack[0])


def test_build_bad_inputs(assets, tmp_path):
    base = dict(haystack=str(assets["video"]), needles=str(FIX / "singlehop_3.json"), images=str(assets["images"]),
                frames=[8], depths=[0.5], model="tiny", img_size=SIZE, threads=1, quiet=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match=r"item id 0: image: needle image .* not found"):
        run_niah_build(NiahBuildConfig(**{**base, "images": str(empty)}, out=str(tmp_path / "a")))
    with pytest.raises(SpecError, match="drop --multi-hop"):
        run_niah_build(NiahBuildConfig(**base, out=str(tmp_path / "b"), multi_hop=True))
    with pytest.raises(ConfigError, match="encoder: give the encoder weights"):
        run_niah_build(NiahBuildConfig(**{**base, "model": "videochat-flash-7b"}, out=str(tmp_path / "c")))
    with pytest.raises(ConfigError, match="haystack: .*no .tar shards"):
        run_niah_build(NiahBuildConfig(**{**base, "haystack": str(empty)}, out=str(tmp_path / "d")))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "other.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty and holds no NIAH set"):
        run_niah_build(NiahBuildConfig(**base, out=str(tmp_path / "e")))
    with pytest.raises(ConfigError, match="depths"):
        run_niah_build(NiahBuildConfig(**{**base, "depths": [2.0]}, out=str(tmp_path / "f")))
    bad = tmp_path / "imgs"
    make_images(FIX / "singlehop_3.json", bad)
    (bad / "single" / "COCO_val2014_000000000002.jpg").write_bytes(b"not an image")
    with pytest.raises(SpecError, match="item id 1: image: needle image .*: not a readable image"):
        run_niah_build(NiahBuildConfig(**{**base, "images": str(bad)}, out=str(tmp_path / "g")))


@pytest.mark.skipif(not REAL_SINGLE.is_file(), reason="../shared not present")
@pytest.mark.slow
def test_build_from_the_released_specs(assets, tmp_path):
    imgs = tmp_path / "images"
    assert make_images(REAL_SINGLE, imgs) == 20
    s = run_niah_build(NiahBuildConfig(haystack=str(assets["video"]), needles=str(REAL_SINGLE), images=str(imgs),
                                       out=str(tmp_path / "single"), frames=[5, 10], model="tiny", img_size=SIZE,
                                       threads=1, quiet=True))
    assert (s["kind"], s["items"], s["inputs"]) == ("single", 20, 20 * 2 * 6)
    rows = pq.read_table(tmp_path / "single" / "index.parquet").to_pylist()
    assert sorted({r["positions"][0] for r in rows if r["length"] == 10}) == [0, 2, 4, 6, 8, 10]
    assert sorted({r["item_id"] for r in rows}) == list(range(20))
    assert make_images(REAL_MULTI, imgs, seed=2) == 609
    s = run_niah_build(NiahBuildConfig(haystack=str(assets["video"]), needles=str(REAL_MULTI), images=str(imgs),
                                       out=str(tmp_path / "multi"), frames=[12], multi_hop=True, model="tiny",
                                       img_size=SIZE, threads=1, quiet=True))
    assert (s["kind"], s["items"], s["inputs"], s["images"]["count"]) == ("multi", 100, 100, 609)
    rows = pq.read_table(tmp_path / "multi" / "index.parquet").to_pylist()
    items = {it["id"]: it for it in json.loads((tmp_path / "multi" / "items.json").read_text())}
    r0 = rows[0]
    assert items[r0["item_id"]]["images"][0] == "multi/niah_651_5_COCO_val2014_000000353320.jpg"
    assert r0["positions"] == [0, 2, 4, 6, 8, 10, 12]  # 7 images over 12 frames


# -------------------------------------------------------------------------------------------------- scoring


class NeedleFinder:
    """A fake model that answers right exactly when the needle (the last one, for a chain) is in the visual input:
    it looks for known needle tokens at every 16-token boundary and answers what the spec says about it."""

    def __init__(self, nset: NiahSet, tokenizer):
        self.tok = tokenizer
        self.by_needle = {}
        for it in nset.items.values():
            last = np.asarray(nset.needles[it["needle_rows"][-1]], np.float32)
            self.by_needle[last.tobytes()] = it["questions"]
        self.seen: list[list[int]] = []

    def score_options(self, prompt_ids, visual, options, dropout=None):
        v = visual.numpy()
        found, where = None, []
        for o in range(0, v.shape[0] - 63, 16):
            qs = self.by_needle.get(v[o : o + 64].tobytes())
            if qs is not None:
                found = qs
                where.append(o)
        self.seen.append(where)
        text = self.tok.decode(prompt_ids)
        letters = [self.tok.decode(o) for o in options]
        want = "Z"
        if found is not None:
            q = found.get("single") or (found["caption"] if "captions" in text else found["qa"])
            assert q["text"] in text
            want = q["answer"]
        return torch.tensor([1.0 if L == want else 0.0 for L in letters])


class AlwaysB:
    def score_options(self, prompt_ids, visual, options, dropout=None):
        return torch.tensor([0.0, 5.0] + [-1.0] * (len(options) - 2))


def test_scorer_with_fake_models(single_set, multi_set, one_thread):
    from longvid.model.tokenizer import build_test_tokenizer

    tok = build_test_tokenizer()
    for out, _ in (single_set, multi_set):
        nset = NiahSet(out)
        prompts = build_prompts(tok, nset.items)
        for pr in prompts.values():
            assert pr["ids"].count(3) == 1 and tok.decode(pr["ids"]).endswith("Best option: (<|im_end|>\n<|im_start|>assistant\n")
            assert pr["letters"] == ["A", "B", "C", "D"]
        finder = NeedleFinder(nset, tok)
        res = score_rows(finder, nset, prompts, nset.rows)
        assert len(res) == len(nset.rows) * (1 if nset.kind == "single" else 2)
        assert all(r["correct"] for r in res), [r for r in res if not r["correct"]][:2]
        # the finder saw each needle where the index says it is
        per_row = {r["row"]: r for r in nset.rows}
        q_per_row = 1 if nset.kind == "single" else 2
        for k, r in enumerate(res):
            row = per_row[r["row"]]
            assert r["visual_tokens"] == row["num_tokens"]
            assert finder.seen[k][-1] == row["token_starts"][-1]
        assert len(finder.seen) == len(nset.rows) * q_per_row
        res_b = score_rows(AlwaysB(), nset, prompts, nset.rows)
        assert all(r["predicted"] == "B" for r in res_b)
        assert [r["correct"] for r in res_b] == [r["answer"] == "B" for r in res_b]
    # a fake that cannot see the needle (haystack only) is wrong everywhere
    nset = NiahSet(single_set[0])
    finder = NeedleFinder(nset, tok)
    finder.by_needle = {}
    assert not any(r["correct"] for r in score_rows(finder, nset, build_prompts(tok, nset.items), nset.rows[:4]))


def test_checkpoint_layouts_give_the_same_model(tmp_path, single_set, one_thread):
    from safetensors.torch import save_file

    from longvid.model.config import get_config
    from longvid.model.llm import VideoLLM
    from longvid.model.tokenizer import build_test_tokenizer

    tok = build_test_tokenizer()
    llava = write_random_checkpoint(tmp_path / "llava.safetensors", seed=7)
    torch.manual_seed(7)
    ref = VideoLLM(get_config("tiny"))
    save_file({"vlm." + k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "train.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "plain.pt")
    nset = NiahSet(single_set[0])
    prompts = build_prompts(tok, nset.items)
    scores = []
    for ck in (llava, tmp_path / "train.safetensors", tmp_path / "plain.pt"):
        m, summary = load_model("tiny", SIZE, str(ck), tok)
        scores.append([r["scores"] for r in score_rows(m, nset, prompts, nset.rows[:3])])
    assert scores[0] == scores[1] == scores[2]
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="neither a VideoChat-Flash"):
        load_model("tiny", SIZE, str(tmp_path / "bad.safetensors"), tok)
    save_file({"llm.model.embed_tokens.weight": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ConfigError, match="does not fit preset tiny"):
        load_model("tiny", SIZE, str(tmp_path / "shape.safetensors"), tok)


@pytest.mark.slow
def test_eval_end_to_end_on_ray(single_set, multi_set, tmp_path):
    from PIL import Image

    ck = write_random_checkpoint(tmp_path / "ck" / "model.safetensors", seed=1)
    s = run_niah_eval(NiahEvalConfig(set=str(single_set[0]), checkpoint=str(ck), tokenizer="test", num_cpus=2,
                                     rows_per_task=5, out=str(tmp_path / "eval-single"), quiet=True))
    # the same job without Ray (one process), multi hop with visual-token dropout
    m = run_niah_eval(NiahEvalConfig(set=str(multi_set[0]), checkpoint=str(ck), tokenizer="test", use_ray=False,
                                     threads=1, out=str(tmp_path / "eval-multi"), visual_dropout="uniform:1:1,0.5",
                                     quiet=True))
    # single hop: one result per input, accuracy per (length, depth) = mean of its results
    res = pq.read_table(tmp_path / "eval-single" / "results.parquet").to_pylist()
    assert len(res) == 18 and sorted(r["row"] for r in res) == list(range(18))
    assert all(r["predicted"] in "ABCD" and len(r["scores"]) == 4 for r in res)
    assert all(r["predicted"] == "ABCD"[int(np.argmax(r["scores"]))] for r in res)
    cells = {(c["length"], c["depth"]): c["accuracy"] for c in s["by_length_depth"]}
    assert len(cells) == 6
    for (L, d), acc in cells.items():
        mine = [r["correct"] for r in res if r["length"] == L and r["depth"] == d]
        assert acc == sum(mine) / len(mine)
    assert s["questions"] == 18 and s["run"]["actors"] == 1 and s["run"]["device"] == "cpu"
    img = Image.open(s["heatmap"])
    assert img.format == "PNG" and img.size[0] > 200
    assert json.loads((tmp_path / "eval-single" / "summary.json").read_text())["overall"] == s["overall"]
    # multi hop with visual-token dropout: caption and QA per input, score = their mean
    res = pq.read_table(tmp_path / "eval-multi" / "results.parquet").to_pylist()
    assert len(res) == 12 and {r["question"] for r in res} == {"caption", "qa"}
    assert tuple(m["visual_dropout"]["layers"]) == (1,) and m["run"]["actors"] == 0
    for row in m["by_length"]:
        assert row["score"] == (row["caption"] + row["qa"]) / 2
    assert Path(m["heatmap"]).is_file()
    # the tiny model with the same weights, scored without Ray, gives the same single-hop predictions
    from longvid.model.tokenizer import build_test_tokenizer

    tok = build_test_tokenizer()
    nset = NiahSet(single_set[0])
    model, _ = load_model("tiny", SIZE, str(ck), tok)
    local = score_rows(model, nset, build_prompts(tok, nset.items), nset.rows)
    ray_res = pq.read_table(tmp_path / "eval-single" / "results.parquet").to_pylist()
    assert [r["predicted"] for r in local] == [r["predicted"] for r in ray_res]


def test_eval_bad_config(single_set, tmp_path):
    base = dict(set=str(single_set[0]), tokenizer="test", quiet=True)
    with pytest.raises(ConfigError, match="checkpoint: .* not found"):
        run_niah_eval(NiahEvalConfig(**base, checkpoint=str(tmp_path / "nope.safetensors")))
    with pytest.raises(ConfigError, match="no set.json"):
        run_niah_eval(NiahEvalConfig(**{**base, "set": str(tmp_path)}, checkpoint="random:0"))
    with pytest.raises(ConfigError, match="visual_dropout: layers .* below the LLM's 2 layers"):
        run_niah_eval(NiahEvalConfig(**base, checkpoint="random:0", visual_dropout="released"))
    with pytest.raises(ConfigError, match="visual_dropout: 'bogus'"):
        run_niah_eval(NiahEvalConfig(**base, checkpoint="random:0", visual_dropout="bogus"))
    with pytest.raises(ConfigError, match="model: preset videochat-flash-2b takes 1024-wide"):
        run_niah_eval(NiahEvalConfig(**{**base, "model": "videochat-flash-2b"}, checkpoint="random:0"))
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        run_niah_eval(NiahEvalConfig(**{**base, "tokenizer": ""}, checkpoint="random:0"))


def test_cli_build_and_errors(assets, tmp_path, capsys):
    from longvid.jobs.cli import main

    spec, images = make_demo_needles(tmp_path / "demo", items=2)
    rc = main(["niah", "build", "--haystack", str(assets["video"]), "--needles", str(spec), "--images", str(images),
               "--out", str(tmp_path / "set"), "--frames", "4,8", "--depths", "0,1", "--model", "tiny",
               "--img-size", str(SIZE), "--threads", "1", "--quiet"])
    assert rc == 0
    rows = pq.read_table(tmp_path / "set" / "index.parquet").to_pylist()
    assert [(r["length"], r["depth"], r["positions"]) for r in rows[:4]] == [(4, 0.0, [0]), (4, 1.0, [4]),
                                                                             (8, 0.0, [0]), (8, 1.0, [8])]
    rc = main(["niah", "build", "--haystack", str(assets["video"]), "--needles", str(spec), "--images", str(images),
               "--out", str(tmp_path / "set2"), "--frames", "4,x", "--model", "tiny"])
    assert rc == 2 and "frames[1]: expected an integer" in capsys.readouterr().err
    rc = main(["niah", "build", "--haystack", str(assets["video"]), "--needles", str(spec), "--images", str(images),
               "--out", str(tmp_path / "set3"), "--multi-hop", "--model", "tiny"])
    assert rc == 2 and "field 'images' is missing" in capsys.readouterr().err
    assert main(["niah"]) == 2
    rc = main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--tokenizer", "test",
               "--no-ray", "--threads", "1", "--quiet"])
    assert rc == 0 and f"heat map: {tmp_path / 'set' / 'eval' / 'heatmap.png'}" in capsys.readouterr().out
    assert len(pq.read_table(tmp_path / "set" / "eval" / "results.parquet")) == 2 * 2 * 2
    rc = main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--device", "tpu"])
    assert rc == 2 and "device: must be one of auto, cpu, cuda" in capsys.readouterr().err


def test_demo_round_on_an_ingest_folder(assets, tmp_path):
    from longvid.pipelines.niah_eval import run_niah_demo

    lines = []
    res = run_niah_demo(tmp_path / "niah", assets["shards"], frames=(8, 12), items=2, use_ray=False, threads=1,
                        log=lines.append)
    assert res["build"]["inputs"] == 2 * 2 * 3 and res["eval"]["questions"] == 12
    assert Path(res["heatmap"]).is_file() and res["heatmap"] in lines[-1]
    assert res["build"]["haystack"]["type"] == "shards" and res["build"]["encoder"]["img_size"] == 224
