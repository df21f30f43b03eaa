"""Shipped job files validate; `longvid demo` runs end to end on a fresh folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longvid.jobs.config import ConfigError, load_config, read_yaml
from longvid.pipelines.ingest import IngestConfig

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


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
