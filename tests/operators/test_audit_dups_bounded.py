"""Corpus duplicate finder with a memory budget: spilled, partitioned finding gives the same rows as one partition."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, run_audit
from longvid.operators.audit.duplicates import DuplicateFinder
from longvid.manifests.readers import find_jobs
from tests.operators.test_audit_util import FIXTURES, make_job, random_hashes, row


def corpus(seed: int, dup_keys: bool = False) -> list[tuple[pa.RecordBatch, list]]:
    """Batches with repeated sha256s (and nulls/empties), shared video ids across sources with random spans (some
    open), frame hashes drawn from a small pool with 0-1 flipped bits (some flat, some rows without hashes)."""
    rng = np.random.default_rng(seed)
    out, pool = [], rng.integers(0, 2**63, 150, dtype=np.uint64)
    for j in range(4):
        n = int(rng.integers(50, 250))
        keys = [f"k{rng.integers(0, 900)}" if dup_keys else f"k{j}_{i:04d}" for i in range(n)]
        sha = [None if rng.random() < .05 else ("" if rng.random() < .05 else f"s{rng.integers(0, 300)}") for _ in range(n)]
        idk = [None if rng.random() < .2 else f"youtube:{rng.integers(0, 120)}" for _ in range(n)]
        start = [None if rng.random() < .1 else float(rng.uniform(0, 100)) for _ in range(n)]
        end = [None if s is None or rng.random() < .1 else s + float(rng.choice([5, 10, 30])) for s in start]
        fh = []
        for _ in range(n):
            L = int(rng.choice([0, 3, 8, 16]))
            v = pool[rng.integers(0, len(pool), L)] ^ (np.uint64(1) << rng.integers(0, 64, L).astype(np.uint64))
            v[rng.random(L) < .05] = 0
            fh.append(None if rng.random() < .05 else v.tolist())
        out.append((pa.record_batch({
            "key": keys, "source": [str(x) for x in rng.choice(["howto100m", "hdvila", "miradata", "webvid"], n)],
            "start": pa.array(start, pa.float64()), "end": pa.array(end, pa.float64()), "sha256": sha,
            "frame_hashes": pa.array(fh, pa.list_(pa.uint64()))}), idk))
    return out


def find(batches, **kw) -> tuple[pa.Table, DuplicateFinder]:
    f = DuplicateFinder(**kw)
    for b, idk in batches:
        f.add(b, idk)
    return f.finish(), f


@pytest.mark.parametrize("seed,threshold,dup_keys", [(0, 2, False), (1, 0, False), (2, 4, True)])
def test_many_partitions_equal_one(seed, threshold, dup_keys, tmp_path):
    batches = corpus(seed, dup_keys)
    one, f1 = find(batches, threshold=threshold, spill_dir=tmp_path)
    many, f2 = find(batches, threshold=threshold, memory_budget=200, spill_dir=tmp_path)
    assert set(f1.partitions.values()) == {1}
    assert min(f2.partitions.values()) > 16  # really many partitions
    methods = set(one.column("method").to_pylist())
    assert methods == {"sha256", "video_id_span", "frame_hash"}, methods
    assert many.equals(one)  # same rows in the same order
    assert list(tmp_path.iterdir()) == []  # spill files removed


def test_partitioned_rows_are_right(tmp_path):
    rng = np.random.default_rng(3)
    shared = random_hashes(rng, 4)
    rows = [
        row("a_sha", "webvid", "1", sha="ab" * 32, rng=rng), row("b_sha", "webvid", "2", sha="ab" * 32, rng=rng),
        row("hdvila_x", "hdvila", "QMi8x8o55Ns", start=10.0, end=30.0, rng=rng),
        row("miradata_x", "miradata", "QMi8x8o55Ns", start=20.0, end=40.0, rng=rng),
        row("z_reupload", "webvid", "3", hashes=shared + random_hashes(rng, 4), rng=rng),
        row("y_orig", "howto100m", "yyyyyyyyyyy", hashes=[h ^ (1 << 7) for h in shared] + random_hashes(rng, 4), rng=rng),
    ] + [row(f"clean_{i}", "webvid", str(100 + i), rng=rng) for i in range(30)]
    b = pa.RecordBatch.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("source", pa.string()), ("start", pa.float64()),
                                                           ("end", pa.float64()), ("sha256", pa.string()),
                                                           ("frame_hashes", pa.list_(pa.uint64()))]))
    idk = [None] * len(rows)
    idk[2] = idk[3] = "youtube:QMi8x8o55Ns"
    t, f = find([(b.slice(0, 3), idk[:3]), (b.slice(3), idk[3:])], memory_budget=64, spill_dir=tmp_path)
    assert min(f.partitions.values()) > 1
    got = {(r["key"], r["dup_of"], r["method"]) for r in t.to_pylist()}
    assert got == {("b_sha", "a_sha", "sha256"), ("miradata_x", "hdvila_x", "video_id_span"),
                   ("z_reupload", "y_orig", "frame_hash")}


def test_abandoned_finder_and_bad_budget(tmp_path):
    f = DuplicateFinder(spill_dir=tmp_path)
    b, idk = corpus(5)[0]
    f.add(b, idk)
    assert len(list(tmp_path.iterdir())) == 1
    f.close()
    assert list(tmp_path.iterdir()) == []
    assert DuplicateFinder().finish().num_rows == 0
    with pytest.raises(ValueError, match="memory_budget"):
        DuplicateFinder(memory_budget=0)
    with pytest.raises(ValueError, match="dup_memory_mb"):
        AuditConfig(dup_memory_mb=0).validate()


def test_run_audit_tiny_dup_memory_same_duplicates_parquet(tmp_path):
    batches = corpus(7)
    rows = []
    for b, idk in batches[:2]:
        for i, r in enumerate(b.to_pylist()):
            vid = f"vid{int(idk[i].split(':')[-1]):08d}" if idk[i] else f"solo{len(rows):07d}"  # YouTube-shaped ids
            src = {"webvid": "howto100m"}.get(r["source"], r["source"])
            s = r["start"] if r["start"] is not None else 0.0
            rows.append(row(r["key"], src, vid, start=s, end=r["end"] if r["end"] is not None else s + 10,
                            sha=r["sha256"] or None, hashes=r["frame_hashes"] or None))
    job = make_job(tmp_path / "job", rows)
    bench = scan_benchmarks([FIXTURES])
    a = run_audit(find_jobs(str(job)), bench, tmp_path / "a", AuditConfig(), write_report=False)
    b = run_audit(find_jobs(str(job)), bench, tmp_path / "b", AuditConfig(dup_memory_mb=0.0005), write_report=False)
    ta, tb = pq.read_table(tmp_path / "a" / "duplicates.parquet"), pq.read_table(tmp_path / "b" / "duplicates.parquet")
    assert set(ta.column("method").to_pylist()) == {"sha256", "video_id_span", "frame_hash"}
    assert tb.equals(ta)
    assert (tmp_path / "a" / "drop_list.txt").read_text() == (tmp_path / "b" / "drop_list.txt").read_text()
