"""A real Ray cluster with token authentication, and `longvid ingest` submitted to it through the Jobs API, with
the commands jobs/cluster.md documents (`ray get-auth-token --generate`, `ray start --head`, `ray job submit /
status / logs / list`, `ray stop`).

Isolation: the head runs in its own PID namespace (`unshare --pid --fork --mount-proc`), with its own temp dir, free
ports on 127.0.0.1 and a temporary HOME (so its token file is not ~/.ray/auth_token of this machine). `ray stop`
run inside that namespace sees only this cluster; killing the namespace's first process ends every process in it.
Where unshare is not allowed, the head runs as a plain `ray start --block` child and is stopped by its pid (never by
`ray stop`, which would stop every Ray on the machine).

Token auth in Ray 2.60, as checked here: a head started with RAY_AUTH_MODE=token needs a token (RAY_AUTH_TOKEN, the
file at RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; `ray get-auth-token --generate` writes the latter). The
dashboard / Jobs API then answers 401 to a request without `Authorization: Bearer <token>` and 403 to a wrong token.
A client (ray job submit, JobSubmissionClient) attaches the token only when RAY_AUTH_MODE=token is set in its own
environment; the token file alone is not enough.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from tests.s3_server import BUCKET, free_port
from tests.pipelines.test_ingest_s3 import BAD_STAGE, GOOD, PLANTED, ROWS, download, find_leaks, make_corpus, upload_corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray") or "ray"
# environment a Ray client or node must not inherit from the test process (an earlier embedded ray.init() in this
# process sets RAY_AUTH_MODE=token in os.environ, for instance)
_STRIP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
          "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "RAY_TMPDIR")


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _procs_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains text (read from /proc; Linux)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@dataclass
class Cluster:
    root: Path
    home: Path
    dashboard: str  # http://127.0.0.1:<port>
    env: dict  # client environment WITHOUT RAY_AUTH_MODE (HOME holds the token file)
    token: str
    namespaced: bool
    proc: subprocess.Popen
    head_log: Path
    runs: list = field(default_factory=list)

    def client_env(self, auth: bool, **extra: str) -> dict:
        env = dict(self.env)
        if auth:
            env["RAY_AUTH_MODE"] = "token"
        env.update(extra)
        return env

    def ray(self, *args: str, auth: bool = True, timeout: float = 300, cwd: Path = REPO,
            env_extra: dict | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([RAY, *args], cwd=cwd, env=self.client_env(auth, **(env_extra or {})),
                           capture_output=True, text=True, timeout=timeout)
        self.runs.append(r)
        return r


def _wait_dashboard(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=3).read()
            return
        except urllib.error.HTTPError as e:  # 401: up, and asking for the token
            if e.code in (401, 403):
                return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"Ray dashboard did not answer at {url} within {timeout}s:\n{log.read_text()[-4000:]}")


def _stop(c: Cluster) -> None:
    if c.namespaced and c.proc.poll() is None:
        # the documented `ray stop`, but inside the cluster's PID namespace: it sees only this cluster's processes
        children = Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children")
        try:
            init = int(children.read_text().split()[0])
            subprocess.run(["nsenter", "--target", str(init), "--pid", "--mount", RAY, "stop", "--force"],
                           env=c.env, capture_output=True, timeout=60)
        except (OSError, IndexError, ValueError, subprocess.SubprocessError):
            pass
    if c.proc.poll() is None:
        if c.namespaced:
            c.proc.kill()  # unshare --kill-child: the namespace's init dies, and with it every process inside
        else:
            c.proc.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
        try:
            c.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _procs_mentioning(str(c.root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _procs_mentioning(str(c.root)):  # leftovers of this cluster only (its unique temp dir)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def cluster(s3_server):
    root = Path(tempfile.mkdtemp(prefix="lvray"))  # short: Ray's socket paths live under it
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    env.update({"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP 127.0.0.1, not the NIC's
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    gen = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr[-2000:]
    token_file = home / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert token and token in gen.stdout
    # the node's environment: token auth on, and S3 credentials for its workers (never in the job's runtime env)
    head_env = {**env, "RAY_AUTH_MODE": "token", **PLANTED, "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1"}
    dport = free_port()
    ports = {f"--{k}": str(free_port()) for k in ("port", "ray-client-server-port", "dashboard-agent-listen-port",
                                                  "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                  "metrics-export-port", "node-manager-port", "object-manager-port")}
    head = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dport), *[x for kv in ports.items() for x in kv], "--num-cpus", "2",
            "--include-dashboard", "true", "--temp-dir", str(root / "ray"), "--disable-usage-stats", "--block"]
    namespaced = _unshare_works()
    if namespaced:
        head = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *head]
    log = root / "head.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(head, env=head_env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    c = Cluster(root, home, f"http://127.0.0.1:{dport}", env, token, namespaced, proc, log)
    try:
        _wait_dashboard(c.dashboard, proc, log, timeout=150)
        yield c
    finally:
        _stop(c)
        leftover = _procs_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)
        assert leftover == [], f"processes of the test cluster survived the stop: {leftover}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("cluster-corpus"))


def _entrypoint() -> list[str]:
    """`longvid` when the console script is installed, else the module form (same arguments)."""
    return ["longvid"] if shutil.which("longvid") else ["python", "-m", "longvid"]


def _ingest_args(metadata: str, videos: str, out: str) -> list[str]:
    return ["ingest", "--source", "webvid", "--metadata", metadata, "--videos", videos, "--out", out,
            "--profile", "short", "--records-per-unit", "2", "--shard-size-mb", "0.05"]


# ----------------------------------------------------------------------------------------------------- tests


def test_submission_without_the_token_is_refused(cluster, tmp_path):
    marker = tmp_path / "ran"
    job = ["--", "python", "-c", f"open({str(marker)!r}, 'w').write('x')"]
    base = ["job", "submit", "--address", cluster.dashboard, "--no-wait"]
    # the token file is in HOME, but without RAY_AUTH_MODE=token the client does not send it
    r = cluster.ray(*base, *job, auth=False, timeout=120)
    assert r.returncode != 0
    assert "Missing authentication token" in r.stderr + r.stdout, (r.stdout + r.stderr)[-2000:]
    # a wrong token is refused too
    r = cluster.ray(*base, *job, timeout=120, env_extra={"RAY_AUTH_TOKEN": "0" * 32})
    assert r.returncode != 0
    assert "Invalid authentication token" in r.stderr + r.stdout, (r.stdout + r.stderr)[-2000:]
    # the same raw HTTP call without / with the bearer token: 401, then 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(cluster.dashboard + "/api/jobs/", timeout=30)
    assert e.value.code == 401
    req = urllib.request.Request(cluster.dashboard + "/api/jobs/", headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        jobs = json.loads(resp.read())
    assert not any(str(marker) in (j.get("entrypoint") or "") for j in jobs)  # nothing was created
    assert not marker.exists()


@pytest.fixture(scope="module")
def s3_job(cluster, corpus, s3_server):
    """An S3 ingest job submitted with --no-wait (it runs while the next test's job runs too). Credentials are only
    in the head's environment (as on a node started with them exported); the job's runtime env and command line
    carry the endpoint but no secret. working_dir comes from the runtime env file (no --working-dir)."""
    ep = s3_server["endpoint"]
    inputs = upload_corpus(ep, corpus, "cluster/in")
    sid = f"lv-s3-{uuid.uuid4().hex[:8]}"
    r = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", sid, "--no-wait",
                    "--runtime-env", "jobs/runtime_env.yaml", "--", "python", "-m", "longvid",
                    *_ingest_args(inputs["metadata"], inputs["videos"], f"s3://{BUCKET}/cluster/out"),
                    "--s3-endpoint-url", ep, timeout=200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"sid": sid, "endpoint": ep, "prefix": "cluster/out"}


def test_ingest_job_with_the_token_succeeds(cluster, s3_job, corpus, tmp_path):
    """The documented blocking form: `ray job submit --working-dir . --runtime-env ... -- longvid ingest`."""
    out = tmp_path / "out"
    sid = f"lv-ingest-{uuid.uuid4().hex[:8]}"
    r = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", sid, "--working-dir", ".",
                    "--runtime-env", "jobs/runtime_env.yaml", "--", *_entrypoint(),
                    *_ingest_args(str(corpus / "meta.csv"), str(corpus / "videos"), str(out)), timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f"Job '{sid}' succeeded" in r.stdout + r.stderr
    assert "samples written" in r.stdout  # the job's output is tailed by `ray job submit`

    st = cluster.ray("job", "status", "--address", cluster.dashboard, sid, timeout=60)
    assert st.returncode == 0 and "succeeded" in (st.stdout + st.stderr).lower()
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard, sid, timeout=60)
    assert logs.returncode == 0 and "[ingest webvid] unit" in logs.stdout and "samples written" in logs.stdout
    lst = cluster.ray("job", "list", "--address", cluster.dashboard, timeout=60)
    assert lst.returncode == 0 and sid in lst.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == len(ROWS) == summary["samples"] + summary["failures"]
    assert summary["samples"] == len(GOOD) and summary["cpus"] == 2  # the cluster's CPUs, not an embedded Ray
    fails = pd.read_parquet(out / "failures")
    assert dict(zip(fails.video_id, fails.stage)) == BAD_STAGE
    assert len(pd.read_parquet(out / "manifests")) == len(GOOD)


def test_s3_job_gets_credentials_from_the_node_environment(cluster, s3_job, tmp_path):
    sid, ep = s3_job["sid"], s3_job["endpoint"]
    follow = cluster.ray("job", "logs", "--address", cluster.dashboard, "--follow", sid, timeout=400)
    st = cluster.ray("job", "status", "--address", cluster.dashboard, sid, timeout=60)
    assert "succeeded" in (st.stdout + st.stderr).lower(), (follow.stdout + st.stdout + st.stderr)[-4000:]
    assert "[ingest webvid] unit" in follow.stdout and "samples written" in follow.stdout

    files = download(ep, s3_job["prefix"], tmp_path / "out")
    summary = json.loads(files["summary.json"].read_text())
    assert summary["inputs"] == len(ROWS) == summary["samples"] + summary["failures"]
    assert summary["samples"] == len(GOOD)

    lst = cluster.ray("job", "list", "--address", cluster.dashboard, timeout=60)
    assert sid in lst.stdout and "RAY_DEDUP_LOGS" in lst.stdout  # the runtime env file was applied, and is shown
    blobs = {f"s3:{k}": p.read_bytes() for k, p in files.items()}
    blobs.update({f"cli{i}": (x.stdout + x.stderr).encode() for i, x in enumerate(cluster.runs)})
    assert find_leaks(blobs) == []
    # the head's own logs (job driver logs included) do not carry the secrets either
    logs = {str(p): p.read_bytes() for p in (cluster.root / "ray").rglob("*")
            if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err")
            and p.stat().st_size < 20 * 2**20}
    assert any("job-driver" in k for k in logs)
    assert find_leaks(logs) == []
