"""Shared pytest fixtures. Keep this small: fixtures live in their own modules and are re-exported here."""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # make `operators`, `pipelines`, `tests.*` importable however pytest is started
    sys.path.insert(0, _ROOT)

from tests.s3_server import fault_proxy, s3, s3_server  # noqa: E402,F401  (S3: moto server on loopback)
from tests.multinode import multinode_cluster  # noqa: E402,F401  (a head and two worker nodes on this machine)
