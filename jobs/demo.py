"""`longvid demo`: the whole system on a fresh machine, on an embedded Ray, in a few minutes.

    synthetic corpus (real H.264 videos, metadata in the real formats of all five sources, a few bad inputs)
      -> ingest, one job per source          ./longvid-demo/ingest/<source>/
      -> encode with a tiny HiCo encoder     ./longvid-demo/tokens/<source>/
      -> audit against a small planted benchmark file   ./longvid-demo/audit/ (report.html, drop_list.txt)
      -> train the tiny short-to-long recipe on the token shards, honouring the drop list   ./longvid-demo/train/
      -> build and score a tiny NIAH set      ./longvid-demo/niah/ (heat map)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

# the pipelines (pandas, pyarrow, Ray...) are imported where used: `longvid --help` must not wait for them
STAGES = ("ingest", "encode", "audit", "train", "niah")


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["  ".join(f"{c:>10}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{str(r.get(c, '')):>10}" for c in cols))
    return "\n".join(lines)


def _ingest(out: Path, corpus: dict, profile: str, log: Callable) -> dict[str, Any]:
    from longvid.pipelines.ingest import IngestConfig, run_ingest

    rows, summaries = [], {}
    for source, spec in corpus.items():
        cfg = IngestConfig(source=source, metadata=list(spec["metadata"]), videos=spec["videos"],
                           out=str(out / "ingest" / source), profile=profile, records_per_unit=2,
                           source_options=dict(spec.get("options", {})), quiet=True)
        s = run_ingest(cfg, log=log)
        summaries[source] = s
        rows.append({"source": source, "inputs": s["inputs"], "samples": s["samples"], "failures": s["failures"],
                     "frames": s["frames"], "video_min": round(s["video_hours"] * 60, 2), "seconds": s["elapsed_s"]})
    log("\n[demo] ingest, one job per source:\n"
        + _table(rows, ["source", "inputs", "samples", "failures", "frames", "video_min", "seconds"]))
    total = {k: sum(r[k] for r in rows) for k in ("inputs", "samples", "failures", "frames")}
    log(f"[demo] ingest total: {total['samples']} samples + {total['failures']} failures = {total['inputs']} inputs;"
        f" {total['frames']} frames from {sum(r['video_min'] for r in rows):.1f} min of video")
    for source, s in summaries.items():
        if s["failures"]:
            log(f"[demo]   {source} failures: {json.dumps(s['failures_by_stage'])}  "
                f"(reasons in {out / 'ingest' / source / 'failures'})")
    return summaries


def _encode(out: Path, sources: list[str], log: Callable) -> dict[str, Any]:
    from longvid.pipelines.encode import EncodeConfig, run_encode

    summaries, rows = {}, []
    for source in sources:
        s = run_encode(EncodeConfig(shards=str(out / "ingest" / source), out=str(out / "tokens" / source),
                                    model="tiny", quiet=True), log=log)
        summaries[source] = s
        rows.append({"source": source, "samples": s["samples"], "failures": s["failures"], "seconds": s["elapsed_s"]})
    log("\n[demo] encode (tiny HiCo encoder, random weights; 16 tokens per frame):\n"
        + _table(rows, ["source", "samples", "failures", "seconds"]))
    return summaries


def _demo_benchmark(out: Path) -> Path:
    """A Video-MME-format file with two planted leaks: a HowTo100M video id (youtu.be form) and a copied caption."""
    import pandas as pd

    how = pd.read_parquet(out / "ingest" / "howto100m" / "manifests")
    mira = pd.read_parquet(out / "ingest" / "miradata" / "manifests")
    caption = max(mira.text.iloc[0].split("\n"), key=len)
    d = out / "benchmarks" / "Video-MME" / "videomme"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "video_id": ["001", "002", "003"],
        "duration": ["short"] * 3,
        "domain": ["Knowledge"] * 3,
        "sub_category": ["Demo"] * 3,
        "url": [f"https://youtu.be/{how.video_id.iloc[0]}", "https://www.youtube.com/watch?v=AAAAAAAAAAA",
                "https://www.youtube.com/watch?v=BBBBBBBBBBB"],
        "videoID": [how.video_id.iloc[0], "AAAAAAAAAAA", "BBBBBBBBBBB"],
        "question_id": ["001-1", "002-1", "003-1"],
        "task_type": ["Demo"] * 3,
        "question": ["What tool is used first?", f"Which description fits? {caption}",
                     "How many people appear in the video at the very end of the clip?"],
        "options": [["A. A wrench.", "B. A spoon."], ["A. Yes.", "B. No."], ["A. One.", "B. Two."]],
        "answer": ["A", "A", "B"],
    }).to_parquet(d / "test-00000-of-00001.parquet")
    return out / "benchmarks"


def _audit(out: Path, sources: list[str], log: Callable) -> dict[str, Any]:
    from longvid.pipelines.audit import audit

    bench = _demo_benchmark(out)
    res = audit([str(out / "ingest" / s) for s in sources], [str(bench)], out / "audit")
    by = res.leakage.to_pandas().groupby(["benchmark", "method"]).size().to_dict() if res.leakage.num_rows else {}
    log(f"\n[demo] audit: {res.rows} samples checked against {bench} (planted leaks): "
        f"{res.leakage.num_rows} findings {by}, {res.duplicates.num_rows} duplicate pairs, "
        f"{len(res.drop_keys)} keys in {out / 'audit' / 'drop_list.txt'}; report: {out / 'audit' / 'report.html'}")
    return {"findings": res.leakage.num_rows, "duplicates": res.duplicates.num_rows, "drop": len(res.drop_keys),
            "report": str(out / "audit" / "report.html")}


def _train(out: Path, log: Callable) -> dict[str, Any]:
    from longvid.jobs.train import load_recipe
    from longvid.pipelines.train import run_train

    cfg = load_recipe("tiny", data_root=str(out), out=str(out / "train"), num_workers=2)
    if (out / "audit" / "drop_list.txt").exists():
        cfg.exclude = ["audit/drop_list.txt"]  # the audit's drop list: those keys never reach a batch
    log("")
    s = run_train(cfg, log_fn=log)
    log(f"[demo] loss plots: {out / 'train' / 'stages' / '<stage>' / 'loss.png'}; metrics: .../metrics.jsonl")
    return s


def _niah(out: Path, checkpoint: str, log: Callable) -> dict[str, Any]:
    from longvid.pipelines.niah_eval import run_niah_demo

    log("")
    r = run_niah_demo(out / "niah", haystack=str(out / "ingest" / "ego4d"), checkpoint=checkpoint, log=log)
    return {"inputs": r["build"]["inputs"], "accuracy": r["eval"]["overall"], "heatmap": r["heatmap"]}


def run_demo(out: Path, per_source: int = 3, num_cpus: int = 0, profile: str = "long",
             stages: tuple[str, ...] = STAGES, log=print) -> dict[str, Any]:
    import ray

    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    log(f"[demo] generating a synthetic corpus under {out / 'corpus'} ...")
    from longvid.pipelines.demo_corpus import make_demo_corpus

    corpus = make_demo_corpus(out / "corpus", per_source=per_source)
    log(f"[demo] corpus ready in {time.time() - t0:.1f} s: {', '.join(corpus)}")
    # the dashboard serves the State API, which Ray Train's placement group cleaner queries (warnings without it)
    kw: dict[str, Any] = {"include_dashboard": "train" in stages, "address": "local"}
    if num_cpus:
        kw["num_cpus"] = num_cpus
    ray.init(**kw)
    result: dict[str, Any] = {"out": str(out)}
    timings: dict[str, float] = {}
    try:
        for stage in stages:
            t = time.time()
            if stage == "ingest":
                result["ingest"] = _ingest(out, corpus, profile, log)
            elif stage == "encode":
                result["encode"] = _encode(out, list(corpus), log)
            elif stage == "audit":
                result["audit"] = _audit(out, list(corpus), log)
            elif stage == "train":
                result["train"] = _train(out, log)
            elif stage == "niah":
                ckpt = result.get("train", {}).get("checkpoint") or "random:0"
                result["niah"] = _niah(out, ckpt, log)
            timings[stage] = round(time.time() - t, 1)
    finally:
        ray.shutdown()
    result["elapsed_s"] = round(time.time() - t0, 1)
    result["stage_seconds"] = timings
    log(f"\n[demo] done in {result['elapsed_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})."
        f" Everything is under {out}; per-job summary.json files hold the details.")
    (out / "demo-summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def run(args: argparse.Namespace) -> int:
    stages = tuple(s for s in args.stages.split(",") if s) if args.stages else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"demo: --stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    res = run_demo(Path(args.out), per_source=args.per_source, num_cpus=args.num_cpus or 0, profile=args.profile,
                   stages=stages)
    bad = [s for s, v in res.get("ingest", {}).items() if not v["samples"] or not v.get("complete", True)]
    return 1 if bad else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="longvid-demo", help="output folder (default ./longvid-demo, replaced)")
    p.add_argument("--per-source", type=int, default=3, help="videos per source (default 3)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--profile", default="long", help="sampling profile (default long)")
    p.add_argument("--stages", default="", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthetic corpus in all five formats -> ingest, encode, audit, train, NIAH",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m longvid demo")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
