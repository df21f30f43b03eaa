"""Audit throughput: rows per second on a generated manifest (default one million rows).

    python bench/audit.py                      # 1,000,000 rows, 10 parts, into bench/out/audit/
    python bench/audit.py --rows 100000 --frames 32 --words 60

The manifest mimics ingest's: five sources, YouTube / Ego4D / WebVid ids, 40-word captions drawn from a vocabulary
that overlaps the benchmark texts (so n-gram windows really have to be checked), `--frames` 64-bit frame hashes per
row. Planted leaks (ids in url forms, copied questions, near-duplicate frames) must all be found, or the run fails.
Benchmarks: ../shared/data/benchmarks when present, else tests/fixtures/benchmarks; benchmark frames: `--bench-frames`
random hashes standing for decoded benchmark videos (the audit's frame index, built as with --benchmark-videos).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longvid.operators.audit.benchmarks import scan_benchmarks  # noqa: E402
from longvid.operators.audit.core import AuditConfig, BenchFrames, run_audit  # noqa: E402
from longvid.operators.audit.phash import HashIndex  # noqa: E402
from longvid.manifests.readers import find_jobs  # noqa: E402
from longvid.manifests.schema import MANIFEST_SCHEMA  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "benchmarks"
YT = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))


def rand_hashes(rng, n):
    return rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)


def make_part(path: Path, unit: int, n: int, frames: int, words: int, vocab: list[str], rng, plants: dict) -> None:
    srcs = np.array(["howto100m", "hdvila", "miradata", "webvid", "ego4d"])
    src = srcs[rng.integers(0, 5, n)]
    yt = ["".join(x) for x in YT[rng.integers(0, 64, (n, 11))]]
    vid = [f"{i:08x}-1111-4222-8333-{unit:04d}{i:08d}" if s == "ego4d" else (str(10_000_000 + unit * n + i) if s == "webvid" else y)
           for i, (s, y) in enumerate(zip(src.tolist(), yt))]
    start = rng.uniform(0, 600, n).round(3)
    dur = rng.choice([8.0, 15.0, 30.0, 60.0, 120.0, 300.0], n)
    voc = np.array(vocab)
    text = [" ".join(voc[rng.integers(0, len(voc), words)]) for _ in range(n)]
    hashes = rand_hashes(rng, n * frames)
    keys = [f"{s}_{v}_{unit:06d}{i:07d}" for i, (s, v) in enumerate(zip(src.tolist(), vid))]
    for kind, items in plants.items():  # (row, value)
        for r, value in items.get(unit, []):
            if kind == "id":
                vid[r], src[r] = value, "howto100m"
            elif kind == "text":
                text[r] = text[r] + " " + value
            elif kind == "frame":
                hashes[r * frames : r * frames + len(value)] = value
    t = pa.table({
        "key": keys, "shard": [f"shards/shard-{unit:06d}-000.tar"] * n, "unit": pa.array(np.full(n, unit), pa.int64()),
        "source": src.tolist(), "video_id": vid, "uri": [f"{v}.mp4" for v in vid], "start": start, "end": start + dur,
        "duration": dur, "fps": np.full(n, 30.0), "num_frames": pa.array(np.full(n, frames), pa.int32()),
        "frame_indices": pa.nulls(n, pa.list_(pa.int64())), "frame_times": pa.nulls(n, pa.list_(pa.float64())),
        "width": pa.array(np.full(n, 1280), pa.int32()), "height": pa.array(np.full(n, 720), pa.int32()),
        "resolution": pa.array(np.full(n, 224), pa.int32()), "profile": ["long"] * n, "text": text,
        "num_turns": pa.array(np.ones(n), pa.int32()), "bytes": pa.array(rng.integers(10**5, 10**7, n), pa.int64()),
        "sha256": [hashlib.sha256(k.encode()).hexdigest() for k in keys],
        "frame_hashes": pa.ListArray.from_arrays(pa.array(np.arange(0, n * frames + 1, frames), pa.int32()), pa.array(hashes, pa.uint64())),
    }, schema=MANIFEST_SCHEMA)
    pq.write_table(t, path, row_group_size=65536)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=10)
    ap.add_argument("--frames", type=int, default=16, help="frame hashes per row")
    ap.add_argument("--words", type=int, default=40, help="caption words per row")
    ap.add_argument("--bench-frames", type=int, default=100_000, help="benchmark frame hashes in the index")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "audit"))
    ap.add_argument("--keep", action="store_true", help="reuse a manifest generated before with the same settings")
    args = ap.parse_args()

    out = Path(args.out)
    job = out / "job"
    bench = scan_benchmarks([SHARED if SHARED.is_dir() else ROOT / "tests" / "fixtures" / "benchmarks"])
    rng = np.random.default_rng(0)
    vocab = sorted({w for t in bench.texts for w in t.text.lower().replace("?", " ").replace(",", " ").replace(".", " ").split()})
    yt_ids = sorted({v.raw for v in bench.videos if v.namespace == "youtube" and len(v.video_id) == 11})[:50]
    questions = [t.text for t in bench.texts if t.field == "question" and len(t.text.split()) >= 16][:50]
    bench_hashes = rand_hashes(rng, args.bench_frames)
    per = args.rows // args.parts
    plants: dict[str, dict[int, list]] = {"id": {}, "text": {}, "frame": {}}
    expect = set()
    for i in range(50):
        u, r = i % args.parts, (i * 7919) % per
        plants["id"].setdefault(u, []).append((r, f"https://youtu.be/{yt_ids[i % len(yt_ids)]}"))
        plants["text"].setdefault(u, []).append(((r + 1) % per, questions[i % len(questions)]))
        near = bench_hashes[i * 4 : i * 4 + 3] ^ np.uint64(0b101)
        plants["frame"].setdefault(u, []).append(((r + 2) % per, near))
    meta = {"rows": args.rows, "parts": args.parts, "frames": args.frames, "words": args.words, "bench": len(bench.texts)}
    stamp = job / "bench-meta.json"
    t0 = time.perf_counter()
    if not (args.keep and stamp.exists() and json.loads(stamp.read_text()) == meta):
        (job / "manifests").mkdir(parents=True, exist_ok=True)
        for u in range(args.parts):
            make_part(job / "manifests" / f"part-{u:06d}.parquet", u, per, args.frames, args.words, vocab, np.random.default_rng(u + 1), plants)
        stamp.write_text(json.dumps(meta))
    gen = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (job / "manifests").glob("*.parquet"))

    frames = BenchFrames(HashIndex(bench_hashes, np.arange(len(bench_hashes)), 4), ["bench.mp4"] * len(bench_hashes),
                         np.arange(len(bench_hashes), dtype=np.float64), {"bench.mp4": [("Video-MME", "synthetic")]}, out, [])
    cfg = AuditConfig()
    t0 = time.perf_counter()
    res = run_audit(find_jobs(str(job)), bench, out / "report", cfg, benchmark_frames=frames)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    by = {}
    for k, m in zip(res.leakage.column("key").to_pylist(), res.leakage.column("method").to_pylist()):
        by.setdefault(m, set()).add(k)
    found = {m: len(v) for m, v in by.items()}
    ok = found.get("video_id", 0) >= 50 and found.get("text_ngram", 0) >= 50 and found.get("frame_hash", 0) >= 50
    print(json.dumps({
        "rows": res.rows, "manifest_mb": round(size / 2**20, 1), "generate_s": round(gen, 1), "audit_s": round(secs, 1),
        "rows_per_s": round(res.rows / secs), "peak_rss_mb": round(peak), "frames_per_row": args.frames,
        "words_per_row": args.words, "bench_texts": len(bench.texts), "bench_sequences": res.summary["text_index"]["sequences"],
        "bench_frames": len(frames.index), "flagged_keys_by_method": found, "duplicates": res.summary["duplicates"],
        "planted_found": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
