"""A Ray cluster of several nodes on this machine, for tests: a head and worker nodes, each its own `ray start --block`
process with its own temp dir, ports, `--num-cpus` and a custom resource naming it (`lv_head`, `lv_w1`, ...).

    with LocalCluster(workers=2) as c:          # or the module-scoped `multinode_cluster` fixture (below)
        c.gcs                                   # 127.0.0.1:<port>, for `longvid ... --ray-address`
        c.client_env()                          # the environment of a client: HOME with the token, RAY_AUTH_MODE=token
        c.node_ids()                            # {"head": node id, "w1": ..., "w2": ...}
        c.kill("w1")                            # that node's processes end (SIGKILL, by pid), nobody else's

Token auth is on (RAY_AUTH_MODE=token for every node; the token is generated into a temporary HOME, never this
machine's ~/.ray/auth_token). A Ray 2.60 client sends ~/.ray/auth_token only with RAY_AUTH_MODE=token in its own
environment (tests/test_cluster.py shows it), so `client_env()` sets it.

A node's processes are the `ray start --block` process (or the `unshare` that wraps it) and its descendants
(raylet, GCS and dashboard on the head, agents, task workers and their decoder children), plus any process whose
command line names the node's temp dir (a process reparented after its parent died). `kill(name)` and `stop()`
signal exactly those pids; never `ray stop`, which ends every Ray on the machine.

`private_mount`: a worker node started inside its own mount namespace (`unshare -m --propagation private`) with an
empty tmpfs mounted over that folder, so its processes see another folder at the same path than everyone else (how
a node without the shared mount looks). Needs root (unshare -m); `can_private_mount()` says whether it works here.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = shutil.which("ray") or "ray"
# the environment of the nodes and clients must not carry this process's Ray or S3 settings
STRIP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
         "RAY_TMPDIR", "LONGVID_RAY_OWNER", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")
# the head's GCS declares a node dead after about 3 missed 1-second health checks (default: 5 of 3 s), so a test
# that kills a node does not wait half a minute for Ray to notice
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3"}
_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "runtime-env-agent-port", "metrics-export-port")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def can_private_mount() -> bool:
    """unshare -m works here (root, or a user namespace) and can mount a tmpfs."""
    d = tempfile.mkdtemp(prefix="lvmnt")
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "lvprobe", d],
                           capture_output=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _mentioning(text: str) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.add(int(d))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    num_cpus: int
    private_mount: Path | None = None

    @property
    def resource(self) -> str:
        return f"lv_{self.name}"

    def pids(self) -> set[int]:
        """This node's live processes: the start process, its descendants, and processes naming its temp dir."""
        kids = _children()
        found, todo = set(), [self.proc.pid]
        while todo:
            p = todo.pop()
            if p in found:
                continue
            found.add(p)
            todo.extend(kids.get(p, []))
        found |= _mentioning(str(self.temp_dir))
        return {p for p in found if _alive(p)}

    def kill(self, timeout: float = 30) -> list[int]:
        """SIGKILL every process of this node (by pid); returns them once they are gone."""
        pids = self.pids()
        for _ in range(3):  # a process may fork while we signal: look again
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            more = self.pids() - pids
            if not more:
                break
            pids |= more
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return sorted(pids)


@dataclass
class LocalCluster:
    workers: int = 2
    head_cpus: int = 1
    worker_cpus: int = 1
    private_mount: dict[str, Path] = field(default_factory=dict)  # worker name -> folder it sees privately
    dashboard: bool = True
    root: Path = field(init=False)
    nodes: dict[str, Node] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lvmn"))  # short: Ray's socket paths live under it
        self.home = self.root / "home"
        self.home.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in STRIP}
        env.update({"HOME": str(self.home), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        self.env = env
        gen = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                             timeout=120)
        if gen.returncode != 0:
            raise RuntimeError(f"ray get-auth-token --generate failed: {gen.stderr[-2000:]}")
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        self.port = free_port()
        self.dashboard_port = free_port()
        self.gcs = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    # ---------------------------------------------------------------------------------------------- start / stop

    def node_env(self) -> dict[str, str]:
        return {**self.env, "RAY_AUTH_MODE": "token", **FAST_HEALTH}

    def client_env(self, **extra: str) -> dict[str, str]:
        """A client's environment: the token in HOME, sent because RAY_AUTH_MODE=token."""
        return {**self.env, "RAY_AUTH_MODE": "token", **extra}

    def _ports(self) -> list[str]:
        return [x for k in _NODE_PORTS for x in (f"--{k}", str(free_port()))]

    def _spawn(self, name: str, args: list[str], num_cpus: int, private: Path | None = None) -> Node:
        temp = self.root / name
        cmd = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
               "--resources", json.dumps({f"lv_{name}": 1}), "--temp-dir", str(temp), *self._ports(),
               "--disable-usage-stats", "--block"]
        if private is not None:
            private.mkdir(parents=True, exist_ok=True)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs lvprivate "$0" && exec "$@"', str(private), *cmd]
        log = self.root / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, env=self.node_env(), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = Node(name, proc, temp, log, num_cpus, private)
        self.nodes[name] = node
        return node

    def start(self, timeout: float = 180) -> "LocalCluster":
        try:
            self._spawn("head", ["--head", "--port", str(self.port), "--ray-client-server-port", str(free_port()),
                                 "--dashboard-host", "127.0.0.1",
                                 "--dashboard-port", str(self.dashboard_port), "--include-dashboard",
                                 "true" if self.dashboard else "false"], self.head_cpus)
            self.wait_nodes(["head"], timeout)
            for i in range(1, self.workers + 1):
                self.add_worker(f"w{i}", self.worker_cpus, self.private_mount.get(f"w{i}"), wait=False)
            self.wait_nodes(list(self.nodes), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, name: str, num_cpus: int = 1, private_mount: Path | None = None,
                   wait: bool = True, timeout: float = 180) -> Node:
        node = self._spawn(name, ["--address", self.gcs], num_cpus, private_mount)
        if wait:
            self.wait_nodes([name], timeout)
        return node

    def stop(self) -> list[int]:
        """End every process of every node (workers first); returns the pids still alive after (should be none)."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
        # a head that ran a Ray Train job can take 30 s and more to stop gracefully: SIGKILL what is left after 8 s
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and any(n.proc.poll() is None for n in self.nodes.values()):
            time.sleep(0.3)
        for node in self.nodes.values():
            node.kill(timeout=20)
        left = sorted(p for n in self.nodes.values() for p in n.pids())
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self, name: str) -> list[int]:
        return self.nodes[name].kill()

    # ---------------------------------------------------------------------------------------------- state

    def _state(self, path: str) -> dict:
        req = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> dict[str, str]:
        """{our node name: Ray node id} of the alive nodes, read from the GCS (`ray list nodes` over the dashboard)."""
        data = self._state("/api/v0/nodes?limit=1000&detail=1")
        out = {}
        for n in data["data"]["result"]["result"]:
            if n.get("state") != "ALIVE":
                continue
            names = [k[3:] for k in (n.get("resources_total") or {}) if k.startswith("lv_")]
            if names:
                out[names[0]] = n["node_id"]
        return out

    node_ids = alive_nodes

    def tasks(self, name: str) -> list[dict]:
        """Every attempt of the tasks of this function name: node_id, state, attempt_number, ..."""
        data = self._state(f"/api/v0/tasks?limit=10000&detail=1&filter_keys=name&filter_predicates=%3D"
                           f"&filter_values={name}")
        return data["data"]["result"]["result"]

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of this class, alive or dead: node_id, state, job_id, ..."""
        data = self._state(f"/api/v0/actors?limit=10000&detail=1&filter_keys=class_name&filter_predicates=%3D"
                           f"&filter_values={class_name}")
        return data["data"]["result"]["result"]

    def wait_nodes(self, names: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for n in names:
                if self.nodes[n].proc.poll() is not None:
                    raise RuntimeError(f"node {n} exited with {self.nodes[n].proc.returncode}:\n"
                                       f"{self.nodes[n].log.read_text()[-4000:]}")
            try:
                if set(names) <= set(self.alive_nodes()):
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError) as e:
                last = repr(e)
            time.sleep(1)
        raise RuntimeError(f"nodes {names} not alive within {timeout}s ({last}); head log:\n"
                           f"{self.nodes['head'].log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def multinode_cluster(tmp_path_factory):
    """head + w1 + w2, 1 CPU each (module-scoped: one cluster per test file, about 30 s to start on 2 idle cores).
    `.hidden`: a folder that w2 sees as an empty tmpfs of its own when can_private_mount(), the same
    folder as everyone's otherwise. Asserts at the end that no process of the cluster is left."""
    hidden = tmp_path_factory.mktemp("mn-hidden")
    c = LocalCluster(workers=2, private_mount={"w2": hidden} if can_private_mount() else {})
    c.hidden = hidden
    c.start()
    try:
        yield c
    finally:
        left = c.stop()
        assert left == [], f"processes of the test cluster survived the stop: {left}"
