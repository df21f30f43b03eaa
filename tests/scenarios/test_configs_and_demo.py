"""Shipped job files validate; `longvid demo` runs end to end on a fresh folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from longvid.jobs.config import ConfigError, load_config, read_yaml
from longvid.pipelines.ingest import IngestConfig

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("ingest-*.yaml")), ids=lambda p: p.name)
def test_shipped_ingest_configs_validate(path):
    cfg = load_config(IngestConfig, read_yaml(path), {}, source=str(path))
    assert cfg.source in path.name


def test_config_errors_name_the_field(tmp_path):
    base = {"source": "webvid", "metadata": ["m.csv"], "videos": "v", "out": "o"}
    for bad, field in [({"profile": "xl"}, "profile"), ({"limit": "ten"}, "limit"), ({"crf": 99}, "crf"),
                       ({"shard_size_mb": 0}, "shard_size_mb"), ({"bogus": 1}, "bogus")]:
        with pytest.raises(ConfigError) as e:
            load_config(IngestConfig, {**base, **bad}, {}, source="job.yaml")
        assert field in str(e.value) and "job.yaml" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(IngestConfig, {"source": "webvid"}, {})
    assert "metadata" in str(e.value)


def test_2b_profiles_sample_stages_1_and_2_at_448(tmp_path):
    """The 2B recipe trains stages 1-2 at 448 px: `stage1_448` is `stage1` (4 frames, middle) and `short_448` is
    `short` (1-8 frames) at 448; ingest --profile accepts them."""
    from longvid.jobs.cli import build_parser
    from longvid.operators.frame_rule import PROFILES, select_frames

    for name, like in (("stage1_448", "stage1"), ("short_448", "short")):
        p, q = PROFILES[name], PROFILES[like]
        assert (p.sample_type, p.lo, p.hi, p.resolution) == (q.sample_type, q.lo, q.hi, 448)
        for frames, fps in ((300, 30.0), (90, 10.0), (5, 1.0)):
            assert list(select_frames(frames, fps, p).indices) == list(select_frames(frames, fps, q).indices)
        base = {"source": "webvid", "metadata": ["m.csv"], "videos": "v", "out": "o"}
        assert load_config(IngestConfig, {**base, "profile": name}, {}).profile == name
        args = build_parser().parse_args(["ingest", "--source", "webvid", "--metadata", "m", "--videos", "v",
                                          "--out", str(tmp_path), "--profile", name])
        assert args.profile == name
    assert len(select_frames(300, 30.0, PROFILES["stage1_448"]).indices) == 4
    assert "stage1_448" in (CONFIGS / "train-2b.yaml").read_text() and "short_448" in (
        CONFIGS / "train-2b.yaml").read_text()


def test_demo_mixture_plans_every_record_kind(tmp_path):
    """The demo's own mixture reads as the released files do (no Ray): the strategies select what `expect` says,
    every record kind is there, and the missing video is among the selected records."""
    from longvid.operators.mixture import iter_records, resolve_dataset, read_mixture, read_roots
    from longvid.synthetic.demo_corpus import make_demo_mixture

    mix = make_demo_mixture(tmp_path / "mixture")
    m = read_mixture(mix["mixture"], roots=read_roots(mix["roots"]))
    plans = {d.name: resolve_dataset(d) for d in m.datasets}
    assert set(plans) == set(mix["expect"]) and len(plans) >= 4
    for name, plan in plans.items():
        assert len(plan.selected) == mix["expect"][name]["selected"], name
        assert plan.media_type == mix["expect"][name]["media_type"], name
    assert {str(d.strategy) for d in m.datasets} >= {"all", "first:2", "end:2"}
    assert next(d for d in m.datasets if d.name == "frames").video_read_type == "img"
    clips = json.loads(Path(tmp_path / "mixture" / "annotations" / "clips.json").read_text())
    assert any("start" in r for r in clips) and any(len(r["conversations"]) > 2 for r in clips)
    assert any(not (tmp_path / "mixture" / "media" / "videos" / r["video"]).exists() for r in clips)
    assert sum(1 for _ in iter_records(plans["clips"])) == mix["expect"]["clips"]["selected"]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "longvid", "demo", "--num-cpus", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "longvid-demo"
    # the console is LongVid's: Ray's own logs (banners, INFO lines, its C++ core's lines, worker output) are in
    # logs/ray.log and the session logs, and nothing crashed
    console = r.stdout + r.stderr
    for noise in ("View the dashboard", "INFO worker.py", "core_worker.cc", "(pid=", "RayTrainWorker", "Traceback",
                  "Mutex", "SIGABRT", "multiple active Ray instances"):
        assert noise not in console, (noise, console[-3000:])
    assert (out / "logs" / "ray.log").is_file() and (out / ".longvid-demo.json").is_file()
    assert "[ingest " in (out / "ingest" / "webvid" / "logs" / "ingest.log").read_text()
    res = json.loads((out / "demo-summary.json").read_text())
    assert set(res["ingest"]) == {"ego4d", "howto100m", "hdvila", "miradata", "webvid"}
    for source, s in res["ingest"].items():
        assert s["samples"] > 0 and s["inputs"] == s["samples"] + s["failures"], source
        assert (out / "ingest" / source / "index.json").exists()
    assert sum(s["failures"] for s in res["ingest"].values()) >= 3  # the planted bad inputs
    assert "samples +" in r.stdout and "failures" in r.stdout
    # encode, audit, train and NIAH ran on what ingest wrote
    assert set(res["encode"]) == set(res["ingest"])
    for source, s in res["encode"].items():
        assert s["samples"] == res["ingest"][source]["samples"], source
    assert res["audit"]["findings"] >= 2 and (out / "audit" / "report.html").exists()
    lines = (out / "audit" / "drop_list.txt").read_text().splitlines()
    dropped = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
    assert res["audit"]["drop"] == len(dropped) >= 1
    assert res["train"]["checkpoint"] and Path(res["train"]["checkpoint"]).exists()
    assert (Path(res["niah"]["heatmap"])).exists() and res["niah"]["inputs"] > 0
    # the demo's own mixture: ingest --mixture into one folder per json stem, encoded per dataset, trained in stage 2
    mix = res["mixture"]
    ds = mix["ingest"]["datasets"]
    assert set(ds) == {"clips", "frames", "pictures", "chat"} and mix["ingest"]["complete"]
    assert {d["media_type"] for d in ds.values()} == {"video", "image", "text"}
    for name, d in ds.items():
        assert d["selected"] == d["samples"] + d["failures"] and d["samples"] > 0, name
        assert (out / "ingest" / "mixture" / name / "index.json").exists(), name
        assert mix["encode"][name]["samples"] == d["samples"], name
    assert ds["clips"]["failures"] == 1 and ds["clips"]["failures_by_stage"] == {"locate": 1}
    fails = pd.read_parquet(out / "ingest" / "mixture" / "clips" / "failures")
    assert len(fails) == 1 and "clips.json" in fails.iloc[0]["file"] and "never-downloaded.mp4" in fails.iloc[0]["uri"]
    assert "[demo] mixture: 4 datasets" in r.stdout and "+ 1 failures" in r.stdout
    trained = mix["train"]["stage2-short"]
    assert all(trained["trained"][m] > 0 for m in ("video", "image", "text")), trained
    assert not any(("image" in k or "text" in k) for k in trained["skipped"]), trained  # none refused
    assert "[demo] mixture in stage2-short: trained" in r.stdout
