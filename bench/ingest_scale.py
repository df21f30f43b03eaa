"""Ingest concurrency benchmark: the real `run_ingest` (embedded Ray, 2 CPUs) under several settings, side by side.

    python bench/ingest_scale.py                 # make the corpus, run every variant --repeats times, interleaved
    python bench/ingest_scale.py --keep          # reuse bench/out/ingest_scale/corpus when it is there
    python bench/ingest_scale.py --write-md      # also print the markdown table for BENCHMARKS.md
    python bench/ingest_scale.py --variants ramp8x8,fixed4 --repeats 3

Corpus (synthetic.faulty_corpus.make_corpus + synthetic.videos.make_video): 90 short clips of 30 small H.264 videos
(160x120, 3 s) + 9 bad rows (one per kind) + 8 longer videos (4 x 640x360 60 s, 4 x 1280x720 30 s, 2 s GOPs,
B-frames) spread through the metadata: 107 MiraData v1 rows, profile long (64 frames from each longer video).

Variants (one setting changed from the default at a time):
  old            fixed unit of unit_size() rows (the old default: 349 at the long profile, i.e. one unit here)
  ramp8x8        the default: 8 units of 8 rows, then 8 of 16, 8 of 32, ... up to unit_size()
  ramp8x4        4 units per size instead of 8
  child_per_unit ramp8x8 with a new decoder child for every unit (the code before this benchmark)
  fixed4, fixed16  --records-per-unit 4 / 16
  inflight1x, inflight4x   max_in_flight = 1x / 4x the CPUs (default 2x)
  threads_auto   decoder_threads 0 (FFmpeg picks: one thread per core) instead of 1, while every CPU runs a unit

Each run is a fresh process (fresh embedded Ray). Measured per run: the job's wall time (run_ingest, Ray start
excluded and shown apart), inputs/s, video-hours per core-hour (wall x CPUs), unit CPU (the workers' and decoder
children's getrusage, summed by the job), the CPU of every process of the run (a 0.25 s /proc poll of the processes
tagged with this run's environment variable: a floor), peak RSS of the driver (its own getrusage) and of the largest
task worker / decoder child (VmHWM from the poll), the object store's use (ray memory summary after the job) and
the pickled size of the largest unit's item list (the only sizable task argument), and a load-independent model:
the wall time on 2 idle CPUs of these units (each unit's CPU seconds from its progress line, run in order on the
first free CPU; a box shared with other jobs gives a run far less than 2 CPUs). Every run's manifest and failure
rows (key, sha256 / stage) are compared with the first run's: settings must not change the output.
Results: bench/out/ingest_scale.json (every run) and, with --write-md, a markdown table of medians on stdout.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
WORK = OUT / "ingest_scale"
CPUS = 2
TAG = "LONGVID_INGEST_SCALE_RUN"

# name -> (IngestConfig overrides, pipelines.ingest constants to set, what it is)
VARIANTS: dict[str, tuple[dict, dict, str]] = {
    "old": ({"records_per_unit": -1}, {}, "fixed unit_size() rows (old default)"),
    "ramp8x8": ({}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 8}, "ramp 8 rows x 8 units, doubling"),
    "ramp8x4": ({}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 4}, "ramp 8 rows x 4 units, doubling"),
    "child_per_unit": ({}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 8, "REUSE_DECODER": False},
                       "ramp 8x8, a new decoder child per unit (before)"),
    "fixed4": ({"records_per_unit": 4}, {}, "fixed 4 rows"),
    "fixed16": ({"records_per_unit": 16}, {}, "fixed 16 rows"),
    "inflight1x": ({"max_in_flight": CPUS}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 8}, "ramp 8x8, in flight 1x CPUs"),
    "inflight4x": ({"max_in_flight": 4 * CPUS}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 8}, "ramp 8x8, in flight 4x CPUs"),
    "threads_auto": ({"decoder_threads": 0}, {"RAMP_FIRST": 8, "RAMP_REPEAT": 8}, "ramp 8x8, decoder threads auto"),
}
DEFAULT_ORDER = ["old", "ramp8x8", "child_per_unit", "fixed4", "fixed16", "inflight1x", "inflight4x", "threads_auto"]


# ---------------------------------------------------------------------------------------------------- corpus


def make_corpus(root: Path, keep: bool) -> dict:
    """The benchmark corpus under `root` (reused when --keep and complete)."""
    from longvid.synthetic.faulty_corpus import extra_key, extra_row, make_corpus as faulty_corpus
    from longvid.operators.sources.miradata import raw_video_path
    from longvid.synthetic.videos import make_video

    done = root / "corpus.json"
    if keep and done.exists():
        return json.loads(done.read_text())
    t = time.time()
    if root.exists():
        shutil.rmtree(root)
    c = faulty_corpus(root, n_videos=30, clips_per_video=3, bad_per_kind=1, seed=3, cache=WORK / "base")
    longs = [(640, 360, 60.0)] * 4 + [(1280, 720, 30.0)] * 4
    with open(c.metadata, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    rng = random.Random(7)
    long_keys = []
    for i, (w, h, secs) in enumerate(longs):
        did = 800_001 + i
        cached = WORK / "base" / f"long-{w}x{h}-{secs:g}s-{i}.mp4"
        if not cached.exists():
            tmp = cached.with_name(cached.name + ".tmp.mp4")
            make_video(tmp, seconds=secs, fps=30, width=w, height=h, gop=60, seed=300 + i)
            tmp.rename(cached)
        dst = c.videos / raw_video_path(did)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(cached, dst)
        body.insert(rng.randrange(len(body) + 1), extra_row(did, 0.5, secs - 0.5, f"a longer video {i}"))
        long_keys.append(extra_key(did, 0.5, secs - 0.5))
    with open(c.metadata, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    info = {"metadata": str(c.metadata), "videos": str(c.videos), "rows": len(body), "long_rows": len(longs),
            "good": len(c.good_keys) + len(longs), "bad": c.rows - len(c.good_keys),
            "made_in_s": round(time.time() - t, 1)}
    done.write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------------------------------------------- one run


def child(spec: dict) -> None:
    """Runs in a fresh process: start Ray, run_ingest with the variant's settings, print one RESULT line."""
    import ray

    import longvid.pipelines.ingest as ingest
    import longvid.pipelines.ingest_config as ingest_config

    for k, v in spec["constants"].items():  # the unit schedule's constants live with the settings
        setattr(ingest_config if hasattr(ingest_config, k) else ingest, k, v)
    cfg = ingest.IngestConfig(**spec["config"])
    if cfg.records_per_unit == -1:  # the old default: one fixed unit of the shard-filling size
        cfg.records_per_unit = 0
        cfg.records_per_unit = cfg.unit_size()
    t = time.time()
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=True)
    ray_start = time.time() - t
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        print(msg, file=sys.stderr, flush=True)

    t = time.time()
    summary = ingest.run_ingest(cfg, log=log)
    wall = time.time() - t
    store = ""
    try:
        from ray._private.internal_api import memory_summary

        store = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception as e:  # noqa: BLE001 - informational only
        store = f"unavailable: {type(e).__name__}: {e}"
    # the largest unit argument, pickled as Ray would (cloudpickle of the item list)
    items = ingest._check_inputs(cfg)
    sizes = [len(pickle.dumps(u)) for _, u in ingest.cut_units(items, cfg.unit_schedule(), cfg.limit)]
    ray.shutdown()
    progress = [ln for ln in lines if "inputs/s" in ln]
    unit_cpu = {int(m.group(1)): float(m.group(2)) for m in
                (re.search(r"\] unit (\d+): .*\(([\d.]+) CPU-s\)", ln) for ln in progress) if m}
    res = {"wall_s": wall, "ray_start_s": ray_start, "summary": {k: v for k, v in summary.items() if k != "versions"},
           "driver_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "object_store": store, "unit_arg_bytes_max": max(sizes or [0]), "unit_arg_bytes_total": sum(sizes),
           "units": len(sizes), "unit_cpu_s": [unit_cpu.get(i) for i in range(len(sizes))],
           "idle_model_s": list_schedule([unit_cpu.get(i) or 0.0 for i in range(len(sizes))], CPUS),
           "last_progress": progress[-1] if progress else "", "first_log": lines[0] if lines else ""}
    print("RESULT " + json.dumps(res, default=str), flush=True)


def list_schedule(costs: list[float], cpus: int) -> float:
    """Makespan of running `costs` in order, each on the first free CPU (what the driver does with >= 1 unit
    queued per CPU): the job's wall time on an idle box with these units' CPU seconds, dispatch not counted."""
    free = [0.0] * cpus
    for c in costs:
        i = free.index(min(free))
        free[i] += c
    return max(free)


class Poll(threading.Thread):
    """CPU seconds and peak RSS of every process tagged with this run's environment variable."""

    def __init__(self, tag: str, every: float = 0.25):
        super().__init__(daemon=True)
        self.tag = f"{TAG}={tag}".encode()
        self.every = every
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)
        self.sample()

    def sample(self) -> None:
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                if pid not in self.role:
                    if self.tag not in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                        self.role[pid] = ""
                        continue
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    self.role[pid] = role_of(cmd)
                if not self.role[pid]:
                    continue
                f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                self.cpu[pid] = (int(f[11]) + int(f[12])) / self.tick
                for ln in Path(f"/proc/{d}/status").read_text().splitlines():
                    if ln.startswith("VmHWM:"):
                        self.hwm[pid] = max(self.hwm.get(pid, 0.0), int(ln.split()[1]) / 1024)
            except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
                continue

    def peak(self, role: str) -> float:
        return max([v for p, v in self.hwm.items() if self.role.get(p) == role] or [0.0])


def role_of(cmd: str) -> str:
    if cmd.startswith(("ray::run_unit", "ray::IDLE")) or "default_worker.py" in cmd:
        return "worker"
    if "spawn_main" in cmd:
        return "decoder"
    if "ingest_scale.py" in cmd:
        return "driver"
    return "ray"


def run_variant(name: str, rep: int, corpus: dict, log_dir: Path) -> dict:
    overrides, constants, _ = VARIANTS[name]
    out = WORK / "runs" / f"{name}-{rep}"
    if out.exists():
        shutil.rmtree(out)
    config = {"source": "miradata", "metadata": [corpus["metadata"]], "videos": corpus["videos"], "out": str(out),
              "profile": "long", "num_cpus": CPUS, **overrides}
    spec = {"config": config, "constants": constants}
    tag = f"{name}-{rep}-{os.getpid()}"
    load0 = os.getloadavg()
    poll = Poll(tag)
    poll.start()
    t = time.time()
    log = log_dir / f"{name}-{rep}.log"
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                           stderr=f, text=True, env={**os.environ, TAG: tag, "RAY_DEDUP_LOGS": "0"}, timeout=1200)
    total = time.time() - t
    poll.stop.set()
    poll.join()
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{name} run {rep} failed (exit {p.returncode}); see {log}")
    res = json.loads(lines[-1][len("RESULT "):])
    s = res["summary"]
    res.update(name=name, rep=rep, total_s=total, load_before=load0, load_after=os.getloadavg(),
               tree_cpu_s=sum(poll.cpu.values()),
               worker_peak_mib=poll.peak("worker"), decoder_peak_mib=poll.peak("decoder"),
               outputs=output_digest(out))
    wall = res["wall_s"]
    res["inputs_per_s"] = s["inputs"] / wall
    res["vh_per_core_h"] = s["video_hours"] / (wall / 3600 * CPUS)
    res["unit_cpu_util"] = s["unit_cpu_seconds"] / (wall * CPUS)
    res["tree_cpu_util"] = res["tree_cpu_s"] / ((total) * CPUS)
    res["vh_per_cpu_h"] = s["video_hours"] / (s["unit_cpu_seconds"] / 3600) if s["unit_cpu_seconds"] else None
    shutil.rmtree(out, ignore_errors=True)
    return res


def output_digest(out: Path) -> dict:
    import pandas as pd

    man = pd.read_parquet(out / "manifests", columns=["key", "sha256"])
    fail = pd.read_parquet(out / "failures", columns=["key", "stage"])
    return {"samples": dict(sorted(zip(man.key, man.sha256))), "failures": dict(sorted(zip(fail.key, fail.stage)))}


# ---------------------------------------------------------------------------------------------------- report


def store_line(text: str) -> str:
    m = re.search(r"Plasma memory usage (\S+ \S+), (\d+) objects", text or "")
    return f"{m.group(1)}, {m.group(2)} objects" if m else (text or "").strip().splitlines()[0:1][0][:60] if text else ""


def table(runs: list[dict], order: list[str]) -> str:
    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else float("nan")

    head = ("| variant | units | job wall s, median (each) | inputs/s | video-h per core-h | unit CPU s "
            "| model: wall on 2 idle CPUs s | unit CPU / (wall x 2) "
            "| all processes' CPU / (run x 2) | video-h per CPU-h | driver / worker / decoder peak RSS MiB "
            "| largest unit arg | object store after the job |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in order:
        rs = [r for r in runs if r["name"] == name]
        if not rs:
            continue
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        lines.append(
            f"| {name}: {VARIANTS[name][2]} | {rs[0]['units']} | {med([r['wall_s'] for r in rs]):.1f} ({walls}) "
            f"| {med([r['inputs_per_s'] for r in rs]):.2f} | {med([r['vh_per_core_h'] for r in rs]):.1f} "
            f"| {med([r['summary']['unit_cpu_seconds'] for r in rs]):.1f} "
            f"| {med([r.get('idle_model_s') for r in rs]):.1f} "
            f"| {100 * med([r['unit_cpu_util'] for r in rs]):.0f}% | {100 * med([r['tree_cpu_util'] for r in rs]):.0f}% "
            f"| {med([r['vh_per_cpu_h'] for r in rs]):.1f} "
            f"| {med([r['driver_maxrss_mib'] for r in rs]):.0f} / {med([r['worker_peak_mib'] for r in rs]):.0f} / "
            f"{med([r['decoder_peak_mib'] for r in rs]):.0f} "
            f"| {rs[0]['unit_arg_bytes_max'] / 1024:.1f} KiB | {store_line(rs[0]['object_store'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="reuse the corpus in bench/out/ingest_scale/corpus")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=",".join(DEFAULT_ORDER))
    ap.add_argument("--write-md", action="store_true", help="print the markdown table")
    ap.add_argument("--from-json", help="only print the markdown table of a saved bench/out/ingest_scale.json")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        names = list(dict.fromkeys(r["name"] for r in saved["runs"]))
        print(table(saved["runs"], [n for n in dict.fromkeys(DEFAULT_ORDER + list(VARIANTS)) if n in names]))
        return 0
    order = [v for v in args.variants.split(",") if v]
    unknown = [v for v in order if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(WORK / "corpus", args.keep)
    print(f"corpus: {corpus['rows']} rows ({corpus['good']} good incl. {corpus['long_rows']} longer videos, "
          f"{corpus['bad']} bad)", file=sys.stderr)
    log_dir = WORK / "logs"
    log_dir.mkdir(exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()
    runs: list[dict] = []
    ref = None
    for rep in range(args.repeats):
        k = rep % len(order)
        for name in order[k:] + order[:k]:  # interleaved, a different variant first in each round
            r = run_variant(name, rep, corpus, log_dir)
            if ref is None:
                ref = r["outputs"]
            r["same_output"] = r["outputs"] == ref
            del r["outputs"]
            runs.append(r)
            print(f"  {name} #{rep}: {r['wall_s']:.1f} s job ({r['ray_start_s']:.1f} s Ray start), {r['units']} units, "
                  f"unit CPU {100 * r['unit_cpu_util']:.0f}%, load {r['load_before'][0]:.2f}, "
                  f"same output: {r['same_output']}", file=sys.stderr)
    elapsed = time.time() - t0
    res = {"cpus": CPUS, "corpus": corpus, "elapsed_s": elapsed, "load_start": load0, "load_end": os.getloadavg(),
           "loads_before_runs": [r["load_before"][0] for r in runs], "runs": runs,
           "all_same_output": all(r["same_output"] for r in runs)}
    (OUT / "ingest_scale.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"bench took {elapsed:.0f} s; load average (1 min) before the runs: "
          f"{min(res['loads_before_runs']):.2f}-{max(res['loads_before_runs']):.2f}; all outputs identical: "
          f"{res['all_same_output']}; wrote {OUT / 'ingest_scale.json'}", file=sys.stderr)
    if args.write_md:
        print(table(runs, order))
        ex = next((r for r in runs if r["name"] == "ramp8x8"), runs[0])
        print(f"\nProgress line (last of a ramp8x8 run):\n\n    {ex['last_progress']}\n")
    return 0 if res["all_same_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
