"""Helpers for the audit tests: write a job directory (shards, manifest part, failures part) like ingest does."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longvid.manifests.schema import FAILURE_SCHEMA, MANIFEST_SCHEMA, rows_to_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
SHARED = Path(__file__).resolve().parents[3] / "shared"
WORDS = ("river mountain bicycle kitchen orange window lantern carpet guitar harbor pencil meadow violin "
         "ladder bucket garden tunnel rocket pillow saddle cactus marble anchor feather lemon").split()


def random_hashes(rng: np.random.Generator, n: int) -> list[int]:
    """Informative 64-bit hashes (about half the bits set), as a real frame's dHash."""
    return [int(x) for x in rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)]


def row(key: str, source: str, video_id: str, *, start=0.0, end=10.0, text=None, sha=None, hashes=None,
        num_frames=8, rng=None, uri=None) -> dict:
    rng = rng or np.random.default_rng(abs(hash(key)) % 2**32)
    if text is None:
        text = " ".join(rng.choice(WORDS, 40))
    return {"key": key, "source": source, "video_id": video_id, "uri": uri or f"{video_id}.mp4", "start": start, "end": end,
            "duration": end - start, "fps": 30.0, "num_frames": num_frames, "resolution": 64, "profile": "short",
            "text": text, "num_turns": 1, "bytes": 1000,
            "sha256": sha or hashlib.sha256(key.encode()).hexdigest(),
            "frame_hashes": hashes if hashes is not None else random_hashes(rng, num_frames)}


def make_job(root: Path, rows: list[dict], failures: list[dict] = (), shards: bool = True, unit: int = 0) -> Path:
    """A job directory: shards/shard-<unit>-000.tar with <key>.json/<key>.mp4, manifests/ and failures/ parts."""
    root = Path(root)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "failures").mkdir(parents=True, exist_ok=True)
    shard = f"shards/shard-{unit:06d}-000.tar"
    if shards:
        from longvid.synthetic.videos import make_video

        (root / "shards").mkdir(exist_ok=True)
        tmp = root / "_tmp.mp4"
        with tarfile.open(root / shard, "w") as tf:
            for i, r in enumerate(rows):
                make_video(tmp, seconds=r.get("num_frames", 8) / 8.0, fps=8, width=64, height=64, seed=i, gop=8)
                for name, data in ((f"{r['key']}.json", json.dumps({"key": r["key"]}).encode()), (f"{r['key']}.mp4", tmp.read_bytes())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        tmp.unlink()
    rows = [dict(r, shard=shard, unit=unit) for r in rows]
    pq.write_table(rows_to_table(rows, MANIFEST_SCHEMA), root / "manifests" / f"part-{unit:06d}.parquet")
    pq.write_table(rows_to_table([dict(f, unit=unit) for f in failures], FAILURE_SCHEMA), root / "failures" / f"part-{unit:06d}.parquet")
    return root
