"""Encode of the samples `longvid ingest --mixture` writes besides videos: image samples (anyres_nopad tiles of a
single image, one padded square per image of a list, 64 tokens per tile, each tile encoded as one frame as the
reference's encode_video_image does) and text-only samples (json passed through). The stages without Ray, then one
embedded-Ray encode of a small ingest-like folder (video, odd-aspect image, multi-image, text, bad images)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from longvid.jobs.cli import main as cli_main
from longvid.manifests.schema import MANIFEST_SCHEMA
from longvid.model.anyres import anyres_grid, anyres_tiles
from longvid.model.umt import IMAGENET_MEAN, preprocess
from longvid.operators.annotation import process_annotation
from longvid.operators.errors import RecordError
from longvid.operators.mixture import AnnotationRecord
from longvid.operators.process import ProcessOptions
from longvid.operators.write import UnitWriter, sample_members
from longvid.pipelines.encode_model import HiCoBatchEncoder
from longvid.pipelines.encode_samples import encoder_rows, image_tiles, read_shard
from longvid.synthetic.videos import make_video
from tests.pipelines.test_encode import _tar_samples, clip_batch, tiny_encoder

S = 224
OPTS = ProcessOptions(videos_root="", profile="short")


# ------------------------------------------------------------------------------------------------- helpers


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth random picture (so JPEG keeps it recognisable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def save(img: Image.Image, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (PIL refuses it when opening: a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def record(index: int, media_type: str, paths: tuple[str, ...] = (), image_list: bool = False,
           question: str = "<image>\nWhat is shown?") -> AnnotationRecord:
    conv = (("human", question if media_type != "text" else "Say hi."), ("gpt", f"answer {index}"))
    return AnnotationRecord(dataset="mix", index=index, origin=f"mix.json:{index + 1}", id=f"r{index}",
                            media_type=media_type, media=tuple(Path(p).name for p in paths), media_paths=paths,
                            image_list=image_list, conversations=conv)


def write_unit(out: Path, unit: int, samples: list) -> None:
    """An ingest unit as `ingest --mixture` writes one, from (AnnotatedSample, override): override None = as
    ingest writes it, a dict = other payload members, or the sample's members with its own `json` bytes."""
    w = UnitWriter(str(out), unit, 1 << 30, MANIFEST_SCHEMA)
    for s, payload in samples:
        members = payload if payload and "json" in payload else sample_members(s.info, payload or s.payload)
        assert w.add(s.key, members, s.manifest_row(unit))
    w.commit()


def reference_pad_tile(img: Image.Image, size: int) -> np.ndarray:
    """expand2square with int(mean * 255) (numpy canvas), then the UMT processor's PIL bicubic resize."""
    a = np.asarray(img.convert("RGB"))
    h, w = a.shape[:2]
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = [int(m * 255) for m in IMAGENET_MEAN]
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = a
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BICUBIC))


def encode_tile_directly(enc, tile: np.ndarray) -> np.ndarray:
    """The encoder's own image path (T = 1, image position table) on one tile -> [64, D]."""
    with torch.no_grad():
        return enc(preprocess(np.array(tile[None]), S)[None], image_mode="single")[0, 0].numpy()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make_video(root / "v.mp4", seconds=3, fps=10, width=160, height=120, seed=1)
    return {
        "root": root,
        "video": root / "v.mp4",
        "single": save(picture(300, 170, 2), root / "odd.jpg", "JPEG"),  # grid 2x1 at 224
        "multi": (save(picture(120, 80, 3), root / "m0.png", "PNG"),
                  save(picture(90, 150, 4), root / "m1.jpg", "JPEG")),
        "tall": save(picture(100, 500, 5), root / "tall.png", "PNG"),
    }


def samples(media):
    """The ingest samples of the test folder: unit 0 holds one of each kind, unit 1 a good image, three bad images
    and a text sample the token writer refuses (an integer JSON readers cannot hold)."""
    video = process_annotation(record(0, "video", (str(media["video"]),)), OPTS)
    single = process_annotation(record(1, "image", (str(media["single"]),)), OPTS)
    multi = process_annotation(record(2, "image", tuple(str(p) for p in media["multi"]), image_list=True,
                                      question="<image>\n<image>\nCompare."), OPTS)
    text = process_annotation(record(3, "text"), OPTS)
    tall = process_annotation(record(4, "image", (str(media["tall"]),)), OPTS)
    jpeg = media["single"].read_bytes()
    bad = [process_annotation(record(i, "image", (str(media["single"]),)), OPTS) for i in (5, 6, 7)]
    payloads = [{"0.jpg": b"this is not an image" * 10}, {"0.jpg": jpeg[: len(jpeg) // 2]}, {"0.jpg": bomb_png()}]
    unwritable = process_annotation(record(8, "text"), OPTS)
    unwritable.info["note"] = 2**70  # standard JSON readers do not hold it exactly: the token writer refuses it
    foreign = {"json": json.dumps(unwritable.info).encode()}  # (a writer other than ours let it through)
    return ([(video, None), (single, None), (multi, None), (text, None)],
            [(tall, None), *zip(bad, payloads), (unwritable, foreign)])


# ------------------------------------------------------------------------------------------------- no Ray


def test_ingest_json_is_what_the_encoder_reads(media):
    (_, (single, _), (multi, _), (text, _)), _ = samples(media)
    assert (single.info["media_type"], single.info["image_mode"], single.info["image_sizes"]) == (
        "image", "anyres_nopad", [[300, 170]])
    assert multi.info["image_mode"] == "pad" and multi.info["image_members"] == ["0.png", "1.jpg"]
    assert text.info["media_type"] == "text" and text.payload == {}


def test_anyres_tiles_base_first_grid_from_the_original_size(media):
    (_, (single, _), _, _), _ = samples(media)
    tiles, layout = image_tiles(single.info, single.payload, S)
    cols, rows = anyres_grid((300, 170), S)
    assert (cols, rows) == (2, 1)
    assert len(tiles) == layout["num_tiles"] == 1 + cols * rows and layout["tiles_per_image"] == [3]
    assert layout["image_grids"] == [[2, 1]] and layout["tile_order"] == "base_then_rows"
    assert (layout["tile_size"], layout["tokens_per_tile"], layout["image_encoding"]) == (S, 64, "single_frame")
    img = Image.open(media["single"]).convert("RGB")
    want = [np.asarray(t) for t in anyres_tiles(img, S)]
    assert all(np.array_equal(a, b) for a, b in zip(tiles, want))
    assert np.array_equal(tiles[0], np.asarray(img.resize((S, S), Image.Resampling.BICUBIC)))  # the base tile
    # an image ingest stored downscaled: the grid comes from image_sizes (the original), the pixels from the member
    info = {**single.info, "image_sizes": [[3000, 1700]]}
    tiles, layout = image_tiles(info, single.payload, S)
    assert layout["image_grids"] == [list(anyres_grid((3000, 1700), S))] != [[2, 1]]
    assert len(tiles) == 1 + np.prod(layout["image_grids"][0])


def test_pad_one_square_per_image_with_the_mean_colour(media):
    (_, _, (multi, _), _), _ = samples(media)
    tiles, layout = image_tiles(multi.info, multi.payload, S)
    assert layout["tiles_per_image"] == [1, 1] and layout["image_grids"] == [None, None]
    assert layout["tile_order"] == "one_per_image" and layout["num_tiles"] == 2
    for tile, path in zip(tiles, media["multi"]):
        np.testing.assert_array_equal(tile, reference_pad_tile(Image.open(path), S))
    assert tuple(tiles[1][S // 2, 2]) != tuple(tiles[0][S // 2, 2])  # 90x150: padded left and right ...
    assert tuple(tiles[1][S // 2, 0]) == (123, 116, 103)  # ... with int(mean * 255)


@pytest.mark.parametrize("case,stage,field,words", [
    ("garbage", "decode", "0.jpg", "cannot read the image"),
    ("truncated", "decode", "0.jpg", "truncated"),
    ("bomb", "decode", "0.jpg", "decompression bomb"),
    ("missing", "read", "0.jpg", "no 0.jpg member"),
    ("mode", "read", "image_mode", "image_mode"),
    ("sizes", "read", "image_sizes", "image_sizes"),
    ("stored", "decode", "stored_sizes[0]", "stored_sizes"),
])
def test_bad_images_raise_naming_the_member(media, case, stage, field, words):
    (_, (single, _), _, _), _ = samples(media)
    info, members = dict(single.info), dict(single.payload)
    jpeg = members["0.jpg"]
    if case == "garbage":
        members["0.jpg"] = b"not an image" * 20
    elif case == "truncated":
        members["0.jpg"] = jpeg[: len(jpeg) // 2]
    elif case == "bomb":
        members["0.jpg"] = bomb_png()
    elif case == "missing":
        members = {}
    elif case == "mode":
        info["image_mode"] = "crop"
    elif case == "sizes":
        info["image_sizes"] = [[300]]
    elif case == "stored":
        info["stored_sizes"] = [[301, 170]]
    with pytest.raises(RecordError) as e:
        image_tiles(info, members, S, "shards/shard-000000-000.tar: k")
    assert (e.value.stage, e.value.field) == (stage, field) and words in e.value.reason
    if field == "0.jpg":
        assert "shard-000000-000.tar: k.0.jpg" in e.value.reason


def test_max_image_pixels_is_the_limit(media, monkeypatch):
    (_, (single, _), _, _), _ = samples(media)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 170 - 1)  # below PIL's own 2x refusal at open
    with pytest.raises(RecordError) as e:
        image_tiles(single.info, single.payload, S)
    assert e.value.field == "0.jpg" and "MAX_IMAGE_PIXELS" in e.value.reason


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 4000), junk=st.binary(min_size=0, max_size=24), at=st.integers(0, 4000))
def test_fuzz_image_members_give_tiles_or_a_record_error(media, cut, junk, at):
    (_, (single, _), _, _), _ = samples(media)
    data = single.payload["0.jpg"]
    data = data[: max(0, len(data) - cut)]
    data = data[:at] + junk + data[at + len(junk):]
    try:
        tiles, layout = image_tiles(single.info, {"0.jpg": data}, S)
    except RecordError as e:
        assert e.field in ("0.jpg", "stored_sizes[0]") and e.stage in ("read", "decode")
        return
    assert len(tiles) == layout["num_tiles"] == 3 and all(t.shape == (S, S, 3) and t.dtype == np.uint8 for t in tiles)


def _rows_of_unit(tmp_path: Path, unit: int) -> list[dict]:
    item = {"unit": unit, "shard": f"shards/shard-{unit:06d}-000.tar",
            "manifest": str(tmp_path / "manifests" / f"part-{unit:06d}.parquet")}
    out = []
    for row in read_shard(item, str(tmp_path), S):
        out += list(encoder_rows(row, S))
    return out


def test_decode_rows_per_kind_and_the_actor_batches_tiles_with_clips(media, tmp_path):
    unit0, unit1 = samples(media)
    write_unit(tmp_path, 0, unit0)
    write_unit(tmp_path, 1, unit1)
    rows = _rows_of_unit(tmp_path, 0)
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    (video, _), (single, _), (multi, _), (text, _) = unit0
    assert {r["mode"] for r in by_key[video.key]} == {"clip"}
    assert len(by_key[video.key]) == video.info["num_frames"] // 4
    assert [r["clip"] for r in by_key[single.key]] == [0, 1, 2] and {r["num_clips"] for r in by_key[single.key]} == {3}
    assert all(r["mode"] == "image" and all(np.array_equal(r["frames"][0], f) for f in r["frames"])
               for r in by_key[single.key])  # one tile per row, in every frame slot
    assert len(by_key[multi.key]) == 2
    (t,) = by_key[text.key]
    assert (t["status"], t["num_clips"], t["mode"]) == ("ok", 0, "text") and json.loads(t["info"]) == json.loads(
        json.dumps(text.info))
    info = json.loads(by_key[single.key][0]["info"])
    assert (info["num_tiles"], info["tiles_per_image"], info["image_grids"]) == (3, [3], [[2, 1]])
    # the bad images of unit 1 are failure rows naming the member, the good image and the text still go on
    rows1 = {r["key"]: r for r in _rows_of_unit(tmp_path, 1) if r["clip"] == 0}
    (tall, _), *bad, (unwritable, _) = unit1
    assert rows1[tall.key]["status"] == "ok" and rows1[unwritable.key]["status"] == "ok"
    assert [(rows1[s.key]["status"], rows1[s.key]["field"]) for s, _ in bad] == [("decode", "0.jpg")] * 3
    # the actor: a batch mixing clips, tiles and a text row; tiles are encoded as single frames
    batch_rows = by_key[video.key][:1] + by_key[single.key] + [t]
    out = HiCoBatchEncoder("tiny", S, "", "fp32", seed=0, cache_dir="", s3=None)(clip_batch(batch_rows))
    assert list(out["status"]) == ["ok"] * 5 and out["tokens"].shape == (5, 64, 64)
    enc = tiny_encoder(S)
    tiles, _ = image_tiles(single.info, single.payload, S)
    for j, tile in enumerate(tiles):
        np.testing.assert_allclose(out["tokens"][1 + j], encode_tile_directly(enc, tile), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        clip = enc(preprocess(by_key[video.key][0]["frames"], S)[None])[0, 0].numpy()
    np.testing.assert_allclose(out["tokens"][0], clip, rtol=1e-4, atol=1e-4)
    assert not out["tokens"][4].any()  # the text row: nothing encoded


# ------------------------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def encoded(media, tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("enc_img")
    ingest, out = root / "ingest", root / "tokens"
    unit0, unit1 = samples(media)
    write_unit(ingest, 0, unit0)
    write_unit(ingest, 1, unit1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rc = cli_main(["encode", "--shards", str(ingest), "--out", str(out), "--model", "tiny", "--batch-clips", "3",
                       "--dtype", "fp32", "--quiet"])
    finally:
        ray.shutdown()
    return {"ingest": ingest, "out": out, "rc": rc, "unit0": unit0, "unit1": unit1}


@pytest.mark.slow
def test_encode_images_text_and_failures_on_ray(encoded, media):
    out = encoded["out"]
    (video, _), (single, _), (multi, _), (text, _) = encoded["unit0"]
    (tall, _), *bad, (unwritable, _) = encoded["unit1"]
    s = json.loads((out / "summary.json").read_text())
    # accounting: every ingest row is a written sample or a failure row; the kinds are counted apart
    assert encoded["rc"] == 0
    assert (s["inputs"], s["ingest_rows"], s["samples"], s["failures"]) == (9, 9, 5, 4)
    assert s["failures_by_stage"] == {"decode": 3, "write": 1}
    assert s["samples_by_media_type"] == {"image": 3, "text": 1, "video": 1}
    tall_tiles = 1 + int(np.prod(anyres_grid((100, 500), S)))
    assert s["image_tiles_encoded"] == 3 + 2 + tall_tiles
    assert s["clips_encoded"] == video.info["num_frames"] // 4 + s["image_tiles_encoded"]
    fails = pd.read_parquet(out / "failures").set_index("key")
    for b, _ in bad:
        assert (fails.loc[b.key, "stage"], fails.loc[b.key, "field"]) == ("decode", "0.jpg")
        assert fails.loc[b.key, "file"].endswith(f"shard-000001-000.tar#{b.key}")
    assert "decompression bomb" in fails.loc[bad[2][0].key, "reason"]
    assert (fails.loc[unwritable.key, "stage"], fails.loc[unwritable.key, "field"]) == ("write", "note")
    man = pd.read_parquet(out / "manifests").set_index("key")
    assert man.loc[single.key, "media_type"] == "image" and man.loc[single.key, "num_clips"] == 3
    assert pd.isna(man.loc[single.key, "num_frames"]) and pd.isna(man.loc[single.key, "tokens_per_frame"])
    assert man.loc[text.key, "media_type"] == "text" and man.loc[text.key, "num_clips"] == 0
    assert man.loc[text.key, "bytes"] == 0 and pd.isna(man.loc[text.key, "encoder"])
    assert man.loc[video.key, "media_type"] == "video" and man.loc[video.key, "tokens_per_frame"] == 16

    got = {**_tar_samples(out / man.loc[video.key, "shard"]), **_tar_samples(out / man.loc[tall.key, "shard"])}
    assert list(got[text.key]) == ["json"] and got[text.key]["json"] == json.loads(json.dumps(text.info))
    assert got[video.key]["tokens.npy"].shape == (video.info["num_frames"] // 4, 64, 64)
    enc = tiny_encoder(S)
    for smp, n_tiles in ((single, 3), (multi, 2), (tall, tall_tiles)):
        info, tok = got[smp.key]["json"], got[smp.key]["tokens.npy"]
        assert tok.shape == (n_tiles, 64, 64) and tok.dtype == np.float32
        assert info["num_clips"] == info["num_tiles"] == n_tiles == sum(info["tiles_per_image"])
        assert info["tokens_shape"] == [n_tiles, 64, 64] and "tokens_per_frame" not in info
        assert info["conversations"] == smp.info["conversations"] and info["image_members"] == smp.info["image_members"]
        tiles, _ = image_tiles(smp.info, smp.payload, S)
        for k in range(n_tiles):  # each tile is the encoder's own output on that tile, the base tile first
            np.testing.assert_allclose(tok[k], encode_tile_directly(enc, tiles[k]), rtol=1e-4, atol=1e-4)
    base = np.asarray(Image.open(media["single"]).convert("RGB").resize((S, S), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(got[single.key]["tokens.npy"][0], encode_tile_directly(enc, base), rtol=1e-4, atol=1e-4)
    assert got[single.key]["json"]["image_grids"] == [[2, 1]]
    assert got[multi.key]["json"]["tile_order"] == "one_per_image"
