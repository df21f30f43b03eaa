"""The audit on the real benchmark annotation files in ../shared/data/benchmarks (skipped when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, run_audit
from longvid.manifests.readers import find_jobs
from tests.operators.test_audit import clean_rows
from tests.operators.test_audit_util import SHARED, make_job, row

BENCH = SHARED / "data" / "benchmarks"
pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason="../shared/data/benchmarks is absent")


@pytest.fixture(scope="module")
def real():
    return scan_benchmarks([BENCH])


def test_every_real_file_is_recognised(real):
    assert real.unknown == []
    assert real.unusable_records == 0 and all(f.records for f in real.files)  # the guard rejects no real record
    formats = {Path(f.path).relative_to(BENCH).parts[0]: f.format for f in real.files}
    assert formats == {"LVBench": "lvbench-clean-json", "LongVideoBench": "longvideobench-json", "MLVU_MC": "mlvu-json",
                       "MVBench": "mvbench-json", "Temporal_Grounding": "charades-sta-json", "Video-MME": "videomme-parquet"}
    vm = {v.video_id for v in real.videos if v.benchmark == "Video-MME"}
    assert len(vm) == 900  # 900 videos, including the one whose id is 13 characters long
    lvb = [v for v in real.videos if v.benchmark == "LongVideoBench"]
    assert {v.namespace for v in lvb} == {"youtube", "tiktok"}
    loc = {v.video_id for v in real.videos if v.task == "action_localization"}
    sta = {v.video_id for v in real.videos if v.benchmark == "Charades-STA"}
    assert len(loc) == 200 and loc <= sta  # all MVBench action_localization videos are Charades-STA test videos


def test_planted_leaks_against_real_files(real, tmp_path):
    vmme = pq.read_table(BENCH / "Video-MME/videomme/test-00000-of-00001.parquet").to_pylist()
    yt = vmme[0]["videoID"]
    question = vmme[10]["question"]
    mv = json.loads((BENCH / "MVBench/json/action_localization.json").read_text())[3]
    charades = mv["video"].split(".")[0]
    lvb = json.loads((BENCH / "LongVideoBench/lvb_val.json").read_text())[5]
    rows = [
        row("howto100m_leak", "howto100m", f"https://youtu.be/{yt}"),
        row("star_leak", "star", charades.lower()),
        row("webvid_caption", "webvid", "77", text=f"A video. {question} Filmed in 4k."),
        row("hdvila_lvb", "hdvila", f"v_{lvb['video_id']}") if len(lvb["video_id"]) == 11 else row("hdvila_lvb", "hdvila", lvb["video_id"]),
    ] + clean_rows(60)
    job = make_job(tmp_path / "job", rows, shards=False)
    res = run_audit(find_jobs(str(job)), real, tmp_path / "out", AuditConfig(), write_report=True)
    got = {(r["key"], r["benchmark"], r["method"]) for r in res.leakage.to_pylist()}
    assert ("howto100m_leak", "Video-MME", "video_id") in got
    assert ("star_leak", "MVBench", "video_id") in got and ("star_leak", "Charades-STA", "video_id") in got
    assert ("webvid_caption", "Video-MME", "text_ngram") in got
    assert ("hdvila_lvb", "LongVideoBench", "video_id") in got
    assert {k for k, _, _ in got} == {"howto100m_leak", "star_leak", "webvid_caption", "hdvila_lvb"}  # clean rows stay clean
    ev = [json.loads(r["evidence"]) for r in res.leakage.to_pylist() if r["key"] == "webvid_caption"][0]
    assert ev["benchmark_text"] == question
