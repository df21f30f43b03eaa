"""How a job owns its output folder (`claim_out` / `release_out`; `ensure_ray` claims it first).

A job holds an exclusive lock on `DIR/.longvid-owner.json` while it
runs, and writes there who it is (pid, host) and which processes are its own: every process of its embedded Ray
(gcs, raylet, dashboard and agents, task workers, decoder children) inherits LONGVID_RAY_OWNER=<token of this
driver> and keeps its logs open in the cluster's session dir, which is recorded with the GCS and raylet pids.
A second job on the same folder while the first runs exits 2 naming its pid. A job that finds the lock free but
the record of a driver that did not end cleanly (a SIGKILL) first stops that driver's leftover processes, found
by their token, session dir or recorded pid (and start time), never by name and never anyone else's, so units
still in flight cannot race with the re-run. (For an `s3://` output the lock file lives in the local temp dir,
keyed by the URI: it guards this host only.)

The record also tells a unit on another node whether it sees the driver's folder (`unit_guard`, `UnitGuard.check`):
a node that joined the cluster after the job's start check (ray_session.check_shared) without the shared mount finds
no record with the driver's token there, and its units write nothing (NotShared, retried elsewhere).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from longvid.operators import storage
from longvid.operators.errors import ConfigError, TransientError

OWNER_FILE = ".longvid-owner.json"
TOKEN_VAR = "LONGVID_RAY_OWNER"
_token: str | None = None


def owner_token() -> str:
    """This driver's token; every process it starts from now on inherits it (LONGVID_RAY_OWNER)."""
    global _token
    if _token is None:  # never the value inherited from a parent: that one names the parent's processes
        _token = uuid.uuid4().hex
        os.environ[TOKEN_VAR] = _token
    return _token


@dataclass
class _Claim:
    path: str
    fd: int
    info: dict
    depth: int = 1


_claims: dict[str, _Claim] = {}


def owner_path(out: str) -> str:
    """The lock/owner file of an output folder (for s3:// outputs: in the local temp dir, keyed by the URI)."""
    if storage.is_s3(out):
        h = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:24]
        return os.path.join(tempfile.gettempdir(), f"longvid-owners-{os.getuid()}", f"{h}.json")
    return os.path.join(os.path.abspath(out), OWNER_FILE)


def proc_start(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot), None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        info = json.loads(data) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_info(fd: int, info: dict) -> None:
    """The claim record, redacted (its `out` is the user's path)."""
    data = json.dumps(storage.redact_json(info), indent=1, sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def claim_out(out: str, job: str, log: Callable[[str], None] = print) -> None:
    """Own the output folder for this job (re-entrant within a process); see the module doc."""
    path = owner_path(out)
    held = _claims.get(path)
    if held is not None:
        held.depth += 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        info = _read_info(fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"out: cannot lock {path}: {e}") from None
        who = f"pid {info.get('pid', '?')}" + (f" on {info['host']}" if info.get("host") else "")
        raise ConfigError(f"out: {out} is in use by a running longvid {info.get('job', 'job')} "
                          f"({who}); wait for it to end, or stop it (kill {info.get('pid', 'PID')}), or use another "
                          "--out") from None
    try:
        old = _read_info(fd)
        if old.get("token") and not old.get("ended"):
            stop_leftovers(old, f"[{job}]", log)
        info = {"pid": os.getpid(), "start": proc_start(os.getpid()), "host": socket.gethostname(), "job": job,
                "out": out, "token": owner_token(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_info(fd, info)
    except BaseException:
        os.close(fd)
        raise
    _claims[path] = _Claim(path, fd, info)


def release_out(out: str) -> None:
    """The job on `out` has ended (the lock is released when the outermost claim of this process ends)."""
    path = owner_path(out)
    held = _claims.get(path)
    if held is None:
        return
    held.depth -= 1
    if held.depth > 0:
        return
    del _claims[path]
    try:
        _write_info(held.fd, {**held.info, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except OSError:
        pass
    os.close(held.fd)  # releases the lock


class NotShared(TransientError):
    """A unit runs on a node that does not see the job's local folders as the driver does (check_owner,
    check_input)."""


_passed: set[tuple[str, str]] = set()  # checks this process has passed: (folder, token) and (input root, "input")


def check_owner(out: str, token: str, attempts: int = 5) -> None:
    """Before a unit writes, in its task or actor on whatever node it runs: a local output folder must be the one the
    driver claimed, i.e. hold the owner file with the driver's `token`. The job's start check (ray_session.
    check_shared) covers the nodes alive then; a node that joins later (an autoscaler's) without the shared mount sees
    no owner file there, or another job's, and would commit units into a folder the driver never reads. Then nothing
    is written and NotShared is raised: a TransientError, so the unit is retried (on another node or actor where
    there is one) and, once the retries are spent, reported not committed, for a re-run to retry. s3:// outputs and an
    empty token (a caller outside a job) are not checked; a folder found claimed once is not read again."""
    if not token or storage.is_s3(out):
        return
    key = (os.path.abspath(out), token)
    if key in _passed:
        return
    seen = None
    for k in range(attempts):  # the driver rewrites the file in place (truncate, write), and a shared filesystem
        try:  # may show it a moment late
            with open(owner_path(out)) as f:
                info = json.load(f)
            seen = info.get("token") if isinstance(info, dict) else None
        except (OSError, ValueError):
            seen = None
        if seen == token:
            _passed.add(key)
            return
        if k + 1 < attempts:
            time.sleep(0.2)
    why = "has no owner file of a longvid job" if seen is None else "holds the owner file of another longvid job"
    raise NotShared(f"out: {out} on node {socket.gethostname()} {why}, so it is not the folder this job's driver "
                    "claimed: this node does not share the output folder (it joined the cluster after the job's "
                    "start check?). The unit wrote nothing there. Use s3://bucket/prefix, or storage mounted at the "
                    "same path on every node")


def _not_a_filled_folder(path: str) -> str:
    """"" when `path` is a readable folder with at least one entry, else what it is."""
    try:
        with os.scandir(path) as it:
            return "is an empty folder" if next(it, None) is None else ""
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


def check_input(setting: str, path: str) -> None:
    """Before a unit reads a local input root (`--videos`), on whatever node it runs: the folder must exist there and
    not be empty. A node that joined after the job's start check without the shared mount would otherwise record
    every record of its units as a `locate` failure ("video not found") though the videos exist. NotShared (retried
    elsewhere, like check_owner's); s3:// roots are not checked. (The start check compares a digest of the folder on
    every node; this cheaper test only catches a missing or empty mount.)"""
    if not path or storage.is_s3(path):
        return
    key = (os.path.abspath(path), "input")
    if key in _passed:
        return
    why = _not_a_filled_folder(path)
    if why:
        raise NotShared(f"{setting}: {path} on node {socket.gethostname()} {why}, unlike on the job's driver: this "
                        "node does not share the folder (it joined the cluster after the job's start check?). Use "
                        "s3://bucket/prefix, or storage mounted at the same path on every node")
    _passed.add(key)


@dataclass(frozen=True)
class UnitGuard:
    """What each unit of a job checks on its node before it works (the driver's `unit_guard`): the folder the driver
    claimed holds the driver's token (check_owner), and each local input root the driver saw as a non-empty folder is
    one there too (check_input). Travels to the tasks and actors with their arguments."""

    token: str
    claimed: str
    inputs: tuple[tuple[str, str], ...] = ()  # (setting, local root)

    def check(self) -> None:
        check_owner(self.claimed, self.token)
        for setting, path in self.inputs:
            check_input(setting, path)


def unit_guard(claimed: str, **inputs: str) -> UnitGuard:
    """The driver's guard for its units: this process's token, the folder it claimed, and those of the local input
    roots `inputs` (setting=path) that it sees as non-empty folders (an input empty here is empty everywhere: its
    records fail as they would on one node, not as a node without the mount)."""
    seen = tuple((setting, os.path.abspath(path)) for setting, path in inputs.items()
                 if path and not storage.is_s3(path) and not _not_a_filled_folder(path))
    return UnitGuard(owner_token(), claimed, seen)


def record_ray(out: str) -> None:
    """Add this driver's Ray processes (the ones it started) to the owner record of `out`."""
    held = _claims.get(owner_path(out))
    if held is None:
        return
    try:
        import ray

        node = ray._private.worker._global_node  # the node this driver started (None when it joined a cluster)
        if node is None or not getattr(node, "all_processes", None):
            return
        pids = {}
        for kind, infos in node.all_processes.items():
            for pi in infos:
                pid = getattr(getattr(pi, "process", None), "pid", None)
                if pid:
                    pids[f"{kind}:{pid}"] = [pid, proc_start(pid)]
        held.info["ray"] = {"session_dir": node.get_session_dir_path(), "gcs_address": node.gcs_address,
                            "pids": pids}
        _write_info(held.fd, held.info)
    except Exception:  # noqa: BLE001 - private API; the token still finds the processes
        pass


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _has_open_file_under(pid: int, folder: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder):
                return True
        except OSError:
            continue
    return False


def processes_of(token: str, recorded: dict | None = None, session_dir: str = "") -> dict[int, str]:
    """pid -> command line of the live processes of a driver: those carrying LONGVID_RAY_OWNER=<token>, the
    recorded [pid, start] pairs that are still the same process (same start time), and those with a file open
    in its Ray session dir (its logs: gcs, raylet, agents, workers and their children; Ray's agents rename
    themselves over their environment, so the token alone misses them); never this process or its ancestors."""
    tag = f"{TOKEN_VAR}={token}".encode()
    skip = _ancestors()
    found: dict[int, str] = {}
    want = {int(p): s for p, s in (recorded or {}).values() if p}
    session = session_dir.rstrip("/") + "/" if os.path.basename(session_dir.rstrip("/")).startswith("session_") else ""
    for pid in {int(d) for d in os.listdir("/proc") if d.isdigit()} - skip:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                ok = tag in f.read().split(b"\0")
        except OSError:
            ok = False
        if not ok and pid in want:
            ok = want[pid] is not None and proc_start(pid) == want[pid]
        if not ok and session:
            ok = _has_open_file_under(pid, session)
        if not ok or proc_start(pid) is None:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
        except OSError:
            continue
    return found


def stop_leftovers(old: dict, prefix: str = "", log: Callable[[str], None] = print,
                   grace_s: float = 5.0, timeout_s: float = 30.0) -> list[int]:
    """Stop the processes of an earlier driver of the same output folder that did not end cleanly: SIGTERM, then
    SIGKILL after `grace_s`; wait until they are gone. Returns their pids."""
    if old.get("host") and old["host"] != socket.gethostname():
        log(f"{prefix} note: the output folder was last used by pid {old.get('pid')} on {old['host']}, which did not "
            "end cleanly; its processes there (if any) are not stopped from this host")
        return []
    ray_info = old.get("ray") or {}
    procs = processes_of(old["token"], ray_info.get("pids") or {}, str(ray_info.get("session_dir") or ""))
    if not procs:
        return []
    log(f"{prefix} the earlier run on this output folder (driver pid {old.get('pid')}) did not end cleanly; "
        f"stopping its {len(procs)} leftover processes (pids {' '.join(map(str, sorted(procs)))}) before starting")
    starts = {p: proc_start(p) for p in procs}  # signal a pid only while it is still the same process
    alive = lambda p: starts[p] is not None and proc_start(p) == starts[p]  # noqa: E731
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, timeout_s)):
        for pid in procs:
            if alive(pid):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        t0 = time.time()
        while time.time() - t0 < wait:
            if not any(alive(p) for p in procs):
                return sorted(procs)
            time.sleep(0.1)
    left = [p for p in procs if alive(p)]
    raise ConfigError(f"out: processes of an earlier run on this folder do not stop (pids {left}); stop them, "
                      "then re-run")
