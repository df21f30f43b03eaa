"""`longvid demo`: the whole system on a fresh machine, on an embedded Ray, in a few minutes.

Generates a small synthetic corpus (real H.264 videos made locally, metadata in the real formats of all five
sources, with a few bad inputs), ingests every source into ./longvid-demo/ingest/<source>/, and prints a summary.
Later stages (encode, train, audit, NIAH) run when their jobs are present in this checkout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.demo_corpus import make_demo_corpus
from pipelines.ingest import IngestConfig, run_ingest


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["source", "inputs", "samples", "failures", "frames", "video_min", "seconds", "samples/s"]
    lines = ["  ".join(f"{c:>10}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{str(r[c]):>10}" for c in cols))
    return "\n".join(lines)


def run_demo(out: Path, per_source: int = 3, num_cpus: int = 0, profile: str = "long", log=print) -> dict[str, Any]:
    import ray

    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    log(f"[demo] generating a synthetic corpus under {out / 'corpus'} ...")
    corpus = make_demo_corpus(out / "corpus", per_source=per_source)
    log(f"[demo] corpus ready in {time.time() - t0:.1f} s: {', '.join(corpus)}")
    kw: dict[str, Any] = {"include_dashboard": False}
    if num_cpus:
        kw["num_cpus"] = num_cpus
    ray.init(**kw)
    rows, summaries = [], {}
    try:
        for source, spec in corpus.items():
            cfg = IngestConfig(source=source, metadata=list(spec["metadata"]), videos=spec["videos"],
                               out=str(out / "ingest" / source), profile=profile, records_per_unit=2,
                               source_options=dict(spec.get("options", {})), quiet=True)
            s = run_ingest(cfg, log=log)
            summaries[source] = s
            rows.append({"source": source, "inputs": s["inputs"], "samples": s["samples"],
                         "failures": s["failures"], "frames": s["frames"],
                         "video_min": round(s["video_hours"] * 60, 2), "seconds": s["elapsed_s"],
                         "samples/s": s["samples_per_s"]})
    finally:
        ray.shutdown()
    total = {k: sum(r[k] for r in rows) for k in ("inputs", "samples", "failures", "frames")}
    total_min = sum(r["video_min"] for r in rows)
    elapsed = time.time() - t0
    log("\n[demo] ingest, one job per source:\n" + _table(rows))
    log(f"[demo] total: {total['samples']} samples + {total['failures']} failures = {total['inputs']} inputs; "
        f"{total['frames']} frames from {total_min:.1f} min of video in {elapsed:.1f} s")
    for source, s in summaries.items():
        if s["failures"]:
            log(f"[demo]   {source} failures: {json.dumps(s['failures_by_stage'])}  "
                f"(see {out / 'ingest' / source / 'failures'})")
    log(f"[demo] shards: {out / 'ingest' / '<source>' / 'shards'}; manifests: .../manifests; "
        f"wids index: .../index.json; summary: .../summary.json")
    result = {"out": str(out), "ingest": summaries, "elapsed_s": elapsed}
    (out / "demo-summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def run(args: argparse.Namespace) -> int:
    res = run_demo(Path(args.out), per_source=args.per_source, num_cpus=args.num_cpus or 0, profile=args.profile)
    bad = [s for s, v in res["ingest"].items() if v["inputs"] != v["samples"] + v["failures"] or not v["samples"]]
    return 1 if bad else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="longvid-demo", help="output folder (default ./longvid-demo, replaced)")
    p.add_argument("--per-source", type=int, default=3, help="videos per source (default 3)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--profile", default="long", help="sampling profile (default long)")


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthetic corpus in all five formats -> ingest on an embedded Ray",
                       description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
