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
