"""How every job gets its Ray: join the given cluster, else RAY_ADDRESS (inside `ray job submit`), else start an
embedded one. Never silently attach to a cluster that happens to run on this machine."""
from __future__ import annotations

import os
from typing import Any


def ensure_ray(address: str = "", num_cpus: int = 0, dashboard: bool = False) -> bool:
    """Initialise Ray unless it already is; returns True when this call started it (the caller shuts it down).

    dashboard=True starts an embedded Ray with its dashboard, which serves the State API: Ray Train's placement
    group cleaner queries it every few seconds and logs a warning each time it is missing (about 1 s more to
    start). A cluster runs its own dashboard."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or ""
    kw: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": True, "address": address or "local"}
    if not address and num_cpus:
        kw["num_cpus"] = num_cpus
    ray.init(**kw)
    return True
