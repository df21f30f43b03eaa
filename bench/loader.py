"""Token-shard loader throughput against a raw sequential read of the same bytes, on one worker.

    python bench/loader.py                       # 96 samples, 64-256 frames, D=1024 float16 (~0.5 GiB of shards)
    python bench/loader.py --samples 32 --frames 16 64 --repeats 5
    python bench/loader.py --keep                # reuse the shards of the last run
    python bench/loader.py --keep --page-cache written   # shards as the writer left them in the page cache
    python bench/loader.py --keep --variants raw,loader,numpy   # with and without the C kernels
    git show REV:pipelines/loader.py > /tmp/old.py   # REV: the version to compare with (a module with LoaderConfig
    python bench/loader.py --keep --baseline /tmp/old.py --variants raw,baseline,loader   # and StageLoader): before/after

Shards are written by `synthetic.shards.write_synthetic_token_shards` (encode layout: <key>.json +
<key>.tokens.npy [frames/4, 64, D]). Both sides read the same tar files. Where their pages are (--page-cache):
- read (default): in the page cache as a trainer leaves them after reading them once: every shard is evicted,
  then read front to back, before timing. The kernel's readahead fills the cache with large folios, which make
  both copying and mapping cheaper than on pages the writer left;
- written: as the writer left them (a shard written on this machine and not evicted since; with --keep, whatever
  state the last run left);
- cold: evicted before every pass of every variant (posix_fadvise DONTNEED, no root needed), so both sides read
  from the disk, as a corpus larger than RAM is read in training.
Variants:
- raw: each tar read front to back in 4 MiB `readinto` calls into one reused buffer, nothing else;
- loader: `StageLoader` (one worker, batch 1, shuffle buffer: the largest divisor of the sample count <= 32),
  i.e. tar parsing, json, npy header, NaN/inf scan of every token, frame bounds, Qwen2 chat tokenization with
  labels, length bucketing and collation to torch tensors;
- loader+prefetch: the same behind its background thread;
- baseline: the loader of another loader module (--baseline FILE), for before/after figures from the same rounds;
- numpy: the loader without its C kernels (operators/_native.c: NaN/inf scan, tar header checksum),
  i.e. on the numpy / Python fallback it uses where no C compiler was there at install;
- nocheck: the loader without the NaN/inf scan. It never reads the token bytes, so it is not comparable with raw;
- nocheck+copy: nocheck, plus a copy of every batch's tokens into one reused staging buffer, as a pageable
  `.to(device)` does on the host. This is the loader's side of moving the NaN/inf check to the device.
Variants run in turn, round after round (--repeats, 15 by default); "paired" ratios compare each pass with the raw
pass of the same round. Samples/s and CPU time per sample of each; the target is loader >= 80% of raw. Results:
<out>/../loader.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longvid.model.tokenizer import build_test_tokenizer  # noqa: E402
from longvid.operators import shards, train_sample  # noqa: E402
from longvid.pipelines import loader as train_loader  # noqa: E402
from longvid.pipelines.train_sources import index_source  # noqa: E402
from longvid.synthetic.shards import write_synthetic_token_shards  # noqa: E402


def load_baseline(path: str):
    """Another version of the loader (e.g. `git show HEAD~1:pipelines/loader.py > old.py`; before the split of
    issue #13, pipelines/train_data.py),
    loaded side by side with the current one, for before/after figures from the same passes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loader_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (clean pages; no privileges needed)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[str], block: int = 4 << 20) -> tuple[float, float, int]:
    """(wall, CPU) seconds and bytes of reading every file front to back."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                total += n
    return time.perf_counter() - t0, time.process_time() - c0, total


def read_back(files: list[str]) -> None:
    """Evict, then read every file once: the page-cache state a trainer's first pass over the shards leaves."""
    evict(files)
    raw_read(files)


def loader_pass(plan, n: int, tok, prefetch: int, dim: int, max_frames: int, module=None, check: bool = True,
                staging=None, native: bool = True) -> float:
    """One epoch in whole shuffle blocks, so that the loader reads exactly the bytes the raw pass reads.
    check=False: no NaN/inf scan in the loader; with `staging` (a flat tensor) every visual tensor is then copied
    into it, as a pageable host-to-device copy would (the bytes must be read by someone)."""
    buffer = max(b for b in range(1, 33) if n % b == 0)
    mod = module or train_loader
    extra = {} if check else {"check_finite": False}
    cfg = mod.LoaderConfig(sources=[plan.to_dict()], batch_size=1, buffer=buffer, mix="samples", dim=dim,
                           max_frames=max_frames, max_len=1 << 20, prefetch=prefetch, **extra)
    # the C kernels: the tar header checksum (operators.shards), the NaN/inf scan (operators.train_sample); an old
    # single-module loader (--baseline) holds both itself
    holders = [m for m in (mod, shards, train_sample) if hasattr(m, "_native")]
    kernels = [m._native for m in holders]
    if not native:
        for m in holders:
            m._native = None
    try:
        loader = mod.StageLoader(cfg, 0, 1, tok)
        return _timed(loader, n, staging)
    finally:
        for m, k in zip(holders, kernels):
            m._native = k


def _timed(loader, n: int, staging) -> tuple[float, float]:
    """(wall, CPU) seconds from the first request to the last batch, plus closing the loader (which unmaps the
    last shard) when it reads synchronously. With prefetch the interval ends at the last batch: closing then waits
    for the reader thread, and its CPU time includes the read-ahead past the last batch (up to a block)."""
    it = iter(loader)
    t0, c0 = time.perf_counter(), time.process_time()
    got = 0
    while got < n:
        b = next(it)
        got += len(b)
        if staging is not None:
            for v in b.visual:
                staging[:v.numel()].copy_(v.reshape(-1))
    del b
    if not hasattr(it, "close"):
        loader.close()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if hasattr(it, "close"):
        it.close()
    loader.close()
    return dt, dc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--frames", type=int, nargs=2, default=(64, 256))
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dtype", default="float16")
    # 15 rounds: one pass reads ~0.5 GiB in 40-70 ms, so a single preemption on a shared box doubles it; the
    # median of 3 paired passes moved by 0.1-0.5 between fresh runs (BENCHMARKS.md, Loader: five runs)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "loader"))
    ap.add_argument("--keep", action="store_true", help="reuse existing shards in --out")
    ap.add_argument("--page-cache", choices=("read", "written", "cold"), default="read",
                    help="read: evicted then read once before timing (default); written: as the writer left them; "
                         "cold: evicted before every pass")
    ap.add_argument("--baseline", help="another loader module to run side by side (variant 'baseline')")
    ap.add_argument("--variants", default="raw,loader,loader+prefetch",
                    help="comma-separated, in pass order: raw, loader, loader+prefetch, numpy, baseline (needs "
                         "--baseline), nocheck, nocheck+copy")
    args = ap.parse_args(argv)

    out = Path(args.out)
    shards = out / "tokens"
    if not (args.keep and (shards / "index.json").is_file()):
        shutil.rmtree(shards, ignore_errors=True)
        t = time.time()
        write_synthetic_token_shards(str(shards), args.samples, dim=args.dim, frames=tuple(args.frames),
                                     per_shard=16, dtype=args.dtype, duration=(60, 300))
        print(f"wrote {args.samples} samples in {time.time() - t:.1f} s")
    plan = index_source("bench", [str(shards / "shards" / "*.tar")])
    n = plan.nsamples
    files = sorted({p.url for p in plan.pieces})
    nbytes = sum(os.path.getsize(f) for f in files)
    tok = build_test_tokenizer()
    base = load_baseline(args.baseline) if args.baseline else None
    stage: list = []

    def staging():  # sized for the largest sample, allocated once
        if not stage:
            import torch

            torch.set_num_threads(1)  # one worker: the copy must not borrow the second core
            stage.append(torch.empty(args.frames[1] // 4 * 64 * args.dim, dtype=getattr(torch, args.dtype)))
        return stage[0]
    every = {
        "raw": lambda: raw_read(files)[:2],
        "loader": lambda: loader_pass(plan, n, tok, 0, args.dim, args.frames[1]),
        "loader+prefetch": lambda: loader_pass(plan, n, tok, 2, args.dim, args.frames[1]),
        "numpy": lambda: loader_pass(plan, n, tok, 0, args.dim, args.frames[1], native=False),
        "baseline": lambda: loader_pass(plan, n, tok, 0, args.dim, args.frames[1], module=base),
        # the NaN/inf check moved out of the loader (to the train step, on the device): "nocheck" never reads the
        # token bytes (not comparable with raw); "nocheck+copy" reads them the way a pageable .to(device) does,
        # a copy into one reused staging buffer, and leaves the check itself to the device (not timed here)
        "nocheck": lambda: loader_pass(plan, n, tok, 0, args.dim, args.frames[1], check=False),
        "nocheck+copy": lambda: loader_pass(plan, n, tok, 0, args.dim, args.frames[1], check=False,
                                            staging=staging()),
    }
    names = ["raw"] + [v for v in args.variants.split(",") if v and v != "raw"]
    unknown = [v for v in names if v not in every]
    if unknown or ("baseline" in names and base is None):
        ap.error(f"--variants: unknown {unknown} (known: {', '.join(every)}); 'baseline' needs --baseline FILE")
    variants = {k: every[k] for k in names}
    if args.page_cache == "read":
        read_back(files)
    else:
        raw_read(files)  # "written": bring back anything evicted since, without evicting the rest
    for k in names[1:]:  # and the tokenizer, in every loader version
        variants[k]()
    rows: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}  # process CPU time (all threads) per pass
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits every variant alike
        for k, fn in variants.items():
            if args.page_cache == "cold":
                gc.collect()  # a mapping left by the last pass would keep its pages in the cache
                evict(files)
            wall, cpu_s = fn()
            rows[k].append(wall)
            cpu[k].append(cpu_s)
    best = {k: min(v) for k, v in rows.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    res = {
        "samples": n, "shards": len(files), "bytes": nbytes, "mib_per_sample": round(nbytes / n / 2**20, 2),
        "frames": list(args.frames), "dim": args.dim, "dtype": args.dtype, "repeats": args.repeats,
        "load_average": os.getloadavg()[0], "page_cache": args.page_cache,
        "native_kernels": train_sample._native is not None,
        "samples_per_s_best": {k: round(n / v, 1) for k, v in best.items()},
        "samples_per_s_median": {k: round(n / v, 1) for k, v in med.items()},
        "mib_per_s_best": {k: round(nbytes / v / 2**20, 1) for k, v in best.items()},
        "ratio_best": {k: round(best["raw"] / v, 3) for k, v in best.items() if k != "raw"},
        "ratio_median": {k: round(med["raw"] / v, 3) for k, v in med.items() if k != "raw"},
        # each loader pass against the raw pass right before it (same moment, same load)
        "ratio_paired_median": {k: round(sorted(r / x for r, x in zip(rows["raw"], v))[len(v) // 2], 3)
                                for k, v in rows.items() if k != "raw"},
        # the same on CPU time (less sensitive to other processes taking the core away)
        "ratio_cpu_paired_median": {k: round(sorted(r / x for r, x in zip(cpu["raw"], v))[len(v) // 2], 3)
                                    for k, v in cpu.items() if k != "raw"},
        # CPU seconds (all threads of this process) per sample, median over passes: > wall time = a 2nd core used
        "cpu_ms_per_sample_median": {k: round(sorted(v)[len(v) // 2] / n * 1e3, 3) for k, v in cpu.items()},
        "wall_ms_per_sample_median": {k: round(v / n * 1e3, 3) for k, v in med.items()},
        "passes_s": rows,
    }
    if "baseline" in rows:  # this version against the baseline, pass by pass (same round)
        res["speedup_vs_baseline_paired_median"] = {
            k: round(sorted(b / x for b, x in zip(rows["baseline"], v))[len(v) // 2], 3)
            for k, v in rows.items() if k not in ("raw", "baseline")}
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / "loader.json").write_text(json.dumps(res, indent=2))
    print(f"{n} samples, {len(files)} shards, {nbytes / 2**20:.0f} MiB ({res['mib_per_sample']} MiB/sample), "
          f"load average {res['load_average']:.1f}, page cache {res['page_cache']}")
    print(f"{'variant':>16} {'samples/s best':>15} {'median':>8} {'MiB/s best':>11} {'vs raw best':>12} {'median':>8}"
          f" {'paired median':>14} {'cpu ms/sample':>14}")
    for k in rows:
        print(f"{k:>16} {res['samples_per_s_best'][k]:>15} {res['samples_per_s_median'][k]:>8} "
              f"{res['mib_per_s_best'][k]:>11} {res['ratio_best'].get(k, 1.0):>12} {res['ratio_median'].get(k, 1.0):>8}"
              f" {res['ratio_paired_median'].get(k, 1.0):>14} {res['cpu_ms_per_sample_median'][k]:>14}")
    print("paired raw/variant on CPU time:", res["ratio_cpu_paired_median"])
    if "speedup_vs_baseline_paired_median" in res:
        print("paired baseline/variant (wall):", res["speedup_vs_baseline_paired_median"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
