"""The ingest unit schedule: which input rows form unit N (the resume contract), without and with Ray.

The schedule must depend on the row position only (not on the cluster, not on the corpus length), cover every
row exactly once, give a small corpus enough units to keep every CPU busy, and let a re-run skip committed units.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import longvid.pipelines.ingest as ingest
import longvid.pipelines.ingest_config as ingest_config
from longvid.operators.errors import ConfigError
from longvid.operators.records import Failure, SourceRecord, TextSpan
from longvid.operators.frame_rule import PROFILES
from longvid.operators.sources import get_adapter
from longvid.pipelines.ingest import IngestConfig, UnitSchedule, cut_units


def cfg(**kw) -> IngestConfig:
    base = dict(source="miradata", metadata=["m.csv"], videos="v", out="o")
    return IngestConfig(**{**base, **kw})


def record(i: int) -> SourceRecord:
    return SourceRecord(source="webvid", video_id=str(i), video_paths=(f"{i}.mp4",), origin=f"m.csv:{i + 2}")


# ----------------------------------------------------------------------------------------- the schedule


def test_default_schedule_ramps_up_to_the_shard_filling_size():
    c = cfg(profile="long")
    s = c.unit_schedule()
    assert s == UnitSchedule(ingest_config.RAMP_FIRST, ingest_config.RAMP_REPEAT, c.unit_size())
    sizes = [s.size(n) for n in range(200)]
    r, f = ingest_config.RAMP_REPEAT, ingest_config.RAMP_FIRST
    assert sizes[:r] == [f] * r and sizes[r:2 * r] == [2 * f] * r and sizes[2 * r:3 * r] == [4 * f] * r
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))  # never shrinks
    assert max(sizes) == sizes[-1] == c.unit_size()  # ends at one shard's worth of rows
    # the bound is the shard size: a smaller shard gives a smaller largest unit, never below 8 rows
    assert cfg(profile="long", shard_size_mb=64).unit_schedule().cap < s.cap
    assert cfg(profile="long", shard_size_mb=0.01).unit_schedule() == UnitSchedule(8, ingest_config.RAMP_REPEAT, 8)


def test_records_per_unit_is_a_fixed_size_and_keeps_its_old_fingerprint():
    c = cfg(records_per_unit=34)
    assert c.unit_schedule() == UnitSchedule(34, 0, 34)
    assert {c.unit_schedule().size(n) for n in range(100)} == {34}
    fp = c.fingerprint()
    assert fp["records_per_unit"] == 34 and "unit_schedule" not in fp  # outputs made before the ramp still resume


def test_fingerprint_names_the_schedule():
    a = cfg().fingerprint()
    assert a["records_per_unit"] == 0
    assert a["unit_schedule"] == {"first": ingest_config.RAMP_FIRST, "repeat": ingest_config.RAMP_REPEAT, "cap": cfg().unit_size()}
    assert cfg(records_per_unit=8).fingerprint() != a
    assert cfg(shard_size_mb=64).fingerprint()["unit_schedule"] != a["unit_schedule"]
    # settings that do not change the cut or the bytes are not part of it: a resume may use another cluster
    assert cfg(max_in_flight=7, num_cpus=3, decoder_threads=0).fingerprint() == a


def test_schedule_does_not_depend_on_the_cluster(monkeypatch):
    """Nothing about Ray or the machine enters the cut: the same config gives the same units everywhere."""
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    big = cfg().unit_schedule()
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert cfg().unit_schedule() == big


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("rows", [24, 64, 100, 300])
def test_a_small_corpus_makes_enough_units_for_every_cpu(profile, rows):
    """A few hundred rows used to be ONE unit (one task, one CPU); now at least 2x the CPUs of this box, and
    RAMP_REPEAT units as soon as there are RAMP_REPEAT * RAMP_FIRST rows."""
    units = list(cut_units(iter(range(rows)), cfg(profile=profile).unit_schedule()))
    cpus = max(2, os.cpu_count() or 1)
    assert len(units) >= min(2 * cpus, rows // ingest_config.RAMP_FIRST)
    assert len(units) >= 3  # even 24 rows: 8 + 8 + 8
    if rows >= ingest_config.RAMP_FIRST * ingest_config.RAMP_REPEAT:
        assert len(units) >= ingest_config.RAMP_REPEAT
    old = list(cut_units(iter(range(rows)), cfg(profile=profile).unit_size()))
    if profile in ("long", "highres"):
        assert len(old) <= 9  # what the ramp fixes (3 units at the long profile, 9 at highres for 300 rows)


def test_largest_unit_of_a_small_corpus_is_a_small_share_of_it():
    """The ramp puts the big units last; a corpus inside the ramp still has no unit above 1/6 of its rows
    (BENCHMARKS.md: 1/12 typically), so the CPUs are busy for most of the job."""
    s = cfg(profile="long").unit_schedule()
    for rows in range(100, 4032, 7):
        sizes = [len(u) for _, u in cut_units(iter(range(rows)), s)]
        assert max(sizes) * 6 <= rows + 6, (rows, sizes)


# ----------------------------------------------------------------------------------------- cutting a stream


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 3000), first=st.integers(1, 40), repeat=st.integers(0, 9), cap=st.integers(1, 500),
       limit=st.integers(0, 3000))
def test_cut_covers_every_item_once_in_order(n, first, repeat, cap, limit):
    s = UnitSchedule(first, repeat, max(cap, first))
    units = list(cut_units(iter(range(n)), s, limit))
    expect = list(range(min(n, limit) if limit else n))
    assert [x for _, u in units for x in u] == expect
    assert [i for i, _ in units] == list(range(len(units)))
    for i, u in units[:-1]:
        assert len(u) == s.size(i)
        assert list(u) == list(range(*s.bounds(i)))
    if units:
        i, u = units[-1]
        start = s.bounds(i)[0]
        assert u == expect[start:] and 1 <= len(u) <= s.size(i)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 2000), m=st.integers(1, 2000))
def test_cut_is_prefix_stable(n, m):
    """Unit N depends on the rows before it only: appending rows (or a larger --limit) leaves every complete unit
    of the shorter stream unchanged; only the last, partial one may grow."""
    s = cfg().unit_schedule()
    a = list(cut_units(iter(range(min(n, m))), s))
    b = list(cut_units(iter(range(max(n, m))), s))
    assert a[:-1] == b[:len(a) - 1]
    assert b[len(a) - 1][1][:len(a[-1][1])] == a[-1][1]


def test_cut_is_deterministic_and_marks_duplicates():
    items = [record(i % 50) for i in range(120)]  # rows 50.. repeat earlier keys
    s = cfg().unit_schedule()
    a = [(n, list(u)) for n, u in cut_units(iter(items), s)]
    b = [(n, list(u)) for n, u in cut_units(iter(items), s)]
    assert a == b
    flat = [x for _, u in a for x in u]
    assert len(flat) == 120
    assert all(isinstance(x, SourceRecord) for x in flat[:50])
    assert all(isinstance(x, Failure) and x.stage == "metadata" and "duplicate" in x.reason for x in flat[50:])


def test_cut_refuses_a_zero_size():
    with pytest.raises(ConfigError, match="records_per_unit"):
        list(cut_units(iter(range(5)), UnitSchedule(0, 0, 0)))


def test_int_schedule_is_the_old_fixed_cut():
    units = list(cut_units(iter(range(10)), 3))
    assert [u for _, u in units] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


# ----------------------------------------------------------------------------------------- with Ray


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", "longvid", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.slow
def test_default_schedule_end_to_end_and_resume(tmp_path):
    """81 rows with the default schedule: 8 units of 8 and then 16-row units; every row is in the unit the
    schedule says; deleting one committed unit and re-running redoes only it, byte for byte."""
    from longvid.synthetic.faulty_corpus import make_corpus

    corpus = make_corpus(tmp_path / "c", n_videos=24, clips_per_video=3, bad_per_kind=1, seed=5)
    assert corpus.rows == 81
    out = tmp_path / "out"
    args = ["ingest", "--source", "miradata", "--metadata", str(corpus.metadata), "--videos", str(corpus.videos),
            "--out", str(out), "--profile", "stage1", "--num-cpus", "2"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "units: 8 units of 8 rows" in r.stdout + r.stderr
    assert "inputs/s" in r.stdout + r.stderr and "video-h/h" in r.stdout + r.stderr  # the progress line has rates
    summary = json.loads((out / "summary.json").read_text())
    sched = IngestConfig(source="miradata", metadata=[str(corpus.metadata)], videos="", out="",
                         profile="stage1").unit_schedule()
    n_units = len(list(cut_units(iter(range(81)), sched)))
    assert summary["inputs"] == 81 == summary["samples"] + summary["failures"]
    assert summary["units_run"] == n_units == 8 + 2  # 64 rows in 8 units, then 16 + 1
    assert summary["complete"]

    # each row's unit is the one the schedule gives its position
    order = [x.key for x in get_adapter("miradata").read([str(corpus.metadata)], {})]
    expect = {key: n for n, u in cut_units(iter(order), sched) for key in u}
    got = pd.concat([pd.read_parquet(out / "manifests")[["key", "unit"]],
                     pd.read_parquet(out / "failures")[["key", "unit"]]])
    assert len(got) == 81 and dict(zip(got.key, got.unit)) == expect

    # resume: unit 8 (16 rows) is lost; the re-run skips the 9 others and rewrites it identically
    tars = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-000008-*.tar")}
    assert tars
    (out / "manifests" / "part-000008.parquet").unlink()
    for p in (out / "shards").glob("shard-000008-*.tar"):
        p.unlink()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_run"] == 1 and summary["units_skipped"] == n_units - 1
    assert summary["inputs"] == 81 == summary["samples"] + summary["failures"]
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("shard-000008-*.tar")} == tars

    # the same --out with a fixed unit size is another job: refused, naming the setting
    r = run_cli(*args, "--records-per-unit", "8")
    assert r.returncode != 0 and "records_per_unit" in r.stderr + r.stdout


# ----------------------------------------------------------------------------------------- the decoder child


def test_worker_keeps_its_decoder_child_across_units(tmp_path, monkeypatch):
    """run_unit (no Ray) twice: the second unit reuses the first unit's decoder child (its start-up costs about
    2 CPU-seconds), counts its CPU, and a recycled child is a new process; the output does not depend on it."""
    from longvid.operators.process import ProcessOptions
    from longvid.synthetic.videos import make_video

    make_video(tmp_path / "v" / "a.mp4", seconds=2, fps=10, width=64, height=48, seed=1)
    recs = [SourceRecord(source="webvid", video_id=f"a{i}", video_paths=("a.mp4",), start=0.1 * i, end=1.5,
                         origin=f"m.csv:{i + 2}", texts=(TextSpan("a caption"),)) for i in range(3)]
    opts = ProcessOptions(videos_root=str(tmp_path / "v"), profile="stage1")
    ingest._close_decoder()
    try:
        a = ingest.run_unit(str(tmp_path / "o1"), 0, recs[:2], opts, 2**20, 120, 4096, {})
        pid = ingest._decoder["runner"]._proc.pid
        b = ingest.run_unit(str(tmp_path / "o1"), 1, recs[2:], opts, 2**20, 120, 4096, {})
        assert ingest._decoder["runner"]._proc.pid == pid and ingest._decoder["served"] == 3
        assert a["samples"] == 2 and b["samples"] == 1
        assert a["cpu_s"] > b["cpu_s"] > 0  # the first unit paid for the child's start-up
        monkeypatch.setattr(ingest, "DECODER_RECYCLE", 3)
        c = ingest.run_unit(str(tmp_path / "o2"), 1, recs[2:], opts, 2**20, 120, 4096, {})
        assert ingest._decoder["runner"]._proc.pid != pid and c["samples"] == 1
        d = ingest.run_unit(str(tmp_path / "o3"), 1, recs[2:], opts, 2**20, 120, 4096, {}, reuse_decoder=False)
        assert not ingest._decoder and d["samples"] == 1 and d["cpu_s"] > 0
        same = [(tmp_path / o / "shards" / "shard-000001-000.tar").read_bytes() for o in ("o1", "o2", "o3")]
        assert same[0] == same[1] == same[2]
    finally:
        ingest._close_decoder()
