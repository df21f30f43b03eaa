"""Progress of a job (ingest, encode, train, audit): a total, a rate and an ETA, by tqdm's conventions.

    done/total unit [elapsed<remaining, rate unit/s]          e.g.  107/155 inputs [00:11<00:05, 9.33 inputs/s]

- On a terminal the console shows a tqdm bar (on stderr) with the running totals as its postfix; every other line
  of the job (`write`) is printed above the bar.
- Elsewhere (a pipe, a file, `ray job logs`) the console gets one line per unit of work: the job's own line with
  the meter inside it, so a log shows the same numbers a bar would.
- Always, one line per unit goes to the job's log file, `DIR/logs/<job>.log` in the job's output folder (appended
  by every run, each run starting with a dated header line; for an `s3://` output the run's lines are uploaded as
  `logs/<job>-<UTC time>.log` when the job ends).

Every line (console, bar postfix, log file) is redacted here (storage.redact): a job's lines name its inputs freely.

The rate counts the work done since this run started: units skipped because an earlier run committed them
(`skip`) move `done` but not the rate, so a resumed job's ETA is that of the work left.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
import time
from typing import Callable, TextIO

from longvid.operators import storage


def log_uri(out: str, job: str) -> str:
    """Where the job's log file lives: DIR/logs/<job>.log."""
    return storage.join(out, "logs", f"{job}.log")


def _rate_text(rate: float | None, unit: str) -> str:
    if rate is None:
        return f"? {unit}/s"
    if 0 < rate < 1:  # tqdm's convention: slow rates are shown inverted (s/step)
        return f"{1 / rate:.2f} s/{unit[:-1] if unit.endswith('s') else unit}"
    return f"{rate:.2f} {unit}/s"


def meter(n: float, total: float | None, elapsed: float, unit: str, initial: float = 0) -> str:
    """`n/total unit [elapsed<remaining, rate]` as tqdm writes it (`n unit [elapsed, rate]` without a total).

    The rate is (n - initial) / elapsed: work skipped at the start (initial) is not work done by this run."""
    from tqdm import tqdm

    done = n - initial
    rate = done / elapsed if elapsed > 0 and done > 0 else None
    el = tqdm.format_interval(elapsed)
    num = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    if total is None:
        return f"{num(n)} {unit} [{el}, {_rate_text(rate, unit)}]"
    left = max(0.0, total - n)
    remaining = tqdm.format_interval(left / rate) if rate else ("00:00" if not left else "?")
    return f"{num(n)}/{num(total)} {unit} [{el}<{remaining}, {_rate_text(rate, unit)}]"


class Progress:
    """One job's progress: `update(n)` then `emit(line)` per unit of work; `write(line)` for any other line.

    console: where lines go (print by default, or a logger's method, e.g. the `longvid.<job>` logger's info that
    `--log-level` filters). quiet: no progress on the console (the log file only), and only the lines written with
    `important=True`. tty: draw a tqdm bar on `stream` (default: when stderr is a terminal and the console shows
    info lines); the unit lines then update the bar, and other lines are printed above it.
    """

    def __init__(self, job: str, unit: str, total: float | None = None, *, desc: str = "", out: str = "",
                 console: Callable[[str], None] = print, quiet: bool = False, tty: bool | None = None,
                 stream: TextIO | None = None):
        self.job, self.unit, self.total, self.desc = job, unit, total, desc or f"[{job}]"
        self.n: float = 0
        self.initial: float = 0
        self.t0 = time.time()
        self.console = console
        self.quiet = quiet
        self._lock = threading.RLock()
        self._stream = stream or sys.stderr
        if tty is None:
            tty = _shows_info(console) and _isatty(self._stream)
        self._bar = None
        if tty and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit=f" {unit}", file=self._stream, smoothing=0,
                             dynamic_ncols=True, leave=True)
        self._log_uri = log_uri(out, job) if out else ""  # opened with the first line: a job refused before any
        self._log_file: TextIO | None = None               # work leaves no folder behind
        self._buffer: list[str] | None = None

    # ------------------------------------------------------------------------------------------ log file

    def _open_log(self) -> None:
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        head = f"# {now} {self.job} started (pid {os.getpid()})"
        if storage.is_s3(self._log_uri):
            self._buffer = [head]
            return
        try:
            os.makedirs(os.path.dirname(self._log_uri), exist_ok=True)
            self._log_file = open(self._log_uri, "a", encoding="utf-8", errors="replace")
            self._log_file.write(head + "\n")
            self._log_file.flush()
        except OSError as e:  # a log file never fails a job
            self._log_uri = ""
            self.write(f"{self.desc} cannot write the log file: {e}")

    def _say(self, line: str) -> None:
        self.console(storage.redact(line))

    def _log(self, line: str) -> None:
        line = storage.redact(line)
        if self._log_uri and self._log_file is None and self._buffer is None:
            self._open_log()
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            except OSError:
                pass
        elif self._buffer is not None:
            self._buffer.append(line)

    # ------------------------------------------------------------------------------------------ progress

    def set_total(self, total: float | None) -> None:
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def skip(self, n: float) -> None:
        """Work an earlier run already did: counted in done, not in the rate."""
        with self._lock:
            self.n += n
            self.initial += n
            if self._bar is not None:
                self._bar.n += n
                self._bar.initial += n
                self._bar.refresh()

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)

    def set_n(self, n: float) -> None:
        """Absolute progress (e.g. a training step count that a restart can move back)."""
        with self._lock:
            self.update(n - self.n)

    def meter(self) -> str:
        with self._lock:
            return meter(self.n, self.total, time.time() - self.t0, self.unit, self.initial)

    def emit(self, line: str, postfix: str = "", echo: bool = True) -> None:
        """The line of one unit of work: always to the log file; on the console as a line (no terminal, and
        `echo`) or as the bar's postfix."""
        with self._lock:
            self._log(line)
            if self.quiet:
                return
            if self._bar is not None:
                if postfix:
                    self._bar.set_postfix_str(storage.redact(postfix), refresh=True)
            elif echo:
                self._say(line)

    def write(self, line: str, important: bool = False) -> None:
        """Any other line of the job: to the log file and the console (above the bar on a terminal); when quiet,
        on the console only if `important` (an error, a unit not committed)."""
        with self._lock:
            self._log(line)
            if self.quiet and not important:
                return
            if self._bar is not None:
                with self._bar.external_write_mode(file=self._stream):  # the bar is cleared, then drawn again
                    self._say(line)
            else:
                self._say(line)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._log_file is not None or self._buffer is not None:  # a log was started: end it
                self._log(f"# {self.job} ended after {time.time() - self.t0:.1f} s: {self.meter()}")
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._buffer is not None:
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                uri = self._log_uri[: -len(".log")] + f"-{stamp}.log"
                try:
                    storage.write_text(uri, "\n".join(self._buffer) + "\n")
                except Exception as e:  # noqa: BLE001 - a log file never fails a job
                    self._say(f"{self.desc} cannot write the log file {uri}: {e}")
                self._buffer = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shows_info(console: Callable[[str], None]) -> bool:
    """Whether `console` prints an info line: print does; a logger's method does when info is enabled."""
    owner = getattr(console, "__self__", None)
    if isinstance(owner, logging.Logger):
        return owner.isEnabledFor(logging.INFO)
    return console is print


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
