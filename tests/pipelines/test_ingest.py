"""Ingest end to end: operators without Ray, then the Ray job (contract, bad input, resume, readers)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from longvid.operators.errors import ConfigError, RecordError
from longvid.operators.isolate import IsolatedRunner
from longvid.operators.mp4 import decode_mp4
from longvid.operators.process import ProcessOptions, process_record
from longvid.operators.records import SourceRecord, TextSpan
from longvid.operators.frame_rule import PROFILES, select_span_frames
from longvid.synthetic.videos import make_audio_only, make_video, read_frame_number


# ------------------------------------------------------------------------------------------- a small corpus


def webvid_corpus(root: Path) -> tuple[Path, Path, int]:
    """WebVid layout with good videos and one of each bad kind. Returns (metadata csv, video root, n_good)."""
    v = root / "videos"
    make_video(v / "d1" / "11.mp4", seconds=12, fps=25, width=320, height=240, seed=1)
    make_video(v / "d1" / "12.mp4", seconds=45, fps=30, width=320, height=240, seed=2)
    make_video(v / "d2" / "13.mp4", seconds=6, fps=10, width=160, height=120, seed=3)
    (v / "d2").mkdir(parents=True, exist_ok=True)
    (v / "d2" / "20.mp4").write_bytes(b"")  # zero-byte
    good = (v / "d1" / "12.mp4").read_bytes()
    (v / "d2" / "21.mp4").write_bytes(good[: len(good) // 3])  # truncated
    (v / "d2" / "22.mp4").write_text("this is not a video\n" * 100)  # not a video
    make_audio_only(v / "d2" / "23.mp4")  # audio only
    rows = [
        "videoid,name,page_dir,duration,contentUrl,page_idx",
        "11,A red kite flies over a grey beach.,d1,PT00H00M12S,http://x/11.mp4,1",
        "12,Two people walk a dog along the river.,d1,PT00H00M45S,http://x/12.mp4,1",
        "13,A tiny clip.,d2,PT6S,http://x/13.mp4,2",
        "20,zero bytes,d2,PT00H00M10S,http://x/20.mp4,2",
        "21,truncated,d2,PT00H00M45S,http://x/21.mp4,2",
        "22,not a video,d2,PT00H00M10S,http://x/22.mp4,2",
        "23,audio only,d2,PT00H00M03S,http://x/23.mp4,2",
        "24,missing file,d2,PT00H00M10S,http://x/24.mp4,2",
        "25,bad duration,d2,PT1H2X,http://x/25.mp4,2",
        "26,escape,../../etc,PT00H00M10S,http://x/26.mp4,2",
        "11,A duplicated row.,d1,PT00H00M12S,http://x/11.mp4,1",
    ]
    meta = root / "results_2M_val.csv"
    meta.write_text("\n".join(rows) + "\n")
    return meta, v, 3


# ------------------------------------------------------------------------------------------- operators, no Ray


def test_process_record_frames_follow_the_frame_rule(tmp_path):
    make_video(tmp_path / "v.mp4", seconds=40, fps=30, width=320, height=240)
    rec = SourceRecord("webvid", "v", ("v.mp4",), 10.0, 30.0,
                       texts=(TextSpan("a bird", None, None, "caption"), TextSpan("it lands", 12.0, 14.5, "narration")))
    s = process_record(rec, ProcessOptions(videos_root=str(tmp_path), profile="short"))
    chosen = select_span_frames(30.0, PROFILES["short"], 10.0, 30.0, num_frames=1200)  # the reference's span rule
    assert chosen.indices[0] > 300 and chosen.indices[-1] < 900  # spread over the span, not consecutive from its start
    assert s.info["frame_indices"] == list(chosen.indices)
    assert s.info["num_frames"] == 8 and s.info["resolution"] == 224
    frames = decode_mp4(s.mp4)
    assert frames.shape == (8, 224, 224, 3)
    assert [read_frame_number(f) for f in frames] == list(chosen.indices)
    assert s.info["time_msg"] == "\nThe video lasts for 20.00 seconds, and 8 frames are uniformly sampled from it. "
    first = s.info["conversations"][0]["value"]
    assert first.startswith("<image>" + s.info["time_msg"])
    assert s.info["frame_times"] == list(chosen.times) == [round((i - 300) / 30.0, 1) for i in chosen.indices]  # from 10 s
    assert len(s.frame_hashes) == 8
    # the timed narration appears relative to the span start (12.0 - 10.0 = 2.0)
    assert any("2.0" in t["value"] for t in s.info["conversations"][1:])


def test_process_record_resize_option(tmp_path):
    """The ingest default resizes with torch's antialiased bicubic; `pil` is the exact UMT preprocessor. Both reach
    the decoder (a bad name is refused there) and give the same stored frames up to codec noise."""
    make_video(tmp_path / "v.mp4", seconds=4, fps=30, width=640, height=360)
    rec = SourceRecord("webvid", "v", ("v.mp4",), texts=(TextSpan("a caption"),))  # a sample always has text
    assert ProcessOptions(videos_root=str(tmp_path)).resize == "torch"
    got = {m: decode_mp4(process_record(rec, ProcessOptions(videos_root=str(tmp_path), profile="short", resize=m)).mp4)
           for m in ("torch", "pil")}
    assert got["torch"].shape == got["pil"].shape and got["pil"].shape[1:] == (224, 224, 3)
    assert [read_frame_number(f) for f in got["torch"]] == [read_frame_number(f) for f in got["pil"]]
    diff = abs(got["torch"].astype(int) - got["pil"].astype(int))
    assert diff.mean() < 1.0
    with pytest.raises(ValueError, match="resize method"):
        process_record(rec, ProcessOptions(videos_root=str(tmp_path), profile="short", resize="nearest"))


def test_process_record_bad_inputs(tmp_path):
    meta, root, _ = webvid_corpus(tmp_path)
    opts = ProcessOptions(videos_root=str(root), profile="long")
    expect = {"d2/20.mp4": "probe", "d2/22.mp4": "probe", "d2/23.mp4": "probe", "d2/24.mp4": "locate"}
    for rel, stage in expect.items():
        with pytest.raises(RecordError) as e:
            process_record(SourceRecord("webvid", "x", (rel,)), opts)
        assert e.value.stage == stage, (rel, e.value)
        assert e.value.reason
    with pytest.raises(RecordError) as e:
        process_record(SourceRecord("webvid", "x", ("../../etc/passwd",)), opts)
    assert e.value.stage == "locate" and e.value.field == "video_paths"
    with pytest.raises(RecordError) as e:  # span outside the video
        process_record(SourceRecord("webvid", "x", ("d1/11.mp4",), 100.0, 110.0), opts)
    assert e.value.stage == "sample" and e.value.field == "span"


def _segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang():
    time.sleep(60)


def _boom():
    raise KeyError("surprise")


def test_isolated_runner_survives_crash_and_hang():
    with IsolatedRunner(timeout_s=3) as r:
        assert r.pid is None  # no child before the first call
        assert r.run(sum, [1, 2, 3]) == 6
        first = r.pid
        assert first and first != os.getpid()
        assert r.run(os.getpid) == first  # the call ran in that child
        with pytest.raises(RecordError) as e:
            r.run(_segfault)
        assert e.value.stage == "crash" and "SIGSEGV" in e.value.reason
        with pytest.raises(RecordError) as e:
            r.run(_hang)
        assert e.value.stage == "timeout"
        with pytest.raises(RecordError) as e:
            r.run(_boom)
        assert e.value.stage == "decode" and "KeyError" in e.value.reason
        assert r.run(max, [4, 9]) == 9  # a fresh child after each crash
        assert r.restarts == 2 and r.pid not in (None, first)


# ------------------------------------------------------------------------------------------- the Ray job


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", "longvid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid")
    meta, videos, n_good = webvid_corpus(root)
    out = root / "out"
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(meta), "--videos", str(videos), "--out", str(out),
                "--profile", "long", "--records-per-unit", "3", "--num-cpus", "2", "--shard-size-mb", "0.05")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "meta": meta, "videos": videos, "n_good": n_good, "stdout": r.stdout, "stderr": r.stderr, "n_rows": 11}


def test_contract_counts_and_failures(ingested):
    out = ingested["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == ingested["n_rows"] == summary["samples"] + summary["failures"]
    assert summary["samples"] == ingested["n_good"]
    fails = pd.read_parquet(out / "failures")
    by_video = dict(zip(fails.video_id, fails.stage))
    assert by_video["20"] == "probe" and by_video["22"] == "probe" and by_video["23"] == "probe"
    assert by_video["21"] in ("probe", "decode")
    assert by_video["24"] == "locate"
    assert by_video["26"] in ("metadata", "locate")  # ../../etc: refused before any file is touched
    assert by_video["25"] == "metadata"
    assert (fails.reason.str.len() > 0).all() and (fails.file.str.len() > 0).all()
    dup = fails[fails.video_id == "11"]
    assert len(dup) == 1 and "duplicate" in dup.reason.iloc[0]
    assert "samples written" in ingested["stderr"]  # the job's lines go to stderr (logging, see --log-level)


def test_manifest_rows_match_shards(ingested):
    out = ingested["out"]
    man = pd.read_parquet(out / "manifests")
    assert sorted(man.key) == sorted(set(man.key))
    assert all("." not in k and "/" not in k for k in man.key)
    for shard, keys in man.groupby("shard").key:
        names = tarfile.open(out / shard).getnames()
        assert sorted(names) == sorted([f"{k}.json" for k in keys] + [f"{k}.mp4" for k in keys])
    row = man[man.video_id == "12"].iloc[0]
    assert row.num_frames == 64 and len(row.frame_times) == 64 and row.duration == pytest.approx(45.0)
    assert row.text == "Two people walk a dog along the river."
    # index.json is a wids descriptor covering every shard
    index = json.loads((out / "index.json").read_text())
    assert index["wids_version"] == 1
    assert {s["url"] for s in index["shardlist"]} == set(man.shard)
    assert sum(s["nsamples"] for s in index["shardlist"]) == len(man)
    assert len(index["shardlist"]) >= 2  # the 0.05 MB size target split the shards
    # published files are readable by other users (trainers, auditors), not mkstemp's 0600
    for p in [*(out / "shards").glob("*.tar"), *(out / "manifests").glob("*.parquet"), out / "summary.json"]:
        assert p.stat().st_mode & 0o044 == 0o044, p


def test_readable_without_project_code(ingested):
    out = ingested["out"]
    import webdataset as wds

    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    seen = []
    for s in wds.WebDataset(urls, shardshuffle=False):
        info = json.loads(s["json"])
        for field in ("key", "source", "video_id", "uri", "start", "end", "duration", "fps", "num_frames",
                      "frame_indices", "frame_times", "time_msg", "conversations", "profile", "resolution"):
            assert field in info, field
        assert info["key"] == s["__key__"]
        assert len(info["frame_indices"]) == info["num_frames"]
        seen.append(s["__key__"])
        import av, io

        with av.open(io.BytesIO(s["mp4"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == info["num_frames"]
    assert len(seen) == ingested["n_good"]
    t = pq.read_table(out / "manifests")
    assert t.num_rows == ingested["n_good"]


def test_readable_by_ray_data(ingested):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        ds = ray.data.read_webdataset(str(ingested["out"] / "shards"), decoder=None)
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == ingested["n_good"]
    assert {"mp4", "json"} <= set(rows[0])


def test_rerun_skips_committed_units_and_keeps_outputs(ingested):
    out = ingested["out"]
    before = pd.read_parquet(out / "manifests").sort_values("key").reset_index(drop=True)
    shards_before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(ingested["meta"]), "--videos",
                str(ingested["videos"]), "--out", str(out), "--profile", "long", "--records-per-unit", "3",
                "--num-cpus", "2", "--shard-size-mb", "0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_run"] == 0 and summary["units_skipped"] == 4
    after = pd.read_parquet(out / "manifests").sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == shards_before


def test_unit_rewrite_is_byte_identical(ingested, tmp_path):
    """Deleting a committed unit and re-running regenerates the same tar bytes (deterministic units)."""
    src = ingested["out"]
    import shutil

    out = tmp_path / "out"
    shutil.copytree(src, out)
    man0 = out / "manifests" / "part-000000.parquet"
    shards0 = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-000000-*.tar")}
    man0.unlink()
    for p in (out / "shards").glob("shard-000000-*.tar"):
        p.unlink()
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(ingested["meta"]), "--videos",
                str(ingested["videos"]), "--out", str(out), "--profile", "long", "--records-per-unit", "3",
                "--num-cpus", "1", "--shard-size-mb", "0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("shard-000000-*.tar")} == shards0
    assert json.loads((out / "summary.json").read_text())["units_run"] == 1


def test_changed_settings_into_same_out_is_refused(ingested):
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(ingested["meta"]), "--videos",
                str(ingested["videos"]), "--out", str(ingested["out"]), "--profile", "short")
    assert r.returncode == 2
    assert "profile" in r.stderr and "other settings" in r.stderr


def test_resize_setting_is_validated_and_part_of_the_fingerprint():
    from longvid.pipelines.ingest import IngestConfig

    base = dict(source="webvid", metadata=["m.csv"], videos="v", out="o")
    assert IngestConfig(**base).resize == "torch"
    assert IngestConfig(**base).fingerprint()["resize"] == "torch"
    assert "resize" not in IngestConfig(**base, resize="pil").fingerprint()  # as jobs written before the setting
    with pytest.raises(ConfigError, match="resize"):
        IngestConfig(**base, resize="area").validate()


@pytest.mark.parametrize(
    "args,field",
    [
        (["--profile", "huge"], "--profile"),
        (["--shard-size-mb", "-1"], "shard_size_mb"),
        (["--source", "youtube8m"], "source"),
        (["--resize", "nearest"], "resize"),
        (["--max-in-flight", "-2"], "max_in_flight"),
        (["--decoder-threads", "-1"], "decoder_threads"),
    ],
)
def test_bad_config_is_an_error_before_work(tmp_path, args, field):
    meta = tmp_path / "m.csv"
    meta.write_text("videoid,name,page_dir,duration\n1,a,d,PT1S\n")
    base = ["ingest", "--source", "webvid", "--metadata", str(meta), "--videos", str(tmp_path), "--out",
            str(tmp_path / "out")]
    r = run_cli(*base, *args, timeout=60)
    assert r.returncode == 2
    assert field in r.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_unreadable_metadata_is_an_error_before_work(tmp_path):
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(tmp_path / "nope.csv"), "--videos", str(tmp_path),
                "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2 and "nope.csv" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(bad), "--videos", str(tmp_path),
                "--out", str(tmp_path / "out2"), timeout=60)
    assert r.returncode == 2 and "bad.csv" in r.stderr
    assert not (tmp_path / "out2" / "manifests").exists()


def test_yaml_config_with_flag_override(tmp_path):
    meta, videos, _ = webvid_corpus(tmp_path)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"source: webvid\nmetadata: [{meta}]\nvideos: {videos}\nout: {tmp_path / 'out'}\n"
                   "profile: long\nrecords_per_unit: 20\nnum_cpus: 1\n")
    r = run_cli("ingest", "--config", str(cfg), "--profile", "stage1", "--limit", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    man = pd.read_parquet(tmp_path / "out" / "manifests")
    assert set(man.profile) == {"stage1"} and set(man.num_frames) == {4}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"source: webvid\nmetadata: [{meta}]\nvideos: {videos}\nout: {tmp_path / 'o2'}\nshard_size: 3\n")
    r = run_cli("ingest", "--config", str(bad))
    assert r.returncode == 2 and "shard_size" in r.stderr and "bad.yaml" in r.stderr
