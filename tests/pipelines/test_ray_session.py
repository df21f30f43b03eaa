"""pipelines/ray_session.py: an embedded Ray is private to its driver, and a job owns its output folder.

Unit level (no Ray): the output-folder lock between processes, leftover processes of a killed driver found by
their token and stopped by pid, the environment an embedded Ray's processes get, Ray's logs to a file.
With Ray: one embedded Ray next to a second Ray that `ray start` made the machine's default, and one real SIGKILL
of `longvid ingest` followed by a re-run into the same --out (tests/scenarios/test_crash_safety.py's helpers).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from longvid.operators.errors import ConfigError
from longvid.pipelines import out_claim, ray_session
from longvid.pipelines.out_claim import OWNER_FILE, TOKEN_VAR, claim_out, processes_of, release_out
from tests.faults import MARK_VAR, kill_marked, marked_procs, wait_gone

ROOT = Path(__file__).resolve().parents[2]

# A driver that owns `out`, starts a "Ray process" (a sleeper that inherits its token), says so, and waits.
_OWNER = r"""
import subprocess, sys, time
from longvid.pipelines.out_claim import claim_out
claim_out(sys.argv[1], "ingest")
leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(leftover.pid, flush=True)
time.sleep(600)
"""


def _env(marker: str) -> dict[str, str]:
    env = {**os.environ, MARK_VAR: marker,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(TOKEN_VAR, None)
    return env


def test_a_live_owner_refuses_a_second_job_and_a_killed_ones_leftovers_are_stopped(tmp_path):
    out = tmp_path / "out"
    marker = uuid.uuid4().hex
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(out)], stdout=subprocess.PIPE, text=True,
                             env=_env(marker))
    try:
        leftover = int(owner.stdout.readline())
        with pytest.raises(ConfigError) as e:
            claim_out(str(out), "ingest")
        assert f"pid {owner.pid}" in str(e.value) and "in use" in str(e.value) and "--out" in str(e.value)
        record = json.loads((out / OWNER_FILE).read_text())
        assert record["pid"] == owner.pid and "ended" not in record
        assert leftover in processes_of(record["token"])  # found by the token it inherited
        assert owner.pid not in processes_of(record["token"])  # the token was made after the driver started
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert out_claim.proc_start(leftover) is not None  # orphaned, still running: it would race a re-run
        lines: list[str] = []
        claim_out(str(out), "ingest", log=lines.append)
        try:
            assert out_claim.proc_start(leftover) is None  # stopped by pid before the new job starts
            assert len(lines) == 1 and f"driver pid {owner.pid}" in lines[0] and str(leftover) in lines[0]
            mine = json.loads((out / OWNER_FILE).read_text())
            assert mine["pid"] == os.getpid() and mine["token"] != record["token"]
            claim_out(str(out), "ingest")  # re-entrant in the same process (the demo runs its jobs in-process)
            release_out(str(out))
        finally:
            release_out(str(out))
        assert "ended" in json.loads((out / OWNER_FILE).read_text())
        claim_out(str(out), "ingest", log=lines.append)  # a run that ended cleanly leaves nothing to stop
        release_out(str(out))
        assert len(lines) == 1
    finally:
        if owner.poll() is None:
            owner.kill()
        kill_marked(marker)


def test_processes_of_a_token_never_include_the_caller_or_its_ancestors(tmp_path):
    token = uuid.uuid4().hex
    env = {**_env(uuid.uuid4().hex), TOKEN_VAR: token}
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    try:
        probe = ("import json, os, sys; from longvid.pipelines.out_claim import processes_of; "
                 f"print(json.dumps([os.getpid(), sorted(processes_of({token!r}))]))")
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        me, found = json.loads(r.stdout)
        assert sibling.pid in found and me not in found
    finally:
        sibling.kill()
        sibling.wait(10)


def test_recorded_pids_and_the_session_dir_name_a_drivers_processes(tmp_path):
    session = tmp_path / "session_2026-01-01_00-00-00_000000_1" / "logs"
    session.mkdir(parents=True)
    token = uuid.uuid4().hex  # nobody carries it: only the record names the processes
    with open(session / "worker.out", "w") as log:  # as a Ray worker's (or agent's) stdout in its session logs
        logging_one = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=log)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = out_claim.proc_start(sleeper.pid)
        assert set(processes_of(token, {"raylet": [sleeper.pid, start]})) == {sleeper.pid}
        assert processes_of(token, {"raylet": [sleeper.pid, start + 1]}) == {}  # a reused pid is not ours
        assert set(processes_of(token, {}, str(session.parent))) == {logging_one.pid}
        assert processes_of(token, {}, str(tmp_path)) == {}  # only a Ray session dir names processes
    finally:
        for p in (sleeper, logging_one):
            p.kill()
            p.wait(10)


def test_the_environment_of_an_embedded_rays_processes():
    env = ray_session.embedded_env(40001, 40002)
    assert env["RAY_GCS_SERVER_PORT"] == "40001" and env["RAY_ADDRESS"].endswith(":40001")
    assert env["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:40002"  # the State API never scans the machine
    assert env[TOKEN_VAR] == out_claim.owner_token()
    assert len(ray_session.ray_temp_dir()) + len("/session_2026-01-01_00-00-00_000000_1234567/sockets/plasma_store") < 107


def test_rays_driver_logs_go_to_a_file_and_errors_stay_on_the_console(tmp_path):
    import ray  # noqa: F401 - its import sets up the "ray" logger's console handler

    lg = logging.getLogger("ray")
    consoles = [h for h in lg.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    assert consoles, "Ray's import no longer adds a console handler: this test must change"
    path = tmp_path / "logs" / "ray.log"
    ray_session.route_ray_logs(str(path))
    ray_session.route_ray_logs(str(path))  # idempotent: one file handler
    assert all(h.level == logging.ERROR for h in consoles)  # errors still reach the console
    files = [h for h in lg.handlers if isinstance(h, logging.FileHandler)]
    assert [h.baseFilename for h in files] == [str(path)]
    lg.setLevel(logging.INFO)
    lg.info("Started a local Ray instance. View the dashboard at http://127.0.0.1:8265")
    lg.warning("a deprecation warning")
    files[0].flush()
    text = path.read_text()
    assert "View the dashboard" in text and "deprecation" in text


def test_native_stderr_goes_to_the_file_and_python_stderr_stays(tmp_path):
    path = tmp_path / "logs" / "ray.log"
    code = ("import logging, os, sys\n"
            "from longvid.pipelines.ray_session import native_stderr_to\n"
            "logging.basicConfig(format='%(message)s')\n"
            f"with native_stderr_to({str(path)!r}):\n"
            "    os.write(2, b'[E core_worker.cc] native line\\n')\n"
            "    print('python line', file=sys.stderr)\n"
            "    logging.warning('logging line')\n"
            "os.write(2, b'native after\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env("x"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["python line", "logging line", "native after"]
    assert path.read_text() == "[E core_worker.cc] native line\n"


# ------------------------------------------------------------------------------------------------- with Ray

_PROBE = r"""
import json, sys, ray
from longvid.pipelines.ray_session import ensure_ray, ray_temp_dir
assert ensure_ray(num_cpus=1, dashboard=True, out=sys.argv[1], job="probe")

@ray.remote(num_cpus=0)
def look():  # what Ray's own code inside a worker finds when it looks for "the" cluster
    from ray._private import services
    from ray.experimental import internal_kv
    from ray.util.state import list_nodes
    client = internal_kv.internal_kv_get_gcs_client()
    nodes = [n.node_id for n in list_nodes()]  # as Ray Train's placement group cleaner does, every few seconds
    return {"bootstrap": services.canonicalize_bootstrap_address_or_die(None), "nodes": nodes,
            "same_gcs_client": internal_kv.internal_kv_get_gcs_client() is client}

res = ray.get(look.remote())
ctx = ray.get_runtime_context()
print(json.dumps({"gcs": ctx.gcs_address, "node": ctx.get_node_id(), "look": res, "temp_dir": ray_temp_dir(),
                  "session": ray._private.worker._global_node.get_session_dir_path()}), flush=True)
ray.shutdown()
"""


@pytest.mark.slow
def test_an_embedded_ray_next_to_another_users_ray(tmp_path):
    """`ray start` makes another Ray the machine's default (its ray_current_cluster file; RAY_TMPDIR points both
    at a private folder, so that this test does not change the default of other users of the machine)."""
    tmp = Path(tempfile.mkdtemp(prefix="lvr-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    marker = uuid.uuid4().hex
    env = {**_env(marker), "RAY_TMPDIR": str(tmp)}
    try:
        r = subprocess.run(["ray", "start", "--head", "--port", "0", "--num-cpus", "1", "--include-dashboard",
                            "false"], env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        other = (tmp / "ray" / "ray_current_cluster").read_text().strip()
        p = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "out")], env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        got = json.loads(p.stdout.strip().splitlines()[-1])
        assert got["gcs"] != other  # a cluster of its own, not the machine's default
        assert got["look"]["bootstrap"] == got["gcs"]  # without RAY_ADDRESS: the other cluster
        assert got["look"]["nodes"] == [got["node"]]  # the State API answered from our cluster
        # without RAY_API_SERVER_ADDRESS each State API call replaced the worker's process-wide GCS client (with
        # one of the other cluster) while other threads used it: the "Mutex corrupt" SIGABRT of Ray Train's actors
        assert got["look"]["same_gcs_client"]
        # its own temp dir: under RAY_TMPDIR (the user's choice of disk) but never the other Ray's folder there
        assert got["session"].startswith(got["temp_dir"] + "/") and not got["session"].startswith(str(tmp / "ray"))
        assert "multiple active Ray instances" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert "View the dashboard" not in p.stderr  # Ray's banner went to the log file
        assert "View the dashboard" in (tmp_path / "out" / "logs" / "ray.log").read_text()
    finally:
        kill_marked(marker)  # that Ray only (never `ray stop`: it stops every Ray of the machine)
        wait_gone(marker, 30)
        shutil.rmtree(tmp, ignore_errors=True)


def _settled(marker: str, quiet_s: float = 2.0, timeout_s: float = 30.0) -> dict[int, str]:
    """The marked processes once none has ended for `quiet_s` (the ones that share the driver's fate are gone)."""
    t0 = last_change = time.time()
    procs = marked_procs(marker)
    while time.time() - t0 < timeout_s and time.time() - last_change < quiet_s:
        time.sleep(0.2)
        now = marked_procs(marker)
        if now != procs:
            procs, last_change = now, time.time()
    return procs


def _sleeper(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)


@pytest.mark.slow
def test_rerun_after_a_killed_driver_stops_its_leftovers_first(tmp_path):
    from longvid.synthetic.faulty_corpus import make_corpus
    from tests.scenarios.test_crash_safety import Run, assert_complete, ingest_args

    corpus = make_corpus(tmp_path / "c", n_videos=16, clips_per_video=2, bad_per_kind=1,
                         kinds=("zero_byte", "missing"), seed=11)
    out = tmp_path / "out"
    first = Run(ingest_args(corpus, out), tmp_path / "log1.txt")
    manifests = out / "manifests"
    extra: list[subprocess.Popen] = []
    try:
        t0 = time.time()
        while first.proc.poll() is None and time.time() - t0 < 300:  # a unit committed, another one in flight
            if (manifests.is_dir() and list(manifests.glob("part-*.parquet"))
                    and list((out / "shards").glob(".longvid-tmp-*.tar"))):
                break
            time.sleep(0.02)
        # freeze the whole run (driver, Ray, workers, decoders) there: the checks below do not race with it
        frozen = set(marked_procs(first.marker))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert first.proc.poll() is None, "the job ended before it could be stopped:\n" + first.tail()
        # a second job on the same folder while the first one lives: exit 2, naming it, before any work
        second = Run(ingest_args(corpus, out), tmp_path / "log2.txt")
        assert second.wait(120) == 2, second.tail()
        assert f"pid {first.proc.pid}" in second.tail() and "Traceback" not in second.tail()

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        committed = len(list(manifests.glob("part-*.parquet")))
        record = json.loads((out / OWNER_FILE).read_text())
        assert record["pid"] == first.proc.pid and "ended" not in record and record["ray"]["pids"]
        # Which of its Ray processes outlive it varies from run to run (the kernel kills the ones that share the
        # driver's fate; Ray's agents stay for minutes, or not): those left (frozen: still there when the re-run
        # starts), plus one more process of the killed job's family (its token, as a worker of a unit in flight
        # has), and a bystander of another Ray (another token), which must be left alone
        left = _settled(first.marker)
        extra.append(_sleeper({**_env(first.marker), TOKEN_VAR: record["token"]}))
        bystander = _sleeper({**_env(uuid.uuid4().hex), TOKEN_VAR: uuid.uuid4().hex})
        extra.append(bystander)
        time.sleep(0.5)  # the sleepers have exec'd (their environment is readable)
        # the frozen leftovers cannot end by themselves: each must be found and named; a worker Ray started after
        # the freeze runs on and may exit at any moment (it must be gone after the re-run all the same, below)
        doomed = (set(left) & frozen) | {extra[0].pid}
        ray_info = record["ray"]
        assert doomed <= set(processes_of(record["token"], ray_info["pids"], ray_info["session_dir"])), left

        rerun = Run(ingest_args(corpus, out), tmp_path / "log3.txt")
        assert rerun.wait() == 0, rerun.tail()
        assert marked_procs(first.marker) == {} and extra[0].poll() is not None, \
            "processes of the killed run outlived the re-run's start"
        assert bystander.poll() is None, "a process of another Ray was stopped"
        log = rerun.tail(100_000)
        assert "did not end cleanly; stopping its" in log and f"driver pid {first.proc.pid}" in log, log[-3000:]
        assert all(str(p) in log.split("\n", 1)[0] for p in doomed), log[:1000]
        assert log.index("did not end cleanly") < log.index("units: ")  # before the re-run started its Ray
        summary = json.loads((out / "summary.json").read_text())
        # >=: a worker that started after the freeze above was not frozen, and may commit its unit after the count
        # (before the re-run stops it); what the re-run finds committed it skips, and it runs at least one unit
        assert summary["units_skipped"] >= committed and summary["units_run"] >= 1
        rerun.cleanup()
    finally:
        first.cleanup(5)
        for p in extra:
            p.kill()
            p.wait(10)
    assert_complete(out, corpus)


# ----------------------------------------------------------------- a unit on a node without the shared folder


def test_a_unit_writes_only_into_the_folder_its_driver_claimed(tmp_path):
    """out_claim.check_owner, what every ingest and encode unit runs before writing: the folder must hold the
    owner file with the driver's token. A node that joined after the start check without the shared mount sees
    none (or another job's): NotShared (a TransientError: retried elsewhere, then reported not committed),
    naming the node, and nothing is written."""
    from longvid.operators.errors import TransientError
    from longvid.operators.process import ProcessOptions
    from longvid.pipelines.ingest import run_unit

    shared = tmp_path / "shared-out"
    claim_out(str(shared), "ingest", log=lambda s: None)
    try:
        token = out_claim.owner_token()
        out_claim.check_owner(str(shared), token)  # the claimed folder: passes
        out_claim.check_owner(str(tmp_path / "anything"), "")  # no token (a call outside a job): not checked
        out_claim.check_owner("s3://bucket/prefix", token)  # s3:// is the same everywhere: not checked

        local = tmp_path / "node-local-out"  # what a node without the mount sees at that path: nothing
        with pytest.raises(out_claim.NotShared) as e:
            out_claim.check_owner(str(local), token, attempts=1)
        msg = str(e.value)
        assert isinstance(e.value, TransientError) and msg.startswith(f"out: {local} on node ")
        assert "no owner file" in msg and "does not share the output folder" in msg and "s3://" in msg
        other = tmp_path / "other-jobs-out"
        other.mkdir()
        (other / OWNER_FILE).write_text(json.dumps({"token": uuid.uuid4().hex, "pid": 1}))
        with pytest.raises(out_claim.NotShared, match="another longvid job"):
            out_claim.check_owner(str(other), token, attempts=1)
        (other / OWNER_FILE).write_text("")  # the driver rewrites it in place: empty for a moment
        with pytest.raises(out_claim.NotShared):
            out_claim.check_owner(str(other), token, attempts=1)

        # the guard a driver gives its units: the claimed folder, and the local input roots it sees non-empty
        videos = tmp_path / "videos"
        (videos / "000").mkdir(parents=True)
        empty = tmp_path / "empty-videos"
        empty.mkdir()
        guard = out_claim.unit_guard(str(shared), videos=str(videos), other=str(empty), remote="s3://b/v", none="")
        assert guard.token == token and guard.inputs == (("videos", str(videos)),)  # empty here: empty everywhere
        opts = ProcessOptions(videos_root=str(videos))
        # a unit sent to a node without the output folder: refused before its first write, the folder left as it was
        with pytest.raises(out_claim.NotShared):
            run_unit(str(local), 0, [], opts, 2**20, 60.0, 4096, {}, guard=out_claim.UnitGuard(token, str(local)))
        assert not local.exists()
        # ... or without the videos (the mount point is there, empty)
        hidden = out_claim.UnitGuard(token, str(shared), (("videos", str(empty)),))
        with pytest.raises(out_claim.NotShared, match=f"videos: {empty} on node .* is an empty folder"):
            run_unit(str(shared / "dataset"), 0, [], opts, 2**20, 60.0, 4096, {}, guard=hidden)
        with pytest.raises(out_claim.NotShared, match="cannot be read"):
            out_claim.check_input("videos", str(tmp_path / "no-such-mount"))
        assert not (shared / "dataset").exists()
        # the mixture's units write into a dataset folder below the claimed one
        st = run_unit(str(shared / "dataset"), 0, [], opts, 2**20, 60.0, 4096, {}, guard=guard)
        assert st["inputs"] == 0 and (shared / "dataset" / "manifests").is_dir()
    finally:
        release_out(str(shared))


def test_a_late_owner_file_is_waited_for(tmp_path):
    """A shared filesystem may show the driver's owner file a moment late: check_owner reads it again before it
    gives up."""
    import threading

    out = tmp_path / "out"
    out.mkdir()
    token = uuid.uuid4().hex
    t = threading.Timer(0.3, lambda: (out / OWNER_FILE).write_text(json.dumps({"token": token})))
    t.start()
    try:
        out_claim.check_owner(str(out), token, attempts=5)
    finally:
        t.join()
