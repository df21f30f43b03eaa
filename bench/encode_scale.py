"""Encode at scale: what the driver carries, the design before issue 15 vs the current one, in ONE run.

    python bench/encode_scale.py                          # 1, 2, 4 actors; a small corpus; an embedded Ray per run
    python bench/encode_scale.py --address auto           # on a running cluster (every node sees --work)
    python bench/encode_scale.py --encoder tiny --gpu-fps 0 --actors 1   # the real tiny HiCo on CPU actors
    python bench/encode_scale.py --units 8 --samples 6 --write-md        # the table for BENCHMARKS.md

Designs, same input, same stand-in encoder, same resources:
  old   the encode of commit OLD_REV (pipelines/encode.py read from git, never installed): Ray Data streams every
        clip's tokens from the actor pool to the driver, whose Assembler spills samples to a scratch folder and
        writes every token shard itself
  new   pipelines/encode.py: each actor decodes (in tasks on its node), encodes and commits whole units; the driver
        gets a few hundred bytes of counts per unit

The stand-in encoder is as fast as a GPU would be: each call sleeps as long as --gpu-fps frames/s takes (1,200 at
224 px: the estimate of issue 15 for one GPU), and returns tokens [n, 64, D] computed from each clip's own pixels
(a checksum times a fixed pattern), so a clip's tokens do not depend on its batch: both designs must write the same
bytes, which the run checks (token shards, manifests, failures, index.json).

Per run (a fresh driver process each; with --address they all join that cluster): frames/s (frames / the job's
wall time, Ray start excluded, actor start included), driver peak RSS (getrusage) and its growth during the job,
bytes the driver received (old: the batches Ray Data handed it; new: every object it ray.get), the object store's
peak use (the GCS's store stats every 0.2 s, summed over nodes), and the GPU-side batch fill: clips per encoder call
/ batch_clips (old: counted from a call id the stand-in adds to its rows; new: the actors' own counts).
Results: bench/out/encode_scale.json and, with --write-md, the table in BENCHMARKS.md "Encode at scale".
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pickle
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
OLD_REV = "6426055"  # the last commit whose pipelines/encode.py streams tokens through the driver (Assembler)
LENGTHS = (8, 12, 20, 28, 36, 52, 64, 16)  # frames per sample, cycled: samples of uneven clip counts


# ---------------------------------------------------------------------------------------------------- corpus


def make_corpus(root: Path, units: int, samples: int, size: int) -> dict:
    """An ingest output (what `longvid ingest` writes) of `units` units x `samples` video samples, smooth synthetic
    frames (cheap to code), one sample in 16 with a broken mp4 (a failure row). Reused when it matches."""
    from longvid.manifests.schema import MANIFEST_SCHEMA
    from longvid.operators.mp4 import encode_mp4
    from longvid.operators.write import UnitWriter, sample_members

    spec = {"units": units, "samples": samples, "size": size}
    done = root / "corpus.json"
    if done.exists() and json.loads(done.read_text()).get("spec") == spec:
        return json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    yy, xx = np.mgrid[0:size, 0:size]
    frames_total = n = 0
    for u in range(units):
        w = UnitWriter(str(root), u, 1 << 30, MANIFEST_SCHEMA)
        for i in range(samples):
            t = LENGTHS[n % len(LENGTHS)]
            key = f"v{u:03d}_{i:03d}"
            if n % 16 == 7:
                mp4 = b"not an mp4" * 30
            else:
                base = np.stack([(xx + 3 * n) % 256, (yy + 5 * n) % 256, (xx + yy) // 2 % 256], -1).astype(np.uint8)
                mp4 = encode_mp4(np.stack([np.roll(base, 2 * k, axis=1) for k in range(t)]))
                frames_total += t
            w.add(key, sample_members({"key": key, "num_frames": t, "conversations": []}, {"mp4": mp4}),
                  {"key": key, "source": "webvid", "video_id": key, "num_frames": t, "resolution": size,
                   "duration": t / 2, "bytes": len(mp4)})
            n += 1
        w.commit()
    info = {"spec": spec, "samples": n, "frames": frames_total}
    done.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------------- encoders


class StandIn:
    """The encoder as fast as a GPU: same constructor and call as pipelines.encode_model.HiCoBatchEncoder."""

    gpu_fps = 1200.0  # set by the driver before the class is pickled to the actors

    def __init__(self, model: str, resolution: int, checkpoint: str, dtype: str, seed: int, cache_dir: str,
                 s3: dict | None, cpu_threads: int = 1) -> None:
        from longvid.model.config import get_config
        from longvid.pipelines.encode_config import DTYPES

        dim = get_config(model, img_size=resolution).encoder_dim
        self.store = np.dtype(DTYPES[dtype])
        self.pattern = np.random.default_rng(seed).standard_normal((64, dim)).astype(np.float32)
        self.device, self.report = "stand-in", ""

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        status = np.asarray(batch["status"]).astype(object)
        todo = (status == "ok") & (np.asarray(batch["num_clips"]) > 0)
        frames = np.asarray(batch["frames"])
        out = np.zeros((len(status), 64, self.pattern.shape[1]), self.store)
        for i in np.flatnonzero(todo):
            out[i] = (self.pattern * (1.0 + float(frames[i, :, ::7, ::7].mean()) / 255.0)).astype(self.store)
        if self.gpu_fps > 0:
            time.sleep(max(0.0, 4 * int(todo.sum()) / self.gpu_fps - (time.perf_counter() - t0)))
        return {"unit": batch["unit"], "key": batch["key"], "clip": batch["clip"], "num_clips": batch["num_clips"],
                "status": status, "reason": np.asarray(batch["reason"]).astype(object),
                "field": np.asarray(batch["field"]).astype(object), "info": batch["info"], "tokens": out}


def counting(cls: type) -> type:
    """The old design's encoder with two more columns: a call id and the clips that call encoded."""

    class Counted(cls):
        def __call__(self, batch: dict) -> dict:
            res = super().__call__(batch)
            n = len(res["key"])
            todo = int(((np.asarray(batch["status"]).astype(object) == "ok") & (np.asarray(batch["num_clips"]) > 0)).sum())
            res["bench_call"] = np.full(n, uuid.uuid4().hex, dtype=object)
            res["bench_clips"] = np.full(n, todo)
            return res

    return Counted


def load_old():
    """pipelines/encode.py of OLD_REV as a module of its own (pickled by value to the workers)."""
    import ray.cloudpickle

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_REV}:pipelines/encode.py"], capture_output=True,
                         text=True, check=True).stdout
    path = OUT / "encode_scale" / "encode_old.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("longvid_bench_encode_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    ray.cloudpickle.register_pickle_by_value(mod)
    return mod


# ---------------------------------------------------------------------------------------------------- one run


class StorePeak(threading.Thread):
    """The object store's peak use (bytes, all nodes), from the GCS every 0.2 s."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.peak, self.stop = address, 0, threading.Event()

    def run(self) -> None:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(self.address)
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, int(get_memory_info_reply(state).store_stats.object_store_bytes_used))
            except Exception:  # noqa: BLE001 - a missed sample
                pass
            self.stop.wait(0.2)


def child(spec: dict) -> None:
    """A fresh driver: Ray, one encode (old or new design), one RESULT line."""
    import ray

    from longvid.pipelines.encode_config import EncodeConfig
    from longvid.pipelines.ray_session import ensure_ray

    ensure_ray(spec["address"], spec["num_cpus"])
    StandIn.gpu_fps = spec["gpu_fps"]
    cfg = EncodeConfig(shards=spec["shards"], out=spec["out"], model=spec["model"], dtype="fp32",
                       batch_clips=spec["batch_clips"], actors=spec["actors"], cpus_per_actor=spec["cpus_per_actor"],
                       shard_size_mb=spec["shard_size_mb"], quiet=True)
    received = [0]
    calls: dict[str, int] = {}
    get = ray.get

    def counted_get(*a, **k):  # every object the driver's own code takes from Ray
        res = get(*a, **k)
        received[0] += len(pickle.dumps(res))
        return res

    ray.get = counted_get
    import ray.data  # noqa: F401 - what either design imports, before the baseline RSS
    import torch  # noqa: F401

    import longvid.model.config  # noqa: F401
    import longvid.pipelines.encode  # noqa: F401

    store = StorePeak(ray.get_runtime_context().gcs_address)
    store.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if spec["design"] == "old":
        old = load_old()
        from longvid.pipelines.encode_model import HiCoBatchEncoder

        old.HiCoActor = counting(StandIn if spec["encoder"] == "standin" else HiCoBatchEncoder)
        feed = old.Assembler.feed

        def counted_feed(self, batch):  # what Ray Data handed the driver
            for v in batch.values():
                received[0] += int(v.nbytes) + (sum(len(str(x)) for x in v) if v.dtype == object else 0)
            for c, n in zip(batch["bench_call"], batch["bench_clips"]):
                calls[str(c)] = int(n)
            return feed(self, batch)

        old.Assembler.feed = counted_feed
        ray.get = get  # Ray Data's blocks are counted as batches above
        summary = old.run_encode(cfg, log=lambda m: None)
        busy = [n for n in calls.values() if n]
        batches = {"calls": len(busy), "clips": sum(busy)}
    else:
        from longvid.pipelines.encode import run_encode

        summary = run_encode(cfg, log=lambda m: None, encoder_cls=StandIn if spec["encoder"] == "standin" else None)
        batches = summary["batches"]
    store.stop.set()
    store.join()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {"design": spec["design"], "actors": spec["actors"], "frames": summary["frames"],
           "elapsed_s": summary["elapsed_s"], "samples": summary["samples"], "failures": summary["failures"],
           "token_bytes": summary["bytes"], "driver_peak_rss_mib": rss1 / 1024, "driver_rss_growth_mib": (rss1 - rss0) / 1024,
           "driver_received_bytes": received[0], "store_peak_bytes": store.peak,
           "batch_calls": batches["calls"], "batch_clips": batches["clips"]}
    print("RESULT " + json.dumps(res), flush=True)


def outputs_of(out: Path) -> dict[str, bytes]:
    names = [p for d in ("shards", "manifests", "failures") for p in sorted((out / d).glob("*")) if p.is_file()]
    return {str(p.relative_to(out)): p.read_bytes() for p in names + [out / "index.json"]}


# ---------------------------------------------------------------------------------------------------- main


def table(rows: list[dict], args: argparse.Namespace, corpus: dict, same: dict[int, bool]) -> str:
    head = ("| actors | design | frames/s | driver peak RSS (growth) MiB | bytes the driver received | per token byte "
            "| object store peak MiB | clips per call / batch_clips | same bytes as old |")
    lines = [head, "|" + "---|" * 9]

    def size(n: int) -> str:
        return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"

    for r in rows:
        fill = r["batch_clips"] / max(1, r["batch_calls"]) / args.batch_clips
        lines.append(f"| {r['actors']} | {r['design']} | {r['frames'] / r['elapsed_s']:.0f} | "
                     f"{r['driver_peak_rss_mib']:.0f} (+{r['driver_rss_growth_mib']:.0f}) | "
                     f"{size(r['driver_received_bytes'])} | {r['driver_received_bytes'] / r['token_bytes']:.2g} | "
                     f"{r['store_peak_bytes'] / 2**20:.0f} | {fill:.3f} ({r['batch_clips']} in {r['batch_calls']}) | "
                     f"{'-' if r['design'] == 'old' else ('yes' if same[r['actors']] else 'NO')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", default="1,2,4", help="actor counts, comma-separated (1,2,4)")
    ap.add_argument("--units", type=int, default=8, help="ingest units of the corpus (8)")
    ap.add_argument("--samples", type=int, default=6, help="samples per unit (6)")
    ap.add_argument("--size", type=int, default=224, help="frame side (224)")
    ap.add_argument("--batch-clips", type=int, default=16)
    ap.add_argument("--gpu-fps", type=float, default=1200.0, help="the stand-in's speed, frames/s per actor (1200)")
    ap.add_argument("--encoder", choices=("standin", "tiny"), default="standin")
    ap.add_argument("--cpus-per-actor", type=float, default=0.25, help="(0.25: the stand-in sleeps)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of each embedded Ray (2)")
    ap.add_argument("--address", default="", help="a Ray cluster to join (its nodes must see --work)")
    ap.add_argument("--work", default=str(OUT / "encode_scale"), help="corpus and outputs")
    ap.add_argument("--write-md", action="store_true", help="replace the table in BENCHMARKS.md 'Encode at scale'")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    work = Path(args.work)
    corpus = make_corpus(work / "ingest", args.units, args.samples, args.size)
    rows, same = [], {}
    for n in [int(x) for x in args.actors.split(",")]:
        outs = {}
        for design in ("old", "new"):
            out = work / f"tokens-{design}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            spec = {"design": design, "actors": n, "shards": str(work / "ingest"), "out": str(out),
                    "model": "videochat-flash-7b" if args.encoder == "standin" else "tiny",
                    "batch_clips": args.batch_clips, "cpus_per_actor": args.cpus_per_actor, "gpu_fps": args.gpu_fps,
                    "encoder": args.encoder, "address": args.address, "num_cpus": args.num_cpus,
                    "shard_size_mb": 1024.0}
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                sys.exit(f"{design} with {n} actors failed:\n{p.stderr[-4000:]}")
            r = json.loads(line[0][len("RESULT "):])
            rows.append(r)
            outs[design] = outputs_of(out)
            print(json.dumps(r), flush=True)
        same[n] = outs["old"] == outs["new"]
    md = table(rows, args, corpus, same)
    cmd = "python bench/encode_scale.py " + " ".join(a for a in sys.argv[1:] if a != "--write-md")
    enc = (f"stand-in at {args.gpu_fps:g} frames/s per actor" if args.encoder == "standin"
           else "the tiny HiCo encoder (fp32 on CPU)")
    note = (f"`{cmd.strip()}`: {corpus['samples']} samples in {args.units} units ({corpus['frames']} frames at "
            f"{args.size} px, 1 sample in 16 a broken mp4), batch_clips {args.batch_clips}, {enc}, "
            f"{args.cpus_per_actor:g} CPU per actor, "
            f"{'cluster ' + args.address if args.address else f'one node, embedded Ray of {args.num_cpus} CPUs'}.")
    print(note + "\n\n" + md)
    (OUT / "encode_scale.json").write_text(json.dumps({"note": note, "runs": rows, "same": same}, indent=1))
    if args.write_md:
        write_md(note, md)


def write_md(note: str, md: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    start = text.index("## Encode at scale")
    begin, end = "<!-- encode_scale table -->", "<!-- /encode_scale table -->"
    a, b = text.index(begin, start), text.index(end, start)
    path.write_text(text[:a] + begin + "\n" + note + "\n\n" + md + "\n" + text[b:])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
