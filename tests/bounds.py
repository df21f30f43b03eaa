"""A bound on how long one fuzz example may run: a loop without progress fails the test instead of hanging it."""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Hang(BaseException):
    """The alarm: a BaseException, so no `except Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread when the block runs longer than `seconds` (SIGALRM, Unix)."""

    def ring(signum, frame):
        raise Hang(f"no result within {seconds} s: a loop without progress")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
