"""The audit: one streaming pass over manifests, three leakage methods, corpus duplicates, report files.

    run_audit(jobs, benchmarks, out_dir, config) -> AuditResult

Outputs in `out_dir`: leakage.parquet (LEAK_SCHEMA), duplicates.parquet (DUP_SCHEMA), drop_list.txt (the grammar
of manifests/droplist.py), summary.json, report.html. Benchmark records and manifest parts that cannot be used are
left out and listed (summary.json `unusable_benchmark_records`, `unusable_manifest_parts`, report.html, the log);
with no usable manifest part at all the audit refuses (ManifestError). Manifests are read one batch at a time (columns needed only);
memory grows with the number of findings, not with the corpus: the duplicate finder spills its per-sample records
to a temporary directory and works partition by partition within `dup_memory_mb` (see duplicates.py).
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longvid.manifests.droplist import format_drop_list, read_drop_list, valid_key  # noqa: F401  (read_drop_list: re-exported)
from longvid.manifests.readers import JobDir, ManifestError, iter_batches, usable_parts
from longvid.operators import storage
from longvid.operators.frames import dhash64
from . import ids
from .benchmarks import BenchmarkSet, BenchVideo
from .config import AuditConfig
from .duplicates import DuplicateFinder
from .ngrams import NgramIndex
from .phash import HashIndex, list_parts

log = logging.getLogger("longvid.audit")

LEAK_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("video_id", pa.string()),
    ("benchmark", pa.string()), ("task", pa.string()), ("item", pa.string()),
    ("method", pa.string()),  # video_id | text_ngram | frame_hash
    ("evidence", pa.string()),  # JSON object
    ("score", pa.float64()),  # 0..1: window overlap, share of the text's n-grams, share of frames matched
])
METHODS = ("video_id", "text_ngram", "frame_hash")
COLUMNS = ["key", "shard", "source", "video_id", "uri", "start", "end", "duration", "num_frames", "bytes",
           "text", "sha256", "frame_hashes"]
FAILURE_COLUMNS = ["source", "stage", "reason"]
MAX_LISTED_PROBLEMS = 1000  # unusable benchmark records listed in summary.json (all are counted)
MAX_LOGGED_PROBLEMS = 20  # ... and logged
DURATION_BINS = [0, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")]
FRAME_BINS = [0, 4, 8, 16, 32, 64, 128, 256, 512, float("inf")]


@dataclass
class AuditResult:
    out_dir: Path
    rows: int
    seconds: float
    leakage: pa.Table
    duplicates: pa.Table
    drop_keys: list[str]
    summary: dict


# ---------------------------------------------------------------- benchmark-side indexes

def _id_index(videos: list[BenchVideo]) -> dict[str, list[BenchVideo]]:
    d: dict[str, list[BenchVideo]] = defaultdict(list)
    for v in videos:
        d[v.key].append(v)
    return d


@dataclass
class BenchFrames:
    index: HashIndex
    files: list[str]  # per frame: file path relative to the videos dir
    times: np.ndarray
    labels: dict[str, list[tuple[str, str]]]  # file -> [(benchmark, item ref)]
    root: Path
    failed: list[tuple[str, str]]


def hash_video_file(path: str, fps: float, max_frames: int) -> tuple[list[int], list[float], str | None]:
    """dHash and time of the frames of one video at `fps` (at most `max_frames`): (hashes, times, why it failed
    part way or None; the frames hashed before a failure are kept). A small result: 8 bytes a frame."""
    from .videos import frames_at_rate

    hashes: list[int] = []
    times: list[float] = []
    try:
        for t, img in frames_at_rate(Path(path), fps, max_frames):
            hashes.append(int(dhash64(img)))
            times.append(t)
    except Exception as e:  # a broken benchmark video is reported, the audit goes on
        return hashes, times, f"{type(e).__name__}: {e}"
    return hashes, times, None


def _local_map(fn: Callable, items) -> Iterator:
    return (fn(*args) for args in items)


def hash_benchmark_videos(root: str | Path, bench: BenchmarkSet, cfg: AuditConfig,
                          map_fn: Callable | None = None) -> BenchFrames:
    """dHash of every video under `root` at cfg.benchmark_fps, labelled with the benchmarks that use the file.
    `map_fn(fn, [args, ...])` runs hash_video_file per file and gives the results in order (default: here, one
    after the other; a job on a cluster passes Ray tasks, pipelines/remote_reads.py)."""
    from .videos import VIDEO_EXTS

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--benchmark-videos {root}: not a directory")
    by_ns: dict[tuple[str, str], list[BenchVideo]] = defaultdict(list)
    for v in bench.videos:
        by_ns[(v.namespace, v.video_id)].append(v)
    namespaces = {ns for ns, _ in by_ns}
    hashes, files, times, failed = [], [], [], []
    labels: dict[str, list[tuple[str, str]]] = {}
    videos: list[tuple[Path, str]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in VIDEO_EXTS:
            continue
        rel = p.relative_to(root).as_posix()
        lab = []
        for ns in namespaces:
            for cand in {rel, p.name}:
                vid = ids.normalise(ns, cand)
                for v in by_ns.get((ns, vid), []) if vid else []:
                    lab.append((v.benchmark, v.ref))
        labels[rel] = sorted(set(lab))[:20]
        videos.append((p, rel))
    results = (map_fn or _local_map)(hash_video_file, [(str(p), cfg.benchmark_fps, cfg.benchmark_max_frames)
                                                      for p, _ in videos])
    for (_, rel), (hs, ts, why) in zip(videos, results):
        hashes += hs
        files += [rel] * len(hs)
        times += ts
        if why is not None:
            failed.append((rel, why))
    h = np.array(hashes, np.uint64)
    ix = HashIndex(h, np.arange(len(h)), cfg.phash_threshold, cfg.phash_min_bits)
    return BenchFrames(ix, files, np.array(times, np.float64), labels, root, failed)


# ---------------------------------------------------------------- corpus statistics

class Stats:
    def __init__(self):
        self.rows = Counter()
        self.seconds = Counter()
        self.bytes = Counter()
        self.dur_hist: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(DURATION_BINS) - 1, np.int64))
        self.frame_hist: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(FRAME_BINS) - 1, np.int64))
        self.failures = Counter()  # (source, stage, reason)
        self.failure_rows = Counter()

    def add(self, batch: pa.RecordBatch) -> None:
        src = batch.column("source")
        dur = pc.fill_null(batch.column("duration"), 0.0).to_numpy(zero_copy_only=False)
        dur = np.where(np.isfinite(dur), dur, 0.0)  # a nan or infinite duration counts no time
        nf = pc.fill_null(batch.column("num_frames"), 0).to_numpy(zero_copy_only=False)
        by = pc.fill_null(batch.column("bytes"), 0).to_numpy(zero_copy_only=False)
        for s in pc.unique(src).to_pylist():
            m = pc.equal(pc.fill_null(src, ""), s or "").to_numpy(zero_copy_only=False)
            s = s or "(none)"
            self.rows[s] += int(m.sum())
            self.seconds[s] += float(dur[m].sum())
            self.bytes[s] += int(by[m].sum())
            self.dur_hist[s] += np.histogram(dur[m], DURATION_BINS)[0]
            self.frame_hist[s] += np.histogram(nf[m], FRAME_BINS)[0]

    def add_failures(self, batch: pa.RecordBatch) -> None:
        t = pa.table({c: batch.column(c) for c in ("source", "stage", "reason")})
        g = t.group_by(["source", "stage", "reason"]).aggregate([([], "count_all")])
        for s, st, r, n in zip(*(g.column(c).to_pylist() for c in ("source", "stage", "reason", "count_all"))):
            s = s or "(none)"
            self.failure_rows[s] += n
            key = (s, st or "", (r or "")[:160])
            if key in self.failures or len(self.failures) < 5000:
                self.failures[key] += n
            else:
                self.failures[(s, st or "", "(other reasons)")] += n

    def as_dict(self) -> dict:
        srcs = sorted(set(self.rows) | set(self.failure_rows))
        return {
            "duration_bins": DURATION_BINS[:-1] + ["inf"], "frame_bins": FRAME_BINS[:-1] + ["inf"],
            "sources": {s: {"samples": self.rows[s], "hours": round(self.seconds[s] / 3600, 4), "bytes": self.bytes[s],
                            "failures": self.failure_rows[s],
                            "duration_hist": self.dur_hist[s].tolist() if s in self.dur_hist else [],
                            "frames_hist": self.frame_hist[s].tolist() if s in self.frame_hist else []} for s in srcs},
            "failures": [{"source": s, "stage": st, "reason": r, "count": n}
                         for (s, st, r), n in sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))],
        }


# ---------------------------------------------------------------- the pass


def _span(s, e) -> tuple[float, float]:
    """A sample's span in seconds; an unknown bound (null, nan, an infinite start) is the video's start or end."""
    s = float(s) if s is not None and np.isfinite(s) else 0.0
    e = float("inf") if e is None or e != e else float(e)
    return s, e


def _r(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 3)


def run_audit(jobs: list[JobDir], bench: BenchmarkSet, out_dir: str | Path, cfg: AuditConfig | None = None,
              benchmark_videos: str | Path | None = None, write_report: bool = True,
              benchmark_frames: BenchFrames | None = None,
              progress: Callable[[int, int], None] | None = None,
              map_fn: Callable | None = None) -> AuditResult:
    """The audit (see module docstring). `benchmark_frames` replaces hashing `benchmark_videos` (precomputed).
    `progress(rows, findings)` is called after each manifest batch (rows of the batch, findings so far).
    `map_fn(fn, [args, ...])` runs the bulk reads of files (a benchmark video's frame hashes, a shard's contact
    sheets) and gives their small results in order: here by default, Ray tasks on a cluster (pipelines/audit.py)."""
    cfg = cfg or AuditConfig()
    cfg.validate()
    # Parts that cannot be read are reported and left out; with no usable manifest part at all, nothing is audited.
    jobs, part_problems = usable_parts(jobs, COLUMNS)
    if part_problems and not any(j.manifest_files for j in jobs):
        more = f" (and {len(part_problems) - 1} more)" if len(part_problems) > 1 else ""
        raise ManifestError(f"--manifests: no usable manifest part: {part_problems[0][0]}: {part_problems[0][1]}{more}")
    jobs, fail_problems = usable_parts(jobs, FAILURE_COLUMNS, failures=True)
    part_problems += fail_problems
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _log_problems(bench)

    id_index = _id_index(bench.videos)
    texts = NgramIndex(bench.texts, cfg.ngram, cfg.min_question_tokens, cfg.max_template_videos)
    frames = benchmark_frames or (hash_benchmark_videos(benchmark_videos, bench, cfg, map_fn) if benchmark_videos
                                  else None)
    log.info("benchmarks: %d files, %d video refs, %s; benchmark frames: %s", len(bench.files), len(id_index),
             texts.describe(), len(frames.index) if frames else "not given")

    stats = Stats()
    dups = DuplicateFinder(cfg.dup_threshold, cfg.dup_frames_per_sample, cfg.dup_min_frames, cfg.phash_min_bits,
                           memory_budget=max(1, int(cfg.dup_memory_mb * 2**20)))
    findings: list[dict] = []
    where: dict[str, tuple[int, str, list[int]]] = {}  # flagged key -> (job index, shard, frame positions)
    n_rows = 0
    unnormalised = Counter()

    for job_i, b in iter_batches(jobs, COLUMNS, cfg.batch_size, problems=part_problems, checked=True):
        n_rows += b.num_rows
        stats.add(b)
        keys = b.column("key").to_pylist()
        srcs = b.column("source").to_pylist()
        vids = b.column("video_id").to_pylist()
        idkeys = ids.manifest_id_keys(b.column("source"), b.column("video_id"), b.column("uri"), cfg.namespaces)
        for s, k in zip(srcs, idkeys):
            if k is None:
                unnormalised[s] += 1
        flagged: dict[int, list[int]] = {}

        # (1) video ids
        starts = b.column("start").to_pylist()
        ends = b.column("end").to_pylist()
        for r, k in enumerate(idkeys):
            refs = id_index.get(k) if k else None
            if not refs:
                continue
            ss, se = _span(starts[r], ends[r])
            grouped: dict[tuple, list[BenchVideo]] = defaultdict(list)
            for v in refs:
                if v.start is not None or v.end is not None:  # a window (EgoSchema): needs time overlap
                    ws, we = _span(v.start, v.end)
                    ov = min(se, we) - max(ss, ws)
                    if ov <= 0:
                        continue
                    grouped[(v.benchmark, v.task, v.ref, ws, we, ov)].append(v)
                else:
                    grouped[(v.benchmark, v.task, None, None, None, None)].append(v)
            for (bm, task, ref, ws, we, ov), vs in grouped.items():
                ev = {"manifest_video_id": vids[r], "normalised": k, "benchmark_video": vs[0].raw,
                      "benchmark_items": [v.ref for v in vs[:10]], "n_items": len(vs),
                      "sample_span": [_r(ss), _r(se)]}
                score = 1.0
                if ws is not None:
                    ev.update({"window": [_r(ws), _r(we)], "overlap_s": _r(ov)})
                    score = round(min(1.0, ov / (we - ws)) if np.isfinite(we - ws) and we > ws else 1.0, 4)
                findings.append({"key": keys[r], "source": srcs[r], "video_id": vids[r], "benchmark": bm, "task": task,
                                 "item": vs[0].ref, "method": "video_id", "evidence": json.dumps(ev), "score": score})
                flagged[r] = []

        # (2) text n-grams
        hits = texts.scan(b.column("text"))
        if hits:
            per: dict[tuple[int, int], list] = defaultdict(list)
            for h in hits:
                per[(h.row, h.text_index)].append(h)
            for (r, ti), hs in per.items():
                bt = texts.texts[ti]
                grams = sorted({h.gram for h in hs})
                total = int(texts.ngrams_per_text[ti]) or 1
                ev = {"field": bt.field, "benchmark_text": bt.text[:400], "benchmark_video": bt.video,
                      "matched": grams[0], "ngrams_matched": len(grams), "ngrams_total": total,
                      "whole_text": hs[0].whole, "n": cfg.ngram}
                findings.append({"key": keys[r], "source": srcs[r], "video_id": vids[r], "benchmark": bt.benchmark,
                                 "task": bt.task, "item": bt.ref, "method": "text_ngram", "evidence": json.dumps(ev),
                                 "score": round(min(1.0, len(grams) / total), 4)})
                flagged[r] = []

        # (3) frame hashes against benchmark frames
        if frames is not None and len(frames.index):
            offs, vals = list_parts(b.column("frame_hashes"))
            qi, ii, d = frames.index.query(vals)
            if len(qi):
                row_of = np.searchsorted(offs, qi, "right") - 1
                per_row: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
                for q, i, dd, r in zip(qi.tolist(), ii.tolist(), d.tolist(), row_of.tolist()):
                    fi = int(frames.index.payload[i])
                    per_row[r][frames.files[fi]].append((q - int(offs[r]), float(frames.times[fi]), dd))
                for r, by_file in per_row.items():
                    n_frames = int(offs[r + 1] - offs[r])
                    for f, pairs in by_file.items():
                        matched = sorted({p[0] for p in pairs})
                        if len(matched) < min(cfg.phash_min_frames, n_frames):
                            continue
                        pairs.sort(key=lambda p: (p[2], p[0]))
                        lab = frames.labels.get(f) or [("benchmark-videos", f)]
                        ev = {"benchmark_file": f, "matched_frames": len(matched), "sample_frames": n_frames,
                              "threshold": cfg.phash_threshold,
                              "pairs": [{"sample_frame": p[0], "benchmark_time": round(p[1], 3), "distance": p[2]} for p in pairs[:8]]}
                        findings.append({"key": keys[r], "source": srcs[r], "video_id": vids[r], "benchmark": lab[0][0],
                                         "task": "", "item": lab[0][1], "method": "frame_hash", "evidence": json.dumps(ev),
                                         "score": round(len(matched) / max(n_frames, 1), 4)})
                        flagged[r] = matched

        if flagged:
            shards = b.column("shard").to_pylist()
            for r, fr in flagged.items():
                prev = where.get(keys[r])
                where[keys[r]] = (job_i, shards[r], sorted(set(fr) | set(prev[2] if prev else [])))
        dups.add(b, idkeys)
        if progress is not None:
            progress(b.num_rows, len(findings))

    for job_i, b in iter_batches(jobs, FAILURE_COLUMNS, 65536, failures=True, problems=part_problems, checked=True):
        stats.add_failures(b)

    for f, w in part_problems[:MAX_LOGGED_PROBLEMS]:
        log.warning("manifest part left out: %s: %s", f, w)
    dup_table = dups.finish()
    leak = pa.Table.from_pylist(findings, schema=LEAK_SCHEMA) if findings else LEAK_SCHEMA.empty_table()
    leak = leak.sort_by([("benchmark", "ascending"), ("method", "ascending"), ("key", "ascending")])
    storage.write_parquet(str(out / "leakage.parquet"), leak)
    storage.write_parquet(str(out / "duplicates.parquet"), dup_table)

    leak_keys = sorted(set(leak.column("key").to_pylist()))
    dmeth = dup_table.column("method").to_pylist()
    dkeys = dup_table.column("key").to_pylist()
    dup_drop = sorted({k for k, m in zip(dkeys, dmeth) if m == "sha256" or cfg.drop_near_duplicates} - set(leak_keys))
    # A key the drop-list grammar cannot carry (whitespace or '#' in it: not a key ingest makes) is reported, not written.
    unwritable = sorted(k for k in leak_keys + dup_drop if not valid_key(k))
    if unwritable:
        log.warning("%d keys cannot be written to drop_list.txt (whitespace or '#' in the key), listed in summary.json: %s",
                    len(unwritable), ", ".join(repr(k) for k in unwritable[:5]))
        leak_keys = [k for k in leak_keys if valid_key(k)]
        dup_drop = [k for k in dup_drop if valid_key(k)]
    seconds = time.perf_counter() - t0
    summary = {
        "rows": n_rows, "seconds": round(seconds, 3), "rows_per_second": round(n_rows / seconds, 1) if seconds else None,
        "jobs": [j.uri for j in jobs], "config": asdict(cfg),
        "benchmark_files": [{"path": f.path, "format": f.format, "benchmark": f.benchmark, "videos": len(f.videos),
                             "texts": len(f.texts), "records": f.records, "unusable_records": f.unusable} for f in bench.files],
        "unknown_benchmark_files": [{"path": p, "why": w} for p, w in bench.unknown],
        "unusable_benchmark_records": {
            "count": bench.unusable_records,
            "listed": [{"path": p.path, "record": p.where, "field": p.field, "why": p.why}
                       for p in bench.problems[:MAX_LISTED_PROBLEMS]]},
        "unusable_manifest_parts": [{"file": f, "why": w} for f, w in part_problems],
        "benchmark_frames": None if frames is None else {
            "videos": len(frames.labels), "frames": len(frames.index), "flat_frames_ignored": frames.index.dropped_uninformative,
            "failed": [{"file": f, "why": w} for f, w in frames.failed], "fps": cfg.benchmark_fps},
        "text_index": texts.describe(),
        "rows_without_normalised_id": dict(unnormalised),
        "leakage": _counts(leak),
        "duplicates": dict(Counter(dmeth)),
        "drop_list": {"leakage": len(leak_keys), "duplicates": len(dup_drop), "not_writable": unwritable},
        "stats": stats.as_dict(),
    }
    _write_drop_list(out / "drop_list.txt", leak_keys, dup_drop, cfg)
    storage.write_json(str(out / "summary.json"), summary, indent=1, default=str)
    if write_report:
        from .report import write_report as _wr
        _wr(out / "report.html", summary, leak, dup_table, jobs, where, frames, cfg, map_fn)
    log.info("audit: %d rows in %.1f s, %d leakage findings (%d keys), %d duplicates", n_rows, seconds, leak.num_rows,
             len(leak_keys), dup_table.num_rows)
    return AuditResult(out, n_rows, seconds, leak, dup_table, leak_keys + dup_drop, summary)


def _counts(leak: pa.Table) -> dict:
    c: dict[str, dict[str, int]] = defaultdict(lambda: {m: 0 for m in METHODS})
    keys: dict[str, set] = defaultdict(set)
    for bm, m, k in zip(leak.column("benchmark").to_pylist(), leak.column("method").to_pylist(), leak.column("key").to_pylist()):
        c[bm][m] += 1
        keys[bm].add(k)
    return {bm: {**c[bm], "keys": len(keys[bm])} for bm in sorted(c)}


def _write_drop_list(path: Path, leak_keys: list[str], dup_keys: list[str], cfg: AuditConfig) -> None:
    what = "sha256, video_id_span, frame_hash" if cfg.drop_near_duplicates else "sha256 only"
    text = format_drop_list([(f"leakage (any method): {len(leak_keys)} keys", leak_keys),
                             (f"duplicates ({what}; the smallest key of each group is kept): {len(dup_keys)} keys", dup_keys)])
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _log_problems(bench: BenchmarkSet) -> None:
    """Warn about the benchmark records that cannot be used (all of them are in summary.json and report.html)."""
    if not bench.unusable_records:
        return
    files = sum(1 for f in bench.files if f.unusable)
    log.warning("benchmarks: %d records in %d files cannot be used and are left out (listed in summary.json and "
                "report.html)", bench.unusable_records, files)
    for p in bench.problems[:MAX_LOGGED_PROBLEMS]:
        log.warning("  %s", p)
