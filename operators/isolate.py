"""Run the dangerous part (decoding untrusted files) where a crash or a hang costs one record.

`IsolatedRunner.run(fn, *args)` calls `fn(*args)` in a long-lived child process. If the child dies (a decoder
segfault, the kernel's OOM killer, an address-space limit) or does not answer within the timeout (an endless
stream), the child is killed and replaced, and the call raises RecordError(stage="crash" | "timeout"); the next
call runs in a fresh child. The timeout counts the call only: a fresh child first imports `fn`'s module, within
`startup_timeout_s`. RecordError and TransientError raised by `fn` pass through unchanged; any other exception becomes
RecordError(stage="decode") naming its type, so an unexpected bug in one file never stops a unit.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from typing import Any, Callable

from longvid.operators.errors import RecordError, TransientError


def _child_main(conn, memory_limit_mb: int | None) -> None:
    if memory_limit_mb:
        try:
            import resource

            lim = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        except (ImportError, ValueError, OSError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        if args is None:  # warm-up: receiving `fn` imported its module; a call's timeout starts after this answer
            conn.send(("ok", None))
            continue
        try:
            conn.send(("ok", fn(*args)))
        except RecordError as e:
            conn.send(("record_error", (e.stage, e.reason, e.field, e.file)))
        except TransientError as e:
            conn.send(("transient", str(e)))
        except MemoryError:
            conn.send(("record_error", ("crash", "out of memory (address-space limit of the decoder process)", "", "")))
        except Exception as e:  # noqa: BLE001 - any bug on one record must stay on that record
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            conn.send(("record_error", ("decode", f"unexpected {type(e).__name__}: {e} ({tb})"[:2000], "", "")))


def _signal_name(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class IsolatedRunner:
    """A child process that runs one call at a time, with a timeout, replaced after any crash."""

    def __init__(self, timeout_s: float = 600.0, memory_limit_mb: int | None = None, start_method: str = "spawn",
                 startup_timeout_s: float = 300.0):
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = max(float(startup_timeout_s), self.timeout_s)
        self._warm: Any = None  # the function whose module the current child has imported
        self.memory_limit_mb = memory_limit_mb
        self._ctx = mp.get_context(start_method)
        self._proc = None
        self._conn = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The live child's process id (None before the first call and after the child is gone)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child_main, args=(child, self.memory_limit_mb), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._warm = None

    def _warm_up(self, fn: Callable[..., Any], what: str) -> None:
        """Let a fresh child start and import `fn`'s module (seconds on a loaded machine: av, numpy, ...) before
        a call's timeout starts, so that start-up never turns a good video into a timeout."""
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send((fn, None))
            if self._conn.poll(self.startup_timeout_s):
                self._conn.recv()
                self._warm = fn
                return
        except (BrokenPipeError, EOFError, OSError):
            pass
        alive = self._proc.is_alive()
        code = self._kill()
        self.restarts += 1
        if alive:
            raise RecordError("timeout", f"decoder process did not start within {self.startup_timeout_s:.0f} s; "
                              "killed", "", what)
        raise RecordError("crash", f"decoder process died while starting ({_signal_name(code)})", "", what)

    def _kill(self) -> int | None:
        code = None
        if self._proc is not None:
            if self._proc.is_alive():
                try:
                    os.kill(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.join(5)
            code = self._proc.exitcode
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        return code

    def run(self, fn: Callable[..., Any], *args: Any, what: str = "") -> Any:
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._kill()
                self.restarts += 1
            self._start()
        if self._warm is not fn:
            self._warm_up(fn, what)
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send((fn, args))
            ready = self._conn.poll(self.timeout_s)
        except (BrokenPipeError, EOFError, OSError):
            ready = False
            if self._proc.is_alive():
                self._proc.join(1)
        if not ready:
            alive = self._proc.is_alive()
            code = self._kill()
            self.restarts += 1
            if alive:
                raise RecordError("timeout", f"no result after {self.timeout_s:.0f} s; decoder process killed", "", what)
            raise RecordError("crash", f"decoder process died ({_signal_name(code)})", "", what)
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self._kill()
            self.restarts += 1
            raise RecordError("crash", f"decoder process died ({_signal_name(code)})", "", what) from None
        if status == "ok":
            return payload
        if status == "transient":
            raise TransientError(payload)
        stage, reason, field, file = payload
        raise RecordError(stage, reason, field, file or what)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self._proc is not None:
            self._proc.join(2)
        self._kill()

    def __enter__(self) -> "IsolatedRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
