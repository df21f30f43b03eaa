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
from longvid.pipelines import niah_build
from longvid.pipelines.niah_eval import (NiahEvalConfig, NiahSet, build_prompts, greedy_decode, load_model,
                                         reference_match, run_niah_eval, score_rows, stop_token_ids,
                                         write_random_checkpoint)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "niah"
SHARED = Path(__file__).resolve().parents[3] / "shared"
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


def write_frame_shards(folder: Path, shards, key: str) -> Path:
    """Ingest-style shards (<key>.json + <key>.mp4 per sample): shard s holds one sample of n frames for each n in
    shards[s], 64x64 frames stamped with a number running over all shards (seed: the sample's place in its shard);
    `key` is formatted with s and i (the sample's place)."""
    import io

    from longvid.operators.mp4 import encode_mp4
    from longvid.synthetic.videos import _frame

    folder.mkdir(parents=True, exist_ok=True)
    g = 0
    for s, counts in enumerate(shards):
        with tarfile.open(folder / f"shard-{s:06d}-000.tar", "w") as tar:
            for i, n in enumerate(counts):
                frames = np.stack([_frame(g + j, 64, 64, seed=i) for j in range(n)])
                g += n
                k = key.format(s=s, i=i)
                for name, data in ((f"{k}.json", json.dumps({"key": k, "num_frames": n}).encode()),
                                   (f"{k}.mp4", encode_mp4(frames, fps=1.0, crf=18))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def make_shards(folder: Path, counts=(6, 8)) -> Path:
    """One ingest-style shard, frames stamped with a global number."""
    return write_frame_shards(folder, [counts], "webvid_v{i}_full")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from longvid.synthetic.videos import make_video

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
    assert s["haystack"]["reference_exact"] is True and s["haystack"]["deviation"] is None
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
    # ingest frames were sampled and stretched to squares by ingest: flagged, never passed off as the reference's
    assert s["haystack"]["reference_exact"] is False and "stretched, not padded" in s["haystack"]["deviation"]
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


class FakeEncoder:
    """Stands in for the HiCo encoder (make_encoder patched): records the frames the build feeds it, de-normalised
    to uint8, and the frame stamps (synthetic.videos) read in `stamp_rows`; every token of the k-th frame fed
    is k, so tokens.npy tells which fed frame each slot holds. Images (T = 1) are recorded with their image_mode.
    `stamp_rows` None and `keep` False: frames are only counted (fast)."""

    def __init__(self, size: int, stamp_rows: slice | None, keep: bool = True):
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(img_size=size, num_frames=4)
        self.tokens_per_frame, self.tokens_per_clip, self.out_dim = 16, 64, 8
        self.rows, self.keep = stamp_rows, keep
        self.frames, self.stamps, self.images, self.modes = [], [], [], []
        self.count = 0  # frames fed

    def make(self, preset, img_size, weights, seed, device):
        assert img_size == self.cfg.img_size
        return self, {"preset": "tiny", "img_size": img_size, "dim": self.out_dim, "tokens_per_frame": 16,
                      "weights": "fake"}

    def __call__(self, x, *, image_mode="repeat", clips_per_pass=None):
        from longvid.model.umt import IMAGENET_MEAN, IMAGENET_STD
        from longvid.synthetic.videos import read_frame_number

        b, t = x.shape[0], x.shape[2]
        if t == 1 or self.keep or self.rows is not None:
            mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
            u8 = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
        if t == 1:
            self.images += list(u8[:, 0])
            self.modes.append(image_mode)
            return torch.zeros(b, 1, 64, self.out_dim)
        assert b == 1 and t % 4 == 0
        first = self.count
        self.count += t
        if self.keep or self.rows is not None:
            for f in u8[0]:
                self.stamps.append(read_frame_number(f[self.rows]) if self.rows is not None else None)
                if self.keep:
                    self.frames.append(f)
        vals = torch.arange(first, first + t, dtype=torch.float32).repeat_interleave(16)
        return vals[None, :, None].expand(1, t * 16, self.out_dim).reshape(1, t // 4, 64, self.out_dim)


def test_build_feeds_the_encoder_the_reference_haystack_and_padded_needles(tmp_path, monkeypatch):
    """A 2.5 fps video of 96x72 frames: the encoder gets every round(2.5) = 2nd frame from frame 0 (the reference's
    read loop, transcribed in test_reference_rules), each padded to 96x96 with the mean colour exactly as LLaVA's
    expand2square; 10 frames asked -> 12 fed (whole clips of the video's own frames), 10 kept. Needle images are
    padded the same way and encoded in image_mode "repeat" (one 4-frame clip)."""
    from PIL import Image
    from tests.scenarios.test_reference_rules import ref_expand2square, ref_haystack

    from longvid.model.umt import IMAGENET_MEAN
    from longvid.operators.decode import decode_frames
    from longvid.operators.probe import probe
    from longvid.synthetic.videos import make_video

    video = make_video(tmp_path / "v.mp4", seconds=12, fps=2.5, width=96, height=72, seed=5, crf=18)
    spec, images = make_demo_needles(tmp_path / "needles", items=2)  # 96x72 images
    fake = FakeEncoder(96, slice(12, 84))  # the 72 picture rows inside the 96x96 padded frame
    monkeypatch.setattr(niah_build, "make_encoder", fake.make)
    out = tmp_path / "set"
    s = run_niah_build(NiahBuildConfig(haystack=str(video), needles=str(spec), images=str(images), out=str(out),
                                       frames=[6, 10], depths=[0.0, 1.0], model="tiny", img_size=96,
                                       dtype="float32", quiet=True))
    info = probe(video)
    assert info.num_frames == 30
    ref = ref_haystack(info.num_frames, info.fps, 10)
    assert ref[:12] == list(range(0, 24, 2))
    assert fake.stamps == ref[:12]
    fill = tuple(int(m * 255) for m in IMAGENET_MEAN)
    decoded = decode_frames(str(video), ref[:12], info)
    for got, frame in zip(fake.frames, decoded, strict=True):
        assert np.array_equal(got, np.asarray(ref_expand2square(Image.fromarray(frame), fill)))
    hay = np.load(out / "haystack" / "tokens.npy")
    assert hay.shape == (10, 16, 8) and np.array_equal(hay[:, 0, 0], np.arange(10))  # fed frames 0..9, in order
    assert [r["frame"] for r in pq.read_table(out / "haystack" / "frames.parquet").to_pylist()] == ref[:10]
    h = s["haystack"]
    assert (h["type"], h["unique_frames"], h["reference_exact"]) == ("video", 10, True)
    assert "every round(fps) = 2 frames at 2.5 fps" in h["frames"]
    names = [it["images"][0] for it in json.loads((out / "items.json").read_text())]
    assert fake.modes == ["repeat"] and len(fake.images) == len(names) == 2
    for got, name in zip(fake.images, names):
        with Image.open(images / name) as im:
            assert im.size == (96, 72)
            assert np.array_equal(got, np.asarray(ref_expand2square(im.convert("RGB"), fill)))

    # ingest shards: the stored (already square) frames are fed as they are, and the set says it is not the reference's
    fake = FakeEncoder(64, slice(0, 64))
    monkeypatch.setattr(niah_build, "make_encoder", fake.make)
    shards = make_shards(tmp_path / "ingest" / "shards", counts=(3, 5))
    s = run_niah_build(NiahBuildConfig(haystack=str(shards.parent), needles=str(spec), images=str(images),
                                       out=str(tmp_path / "set-shards"), frames=[6], depths=[0.5], model="tiny",
                                       img_size=64, quiet=True))
    from longvid.operators.mp4 import decode_mp4

    with tarfile.open(shards / "shard-000000-000.tar") as tar:
        stored = np.concatenate([decode_mp4(tar.extractfile(m).read()) for m in tar if m.name.endswith(".mp4")])
    assert len(fake.frames) == 8 and all(np.array_equal(a, b) for a, b in zip(fake.frames, stored, strict=True))
    assert s["haystack"]["reference_exact"] is False and s["haystack"]["frames"].startswith("the frames stored")


def test_build_above_7500_frames_repeats_the_reference_period(tmp_path, monkeypatch):
    """10,000 frames asked of a 5,100-second 1 fps video: the reference reads 5,016 frames and repeats them; the
    build feeds exactly those frames (which frames: frames.parquet; their pixels are checked by the test above) and
    every 10,000-frame input maps frame i to slot i mod 5,016."""
    from tests.scenarios.test_reference_rules import ref_haystack

    from longvid.synthetic.videos import make_video

    video = make_video(tmp_path / "long.mp4", seconds=5100, fps=1.0, width=16, height=16, seed=2)
    spec, images = make_demo_needles(tmp_path / "needles", items=1)
    fake = FakeEncoder(16, None, keep=False)
    monkeypatch.setattr(niah_build, "make_encoder", fake.make)
    out = tmp_path / "set"
    s = run_niah_build(NiahBuildConfig(haystack=str(video), needles=str(spec), images=str(images), out=str(out),
                                       frames=[10000], depths=[0.5], model="tiny", img_size=16, dtype="float32",
                                       quiet=True))
    ref = ref_haystack(5100, 1.0, 10000)
    assert len(ref) == 10032 and s["haystack"]["unique_frames"] == 5016 and s["haystack"]["repeated"]
    assert fake.count == 5016 and np.array_equal(np.load(out / "haystack" / "tokens.npy")[:, 0, 0], np.arange(5016))
    slot_frame = [r["frame"] for r in pq.read_table(out / "haystack" / "frames.parquet").to_pylist()]
    nset = NiahSet(out)
    (row,) = nset.rows
    assert row["positions"] == [5000] and row["num_tokens"] == 10000 * 16 + 64
    vis = nset.visual(row)
    slots = np.concatenate([vis[: 5000 * 16 : 16, 0], vis[5000 * 16 + 64 :: 16, 0]]).astype(int)
    assert [slot_frame[k] for k in slots] == ref[:10000]


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

    def greedy(self, prompt_ids, visual, *, max_new_tokens, stop_ids, dropout=None):
        """Greedy-decoding fake: the answer letter (or "Z") then the stop token, from the same needle search."""
        scores = self.score_options(prompt_ids, visual, [[t] for t in self.tok.convert_tokens_to_ids(list("ABCDZ"))])
        letter = "ABCDZ"[int(scores.argmax())] if float(scores.max()) > 0 else "Z"
        return self.tok(letter, add_special_tokens=False)["input_ids"] + [stop_ids[0]]


class Says:
    """Greedy fake that always decodes `text` (then stops)."""

    def __init__(self, tok, text):
        self.ids = tok(text, add_special_tokens=False)["input_ids"]

    def __call__(self, prompt_ids, visual, *, max_new_tokens, stop_ids, dropout=None):
        return list(self.ids)[:max_new_tokens]


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
        res = score_rows(finder, nset, prompts, nset.rows, scoring="options")
        assert len(res) == len(nset.rows) * (1 if nset.kind == "single" else 2)
        assert all(r["correct"] for r in res), [r for r in res if not r["correct"]][:2]
        assert all(r["scoring"] == "options" and r["generated"] is None and len(r["scores"]) == 4 for r in res)
        # the finder saw each needle where the index says it is
        per_row = {r["row"]: r for r in nset.rows}
        q_per_row = 1 if nset.kind == "single" else 2
        for k, r in enumerate(res):
            row = per_row[r["row"]]
            assert r["visual_tokens"] == row["num_tokens"]
            assert finder.seen[k][-1] == row["token_starts"][-1]
        assert len(finder.seen) == len(nset.rows) * q_per_row
        res_b = score_rows(AlwaysB(), nset, prompts, nset.rows, scoring="options")
        assert all(r["predicted"] == "B" for r in res_b)
        assert [r["correct"] for r in res_b] == [r["answer"] == "B" for r in res_b]
        # greedy scoring: the same finder decoding its answer letter and stopping is right everywhere
        finder.seen = []
        res_g = score_rows(None, nset, prompts, nset.rows, scoring="greedy", tokenizer=tok, generate=finder.greedy)
        assert [(r["row"], r["question"]) for r in res_g] == [(r["row"], r["question"]) for r in res]
        assert all(r["correct"] and r["scoring"] == "greedy" and r["scores"] is None for r in res_g)
        assert all(r["predicted"] == r["generated"] == r["answer"] for r in res_g)  # the stop token is not shown
        for k, r in enumerate(res_g):
            assert finder.seen[k][-1] == per_row[r["row"]]["token_starts"][-1]
    # a fake that cannot see the needle (haystack only) is wrong everywhere
    nset = NiahSet(single_set[0])
    finder = NeedleFinder(nset, tok)
    finder.by_needle = {}
    prompts = build_prompts(tok, nset.items)
    assert not any(r["correct"] for r in score_rows(finder, nset, prompts, nset.rows[:4], scoring="options"))
    assert not any(r["correct"] for r in score_rows(None, nset, prompts, nset.rows[:4], tokenizer=tok,
                                                    generate=finder.greedy))


@pytest.mark.parametrize("text,predicted,right", [
    ("B", "B", True), ("b", "b", True), ("B)", "B", True), ("B is right", "B", True), ("(B", "(", False),
    (" B", " ", False), ("A", "A", False), ("<|im_end|>", "<|im_end|>", False)])
def test_greedy_rows_compare_as_the_released_eval(single_set, text, predicted, right):
    """Inside score_rows: only the first N decoded tokens count (N = the answer's tokens: 1 for a letter; the test
    tokenizer splits "B)" into "B" + ")" and " B" into " " + "B"), compared by the released rule; `generated`
    keeps the whole continuation without the stop token."""
    from longvid.model.tokenizer import build_test_tokenizer

    tok = build_test_tokenizer()
    nset = NiahSet(single_set[0])
    prompts = build_prompts(tok, nset.items)
    rows = [r for r in nset.rows if nset.items[r["item_id"]]["questions"]["single"]["answer"] == "B"][:1]
    assert rows and prompts[(rows[0]["item_id"], "single")]["answer_text"] == "B"
    res = score_rows(None, nset, prompts, rows, tokenizer=tok, generate=Says(tok, text))
    assert len(res) == 1 and res[0]["answer"] == "B" and res[0]["scoring"] == "greedy"
    assert (res[0]["predicted"], res[0]["correct"]) == (predicted, right)
    assert res[0]["generated"] == ("" if text == "<|im_end|>" else text)


def test_greedy_decode_takes_the_whole_vocabulary_argmax_each_step(one_thread):
    """The tiny random model: each decoded token is the argmax over all logits of a full forward over prompt +
    tokens so far (the KV-cache path changes nothing); a stop token ends decoding and is kept; max_new_tokens
    bounds it; with visual-token dropout that keeps every token the result is the same."""
    from longvid.model.dropout import DropoutConfig
    from longvid.model.tokenizer import build_test_tokenizer, format_chat

    tok = build_test_tokenizer()
    model, _ = load_model("tiny", SIZE, "random:3", tok)
    ids, _ = format_chat([{"from": "human", "value": "<image>Which shape? Best option: ("}], tok,
                         add_generation_prompt=True)
    vis = torch.randn(5 * 16 + 64, 64, generator=torch.Generator().manual_seed(0))
    got = greedy_decode(model, ids, vis, max_new_tokens=6, stop_ids=[])
    cur, ref = list(ids), []
    with torch.no_grad():
        for _ in range(6):
            ref.append(int(model(torch.tensor([cur]), [vis]).logits[0, -1].argmax()))
            cur.append(ref[-1])
    assert got == ref
    assert greedy_decode(model, ids, vis, max_new_tokens=6, stop_ids=[ref[2]]) == ref[: ref.index(ref[2]) + 1]
    assert greedy_decode(model, ids, vis, max_new_tokens=1, stop_ids=[]) == ref[:1]
    assert 2 in stop_token_ids(tok) and 0 in stop_token_ids(tok)  # <|im_end|> (eos) and <|endoftext|>
    keep_all = DropoutConfig(mode="uniform", layers=(1,), ratios=(1.0, 1.0))
    assert greedy_decode(model, ids, vis, max_new_tokens=4, stop_ids=[], dropout=keep_all) == ref[:4]
    half = DropoutConfig(mode="uniform", layers=(1,), ratios=(1.0, 0.5))
    assert len(greedy_decode(model, ids, vis, max_new_tokens=3, stop_ids=[], dropout=half)) == 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_decode(model, ids, vis, max_new_tokens=0)


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
        scores.append([r["scores"] for r in score_rows(m, nset, prompts, nset.rows[:3], scoring="options")])
        scores[-1].append([r["generated"] for r in score_rows(m, nset, prompts, nset.rows[:2], tokenizer=tok,
                                                              max_new_tokens=3)])
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

    from longvid.model.tokenizer import build_test_tokenizer

    ck = write_random_checkpoint(tmp_path / "ck" / "model.safetensors", seed=1)
    # single hop on Ray with the default scoring: greedy decoding, compared as the released eval
    s = run_niah_eval(NiahEvalConfig(set=str(single_set[0]), checkpoint=str(ck), tokenizer="test", num_cpus=2,
                                     rows_per_task=5, max_new_tokens=4, out=str(tmp_path / "eval-single"), quiet=True))
    # multi hop without Ray (one process), option-letter scoring with visual-token dropout
    m = run_niah_eval(NiahEvalConfig(set=str(multi_set[0]), checkpoint=str(ck), tokenizer="test", use_ray=False,
                                     threads=1, out=str(tmp_path / "eval-multi"), visual_dropout="uniform:1:1,0.5",
                                     scoring="options", quiet=True))
    # single hop: one result per input, accuracy per (length, depth) = mean of its results
    res = pq.read_table(tmp_path / "eval-single" / "results.parquet").to_pylist()
    assert len(res) == 18 and sorted(r["row"] for r in res) == list(range(18))
    assert (s["scoring"]["mode"], s["scoring"]["max_new_tokens"]) == ("greedy", 4)
    assert "released" in s["scoring"]["rule"]
    assert s["haystack_reference_exact"] is True and m["haystack_reference_exact"] is False
    tok = build_test_tokenizer()
    for r in res:
        assert r["scoring"] == "greedy" and r["scores"] is None and isinstance(r["generated"], str)
        assert r["correct"] == reference_match(r["predicted"], r["answer"])
        assert r["generated"].startswith(r["predicted"]) or r["predicted"] in ("<|im_end|>", "<|endoftext|>")
        assert len(tok(r["generated"], add_special_tokens=False)["input_ids"]) <= 4
    cells = {(c["length"], c["depth"]): c["accuracy"] for c in s["by_length_depth"]}
    assert len(cells) == 6
    for (L, d), acc in cells.items():
        mine = [r["correct"] for r in res if r["length"] == L and r["depth"] == d]
        assert acc == sum(mine) / len(mine)
    assert s["questions"] == 18 and s["run"]["actors"] == 1 and s["run"]["device"] == "cpu"
    img = Image.open(s["heatmap"])
    assert img.format == "PNG" and img.size[0] > 200
    assert json.loads((tmp_path / "eval-single" / "summary.json").read_text())["overall"] == s["overall"]
    # multi hop, options: caption and QA per input, the argmax letter, score = their mean
    res = pq.read_table(tmp_path / "eval-multi" / "results.parquet").to_pylist()
    assert len(res) == 12 and {r["question"] for r in res} == {"caption", "qa"}
    assert all(r["scoring"] == "options" and r["generated"] is None and len(r["scores"]) == 4 for r in res)
    assert all(r["predicted"] == "ABCD"[int(np.argmax(r["scores"]))] for r in res)
    assert all(r["correct"] == (r["predicted"] == r["answer"]) for r in res)
    assert m["scoring"] == {"mode": "options", "rule": m["scoring"]["rule"]} and "max_new_tokens" not in m["scoring"]
    assert tuple(m["visual_dropout"]["layers"]) == (1,) and m["run"]["actors"] == 0
    for row in m["by_length"]:
        assert row["score"] == (row["caption"] + row["qa"]) / 2
        assert row["both_correct"] + row["only_caption"] + row["only_qa"] + row["both_wrong"] == row["pairs"]
    assert Path(m["heatmap"]).is_file()
    # the tiny model with the same weights, scored without Ray, gives the same single-hop answers
    nset = NiahSet(single_set[0])
    model, _ = load_model("tiny", SIZE, str(ck), tok)
    local = score_rows(model, nset, build_prompts(tok, nset.items), nset.rows, tokenizer=tok, max_new_tokens=4)
    ray_res = pq.read_table(tmp_path / "eval-single" / "results.parquet").to_pylist()
    assert [(r["predicted"], r["generated"], r["correct"]) for r in local] == [
        (r["predicted"], r["generated"], r["correct"]) for r in ray_res]


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
    res = pq.read_table(tmp_path / "set" / "eval" / "results.parquet").to_pylist()
    assert len(res) == 2 * 2 * 2 and {r["scoring"] for r in res} == {"greedy"}
    assert json.loads((tmp_path / "set" / "eval" / "summary.json").read_text())["scoring"]["mode"] == "greedy"
    rc = main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--tokenizer", "test",
               "--no-ray", "--threads", "1", "--quiet", "--scoring", "options", "--out", str(tmp_path / "opt")])
    assert rc == 0
    res = pq.read_table(tmp_path / "opt" / "results.parquet").to_pylist()
    assert {r["scoring"] for r in res} == {"options"} and all(len(r["scores"]) == 4 for r in res)
    assert json.loads((tmp_path / "opt" / "summary.json").read_text())["scoring"]["mode"] == "options"
    with pytest.raises(SystemExit) as exc:  # a choice the flag declares: argparse's usage error, exit 2
        main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--scoring", "beam"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--scoring" in err and "'beam'" in err and "greedy" in err and "options" in err
    rc = main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--max-new-tokens", "0"])
    assert rc == 2 and "max_new_tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["niah", "eval", "--set", str(tmp_path / "set"), "--checkpoint", "random:0", "--device", "tpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--device" in err and "'tpu'" in err and "'cuda'" in err


def test_demo_round_on_an_ingest_folder(assets, tmp_path):
    from longvid.pipelines.niah_eval import run_niah_demo

    lines = []
    res = run_niah_demo(tmp_path / "niah", assets["shards"], frames=(8, 12), items=2, use_ray=False, threads=1,
                        log=lines.append)
    assert res["build"]["inputs"] == 2 * 2 * 3 and res["eval"]["questions"] == 12
    assert Path(res["heatmap"]).is_file() and res["heatmap"] in lines[-1]
    assert res["build"]["haystack"]["type"] == "shards" and res["build"]["encoder"]["img_size"] == 224
