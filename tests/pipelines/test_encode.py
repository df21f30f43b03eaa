"""Encode: the CPU stages and the actor without Ray, then ingest -> encode end to end on one embedded Ray
(tiny encoder on CPU): contract, shapes, tokens equal to the model's, failures, resume, bad configs."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from longvid.jobs.cli import main as cli_main
from longvid.model.config import get_config
from longvid.model.hico import HiCoEncoder
from longvid.model.umt import preprocess
from longvid.operators.mp4 import decode_mp4, encode_mp4
from longvid.operators import storage
from longvid.operators.write import UnitWriter, sample_members
from longvid.pipelines.encode_model import HiCoBatchEncoder, fetch_checkpoint
from longvid.pipelines.encode_samples import encoder_rows, read_shard
from longvid.synthetic.videos import make_video

# ------------------------------------------------------------------------------------------- helpers


def frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    return np.concatenate([np.roll(base, 3 * i, axis=2) for i in range(n)])


def sample_row(n_frames: int, manifest_frames: int | None = None, size: int = 64, mp4: bytes | None = None) -> dict:
    info = {"key": "webvid_1_full", "num_frames": manifest_frames or n_frames, "conversations": []}
    return {"unit": 3, "key": "webvid_1_full", "json": json.dumps(info).encode(), "shard": "shards/shard-000003-000.tar",
            "mp4": encode_mp4(frames(n_frames, size)) if mp4 is None else mp4,
            "num_frames": manifest_frames or n_frames}


def tiny_encoder(size: int = 224, seed: int = 0) -> HiCoEncoder:
    torch.manual_seed(seed)
    return HiCoEncoder(get_config("tiny", img_size=size).umt).eval()


def clip_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    cols = ["unit", "key", "clip", "num_clips", "status", "reason", "field", "info", "mode"]
    b = {c: np.array([r[c] for r in rows], dtype=object if c in ("key", "status", "reason", "field", "info", "mode")
                     else None)
         for c in cols}
    b["frames"] = np.stack([r["frames"] for r in rows])
    return b


# ------------------------------------------------------------------------------------------- CPU stages, no Ray


def test_decode_sample_clips_and_padding():
    clips = list(encoder_rows(sample_row(8, size=64), resolution=64))
    assert [c["clip"] for c in clips] == [0, 1] and {c["num_clips"] for c in clips} == {2}
    assert all(c["status"] == "ok" and c["frames"].shape == (4, 64, 64, 3) for c in clips)
    assert json.loads(clips[0]["info"])["padded_frames"] == 0 and clips[1]["info"] == ""
    # 6 frames: padded to 8 by repeating the last frame, and the json says so
    clips = list(encoder_rows(sample_row(6, size=64), resolution=64))
    assert len(clips) == 2 and json.loads(clips[0]["info"])["padded_frames"] == 2
    last = clips[1]["frames"]
    assert np.array_equal(last[1], last[2]) and np.array_equal(last[2], last[3])
    assert not np.array_equal(last[0], last[1])


def test_decode_sample_failures():
    (f,) = encoder_rows(sample_row(8, mp4=b"\x00\x01 not an mp4" * 50), resolution=64)
    assert (f["status"], f["field"], f["num_clips"]) == ("decode", "mp4", 0)
    assert "shard-000003-000.tar: webvid_1_full.mp4" in f["reason"]
    (f,) = encoder_rows(sample_row(4, manifest_frames=8), resolution=64)
    assert (f["status"], f["field"]) == ("decode", "num_frames") and "decoded 4 frames" in f["reason"]
    (f,) = encoder_rows(sample_row(4, size=64), resolution=224)  # never upsampled
    assert (f["status"], f["field"]) == ("decode", "resolution")
    row = sample_row(4)
    row["json"] = b"[1, 2"
    (f,) = encoder_rows(row, resolution=64)
    assert (f["status"], f["field"]) == ("read", "json")


def test_decode_sample_downscales_like_preprocess():
    row = sample_row(4, size=96)
    (c,) = encoder_rows(row, resolution=48)
    assert c["frames"].shape == (4, 48, 48, 3) and json.loads(c["info"])["source_resolution"] == 96
    full = decode_mp4(row["mp4"])
    torch.testing.assert_close(preprocess(c["frames"], 48), preprocess(full, 48), rtol=0, atol=1e-6)


def _write_ingest_unit(out: Path | str, unit: int, samples: dict[str, int], size: int = 64, bad: tuple = ()) -> None:
    """An ingest unit as pipelines/ingest writes it (keys in `bad` get a garbage mp4)."""
    from longvid.manifests.schema import MANIFEST_SCHEMA

    w = UnitWriter(str(out), unit, 1 << 30, MANIFEST_SCHEMA)
    for i, (key, n) in enumerate(samples.items()):
        info = {"key": key, "num_frames": n}
        mp4 = b"garbage" * 20 if key in bad else encode_mp4(frames(n, size, seed=i))
        w.add(key, sample_members(info, {"mp4": mp4}),
              {"key": key, "source": "webvid", "video_id": key, "num_frames": n, "resolution": size, "duration": 1.0,
               "bytes": 1})
    w.commit()


def test_read_shard_rows_missing_members_and_broken_tar(tmp_path):
    _write_ingest_unit(tmp_path, 0, {"a": 4, "b": 8})
    item = {"unit": 0, "shard": "shards/shard-000000-000.tar",
            "manifest": str(tmp_path / "manifests" / "part-000000.parquet")}
    rows = list(read_shard(item, str(tmp_path), 64))
    assert [(r["key"], r["num_frames"]) for r in rows] == [("a", 4), ("b", 8)]
    assert all(r["json"] and r["mp4"] for r in rows)
    # drop b's mp4 from the tar, then truncate the tar in the middle of a member
    tar_path = tmp_path / "shards" / "shard-000000-000.tar"
    members = [(ti, tarfile.open(tar_path).extractfile(ti.name).read()) for ti in tarfile.open(tar_path)]
    with tarfile.open(tar_path, "w") as t:
        for ti, data in members:
            if ti.name != "b.mp4":
                t.addfile(ti, io.BytesIO(data))
    rows = {r["key"]: r for r in read_shard(item, str(tmp_path), 64)}
    assert rows["b"]["mp4"] == b"" and rows["a"]["mp4"]  # which members a sample needs is encoder_rows's check
    (f,) = encoder_rows(rows["b"], 64)
    assert (f["status"], f["field"]) == ("read", "mp4") and "no mp4" in f["reason"]
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[:1600])  # inside a.mp4: the damaged sample is not read, the rest is unreadable
    rows = {r["key"]: r for r in read_shard(item, str(tmp_path), 64)}
    assert rows["a"]["status"] == "read" and "unreadable after 0 samples: TarError" in rows["a"]["reason"]
    assert rows["b"]["status"] == "read" and "unreadable" in rows["b"]["reason"]
    tar_path.write_bytes(data[:700])  # after a.json's bytes, before its padding: the tar ends there
    rows = {r["key"]: r for r in read_shard(item, str(tmp_path), 64)}
    (f,) = encoder_rows(rows["a"], 64)
    assert (f["status"], f["field"]) == ("read", "mp4")
    assert rows["b"]["status"] == "read" and "not in its shard" in rows["b"]["reason"]


def test_actor_tokens_equal_the_model_and_dtypes():
    size = 224
    rows = list(encoder_rows(sample_row(8, size=size), resolution=size))
    rows += list(encoder_rows(sample_row(4, manifest_frames=8, size=size), resolution=size))  # a failure row
    batch = clip_batch(rows)
    want = tiny_encoder(size)(preprocess(decode_mp4(sample_row(8, size=size)["mp4"]), size)[None])[0]  # [2, 64, D]
    for dtype, np_dtype, tol in (("bf16", np.float16, 2e-3), ("fp32", np.float32, 1e-5)):
        actor = HiCoBatchEncoder("tiny", size, "", dtype, seed=0, cache_dir="", s3=None)
        out = actor(batch)
        assert out["tokens"].dtype == np_dtype and out["tokens"].shape == (3, 64, 64)
        assert list(out["status"]) == ["ok", "ok", "decode"]
        np.testing.assert_allclose(out["tokens"][:2].astype(np.float32), want.detach().numpy(), rtol=tol, atol=tol)
        assert not out["tokens"][2].any()


def test_actor_flags_non_finite_tokens():
    rows = list(encoder_rows(sample_row(8, size=224), resolution=224))
    actor = HiCoBatchEncoder("tiny", 224, "", "bf16", seed=0, cache_dir="", s3=None)
    with torch.no_grad():
        actor.enc.encoder.vision_layernorm.weight[0] = float("nan")
    out = actor(clip_batch(rows))
    assert list(out["status"]) == ["encode", "encode"] and set(out["field"]) == {"tokens"}
    assert "non-finite" in out["reason"][0]


def test_actor_loads_a_checkpoint_strictly(tmp_path):
    enc = tiny_encoder(224, seed=5)
    sd = {f"encoder.{k}": v for k, v in enc.encoder.state_dict().items()}
    torch.save(sd, tmp_path / "enc.pt")
    rows = list(encoder_rows(sample_row(4, size=224), resolution=224))
    out = HiCoBatchEncoder("tiny", 224, str(tmp_path / "enc.pt"), "fp32", seed=0, cache_dir="", s3=None)(clip_batch(rows))
    want = enc(preprocess(decode_mp4(sample_row(4, size=224)["mp4"]), 224)[None])[0]
    np.testing.assert_allclose(out["tokens"], want.detach().numpy(), rtol=1e-5, atol=1e-5)
    torch.save({k: v for k, v in sd.items() if "blocks.1." not in k}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing"):
        HiCoBatchEncoder("tiny", 224, str(tmp_path / "partial.pt"), "fp32", seed=0, cache_dir="", s3=None)


def test_fetch_checkpoint_from_s3_takes_only_vision_shards(s3, tmp_path):
    from safetensors.torch import save_file

    from longvid.operators import storage

    save_file({"model.vision_tower.vision_tower.encoder.x": torch.ones(2)}, tmp_path / "m-1.safetensors")
    save_file({"model.layers.0.w": torch.ones(3)}, tmp_path / "m-2.safetensors")
    index = {"weight_map": {"model.vision_tower.vision_tower.encoder.x": "m-1.safetensors",
                            "model.layers.0.w": "m-2.safetensors"}}
    prefix = s3.uri("ckpt/vcf")
    storage.write_text(f"{prefix}/model.safetensors.index.json", json.dumps(index))
    for n in ("m-1.safetensors", "m-2.safetensors"):
        storage.put_file(tmp_path / n, f"{prefix}/{n}")
    storage.put_file(tmp_path / "m-1.safetensors", s3.uri("ckpt/single.safetensors"))
    local = Path(fetch_checkpoint(prefix, str(tmp_path / "cache")))
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == [
        "m-1.safetensors", "model.safetensors.index.json"]
    assert json.loads((local / "model.safetensors.index.json").read_text())["weight_map"] == {
        "model.vision_tower.vision_tower.encoder.x": "m-1.safetensors"}
    assert fetch_checkpoint(prefix, str(tmp_path / "cache")) == str(local)  # cached
    one = fetch_checkpoint(s3.uri("ckpt/single.safetensors"), str(tmp_path / "cache"))
    assert Path(one).read_bytes() == (tmp_path / "m-1.safetensors").read_bytes()
    assert fetch_checkpoint("/local/path.pt") == "/local/path.pt"


def _encode_by_hand(src: str, dst: str, scratch: str) -> dict:
    """What an encoder actor does, composed by hand without Ray (tiny encoder, fp32, 224 px): every unit's rows
    through read_shard and encoder_rows, encoded two at a time in a shuffled order (a sample's clips and the
    samples of a unit arriving out of order), assembled and written by UnitState, committed. Returns the summary."""
    import random

    from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
    from longvid.pipelines import outputs
    from longvid.pipelines.encode import _read_pending, ingest_units
    from longvid.pipelines.encode_actor import UnitSettings, UnitState
    from longvid.pipelines.encode_samples import INGEST_COLUMNS

    settings = UnitSettings(out=dst, shards=src, resolution=224, dim=64, encoder="tiny/random-init-seed0",
                            model="tiny", dtype="fp32", store_dtype="float32", shard_size=1 << 30, batch_clips=2,
                            scratch_dir=scratch)
    actor = HiCoBatchEncoder("tiny", 224, "", "fp32", seed=0, cache_dir="", s3=None)
    states, clips = {}, []
    for unit, uri in ingest_units(src).items():
        p = _read_pending(uri, unit)
        rows = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=INGEST_COLUMNS).to_pylist()
        states[unit] = UnitState(unit, rows, UnitWriter(dst, unit, 1 << 30, TOKEN_MANIFEST_SCHEMA, scratch=scratch),
                                 settings)
        for rel in p.shards:
            for row in read_shard({"unit": unit, "shard": rel, "manifest": uri}, src, 224):
                clips.extend(encoder_rows(row, 224))
    random.Random(0).shuffle(clips)
    for i in range(0, len(clips), 2):
        rows = clips[i:i + 2]
        out = actor(clip_batch(rows))
        for j, r in enumerate(rows):
            r = {**r, "status": out["status"][j], "reason": out["reason"][j], "field": out["field"][j]}
            states[r["unit"]].take(r, np.array(out["tokens"][j]) if r["status"] == "ok" and r["num_clips"] else None)
    for st in states.values():
        st.end()
        assert st.pos == len(st.rows)
        st.writer.commit()
    return outputs.finalize(dst, job="encode", config={}, elapsed=1.0, cpus=1)


def test_stages_and_driver_without_ray_on_s3(s3, tmp_path):
    """S3 ingest shards in, S3 token shards out, by hand; the unit is written in manifest order."""
    from longvid.operators import storage

    src, dst = s3.uri("ingest"), s3.uri("tokens")
    _write_ingest_unit(src, 0, {"b": 8, "a": 4}, size=224)
    _write_ingest_unit(src, 1, {"c": 4}, size=224, bad=("c",))
    summary = _encode_by_hand(src, dst, str(tmp_path))
    assert (summary["inputs"], summary["samples"], summary["failures"]) == (3, 2, 1)
    tar = storage.read_bytes(storage.join(dst, "shards/shard-000000-000.tar"))
    names = tarfile.open(fileobj=io.BytesIO(tar)).getnames()
    assert names == ["b.json", "b.tokens.npy", "a.json", "a.tokens.npy"]  # the ingest manifest's order
    fail = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(dst, "failures/part-000001.parquet")))).to_pylist()
    assert [(f["key"], f["stage"], f["field"]) for f in fail] == [("c", "decode", "mp4")]
    assert fail[0]["file"].startswith(src.rstrip("/")) and fail[0]["file"].endswith("#c")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        tok = np.load(io.BytesIO(t.extractfile("b.tokens.npy").read()))
    assert tok.shape == (2, 64, 64) and tok.dtype == np.float32
    assert not list(tmp_path.iterdir())  # scratch emptied after the commits


def test_a_sample_the_writer_refuses_is_a_write_failure_and_the_unit_goes_on(tmp_path):
    """operators.write refuses a token sample (SampleWriteError: here an ingest json holding an integer JSON
    readers cannot hold, from a writer other than ours): one failure row ("write", reason, field), the rest of
    the unit is written."""
    from longvid.manifests.schema import MANIFEST_SCHEMA

    src, dst = tmp_path / "ingest", tmp_path / "tokens"
    w = UnitWriter(str(src), 0, 1 << 30, MANIFEST_SCHEMA)
    for i, key in enumerate(("a", "b", "c")):
        info = {"key": key, "num_frames": 4, "conversations": [], **({"note": 2**70} if key == "b" else {})}
        w.add(key, {"json": json.dumps(info).encode(), "mp4": encode_mp4(frames(4, 224, seed=i))},
              {"key": key, "source": "webvid", "video_id": key, "num_frames": 4, "resolution": 224, "bytes": 1})
    w.commit()
    (tmp_path / "scratch").mkdir()
    s = _encode_by_hand(str(src), str(dst), str(tmp_path / "scratch"))
    assert (s["inputs"], s["samples"], s["failures"], s["failures_by_stage"]) == (3, 2, 1, {"write": 1})
    (f,) = pq.read_table(dst / "failures" / "part-000000.parquet").to_pylist()
    assert (f["key"], f["stage"], f["field"]) == ("b", "write", "note") and "64-bit" in f["reason"]
    assert f["file"].endswith("shards/shard-000000-000.tar#b")
    with tarfile.open(dst / "shards" / "shard-000000-000.tar") as t:
        assert t.getnames() == ["a.json", "a.tokens.npy", "c.json", "c.tokens.npy"]


# ------------------------------------------------------------------------------------------- ingest -> encode on Ray

VIDEOS = [("11", 12, 25), ("12", 20, 30), ("13", 6, 10), ("14", 8, 10), ("15", 3, 10)]


def _corrupt(tar_path: Path, key: str, data: bytes) -> None:
    """Replace `<key>.mp4` inside a tar (same member order)."""
    with tarfile.open(tar_path) as t:
        members = [(ti, t.extractfile(ti).read()) for ti in t]
    with tarfile.open(tar_path, "w") as t:
        for ti, d in members:
            if ti.name == f"{key}.mp4":
                d = data
                ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))


def _encode_args(ingest: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", "--shards", str(ingest), "--out", str(out), "--model", "tiny", "--batch-clips", "3",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("enc")
    for i, (vid, sec, fps) in enumerate(VIDEOS):
        make_video(root / "videos" / "d" / f"{vid}.mp4", seconds=sec, fps=fps, width=160, height=120, seed=i)
    rows = ["videoid,name,page_dir,duration,contentUrl,page_idx"]
    rows += [f"{v},Video {v} shows a kite.,d,PT{s}S,http://x/{v}.mp4,1" for v, s, _ in VIDEOS]
    rows += ["24,missing file,d,PT10S,http://x/24.mp4,1"]
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    ingest, out = root / "ingest", root / "tokens"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert cli_main(["ingest", "--source", "webvid", "--metadata", str(root / "meta.csv"), "--videos",
                         str(root / "videos"), "--out", str(ingest), "--profile", "short", "--records-per-unit", "2",
                         "--quiet"]) == 0
        man = pd.read_parquet(ingest / "manifests")
        assert len(man) == 5
        # unit 0 (11, 12): 12's mp4 becomes garbage; unit 1 (13, 14): 14's mp4 holds 2 frames instead of 8
        by_key = man.set_index("video_id")
        _corrupt(ingest / by_key.loc["12", "shard"], by_key.loc["12", "key"], b"garbage" * 100)
        _corrupt(ingest / by_key.loc["14", "shard"], by_key.loc["14", "key"], encode_mp4(frames(2, 224)))
        cfg = root / "encode.yaml"
        cfg.write_text(f"shards: {ingest}\nout: {out}\nmodel: videochat-flash-7b\ndtype: fp32\n")
        # YAML + flag overrides (model and dtype from the flags)
        assert cli_main(["encode", "--config", str(cfg), "--model", "tiny", "--dtype", "bf16", "--batch-clips", "3",
                         "--quiet"]) == 0
        first = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
        first_man = pd.read_parquet(out / "manifests")
        yield {"root": root, "ingest": ingest, "out": out, "man": man, "first": first, "first_man": first_man}
    finally:
        ray.shutdown()


def _tar_samples(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with tarfile.open(path) as t:
        for ti in t:
            key, _, ext = ti.name.partition(".")
            data = t.extractfile(ti).read()
            if ext == "json":
                data = json.loads(data)
            elif ext.endswith("npy"):
                data = np.load(io.BytesIO(data))
            out.setdefault(key, {})[ext] = data
    return out


@pytest.mark.slow
def test_contract_counts_and_failures(encoded):
    out, man = encoded["out"], encoded["man"]
    s = json.loads((out / "summary.json").read_text())
    assert s["inputs"] == s["ingest_rows"] == len(man) == 5
    assert (s["samples"], s["failures"]) == (3, 2) and s["samples"] + s["failures"] == s["inputs"]
    assert s["failures_by_stage"] == {"decode": 2} and s["random_weights"] is True
    assert (s["units_run"], s["units_skipped"], s["input_units"]) == (3, 0, 3)
    assert (s["dim"], s["dtype"], s["resolution"], s["tokens_per_frame"]) == (64, "float16", 224, 16)
    fails = pd.read_parquet(out / "failures").set_index("video_id")
    assert set(fails.index) == {"12", "14"}
    assert fails.loc["12", "field"] == "mp4" and fails.loc["14", "field"] == "num_frames"
    assert "decoded 2 frames" in fails.loc["14", "reason"]
    assert fails.loc["12", "file"].endswith(f"#{fails.loc['12', 'key']}") and "shards/shard-000000" in fails.loc["12", "file"]
    tm = pd.read_parquet(out / "manifests")
    assert sorted(tm.video_id) == ["11", "13", "15"]
    assert set(tm.encoder) == {"tiny/random-init-seed0"} and set(tm.tokens_per_frame) == {16}
    ing = man.set_index("key")
    for r in tm.itertuples():
        assert r.unit == ing.loc[r.key, "unit"]  # output unit N = input unit N
        assert r.num_clips == -(-ing.loc[r.key, "num_frames"] // 4) and r.text == ing.loc[r.key, "text"]
    # GPU-side batches: every call of the actor's encoder had batch_clips (3) clips, across samples and units,
    # but the last one
    b = s["batches"]
    assert b["clips"] == s["clips_encoded"] == tm.num_clips.sum() and b["calls"] == -(-b["clips"] // 3)
    assert b["calls_not_full"] <= 1
    index = json.loads((out / "index.json").read_text())
    assert {x["url"] for x in index["shardlist"]} == set(tm.shard)
    assert sum(x["nsamples"] for x in index["shardlist"]) == 3
    assert json.loads((out / "job.json").read_text())["fingerprint"]["model"] == "tiny"


@pytest.mark.slow
def test_token_samples_shapes_json_and_values(encoded):
    out, ingest = encoded["out"], encoded["ingest"]
    tm = pd.read_parquet(out / "manifests").set_index("key")
    enc = tiny_encoder(224, seed=0)
    n = 0
    for shard in sorted(set(tm.shard)):
        for key, s in _tar_samples(out / shard).items():
            info, tok = s["json"], s["tokens.npy"]
            n += 1
            assert tok.dtype == np.float16 and tok.shape == (info["num_frames"] // 4, 64, 64)
            assert info["num_clips"] == tok.shape[0] == tm.loc[key, "num_clips"]
            assert tm.loc[key, "bytes"] == len(_raw_member(out, key, "tokens.npy"))
            for k in ("conversations", "time_msg", "frame_indices", "video_id", "duration"):
                assert k in info, k  # the ingest json is carried over
            assert (info["encoder"], info["resolution"], info["dtype"], info["tokens_per_frame"], info["dim"]) == (
                "tiny/random-init-seed0", 224, "float16", 16, 64)
            assert info["padded_frames"] == 0 and info["compute_dtype"] == "bf16"
            ing = _tar_samples(ingest / pd.read_parquet(ingest / "manifests").set_index("key").loc[key, "shard"])
            src = decode_mp4(_raw_member(ingest, key, "mp4"))
            assert ing[key]["json"]["conversations"] == info["conversations"]
            want = enc(preprocess(src, 224)[None])[0].detach().numpy()
            np.testing.assert_allclose(tok.astype(np.float32), want, rtol=3e-3, atol=3e-3)
    assert n == 3


def _raw_member(job: Path, key: str, ext: str) -> bytes:
    shard = pd.read_parquet(job / "manifests").set_index("key").loc[key, "shard"]
    with tarfile.open(job / shard) as t:
        return t.extractfile(f"{key}.{ext}").read()


@pytest.mark.slow
def test_resume_skips_committed_units(encoded):
    out = encoded["out"]
    part1 = out / "manifests" / "part-000001.parquet"
    others = {p.name: p.stat().st_mtime_ns for p in (out / "manifests").glob("*.parquet") if p != part1}
    tar1 = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-000001-*.tar")}
    part1.unlink()  # as if the job had died before committing unit 1
    assert cli_main(_encode_args(encoded["ingest"], out)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["units_run"], s["units_skipped"]) == (1, 2)
    assert (s["inputs"], s["samples"], s["failures"]) == (5, 3, 2)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "manifests").glob("*.parquet") if p != part1} == others
    after = pd.read_parquet(out / "manifests").sort_values("key").reset_index(drop=True)
    before = encoded["first_man"].sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    for name, data in tar1.items():  # same keys, json and shapes; tokens equal to float rounding
        new, old = _tar_samples(out / "shards" / name), _tar_samples_bytes(data)
        assert new.keys() == old.keys()
        for k in new:
            assert new[k]["json"] == old[k]["json"]
            np.testing.assert_allclose(new[k]["tokens.npy"].astype(np.float32), old[k]["tokens.npy"].astype(np.float32),
                                       rtol=1e-2, atol=1e-2)
    # nothing left to do: a third run skips everything
    assert cli_main(_encode_args(encoded["ingest"], out)) == 0
    assert json.loads((out / "summary.json").read_text())["units_skipped"] == 3


def _tar_samples_bytes(data: bytes) -> dict[str, dict]:
    p = Path(os.environ.get("TMPDIR", "/tmp")) / f"longvid-test-{os.getpid()}.tar"
    p.write_bytes(data)
    try:
        return _tar_samples(p)
    finally:
        p.unlink()


@pytest.mark.slow
def test_changed_settings_into_same_out_is_refused(encoded, capsys):
    rc = cli_main(_encode_args(encoded["ingest"], encoded["out"], "--dtype", "fp32"))
    assert rc == 2 and "dtype" in capsys.readouterr().err


@pytest.mark.parametrize("args,field", [
    (["--dtype", "fp8"], "dtype"),
    (["--batch-clips", "0"], "batch_clips"),
    (["--resolution", "448"], "resolution"),
    (["--checkpoint", "/nonexistent/umt.pt"], "checkpoint"),
    (["--actors", "-1"], "actors"),
])
def test_bad_config_is_an_error_before_work(tmp_path, capsys, args, field):
    _write_ingest_unit(tmp_path / "ingest", 0, {"a": 4}, size=224)
    out = tmp_path / "out"
    try:
        rc = cli_main(_encode_args(tmp_path / "ingest", out, *args))
    except SystemExit as e:  # argparse choices
        rc = e.code
    assert rc == 2 and field in capsys.readouterr().err
    assert not (out / "manifests").exists()


def test_model_resolution_must_match_the_frames_unless_asked(tmp_path, capsys):
    _write_ingest_unit(tmp_path / "ingest", 0, {"a": 4}, size=224)
    (tmp_path / "umt.pt").write_bytes(b"")  # readable (the pre-flight's check): the resolution is refused first
    rc = cli_main(["encode", "--shards", str(tmp_path / "ingest"), "--out", str(tmp_path / "out"),
                   "--model", "videochat-flash-2b", "--checkpoint", str(tmp_path / "umt.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "resolution" in err and "448" in err and "224" in err


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "longvid.jobs.encode", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--model", "tiny"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "encode: configuration error: shards" in r.stderr


def test_shards_without_manifests_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(_encode_args(tmp_path / "empty", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "shards" in err and "no committed ingest unit" in err
    bad = tmp_path / "cfg.yaml"
    bad.write_text(f"shards: {tmp_path}\nout: {tmp_path / 'o'}\nbatch_size: 3\n")
    assert cli_main(["encode", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "cfg.yaml" in err


SLOW_ENCODE = """
import sys, time
from longvid.pipelines.encode import run_encode
from longvid.pipelines.encode_model import HiCoBatchEncoder
from longvid.pipelines.encode_config import EncodeConfig

class Slow(HiCoBatchEncoder):
    def __call__(self, batch):
        time.sleep(0.25)
        return super().__call__(batch)

run_encode(EncodeConfig(shards=sys.argv[1], out=sys.argv[2], model="tiny", batch_clips=1, dtype="fp32", num_cpus=2,
                        quiet=True), encoder_cls=Slow)
"""


@pytest.mark.slow
def test_sigkill_mid_job_then_resume_gives_the_same_bytes(tmp_path):
    """The driver SIGKILLed after its first committed unit: the re-run skips the committed units, encodes the others
    (its killed Ray's processes stopped first) and the folder then holds exactly the bytes of an uninterrupted run
    (batch_clips 1: every clip computed alone, so the tokens do not depend on the batches)."""
    import signal
    import subprocess
    import sys
    import time

    import ray

    ingest = tmp_path / "ingest"
    n_units = 4
    for u in range(n_units):
        _write_ingest_unit(ingest, u, {f"u{u}a": 8, f"u{u}b": 12, f"u{u}c": 4}, size=224, bad=("u2b",) if u == 2 else ())
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    p = subprocess.Popen([sys.executable, "-c", SLOW_ENCODE, str(ingest), str(killed)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list((killed / "manifests").glob("*.parquet")) and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(60)
    committed = len(list((killed / "manifests").glob("*.parquet")))
    assert 1 <= committed < n_units, p.stderr.read()[-2000:]
    if ray.is_initialized():
        ray.shutdown()
    for out in (killed, clean):
        assert cli_main(_encode_args(ingest, out, "--batch-clips", "1", "--dtype", "fp32", "--num-cpus", "2")) == 0
    s = json.loads((killed / "summary.json").read_text())
    assert (s["units_skipped"], s["units_run"]) == (committed, n_units - committed)
    assert (s["samples"], s["failures"]) == (11, 1)

    def files(out: Path) -> dict[str, bytes]:
        return {str(f.relative_to(out)): f.read_bytes() for d in ("shards", "manifests", "failures")
                for f in sorted((out / d).iterdir())}

    assert files(killed) == files(clean)
    assert (killed / "index.json").read_bytes() == (clean / "index.json").read_bytes()


FLAKY_ENCODE = """
import json, pathlib, sys
from longvid.pipelines.encode import run_encode
from longvid.pipelines.encode_model import HiCoBatchEncoder
from longvid.pipelines.encode_config import EncodeConfig

class Flaky(HiCoBatchEncoder):
    marker = sys.argv[3]

    def __call__(self, batch):
        if not pathlib.Path(self.marker).exists():  # the first call of the job: the device fails
            pathlib.Path(self.marker).write_text("failed once")
            raise RuntimeError("injected: the device failed")
        return super().__call__(batch)

s = run_encode(EncodeConfig(shards=sys.argv[1], out=sys.argv[2], model="tiny", batch_clips=2, dtype="fp32",
                            num_cpus=2, quiet=True), encoder_cls=Flaky)
print(json.dumps({k: s[k] for k in ("units_run", "units_uncommitted", "samples", "failures", "complete")}))
"""


@pytest.mark.slow
def test_an_actor_whose_encoder_fails_is_restarted_and_its_units_retried(tmp_path):
    """The encoder raises in an actor (a CUDA error, say): every unit that actor held fails, the driver restarts the
    actor and gives the units again; the job completes with every unit committed once."""
    import subprocess
    import sys

    ingest, out = tmp_path / "ingest", tmp_path / "tokens"
    for u in range(3):
        _write_ingest_unit(ingest, u, {f"u{u}a": 8, f"u{u}b": 4}, size=224)
    r = subprocess.run([sys.executable, "-c", FLAKY_ENCODE, str(ingest), str(out), str(tmp_path / "failed")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"units_run": 3, "units_uncommitted": [], "samples": 6,
                                                             "failures": 0, "complete": True}
    log = (out / "logs" / "encode.log").read_text()
    assert "failed (attempt 1), retried" in log and "injected: the device failed" in log
    assert len(list((out / "manifests").glob("*.parquet"))) == 3
