"""Bulk reads where the data is: a job given a Ray cluster runs its reads as Ray tasks that return small results.

    reads = RemoteReads.start(address, job="audit", inputs={...})   # None without an address and without Ray
    for result in reads.map(fn, [(arg, ...), ...]):                 # fn(*args) per item, as tasks, results in order
    for item in reads.stream(gen, [(arg, ...), ...]):               # gen(*args) yields; one streaming task per item
    reads.received, reads.tasks                                     # what the driver took from Ray, in bytes; tasks run
    reads.close()                                                   # shuts down a Ray this started

The functions are plain operators (importable on every node, testable without Ray); the caller passes `reads.map`
or a local map in their place, so a job without Ray runs the same functions, in this process, in the same order,
and writes the same bytes. What comes back to the driver is what the job keeps (hashes, thumbnails, the frames it
encodes), never a whole shard or video: `received` counts it (the pickled size of every object the driver takes).

A Ray address (or RAY_ADDRESS), or a Ray already initialised in this process, means "use Ray"; the local inputs
are checked to be the same on every node first (ray_session.check_shared: exit 2 naming the path otherwise).
"""
from __future__ import annotations

import os
import pickle
import sys
from collections import deque
from typing import Any, Callable, Iterable, Iterator

WINDOW_PER_CPU = 2  # tasks in flight per CPU of the cluster


def _call(s3: dict, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a Ray task, with the driver's S3 settings (secret-free; credentials from the node's env)."""
    from longvid.operators import storage

    storage.configure_s3(s3 or None)
    return fn(*args)


def _call_stream(s3: dict, fn: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
    from longvid.operators import storage

    storage.configure_s3(s3 or None)
    yield from fn(*args)


def local_map(fn: Callable[..., Any], items: Iterable[tuple]) -> Iterator[Any]:
    """fn(*args) for each item, here, in order: what a job without Ray does."""
    return (fn(*args) for args in items)


def local_stream(fn: Callable[..., Iterator[Any]], items: Iterable[tuple]) -> Iterator[Any]:
    for args in items:
        yield from fn(*args)


class RemoteReads:
    """Ray tasks for a job's bulk reads (see the module doc). One CPU per task, named after the function it runs
    (the State API lists hash_video_file, shard_sheets, shard_frames tasks)."""

    def __init__(self, started: bool, window: int):
        from longvid.operators import storage

        self.started, self.window = started, max(1, window)
        self.received = 0
        self.tasks = 0
        self.s3 = storage.s3_options_from_env()
        self._remote: dict[bool, Any] = {}

    @classmethod
    def start(cls, address: str = "", job: str = "job", inputs: dict[str, str | list[str]] | None = None,
              log: Callable[[str], None] = print) -> "RemoteReads | None":
        """Join the cluster at `address` (or use the Ray this process already has); None when there is neither."""
        address = address or os.environ.get("RAY_ADDRESS", "")
        if not address and ("ray" not in sys.modules or not sys.modules["ray"].is_initialized()):
            return None  # (a process that never imported Ray has none initialised: no import for a local job)
        import ray
        from longvid.pipelines.ray_session import ensure_ray

        started = ensure_ray(address, job=job, log=log, inputs=inputs or {})
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return cls(started, WINDOW_PER_CPU * max(1, cpus))

    def _task(self, streaming: bool = False):
        import ray

        if streaming not in self._remote:
            opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 3}
            if streaming:
                opts.update(num_returns="streaming", _generator_backpressure_num_objects=2)
            self._remote[streaming] = ray.remote(**opts)(_call_stream if streaming else _call)
        return self._remote[streaming]

    def _get(self, ref) -> Any:
        import ray

        res = ray.get(ref)
        self.received += len(pickle.dumps(res, protocol=5))
        return res

    def map(self, fn: Callable[..., Any], items: Iterable[tuple]) -> Iterator[Any]:
        """fn(*args) per item as Ray tasks, at most `window` in flight; the results in the items' order."""
        task = self._task()
        pending: deque = deque()
        for args in items:
            pending.append(task.options(name=fn.__name__).remote(self.s3, fn, *args))
            self.tasks += 1
            if len(pending) >= self.window:
                yield self._get(pending.popleft())
        while pending:
            yield self._get(pending.popleft())

    def stream(self, fn: Callable[..., Iterator[Any]], items: Iterable[tuple]) -> Iterator[Any]:
        """What gen(*args) yields, one streaming task per item, one task at a time (the caller may stop early:
        a later item's task is not started before the earlier one is consumed)."""
        import ray

        task = self._task(streaming=True)
        for args in items:
            gen = task.options(name=fn.__name__).remote(self.s3, fn, *args)
            self.tasks += 1
            done = False
            try:
                for ref in gen:
                    yield self._get(ref)
                done = True
            finally:
                if not done:  # the caller stopped early: the rest of the task is not needed
                    ray.cancel(gen)

    def summary(self) -> dict[str, int]:
        return {"tasks": self.tasks, "driver_received_bytes": self.received}

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
