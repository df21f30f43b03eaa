"""pipelines.outputs.finalize counts only committed units (a manifest part is written last: its presence commits)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from longvid.pipelines.outputs import finalize


def _part(path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


def test_failures_of_an_uncommitted_unit_are_not_counted(tmp_path):
    _part(tmp_path / "manifests/part-000000.parquet",
          {"key": ["a", "b"], "shard": ["shards/shard-000000-0000.tar"] * 2, "source": ["webvid"] * 2,
           "duration": [3.0, 4.0], "num_frames": [8, 8], "bytes": [10, 20]})
    _part(tmp_path / "failures/part-000000.parquet", {"stage": ["locate"], "reason": ["missing"], "source": ["webvid"]})
    # unit 1 was killed after its failures part and before its manifest: all 3 of its rows failed
    _part(tmp_path / "failures/part-000001.parquet",
          {"stage": ["decode"] * 3, "reason": ["bad"] * 3, "source": ["webvid"] * 3})
    s = finalize(str(tmp_path), job="ingest", config={}, elapsed=1.0, cpus=1, extra={"inputs_read": 6})
    assert (s["samples"], s["failures"], s["inputs"]) == (2, 1, 3)
    assert s["failures_by_stage"] == {"locate": 1}
    assert s["complete"] is False  # 6 rows read, 3 accounted for: the re-run redoes unit 1
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["shardlist"] == [{"url": "shards/shard-000000-0000.tar", "nsamples": 2}]


def test_job_output_settings_claim_and_release(tmp_path):
    """JobOutput: job.json written once and compared on every re-run; the claim refuses a second job on the folder
    and is released when the block ends, an error included."""
    import pytest

    from longvid.operators.errors import ConfigError
    from longvid.pipelines.outputs import JobOutput

    out = tmp_path / "out"
    job = JobOutput(str(out), "encode", quiet=True)
    assert job.previous() is None and job.check({"a": 1}) is False and not out.exists()  # check writes nothing
    job.prepare({"a": 1, "b": [1, 2]})
    assert json.loads((out / "job.json").read_text()) == {"job": "encode", "fingerprint": {"a": 1, "b": [1, 2]}}
    first = (out / "job.json").read_bytes()
    JobOutput(str(out), "encode").prepare({"b": (1, 2), "a": 1})  # the same settings: nothing rewritten
    assert (out / "job.json").read_bytes() == first and job.previous() == {"a": 1, "b": [1, 2]}
    with pytest.raises(ConfigError, match=r"^out \(x\): .* other settings \(a, c\); use a new --out to encode"):
        JobOutput(str(out), "encode").check({"a": 2, "b": [1, 2], "c": 0}, what="out (x)")
    with pytest.raises(RuntimeError):
        with job.claimed():
            assert job.last_owner() == "encode"
            with pytest.raises(ConfigError, match="in use by a running longvid encode"):
                import subprocess
                import sys

                code = ("from longvid.pipelines.outputs import JobOutput\n"
                        f"with JobOutput({str(out)!r}, 'encode').claimed(): pass\n")
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
                raise ConfigError(r.stderr.strip().splitlines()[-1])
            raise RuntimeError("the block fails")
    with job.claimed():  # released by the failed block: free again
        pass
