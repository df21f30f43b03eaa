"""Process-level fault helpers for the crash-safety tests (Linux /proc; no extra packages).

- Every process a test run starts is tagged with an environment variable `LONGVID_TEST_RUN=<marker>`, which the
  driver, Ray's gcs/raylet/agents, the task workers and the decoder children all inherit. `marked_procs(marker)`
  lists them, so a test kills and cleans up only what its own run started (other engineers share this box).
- `LeaseHolder` holds a kernel write lease (fcntl F_SETLEASE) on a video file: any process that opens the file
  blocks inside open() (the kernel waits for the holder to give the lease up, `/proc/sys/fs/lease-break-time`
  seconds at most), as a reader does on a file locked by another client of a network file system. In "hang" mode
  the holder never gives it up: the decoder stalls on that one video. In "crash" mode the holder, told by the
  kernel (SIGIO) that someone is opening the file, sends SIGSEGV to the process of this run that is blocked in
  the open (its /proc/<pid>/wchan is `__break_lease`): the decoder dies of a segfault while reading that video.
  No hook in the project's code is needed.
- `KillWorkerOnce` is a training hook (pipelines/train_recipe.py TrainHook, installed with
  `run_train(cfg, hooks=[...])`): the worker of one rank dies once at one step of one stage, after that step's
  metrics and before its checkpoint. On Ray Train it exits the process (`os._exit(1)`, as a SIGKILL: no cleanup,
  nothing flushed), and Ray Train restarts the worker group from the last checkpoint; in-process (num_workers: 0)
  it raises WorkerKilled, and the test resumes the run with --resume. A marker file in the run's `out` makes it
  happen once (the restarted workers get a fresh copy of the hook).
- `NoWholeRead` is a file object that fails any read of the whole file: a reader that promises to stream (probe,
  decode) is shown not to slurp a video.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK_VAR = "LONGVID_TEST_RUN"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def marked_procs(marker: str) -> dict[int, str]:
    """pid -> command line of every live process carrying LONGVID_TEST_RUN=<marker> (zombies excluded)."""
    tag = f"{MARK_VAR}={marker}".encode()
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        if tag not in _read(f"/proc/{d}/environ").split(b"\0"):
            continue
        stat = _read(f"/proc/{d}/stat").decode(errors="replace")
        if ") Z" in stat or ") X" in stat:
            continue
        out[int(d)] = _read(f"/proc/{d}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return out


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat").decode(errors="replace")
            try:
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (IndexError, ValueError):
                pass
    return out


def wait_gone(marker: str, timeout: float, keep=lambda cmd: True) -> dict[int, str]:
    """Wait until no marked process whose command line passes `keep` is alive; returns those still alive."""
    t0 = time.time()
    while True:
        alive = {p: c for p, c in marked_procs(marker).items() if keep(c)}
        if not alive or time.time() - t0 > timeout:
            return alive
        time.sleep(0.25)


def kill_marked(marker: str) -> list[str]:
    """SIGKILL every process of this run (by pid, one at a time); returns their command lines."""
    killed = []
    for pid, cmd in marked_procs(marker).items():
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(cmd)
        except ProcessLookupError:
            pass
    return killed


# ----------------------------------------------------------------------------------------------- lease holder

_HOLDER = r"""
import fcntl, os, signal, sys, time
path, mode, marker, log = sys.argv[1:5]
tag = ("LONGVID_TEST_RUN=" + marker).encode()
hits = []
signal.signal(signal.SIGIO, lambda *a: hits.append(1))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
fd = os.open(path, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)

def blocked():
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            if tag not in open(f"/proc/{d}/environ", "rb").read().split(b"\0"):
                continue
            if open(f"/proc/{d}/wchan").read().strip() == "__break_lease":
                yield int(d)
        except OSError:
            pass

while True:
    time.sleep(0.05)
    if mode != "crash" or not hits:
        continue
    victims = list(blocked())
    for pid in victims:
        os.kill(pid, signal.SIGSEGV)
        with open(log, "a") as f:
            f.write(f"{pid}\n")
    if victims:
        hits.clear()
"""


class LeaseHolder:
    """Hold a write lease on `path` in a helper process (mode "hang" or "crash", see the module doc)."""

    def __init__(self, path: str | Path, mode: str, marker: str, log: str | Path):
        if mode not in ("hang", "crash"):
            raise ValueError(f"mode must be hang or crash, got {mode!r}")
        self.path, self.mode, self.marker, self.log = str(path), mode, marker, str(log)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LeaseHolder":
        # not tagged with the marker: it is no part of the run and must not be one of its victims
        env = {k: v for k, v in os.environ.items() if k != MARK_VAR}
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, self.path, self.mode, self.marker, self.log],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "leased":
            self.proc.kill()
            raise RuntimeError(f"could not take a lease on {self.path}: {self.proc.stderr.read()[-2000:]}")
        return self

    def victims(self) -> list[int]:
        try:
            return [int(x) for x in Path(self.log).read_text().split()]
        except FileNotFoundError:
            return []

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def lease_break_time() -> float:
    try:
        return float(Path("/proc/sys/fs/lease-break-time").read_text())
    except (OSError, ValueError):
        return 0.0



class WorkerKilled(RuntimeError):
    """KillWorkerOnce in a run without Ray (num_workers: 0): raised where a Ray worker would exit."""


class KillWorkerOnce:
    """A TrainHook (duck-typed: the recipe calls the methods it has) that kills worker `rank` once at `step` of
    `stage`; the marker `out/.fault-<stage>-<step>-<rank>` records that it did."""

    def __init__(self, stage: str, step: int, rank: int = 0) -> None:
        self.stage, self.step, self.rank = stage, int(step), int(rank)

    def on_stage_start(self, recipe) -> None:
        pass

    def on_step_end(self, recipe, step: int, metrics) -> None:
        if (recipe.stage.name, step, recipe.rank) != (self.stage, self.step, self.rank):
            return
        marker = Path(recipe.cfg.out) / f".fault-{self.stage}-{self.step}-{self.rank}"
        if marker.exists():
            return
        marker.write_text("killed once by tests.faults.KillWorkerOnce\n")
        if recipe.session.in_process:
            raise WorkerKilled(f"worker {self.rank} killed at stage {self.stage} step {self.step}")
        os._exit(1)

    def on_checkpoint(self, recipe, step: int, done: bool) -> None:
        pass

    def on_stage_end(self, recipe) -> None:
        pass


class NoWholeRead(io.FileIO):
    """A local file opened for reading that raises AssertionError on a read of the whole file (read(), read(-1),
    readall()); reads of a given size work."""

    def read(self, n=-1):
        if n is None or n < 0:
            raise AssertionError("read the whole file")
        return super().read(n)

    def readall(self):
        raise AssertionError("read the whole file")
