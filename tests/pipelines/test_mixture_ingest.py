"""`longvid ingest --mixture`: the fixture mixture (tests/fixtures/mixture) with real media, end to end on one embedded
Ray (every record kind, the accounting, the json of each kind, the time message, resume); operators/annotation.py
without Ray; the plan errors that stop the job before any work (exit 2)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from longvid.operators.annotation import (
    MAX_IMAGE_SIDE,
    AnnotatedSample,
    frame_folder_span_indices,
    process_annotation,
    sort_frame_names,
)
from longvid.operators.errors import RecordError
from longvid.operators.mixture import AnnotationRecord, iter_records, resolve_dataset, read_mixture, read_roots
from longvid.operators.mp4 import decode_mp4
from longvid.operators.process import ProcessOptions
from longvid.operators.prompt import insert_time_msg, time_msg
from longvid.operators.records import Failure
from longvid.operators.frame_rule import PROFILES, select_frames, select_span_frames
from longvid.synthetic.videos import make_video, read_frame_number

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mixture"
FPS = 5.0
VIDEOS = {"a/v1.mp4": 9, "a/v2.mp4": 42, "b/v3.mp4": 6, "c/v4.mp4": 5}  # path -> seconds (v2: the 10-40.5 s span)
FRAMES = {"clip01": 12, "clip02": 10}  # frame folder -> frames (frame i, 0-based, is grey level 10 * (i + 1))
BAD_VIDEO_LINES = [  # appended to video_qa.jsonl: a missing video and a file that is not a video
    {"id": "missing", "video": "z/missing.mp4",
     "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]},
    {"id": "not-a-video", "video": "a/notes.mp4",
     "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]},
]
SELECTED = {"video_qa": 25, "images": 6, "text": 3, "frames": 2}
SAMPLES = {"video_qa": 4, "images": 2, "text": 1, "frames": 2}


def build_mixture(root: Path) -> Path:
    """The fixture mixture copied to `root` with its media made: tiny videos, images (a JPEG, a BMP named .jpg, a
    truncated JPEG), two frame folders. Returns the mixture folder."""
    mix = root / "mix"
    shutil.copytree(FIX, mix)
    for rel, seconds in VIDEOS.items():
        make_video(mix / "media" / "videos" / rel, seconds=seconds, fps=FPS, width=128, height=96,
                   seed=len(rel) + seconds)
    (mix / "media" / "videos" / "a" / "notes.mp4").write_text("not a video\n" * 50)
    with open(mix / "annotations" / "video_qa.jsonl", "a") as f:
        for rec in BAD_VIDEO_LINES:
            f.write(json.dumps(rec) + "\n")
    coco = mix / "media" / "images" / "coco"
    coco.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(coco / "1.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 20, 3), dtype=np.uint8)).save(coco / "2.jpg", format="BMP")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (coco / "4.jpg").write_bytes(buf.getvalue()[:300])  # truncated
    for clip, n in FRAMES.items():
        d = mix / "frames" / clip
        for p in d.iterdir():
            p.unlink()
        for i in range(n):
            Image.fromarray(np.full((24, 32, 3), 10 * (i + 1), np.uint8)).save(d / f"{clip}_{i + 1}.jpg")
        (d / "notes.txt").write_text("not a frame")  # ignored
    return mix


def _records(mix: Path, name: str) -> list:
    m = read_mixture(str(mix / "mixture.yaml"), roots=read_roots(str(mix / "roots.yaml")))
    ds = next(d for d in m.datasets if d.name == name)
    return list(iter_records(resolve_dataset(ds)))


def _samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of every shard of a dataset folder."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(shard) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def _grey_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 10)) - 1


# --------------------------------------------------------------------------------------------- one Ray job


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The fixture mixture ingested (profile short, 4 records per unit) on one embedded Ray of 2 CPUs; then unit 0
    of video_qa is uncommitted (its manifest deleted) and the same command re-run."""
    import ray

    from longvid.jobs.cli import main
    from longvid.pipelines.ray_session import start_embedded

    root = tmp_path_factory.mktemp("mixture")
    mix = build_mixture(root)
    out = root / "out"
    args = ["ingest", "--mixture", str(mix / "mixture.yaml"), "--roots", str(mix / "roots.yaml"), "--out", str(out),
            "--profile", "short", "--records-per-unit", "4", "--shard-size-mb", "0.2", "--quiet"]
    start_embedded(num_cpus=2)
    try:
        assert main(args) == 0
        first = json.loads((out / "summary.json").read_text())
        manifests = pd.read_parquet(out / "video_qa" / "manifests").sort_values("key").reset_index(drop=True)
        shards0 = {p.name: p.read_bytes() for p in (out / "video_qa" / "shards").glob("shard-000000-*.tar")}
        (out / "video_qa" / "manifests" / "part-000000.parquet").unlink()
        assert main(args) == 0
        # other settings into the same folders: refused before any work, naming the dataset
        changed = main([("long" if a == "short" else a) for a in args])
    finally:
        ray.shutdown()
    return {"mix": mix, "out": out, "first": first, "manifests": manifests, "shards0": shards0, "changed": changed}


def test_mixture_ingest_end_to_end(ingested):
    out, mix = ingested["out"], ingested["mix"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["job"] == "ingest-mixture"
    # DIR/<json stem>/ with the usual output contract, per dataset: written + failed = selected
    rows = {d["name"]: d for d in summary["datasets"]}
    assert list(rows) == ["video_qa", "images", "text", "frames"]
    for name, d in rows.items():
        folder = out / name
        for f in ("index.json", "summary.json", "job.json", "manifests", "failures", "shards"):
            assert (folder / f).exists(), (name, f)
        s = json.loads((folder / "summary.json").read_text())
        assert s["complete"] and s["inputs_read"] == SELECTED[name] == s["samples"] + s["failures"]
        assert (d["selected"], d["samples"], d["failures"]) == (SELECTED[name], SAMPLES[name],
                                                                SELECTED[name] - SAMPLES[name])
        assert s["samples"] == len(_samples(folder)) == len(pd.read_parquet(folder / "manifests"))
        index = json.loads((folder / "index.json").read_text())
        assert sum(x["nsamples"] for x in index["shardlist"]) == s["samples"]
    assert summary["inputs"] == sum(SELECTED.values()) and summary["samples"] == sum(SAMPLES.values())
    assert summary["samples"] + summary["failures"] == summary["inputs"]
    assert summary["samples_by_media_type"] == {"image": 2, "text": 1, "video": 6}
    job = json.loads((out / "video_qa" / "job.json").read_text())["fingerprint"]
    assert job["dataset"]["sampling_strategy"] == "all" and job["profile"] == "short"

    # resume: only the uncommitted unit ran again, and it wrote the same bytes
    assert ingested["first"]["samples"] == summary["samples"]
    vq = json.loads((out / "video_qa" / "summary.json").read_text())
    assert vq["units_run"] == 1 and vq["units_skipped"] == 6
    assert json.loads((out / "text" / "summary.json").read_text())["units_run"] == 0
    after = pd.read_parquet(out / "video_qa" / "manifests").sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(ingested["manifests"], after)
    assert {p.name: p.read_bytes() for p in (out / "video_qa" / "shards").glob("shard-000000-*.tar")} == \
        ingested["shards0"]
    assert ingested["changed"] == 2

    # failure rows name the annotation file, the line and the field
    fails = pd.read_parquet(out / "video_qa" / "failures")
    ann = str(mix / "annotations" / "video_qa.jsonl")
    by_id = {r.video_id: r for r in fails.itertuples() if r.video_id}
    assert (by_id["missing"].stage, by_id["missing"].field, by_id["missing"].file) == ("locate", "video", f"{ann}:25")
    assert "z/missing.mp4" in by_id["missing"].reason
    assert (by_id["not-a-video"].stage, by_id["not-a-video"].field) == ("probe", "video")
    assert by_id["not-a-video"].file == f"{ann}:26" and by_id["not-a-video"].uri.endswith("a/notes.mp4")
    assert by_id["two-images"].field == "conversations" and by_id["two-images"].stage == "metadata"
    assert all(f.startswith(ann + ":") for f in fails.file) and (fails.field.str.len() > 0).all()
    img_fails = pd.read_parquet(out / "images" / "failures")
    bad = img_fails[img_fails.video_id == "i6"].iloc[0]
    assert (bad.stage, bad.field) == ("decode", "image[0]") and bad.file.endswith("images.json:79 [item 5]")


def test_mixture_video_samples(ingested):
    out, mix = ingested["out"], ingested["mix"]
    samples = _samples(out / "video_qa")
    infos = {json.loads(m["json"])["id"]: json.loads(m["json"]) for m in samples.values()}
    assert sorted(map(str, infos)) == ["3", "leading-gpt", "v1", "v2"]
    assert all(set(m) == {"json", "mp4"} for m in samples.values())
    recs = {r.id: r for r in _records(mix, "video_qa") if isinstance(r, AnnotationRecord)}
    short = PROFILES["short"]
    # a span: the reference's span rule, the time message with the span's duration, inserted as the reference does
    v2 = infos["v2"]
    chosen = select_span_frames(FPS, short, 10.0, 40.5, num_frames=int(42 * FPS))
    assert (v2["start"], v2["end"], v2["duration"], v2["annotation_duration"]) == (10.0, 40.5, 30.5, 120.0)
    assert v2["frame_indices"] == list(chosen.indices) and v2["frame_times"] == list(chosen.times)
    msg = "\nThe video lasts for 30.50 seconds, and 8 frames are uniformly sampled from it. "
    assert v2["time_msg"] == msg == time_msg(30.5, 8)
    assert v2["conversations"] == [
        {"from": "human", "value": "<image>\nThe video lasts for 30.50 seconds, and 8 frames are uniformly sampled "
                                   "from it. \nDescribe the clip."},
        {"from": "gpt", "value": "A dog runs."}]
    assert v2["annotation"] == f"{mix / 'annotations' / 'video_qa.jsonl'}:2" and v2["video"] == "a/v2.mp4"
    assert (v2["media_type"], v2["source"], v2["dataset"], v2["video_id"]) == ("video", "video_qa", "video_qa", "v2")
    key2 = recs["v2"].key
    frames = decode_mp4(samples[key2]["mp4"])
    assert frames.shape == (8, 224, 224, 3)
    assert [read_frame_number(f) for f in frames] == list(chosen.indices)
    # a whole video, multi-turn: the whole-video rule, every turn kept
    v3 = infos[3]
    whole = select_frames(int(6 * FPS), FPS, short)
    assert v3["frame_indices"] == list(whole.indices) and v3["num_frames"] == 4 and v3["duration"] == 6.0
    assert v3["conversations"] == insert_time_msg(recs[3].turns(), v3["time_msg"])
    assert [t["from"] for t in v3["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert v3["conversations"][2:] == recs[3].turns()[2:]
    # a leading gpt turn is kept as annotated (the trainer's template drops it)
    assert infos["leading-gpt"]["conversations"][0] == {"from": "gpt", "value": "Hello."}
    man = pd.read_parquet(out / "video_qa" / "manifests")
    row = man[man.video_id == "v2"].iloc[0]
    assert row.text == "Describe the clip.\nA dog runs." and row.num_frames == 8 and row.duration == 30.5

    # frame folders: the whole folder at 1 fps, and a span by the reference's read_frames_img clip rule
    fr = {json.loads(m["json"])["id"]: m for m in _samples(out / "frames").values()}
    f1, f2 = json.loads(fr["f1"]["json"]), json.loads(fr["f2"]["json"])
    assert f1["video_read_type"] == "img" and f1["fps"] == 1.0 and f1["duration"] == 12.0
    assert f1["frame_indices"] == [0, 1, 3, 4, 6, 7, 9, 10] and f1["num_frames"] == 8
    assert [_grey_index(f) for f in decode_mp4(fr["f1"]["mp4"])] == f1["frame_indices"]
    assert (f2["start"], f2["end"], f2["duration"], f2["frame_indices"]) == (2.0, 6.0, 4.0, [2, 3, 5, 6])
    assert f2["time_msg"] == time_msg(4.0, 4) and f2["frame_times"] == [2.0, 3.0, 5.0, 6.0]
    assert [_grey_index(f) for f in decode_mp4(fr["f2"]["mp4"])] == [2, 3, 5, 6]


def test_mixture_image_and_text_samples(ingested):
    out, mix = ingested["out"], ingested["mix"]
    samples = {json.loads(m["json"])["id"]: m for m in _samples(out / "images").values()}
    assert sorted(samples) == ["i1", "i2"]
    coco = mix / "media" / "images" / "coco"
    i1 = json.loads(samples["i1"]["json"])
    assert set(samples["i1"]) == {"json", "0.jpg"} and samples["i1"]["0.jpg"] == (coco / "1.jpg").read_bytes()
    assert (i1["media_type"], i1["image"], i1["image_mode"], i1["image_sizes"]) == \
        ("image", "coco/1.jpg", "anyres_nopad", [[40, 30]])
    assert i1["conversations"][0] == {"from": "human", "value": "<image>\nWhat is this?"}  # moved to the start
    assert "time_msg" not in i1 and i1["annotation"].endswith("images.json:2 [item 0]")
    i2 = json.loads(samples["i2"]["json"])
    assert i2["image"] == ["coco/1.jpg", "coco/2.jpg"] and i2["image_mode"] == "pad"
    assert i2["image_members"] == ["0.jpg", "1.png"] and set(samples["i2"]) == {"json", "0.jpg", "1.png"}
    stored = np.asarray(Image.open(io.BytesIO(samples["i2"]["1.png"])))  # the BMP, losslessly as PNG
    assert np.array_equal(stored, np.asarray(Image.open(coco / "2.jpg").convert("RGB")))
    assert i2["image_sizes"] == i2["stored_sizes"] == [[40, 30], [20, 50]]
    assert i2["conversations"][0]["value"] == "<image>\n<image>\nCompare them."
    man = pd.read_parquet(out / "images" / "manifests")
    assert man[man.video_id == "i2"].iloc[0].bytes == len(samples["i2"]["0.jpg"]) + len(samples["i2"]["1.png"])

    text = list(_samples(out / "text").values())
    assert len(text) == 1 and set(text[0]) == {"json"}
    t1 = json.loads(text[0]["json"])
    assert t1["media_type"] == "text" and t1["id"] == "t1" and len(t1["conversations"]) == 4
    assert t1["conversations"][0] == {"from": "human", "value": "Write a haiku about rain."}
    assert "uri" not in t1 and "time_msg" not in t1


# ------------------------------------------------------------------------------------------ operators, no Ray


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return build_mixture(tmp_path_factory.mktemp("ops"))


def test_process_annotation_of_each_kind_without_ray(mix):
    opts = ProcessOptions(videos_root="", profile="short")
    recs = {r.id: r for r in _records(mix, "video_qa") if isinstance(r, AnnotationRecord)}
    s = process_annotation(recs["v1"], opts)
    assert isinstance(s, AnnotatedSample) and set(s.payload) == {"mp4"}
    assert s.info["conversations"][0]["value"].startswith("<image>" + s.info["time_msg"] + "\nWhat happens")
    row = s.manifest_row(3)
    assert row["unit"] == 3 and row["num_turns"] == 2 and len(row["frame_hashes"]) == 8
    # a question asked twice about one video is no exact duplicate: sha256 covers the conversation too
    other = AnnotationRecord(**{**recs["v1"].__dict__, "index": 99,
                                "conversations": (("human", "<image>\nAnd?"), ("gpt", "Yes."))})
    assert process_annotation(other, opts).manifest_row(0)["sha256"] != row["sha256"]
    with pytest.raises(RecordError) as e:
        process_annotation(recs["missing"], opts)
    assert (e.value.stage, e.value.field) == ("locate", "video") and "z/missing.mp4" in e.value.reason
    img = {r.id: r for r in _records(mix, "images") if isinstance(r, AnnotationRecord)}
    with pytest.raises(RecordError) as e:
        process_annotation(img["i6"], opts)
    assert (e.value.stage, e.value.field) == ("decode", "image[0]")
    text = [r for r in _records(mix, "text") if isinstance(r, AnnotationRecord)][0]
    t = process_annotation(text, opts)
    assert t.payload == {} and t.manifest_row(0)["bytes"] == 0 and t.info["conversations"] == text.turns()
    fails = [r for r in _records(mix, "text") if isinstance(r, Failure)]
    assert [f.field for f in fails] == ["conversations", "conversations"]


def test_large_image_is_stored_within_the_grid_and_gif_at_one_fps(mix, tmp_path):
    opts = ProcessOptions(videos_root="", profile="short")
    big = mix / "media" / "images" / "big.jpg"
    Image.fromarray(np.zeros((8, MAX_IMAGE_SIDE + 300, 3), np.uint8)).save(big)
    rec = [r for r in _records(mix, "images") if isinstance(r, AnnotationRecord)][0]
    s = process_annotation(AnnotationRecord(**{**rec.__dict__, "media": ("big.jpg",),
                                               "media_paths": (str(big),)}), opts)
    assert s.info["image_members"] == ["0.png"] and s.info["image_sizes"] == [[MAX_IMAGE_SIDE + 300, 8]]
    assert s.info["stored_sizes"] == [[MAX_IMAGE_SIDE, round(8 * MAX_IMAGE_SIDE / (MAX_IMAGE_SIDE + 300))]]
    assert Image.open(io.BytesIO(s.payload["0.png"])).size == tuple(s.info["stored_sizes"][0])
    # a GIF dataset (video_read_type gif): its frames at 1 fps, the whole-video rule
    gif = tmp_path / "g.gif"
    frames = [Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)) for i in range(10)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40)
    v = next(r for r in _records(mix, "video_qa") if isinstance(r, AnnotationRecord))
    g = process_annotation(AnnotationRecord(**{**v.__dict__, "media_paths": (str(gif),), "video_read_type": "gif"}),
                           opts)
    want = select_frames(10, 1.0, PROFILES["short"])
    assert g.info["frame_indices"] == list(want.indices) and g.info["duration"] == 10.0 and g.info["fps"] == 1.0
    got = [int(round(float(f.mean()) / 20)) for f in decode_mp4(g.payload["mp4"])]
    assert got == list(want.indices)


def _reference_index_by_time(start, end, n, fps, max_frame):
    """A transcription of the reference's read_frames_img `_get_index_by_time`."""
    start_idx = max(1, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg = float(end_idx - start_idx) / (n - 1)
    return [start_idx + int(np.round(seg * k)) for k in range(n)]


@pytest.mark.parametrize("start,end,count,fps", [(2, 6, 10, 1.0), (0, 40, 60, 1.0), (3.5, 30.2, 100, 3.0),
                                                  (10, 200, 300, 1.0), (1, 9, 12, 1.0)])
def test_frame_folder_span_rule_matches_the_reference(start, end, count, fps):
    for profile in PROFILES.values():
        idx, duration = frame_folder_span_indices(start, end, count, fps, profile)
        assert duration == pytest.approx(min(count / fps, end) - start)
        assert idx == _reference_index_by_time(start, end, len(idx), fps, count - 1)
        if profile.sample_type == "middle":
            assert len(idx) == profile.hi
        assert len(idx) % 4 == 0


def test_frame_names_sort_as_the_reference():
    names = ["f_10.jpg", "f_2.jpg", "x.png", "f_1.jpeg", "notes.txt", "f_3.JPG", "f_11.png"]
    assert sort_frame_names(names) == ["x.png", "f_1.jpeg", "f_2.jpg", "f_10.jpg", "f_11.png"]


def test_process_annotation_reads_media_from_s3(mix, s3):
    """Videos (ranged reads), images and frame folders under an s3:// root: the same samples as from the folder."""
    from longvid.operators import storage

    for f in sorted(mix.rglob("*")):
        if f.is_file() and "big" not in f.name:
            storage.write_bytes(s3.uri("mix", str(f.relative_to(mix))), f.read_bytes())
    roots = {"https://example.org/datasets/videos": s3.uri("mix", "media", "videos"),
             "https://example.org/datasets": s3.uri("mix", "media")}
    remote = read_mixture(s3.uri("mix", "mixture.yaml"), roots=roots)
    opts = ProcessOptions(videos_root="", profile="short")
    for ds, want in (("video_qa", ("v1", "missing")), ("images", ("i2",)), ("frames", ("f2",))):
        plan = resolve_dataset(next(d for d in remote.datasets if d.name == ds))
        got = {r.id: r for r in iter_records(plan) if isinstance(r, AnnotationRecord)}
        local = {r.id: r for r in _records(mix, ds) if isinstance(r, AnnotationRecord)}
        for rid in want:
            if rid == "missing":
                with pytest.raises(RecordError) as e:
                    process_annotation(got[rid], opts)
                assert (e.value.stage, e.value.field) == ("locate", "video")
                continue
            a, b = process_annotation(got[rid], opts), process_annotation(local[rid], opts)
            assert a.payload == b.payload and a.info["uri"].startswith("s3://")
            drop = ("uri", "uris", "annotation")
            assert {k: v for k, v in a.info.items() if k not in drop} == \
                {k: v for k, v in b.info.items() if k not in drop}


def _image_seeds() -> list[bytes]:
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(_image_seeds()), cut=st.integers(0, 400), junk=st.binary(max_size=40),
       at=st.integers(0, 400))
def test_fuzz_image_files_give_a_sample_or_a_record_error(mix, tmp_path, seed, cut, junk, at):
    """Any bytes under an image path: a sample whose stored image reads back, or a RecordError naming the field."""
    data = seed[:cut] if cut < len(seed) else seed
    data = data[:at] + junk + data[at + len(junk):]
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    rec = [r for r in _records(mix, "images") if isinstance(r, AnnotationRecord)][0]
    rec = AnnotationRecord(**{**rec.__dict__, "media": ("x.jpg",), "media_paths": (str(path),)})
    try:
        s = process_annotation(rec, ProcessOptions(videos_root="", profile="short"))
    except RecordError as e:
        assert e.field == "image" and e.stage in ("decode", "locate") and e.reason
        return
    (member,) = s.info["image_members"]
    stored = list(Image.open(io.BytesIO(s.payload[member])).convert("RGB").size)
    assert stored == s.info["stored_sizes"][0]  # an image over MAX_IMAGE_SIDE is stored resized: its original
    assert max(stored) <= MAX_IMAGE_SIDE and stored[0] <= s.info["image_sizes"][0][0]  # size stays in image_sizes


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0, 500, allow_nan=False), length=st.floats(0.01, 500, allow_nan=False),
       count=st.integers(1, 400), fps=st.sampled_from([1.0, 3.0]), profile=st.sampled_from(sorted(PROFILES)))
def test_fuzz_frame_folder_span_rule(start, length, count, fps, profile):
    """Any span over any folder: frames inside the folder (a multiple of 4, as the encoder's clips need), or a
    ValueError the ingest turns into a failure row."""
    try:
        idx, duration = frame_folder_span_indices(start, start + length, count, fps, PROFILES[profile])
    except ValueError as e:
        assert "folder" in str(e)
        return
    assert idx and all(0 <= i < count for i in idx) and len(idx) % 4 == 0 and duration > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=12) | st.from_regex(r"[a-z]{0,3}_[0-9]{1,3}\.(jpg|png|jpeg)", fullmatch=True),
                max_size=12))
def test_fuzz_frame_names(names):
    got = sort_frame_names(names)
    assert sorted(got) == sorted(n for n in names if n.endswith((".jpg", ".jpeg", ".png")))


# ---------------------------------------------------------------------------------- plan errors: exit 2, no work


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longvid", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ""})


def test_plan_errors_exit_2_naming_the_dataset(tmp_path):
    mix = tmp_path / "mix"
    shutil.copytree(FIX, mix)
    out = tmp_path / "out"
    # no --roots: a data_root that is a web page, not a readable folder
    r = run_cli("ingest", "--mixture", str(mix / "mixture.yaml"), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "datasets[0] (video_qa): data_root" in r.stderr and "--roots" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # a missing annotation file, and `random`: named by dataset, before Ray starts or anything is written
    y = (mix / "mixture.yaml").read_text()
    (mix / "m2.yaml").write_text(y.replace("annotations/text.json", "annotations/gone.json"))
    (mix / "m3.yaml").write_text(y.replace('"end:2"', '"random:2"'))
    r = run_cli("ingest", "--mixture", str(mix / "m2.yaml"), "--roots", str(mix / "roots.yaml"), "--out", str(out))
    assert r.returncode == 2 and "datasets[2] (gone): json_path: annotation file" in r.stderr, r.stderr
    r = run_cli("ingest", "--mixture", str(mix / "m3.yaml"), "--roots", str(mix / "roots.yaml"), "--out", str(out))
    assert r.returncode == 2 and "datasets[3] (frames): sampling_strategy" in r.stderr and "random" in r.stderr
    r = run_cli("ingest", "--mixture", str(mix / "mixture.yaml"), "--source", "webvid", "--out", str(out))
    assert r.returncode == 2 and "source: not used with --mixture" in r.stderr
    assert not out.exists()
