"""Audit and NIAH build on a Ray cluster read their inputs in Ray tasks (pipelines/remote_reads.py): the same
outputs as without Ray, and the driver receives only the small results (frame hashes, contact sheets, the frames
the haystack takes), never a video or a shard.

One module-scoped run: both jobs first without Ray (in this process, as before), then with a Ray of 2 CPUs
initialised in this process (which the jobs use, as a job given --ray-address would use that cluster). The
multi-node runs are in tests/test_multinode.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.operators.test_audit import clean_rows, planted_rows
from tests.operators.test_audit_util import FIXTURES, make_job
from tests.pipelines.test_niah_pipeline import write_frame_shards

NIAH_FIX = Path(__file__).resolve().parents[1] / "fixtures" / "niah"
FRAME = 64 * 64 * 3  # bytes of one decoded haystack frame
SHARD_SAMPLES = ((8, 8, 8), (8, 8))  # frames per sample, per shard


def make_haystack(folder: Path) -> Path:
    """Two ingest-style shards (<key>.json + <key>.mp4), 40 frames of 64x64 in all."""
    return write_frame_shards(folder, SHARD_SAMPLES, "webvid_s{s}v{i}_full")


def audit_files(out: Path) -> dict:
    """What an audit wrote, less the run's timings: the parquet files and drop list as bytes, the summary without
    seconds, the contact sheets of report.html."""
    s = json.loads((out / "summary.json").read_text())
    for k in ("seconds", "rows_per_second", "remote_reads"):
        s.pop(k, None)
    html = (out / "report.html").read_text()
    return {"leakage": (out / "leakage.parquet").read_bytes(), "duplicates": (out / "duplicates.parquet").read_bytes(),
            "drop_list": (out / "drop_list.txt").read_bytes(), "summary": s,
            "sheets": re.findall(r"<img alt='frames of ([^']+)' src='(data:image/jpeg;base64,[^']+)'", html)}


def niah_files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "set.json" and p.parent.name != "logs" and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import ray

    from longvid.operators.audit.videos import frames_at_rate
    from longvid.operators.frames import dhash64
    from longvid.pipelines.audit import audit
    from longvid.pipelines.niah_build import make_demo_needles, run_niah_build
    from longvid.pipelines.niah_config import NiahBuildConfig
    from longvid.synthetic.videos import make_video

    if ray.is_initialized():
        ray.shutdown()
    d = tmp_path_factory.mktemp("remote")
    videos = d / "bench-videos"
    make_video(videos / "fFjv93ACGo8.mp4", seconds=6, fps=10, width=96, height=96, seed=5)
    make_video(videos / "other.mp4", seconds=4, fps=10, width=96, height=96, seed=6)
    hashes = [(t, dhash64(img)) for t, img in frames_at_rate(videos / "fFjv93ACGo8.mp4", 1.0)]
    planted = planted_rows(hashes)
    job = make_job(d / "job", planted[:4], unit=0)
    make_job(d / "job", planted[4:] + clean_rows(12), unit=1)
    spec, images = make_demo_needles(d / "needles", items=2)
    hay = make_haystack(d / "haystack")

    def run_audit(out: Path):
        return audit([str(job)], [str(FIXTURES)], out, benchmark_videos=str(videos), log=lambda m: None, quiet=True)

    def run_niah(out: Path):
        return run_niah_build(NiahBuildConfig(haystack=str(hay), needles=str(spec), images=str(images), out=str(out),
                                              frames=[10], depths=[0.5], model="tiny", img_size=80, dtype="float32",
                                              threads=1, quiet=True))

    local = {"audit": run_audit(d / "audit-local"), "niah": run_niah(d / "niah-local")}
    assert not ray.is_initialized()  # a job without Ray never starts one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = {"audit": run_audit(d / "audit-ray"), "niah": run_niah(d / "niah-ray")}
    finally:
        ray.shutdown()
    return {"dir": d, "local": local, "remote": remote, "videos": videos, "job": job, "hay": hay}


def test_audit_with_ray_writes_what_it_writes_without(runs):
    d = runs["dir"]
    assert "remote_reads" not in runs["local"]["audit"].summary
    local, remote = audit_files(d / "audit-local"), audit_files(d / "audit-ray")
    assert local["sheets"] and len(local["sheets"]) >= 4  # flagged samples of both shards have their sheets
    assert local == remote
    assert runs["remote"]["audit"].summary["benchmark_frames"]["frames"] > 0


def test_audit_reads_run_in_tasks_and_the_driver_gets_hashes_and_thumbnails(runs):
    d = runs["dir"]
    reads = json.loads((d / "audit-ray" / "summary.json").read_text())["remote_reads"]
    shards = list((runs["job"] / "shards").glob("*.tar"))
    # one task per benchmark video, one per shard holding a flagged sample
    assert reads["tasks"] == 2 + len(shards)
    sheets = sum(len(uri) for _, uri in audit_files(d / "audit-ray")["sheets"])
    frames = json.loads((d / "audit-ray" / "summary.json").read_text())["benchmark_frames"]["frames"]
    # the results and nothing else: the sheets' data URIs (what report.html embeds), ~8 + 8 bytes per hashed
    # frame, pickling overhead; no mp4 member, no decoded frame (the tiny inputs here are smaller than the sheets,
    # so this is the bound that says it, not a comparison with the inputs' size)
    assert sheets <= reads["driver_received_bytes"] < sheets + 40 * frames + 2048, reads


def test_niah_with_ray_builds_the_same_set_and_the_driver_gets_only_the_frames_it_encodes(runs):
    d = runs["dir"]
    assert "remote_reads" not in runs["local"]["niah"]["haystack"]
    assert niah_files(d / "niah-local") == niah_files(d / "niah-ray")
    reads = runs["remote"]["niah"]["haystack"]["remote_reads"]
    # 10 frames wanted -> 12 read (whole 4-frame clips): the first shard's first sample (8) and 4 of its second;
    # the second shard is never opened, the first shard's third sample never decoded
    assert reads["tasks"] == 1, reads
    assert 12 * FRAME <= reads["driver_received_bytes"] < 12 * FRAME + 4096, reads
    assert reads["driver_received_bytes"] < sum(map(sum, SHARD_SAMPLES)) * FRAME / 3
