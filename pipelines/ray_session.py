"""How every job gets its Ray. The job's output folder is claimed first (pipelines/out_claim.py).

Ray: join the given cluster (--ray-address), else RAY_ADDRESS (inside `ray job submit`), else start an embedded
Ray that is private to this driver. Never silently attach to, or look up, a cluster that happens to run here:

- The embedded Ray has its own temp dir (`<tmp>/longvid-ray-<uid>`, not `/tmp/ray`, where another user's
  `ray start` keeps the `ray_current_cluster` file that `ray.init()` and Ray's own look-ups follow), and its
  dashboard listens on 127.0.0.1 only, on a free port (never another cluster's 8265).
- Its processes carry RAY_ADDRESS (its GCS) and RAY_API_SERVER_ADDRESS (its dashboard). Without them, Ray code
  that looks for "the" cluster from inside a worker, as Ray Train's placement-group cleaner does every few
  seconds through the State API, scans the machine: with another Ray running it took that cluster (following
  its `ray_current_cluster` file) or failed on "multiple active Ray instances" (a traceback on the console),
  and each look-up replaced the worker's process-wide GCS client (`internal_kv`) while other threads of the
  actor used it: the `Mutex corrupt ... SIGABRT` crash dumps of those workers. With RAY_API_SERVER_ADDRESS set
  the State API goes straight to our dashboard and never creates that client.
- Worker output stays in Ray's session logs (no log_to_driver), and Ray's driver-side logs (INFO lines, the
  dashboard banner, warnings) go to a log file (`DIR/logs/ray.log` of the job's output folder): the console
  shows LongVid's lines, progress and errors only. A joined cluster keeps Ray's defaults (`ray job logs`).

Shared storage (`check_shared`, run by ensure_ray): on a cluster of several nodes, a local output folder (and the
local inputs a job names) must be the same folder on every node. The driver writes a marker with a random token in
`out`; a task pinned to each alive node reads it and writes a file of its own next to it, which the driver reads
back; input paths are compared by a digest of what each node sees (folder listing, or file size and first MiB).
Any difference stops the job before any work: ConfigError (exit 2) naming the setting, the path and the nodes,
suggesting s3:// or a shared mount. s3:// paths and single-node clusters (the embedded Ray) are not checked.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.pipelines.out_claim import OWNER_FILE, TOKEN_VAR, claim_out, owner_token, record_ray, release_out

RAY_LOG = "ray.log"  # under DIR/logs/


def ensure_ray(address: str = "", num_cpus: int = 0, dashboard: bool = False, out: str = "", job: str = "",
               log: Callable[[str], None] = print, inputs: dict[str, str | list[str]] | None = None) -> bool:
    """Initialise Ray unless it already is; returns True when this call started it (the caller shuts it down).

    out: the job's output folder: claimed first (see the module doc; the caller calls `release_out(out)` when the
    job ends) and home of the Ray log file. dashboard=True starts an embedded Ray with its dashboard, which serves
    the State API that Ray Train's placement group cleaner queries (about 1 s more to start). A cluster runs its own
    dashboard. On a cluster of several nodes, `out` and the local `inputs` (setting name -> folder or file, or a
    list of them) must be the same on every node (`check_shared`); ConfigError before any work otherwise."""
    if out:
        claim_out(out, job or "job", log)
    started = False
    try:
        started = _ensure_ray(address, num_cpus, dashboard, out)
        check_shared(out, inputs or {}, log=lambda m: log(f"[{job or 'job'}] {m}"))
        return started
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        if out:
            release_out(out)
        raise


def _ensure_ray(address: str, num_cpus: int, dashboard: bool, out: str) -> bool:
    import ray

    if ray.is_initialized():
        if out:
            record_ray(out)
        return False
    address = address or os.environ.get("RAY_ADDRESS") or ""
    route_ray_logs(ray_log_path(out))
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        start_embedded(num_cpus, dashboard)
    if out:
        record_ray(out)
    return True


# ------------------------------------------------------------------------------------------------ embedded Ray


def ray_temp_dir() -> str:
    """Ray's temp dir for embedded clusters of this user, under RAY_TMPDIR when set (Ray's own setting), else the
    temp dir; short (Ray's socket paths must fit in 107 bytes)."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(base) > 40 or not os.access(base, os.W_OK):
        base = "/tmp"
    return os.path.join(base, f"longvid-ray-{os.getuid()}")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def embedded_env(gcs_port: int, dashboard_port: int) -> dict[str, str]:
    """What the processes of an embedded Ray inherit so that Ray's look-ups inside them find this cluster."""
    from ray._private.services import get_node_ip_address  # the address Ray gives its head node

    return {"RAY_GCS_SERVER_PORT": str(gcs_port), "RAY_ADDRESS": f"{get_node_ip_address()}:{gcs_port}",
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}", TOKEN_VAR: owner_token()}


def start_embedded(num_cpus: int = 0, dashboard: bool = False) -> None:
    """A new single-node Ray private to this driver (see the module doc)."""
    import ray

    gcs_port, dash_port = _free_ports(2)
    env = embedded_env(gcs_port, dash_port)
    saved = {k: os.environ.get(k) for k in env if k != TOKEN_VAR}
    os.environ.update(env)  # inherited by gcs, raylet and the agents, and from the raylet by every worker
    kw: dict[str, Any] = {"address": "local", "include_dashboard": dashboard, "log_to_driver": False,
                          "_temp_dir": ray_temp_dir()}
    if dashboard:
        kw.update(dashboard_host="127.0.0.1", dashboard_port=dash_port)
    if num_cpus:
        kw["num_cpus"] = num_cpus
    try:
        ray.init(**kw)
    finally:  # the driver itself is connected; a later ensure_ray in this process must not see these
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ shared storage

SHARED_CHECK_TIMEOUT_S = 120.0  # for every node to run the check (a worker process start on each)
SHARED_PREFIX = storage.TMP_PREFIX + "shared-check-"  # list_files hides it; removed at once anyway
_shared_checked: set[tuple[str, str]] = set()  # (Ray job id, path) this driver has checked


def path_signature(path: str) -> str:
    """What this process sees at a local path: "missing: <why>", or a digest of a file's size and first MiB, or of
    a folder's top-level listing (names, kinds, file sizes; temporary files and the owner file left out)."""
    h = hashlib.sha256()
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as it:
                rows = []
                for e in it:
                    if e.name.startswith(storage.TMP_PREFIX) or e.name == OWNER_FILE:
                        continue
                    is_dir = e.is_dir()
                    rows.append(f"{e.name}\0{'d' if is_dir else e.stat().st_size}")
            h.update("\n".join(sorted(rows)).encode("utf-8", "surrogateescape"))
            return f"folder of {len(rows)} entries {h.hexdigest()[:16]}"
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
        return f"file of {st.st_size} bytes {h.hexdigest()[:16]}"
    except OSError as e:
        return f"missing: {e.strerror or e}"


def _node_view(marker: str, token: str, inputs: dict[str, list[str]]) -> dict[str, Any]:
    """On one node: does it see the driver's marker in the output folder (and can it write a file next to it that
    the driver then reads), and what does it see at each input path."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    view: dict[str, Any] = {"node": node, "host": socket.gethostname(), "out": "", "inputs": {}}
    if marker:
        seen = ""
        for _ in range(5):  # a shared filesystem may show a new file a moment late
            try:
                with open(marker) as f:
                    seen = f.read().split("\n", 1)[0]
                break
            except OSError as e:
                seen = f"missing: {e.strerror or e}"
                time.sleep(0.5)
        if seen == token:
            try:  # only where the driver's folder is visible: a node never creates the folder itself
                with open(f"{marker}-{node[:16]}", "w") as f:
                    f.write(node)
                view["out"] = "ok"
            except OSError as e:
                view["out"] = f"cannot write there: {e.strerror or e}"
        else:
            view["out"] = "does not see the marker file the driver wrote there" + (
                f" ({seen})" if seen.startswith("missing") else " (another file by that name)")
    for setting, paths in inputs.items():
        view["inputs"][setting] = {p: path_signature(p) for p in paths}
    return view


def check_shared(out: str, inputs: dict[str, str | list[str]], timeout_s: float = SHARED_CHECK_TIMEOUT_S,
                 log: Callable[[str], None] | None = None) -> None:
    """On a Ray cluster of several nodes, every alive node must see the local output folder `out` and the local
    `inputs` as the driver does: a folder or file not on shared storage would make each node read and write its
    own copy (units written where the driver never looks, videos missing on some nodes). s3:// paths and a
    single-node cluster are not checked.

    The driver writes a marker with a random token in `out`; a task pinned to each node (NodeAffinity, no CPU)
    reads it, writes a file of its own next to it (read back by the driver), and returns what it sees at each
    input path (path_signature). Any difference: ConfigError naming the setting, the path and the nodes,
    suggesting s3:// or a shared mount. The markers are removed. Each path is checked once per Ray job."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    job = ray.get_runtime_context().get_job_id()
    local_out = os.path.abspath(out) if out and not storage.is_s3(out) else ""
    if local_out and (job, local_out) in _shared_checked:
        local_out = ""
    paths: dict[str, list[str]] = {}
    for setting, v in inputs.items():
        ps = [os.path.abspath(p) for p in ([v] if isinstance(v, str) else v)
              if p and not storage.is_s3(p) and (job, os.path.abspath(p)) not in _shared_checked]
        if ps:
            paths[setting] = sorted(set(ps))
    if not local_out and not paths:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = uuid.uuid4().hex
    marker = ""
    if local_out:
        os.makedirs(local_out, exist_ok=True)
        marker = os.path.join(local_out, SHARED_PREFIX + token)
        with open(marker, "w") as f:
            f.write(f"{token}\nwritten by the longvid driver pid {os.getpid()} on {socket.gethostname()}; "
                    "remove it if it outlived the job\n")
    mine = {s: {p: path_signature(p) for p in ps} for s, ps in paths.items()}
    check = ray.remote(num_cpus=0, max_retries=0)(_node_view)
    refs = {check.options(name="longvid-shared-check", scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(marker, token, paths): n for n in nodes}
    problems: dict[str, list[str]] = {}  # setting -> what differs, per node
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in late:
            ray.cancel(ref, force=True)
            n = refs[ref]
            problems.setdefault("out" if local_out else next(iter(paths)), []).append(
                f"node {n['NodeID'][:12]} ({n.get('NodeManagerAddress', '?')}) did not run the check within "
                f"{timeout_s:.0f} s, so it is not known what it sees there")
        for ref in ready:
            n = refs[ref]
            try:
                view = ray.get(ref)
            except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError,
                    ray.exceptions.WorkerCrashedError):
                continue  # the node left the cluster meanwhile: no task will run there
            where = f"node {n['NodeID'][:12]} ({view['host']}, {n.get('NodeManagerAddress', '?')})"
            if marker:
                if view["out"] == "ok":
                    try:
                        with open(f"{marker}-{view['node'][:16]}") as f:
                            ok = f.read() == view["node"]
                    except OSError:
                        ok = False
                    if not ok:
                        problems.setdefault("out", []).append(
                            f"{where} wrote a file there that the driver does not see")
                else:
                    problems.setdefault("out", []).append(f"{where} {view['out']}")
            for setting, sigs in view["inputs"].items():
                for p, sig in sigs.items():
                    if sig != mine[setting][p]:
                        problems.setdefault(setting, []).append(
                            f"{where} sees {p} as {sig}, the driver as {mine[setting][p]}")
    finally:
        if marker:
            for name in os.listdir(local_out):
                if name.startswith(SHARED_PREFIX + token):
                    try:
                        os.remove(os.path.join(local_out, name))
                    except OSError:
                        pass
    if problems:
        setting, what = next(iter(problems.items()))
        path = local_out if setting == "out" else ", ".join(paths[setting])
        raise ConfigError(
            f"{setting}: {path} is not the same {'folder' if setting == 'out' else 'path'} on every node of the "
            f"Ray cluster ({len(nodes)} nodes): {'; '.join(what)}. Use s3://bucket/prefix, or storage mounted at "
            "the same path on every node (NFS, Lustre, ...)")
    _shared_checked.update((job, p) for p in [local_out, *(p for ps in paths.values() for p in ps)] if p)
    if log is not None:
        names = (["out"] if local_out else []) + list(paths)
        log(f"shared storage: {', '.join(names)} seen alike by all {len(nodes)} nodes")


# ------------------------------------------------------------------------------------------------ Ray's logs

_HANDLER_NAME = "longvid-ray-log"


def ray_log_path(out: str) -> str:
    """Where Ray's driver-side logs of a job go: DIR/logs/ray.log (a local file for an s3:// output)."""
    if out and not storage.is_s3(out):
        return os.path.join(out, "logs", RAY_LOG)
    return os.path.join(ray_temp_dir(), f"driver-{os.getpid()}.log")


def route_ray_logs(path: str) -> None:
    """Ray's driver-side Python logs to `path`; its console handlers keep errors only. Idempotent; call it again
    after importing ray.data (which sets up its own console handler on import)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        lg = logging.getLogger(name)
        if name != "ray" and not lg.handlers:
            continue  # propagates to "ray"
        for h in list(lg.handlers):
            if getattr(h, "name", None) == _HANDLER_NAME:
                if getattr(h, "baseFilename", None) == os.path.abspath(path):
                    continue
                lg.removeHandler(h)
                h.close()
            elif isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.ERROR))
        if not any(getattr(h, "name", None) == _HANDLER_NAME for h in lg.handlers):
            fh = logging.FileHandler(path, encoding="utf-8", delay=True)
            fh.set_name(_HANDLER_NAME)
            fh.setLevel(logging.INFO)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            lg.addHandler(fh)


@contextmanager
def native_stderr_to(path: str) -> Iterator[None]:
    """Writes of native code to this process's stderr (file descriptor 2: the C++ core worker of a Ray driver logs
    there, e.g. Ray Data's `core_worker.cc: Actor ... has constructor arguments in the object store`, ray#57733)
    go to `path` while the block runs; Python's sys.stderr, and the logging handlers that wrote to it, stay on
    the console. For a command's console (`longvid demo`), not for library use."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old = sys.stderr
    console = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                        errors="backslashreplace")
    moved = [h for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
             for h in getattr(lg, "handlers", []) if isinstance(h, logging.StreamHandler) and h.stream is old]
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = console
    for h in moved:
        h.setStream(console)
    try:
        yield
    finally:
        console.flush()
        for h in moved:
            h.setStream(old)
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
        console.close()
