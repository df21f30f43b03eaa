"""Crash safety of `longvid ingest` (real subprocess, embedded Ray, 2 CPUs):

(a) SIGKILL the driver mid-job, check that its Ray processes go away, re-run the same command: committed units are
    skipped, and the final manifests, failures and tars equal those of an uninterrupted run (no duplicate, no
    missing key, no partial file left behind);
(b) SIGKILL a Ray worker while it executes a unit: Ray retries the task and the job completes with the same output;
(c) a decoder that segfaults on one video and one that hangs on another cost those two videos only (failure rows
    with stage crash / timeout and a reason); the rest of their unit is written.

Every process a run starts carries LONGVID_TEST_RUN=<uuid> (tests/faults.py), so the test kills and cleans up only
what its own run started.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from longvid.synthetic.faulty_corpus import base_videos, extra_key, extra_row, make_corpus
from longvid.operators.sources.miradata import raw_video_path
from tests.faults import LeaseHolder, children, kill_marked, lease_break_time, marked_procs, wait_gone

ROOT = Path(__file__).resolve().parents[2]
RECORDS_PER_UNIT = 4
TIMING_COLUMNS = ("elapsed", "seconds_taken", "created", "finished")  # none today; ignored if they appear


class Run:
    """`python -m longvid ingest ...` in a subprocess, tagged with its own marker."""

    def __init__(self, args: list[str], log: Path):
        self.marker = uuid.uuid4().hex
        self.log = log
        env = {**os.environ, "RAY_DEDUP_LOGS": "0", "LONGVID_TEST_RUN": self.marker,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("RAY_ADDRESS", None)
        self._f = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "longvid", "ingest", *args], cwd=ROOT, env=env,
                                     stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float = 420) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._f.close()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def cleanup(self, timeout: float = 60) -> dict[int, str]:
        """After the driver has exited: wait for the run's processes to end, kill the ones that linger."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        left = wait_gone(self.marker, timeout)
        kill_marked(self.marker)
        return left


def is_core(cmd: str) -> bool:
    """Ray's core processes, task workers and decoder children (not the dashboard / runtime-env agents)."""
    return (cmd.startswith(("ray::run_unit", "ray::IDLE")) or "spawn_main" in cmd or "/raylet/raylet " in cmd
            or "/gcs/gcs_server " in cmd)


def ingest_args(corpus, out: Path, *extra: str) -> list[str]:
    return ["--source", "miradata", "--metadata", str(corpus.metadata), "--videos", str(corpus.videos),
            "--out", str(out), "--profile", "short", "--records-per-unit", str(RECORDS_PER_UNIT),
            "--num-cpus", "2", "--shard-size-mb", "4", *extra]


def read_dir(out: Path, folder: str) -> pd.DataFrame:
    df = pd.read_parquet(out / folder)
    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])
    return df.sort_values("key").reset_index(drop=True)


def tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".longvid-tmp-"))


def assert_complete(out: Path, corpus) -> tuple[pd.DataFrame, pd.DataFrame]:
    man, fail = read_dir(out, "manifests"), read_dir(out, "failures")
    keys = list(man.key) + list(fail.key)
    assert len(keys) == len(set(keys)), "a key was written twice"
    assert set(keys) == corpus.keys, (sorted(corpus.keys - set(keys))[:5], sorted(set(keys) - corpus.keys)[:5])
    assert set(man.key) == corpus.good_keys
    assert (fail.reason.str.len() > 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == corpus.rows == summary["samples"] + summary["failures"]
    return man, fail


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    # 12 videos x 3 clips + 4 bad rows = 40 inputs = 10 units of 4
    return make_corpus(root, n_videos=12, clips_per_video=3, bad_per_kind=1,
                       kinds=("zero_byte", "missing", "span_outside", "corrupt_middle"), seed=7)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    run = Run(ingest_args(corpus, out), out.parent / "log.txt")
    try:
        rc = run.wait()
    finally:
        run.cleanup()
    assert rc == 0, run.tail()
    man, fail = assert_complete(out, corpus)
    n_units = -(-corpus.rows // RECORDS_PER_UNIT)
    assert sorted(set(man.unit) | set(fail.unit)) == list(range(n_units))
    return {"out": out, "man": man, "fail": fail, "tars": tars(out), "units": n_units}


def assert_same_as_reference(out: Path, corpus, reference) -> None:
    man, fail = assert_complete(out, corpus)
    pd.testing.assert_frame_equal(man, reference["man"])
    pd.testing.assert_frame_equal(fail, reference["fail"])
    got = tars(out)
    assert sorted(got) == sorted(reference["tars"])
    assert [k for k in got if got[k] != reference["tars"][k]] == [], "tars differ from the uninterrupted run"
    assert leftovers(out) == [], "partial files of a killed attempt were left in the output"


# ------------------------------------------------------------------------------------------------- (a)


def test_rewrite_of_a_killed_unit_removes_its_half_written_tars(tmp_path):
    """A worker killed mid-unit leaves a temporary tar; the retry's commit removes it (and only that unit's)."""
    from longvid.operators.write import UnitWriter

    out = tmp_path / "out"
    members = {"json": b"{}", "mp4": b"\0" * 100}
    dead = UnitWriter(str(out), 3, 1 << 20)
    dead.add("k1", members, {"key": "k1"})  # ... and the process is killed here: no commit, no abort
    other = UnitWriter(str(out), 4, 1 << 20)
    other.add("k9", members, {"key": "k9"})  # unit 4 is in flight in another worker
    assert len(leftovers(out)) == 2
    retry = UnitWriter(str(out), 3, 1 << 20)
    retry.add("k1", members, {"key": "k1"})
    retry.commit()
    left = leftovers(out)
    assert len(left) == 1 and "shard-000004-" in left[0], left
    names = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert "shard-000003-000.tar" in names and not [n for n in names if n.startswith(".longvid-tmp-shard-000003-")]


@pytest.mark.slow
def test_driver_sigkill_then_rerun_equals_uninterrupted_run(corpus, reference, tmp_path):
    out = tmp_path / "out"
    run = Run(ingest_args(corpus, out), tmp_path / "log1.txt")
    manifests = out / "manifests"
    t0 = time.time()
    try:
        # kill once two units are committed and another one is half written (a temporary tar exists)
        while run.proc.poll() is None and time.time() - t0 < 300:
            if (manifests.is_dir() and len(list(manifests.glob("part-*.parquet"))) >= 2
                    and list((out / "shards").glob(".longvid-tmp-*.tar"))):
                break
            time.sleep(0.05)
        assert run.proc.poll() is None, "the job ended before it could be killed:\n" + run.tail()
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(30)
        # The embedded Ray shares the driver's fate: gcs, raylet, task workers and decoder children end within a
        # second or two (raylet sees the driver's socket close). Nothing may keep writing into --out afterwards.
        busy = wait_gone(run.marker, 60, keep=is_core)
        assert busy == {}, f"processes of the killed job still running: {busy}"
    finally:
        lingering = run.cleanup(5)  # Ray's dashboard/runtime-env agents outlive the driver (seen: > 60 s)
    print("after the driver's SIGKILL and its core processes' end, still alive (killed by pid):",
          sorted(lingering.values()))
    committed = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in manifests.glob("part-*.parquet")}
    assert 2 <= len(committed) < reference["units"], committed.keys()
    assert not (out / "summary.json").exists()

    rerun = Run(ingest_args(corpus, out), tmp_path / "log2.txt")
    try:
        rc = rerun.wait()
    finally:
        rerun.cleanup()
    assert rc == 0, rerun.tail()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_skipped"] == len(committed)
    assert summary["units_run"] == reference["units"] - len(committed)
    for name, (mtime, data) in committed.items():  # skipped, not rewritten
        p = manifests / name
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data
    assert_same_as_reference(out, corpus, reference)


# ------------------------------------------------------------------------------------------------- (b)


@pytest.mark.slow
def test_worker_sigkill_mid_unit_is_retried(corpus, reference, tmp_path):
    out = tmp_path / "out"
    run = Run(ingest_args(corpus, out), tmp_path / "log.txt")
    killed: list[str] = []
    t0 = time.time()
    try:
        # a task worker is "ray::run_unit" while it executes a unit; one with a decoder child is mid-unit
        while run.proc.poll() is None and time.time() - t0 < 300 and not killed:
            for pid, cmd in marked_procs(run.marker).items():
                if cmd.startswith("ray::run_unit") and children(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"{pid} {cmd}")
                    break
            time.sleep(0.1)
        assert killed, "no worker caught executing a unit:\n" + run.tail()
        rc = run.wait()
        busy = wait_gone(run.marker, 60, keep=is_core)
    finally:
        run.cleanup()
    assert rc == 0, run.tail()
    assert busy == {}, f"orphan workers or decoder children after the job: {busy}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_run"] == reference["units"]
    assert_same_as_reference(out, corpus, reference)


# ------------------------------------------------------------------------------------------------- (c)


@pytest.mark.slow
def test_decoder_segfault_and_hang_cost_one_video_each(tmp_path):
    timeout_s = 8.0  # the call only: the decoder child's start-up is not counted
    if lease_break_time() < timeout_s + 15:
        pytest.skip("needs /proc/sys/fs/lease-break-time well above the decode timeout")
    corpus = make_corpus(tmp_path / "c", n_videos=3, clips_per_video=2, bad_per_kind=0, kinds=(), seed=3)
    base = base_videos(tmp_path / "c" / "base")[0]
    crash_id, hang_id = 990_001, 990_002
    paths = {}
    for did in (crash_id, hang_id):  # copies, not hard links: a lease holds the inode
        paths[did] = corpus.videos / raw_video_path(did)
        paths[did].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base, paths[did])
    with open(corpus.metadata, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    body.insert(1, extra_row(crash_id))  # crash after one good record, hang in the middle: one unit of 8
    body.insert(4, extra_row(hang_id))
    with open(corpus.metadata, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])

    out = tmp_path / "out"
    marker_log = tmp_path / "victims.txt"
    run = None
    try:
        run = Run(ingest_args(corpus, out, "--records-per-unit", "8", "--decode-timeout-s", f"{timeout_s:g}"),
                  tmp_path / "log.txt")
        with LeaseHolder(paths[crash_id], "crash", run.marker, marker_log) as crash, \
                LeaseHolder(paths[hang_id], "hang", run.marker, tmp_path / "unused.txt"):
            rc = run.wait()
            victims = crash.victims()
    finally:
        if run is not None:
            run.cleanup()
    assert rc == 0, run.tail()
    assert len(victims) == 1, victims  # the decoder child, killed by SIGSEGV while opening that one video
    man = pd.read_parquet(out / "manifests")
    fail = pd.read_parquet(out / "failures").set_index("key")
    assert set(man.key) == corpus.good_keys and len(man) == 6
    assert set(fail.index) == {extra_key(crash_id), extra_key(hang_id)}
    crash_row, hang_row = fail.loc[extra_key(crash_id)], fail.loc[extra_key(hang_id)]
    assert crash_row.stage == "crash" and "SIGSEGV" in crash_row.reason, crash_row.reason
    assert hang_row.stage == "timeout" and "no result after" in hang_row.reason, hang_row.reason
    assert crash_row.file and hang_row.file
    assert set(man.unit) == {0} and set(fail.unit) == {0}  # one unit: the faults did not cost it
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures_by_stage"] == {"crash": 1, "timeout": 1}


def test_decode_timeout_does_not_count_the_decoder_start_up():
    """The clock of a call starts once the child has started and imported the called function's module: a fresh
    child (first call, or after a crash) on a loaded machine must not turn a good video into a timeout."""
    from longvid.operators.isolate import IsolatedRunner
    from tests.slow_import import quick  # 3 s to import, in this process and in the child

    with IsolatedRunner(timeout_s=1.5) as r:
        assert r.run(quick, 21) == 42
        assert r.run(quick, 4) == 8
