"""The processes of one benchmark run, found by an environment variable every one of them inherits (NAME=value):
Ray agents and decoder children included, never anyone else's."""
from __future__ import annotations

import os
from pathlib import Path


def tagged_pids(tag: bytes) -> list[int]:
    """The live processes whose environment holds `tag` (b"NAME=value")."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if tag in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                out.append(int(d))
        except OSError:
            continue
    return out


def kill_tagged(tag: bytes) -> None:
    """SIGKILL what a run left behind (Ray agents can outlive their driver), by pid."""
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
