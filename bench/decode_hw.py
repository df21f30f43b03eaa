"""Hardware (NVDEC) against software decoding, ready for a node with an NVIDIA GPU (`ingest --hwaccel`).

    python bench/decode_hw.py                          # the synthetic 720p/1080p videos of bench/ingest.py
    python bench/decode_hw.py --videos a.mp4 b.mp4 --rounds 5 --minutes 2

For each video and mode (exact: the long profile's frames, `--decode-mode auto`; keyframe: the same frames snapped
to keyframes) the frames are decoded as an ingest worker decodes them (operators.decode.decode, one decoder thread,
resized to 224 with the torch resize), with hwaccel "none" (software) and "cuda" (NVDEC through PyAV's HWAccel),
in alternating rounds: frames per second of wall time and CPU seconds of this process (median of --rounds). Then
  max diff    the largest absolute pixel difference between the two decoders' frames, after the resize and at full
              resolution (the first --full-frames targets): 0 means NVDEC gave the software decoder's frames bit for
              bit (after the repack of its NV12 output into the stream's pixel format)
  full decode every frame of the video decoded in order, no RGB conversion (software: one thread and FFmpeg's
              automatic threads; NVDEC: the frames downloaded to memory): the decoders' raw rates
`decoder` says which decoder produced the frames (operators.decode DecodeStats.decoder: a stream NVDEC does not
support is decoded in software by PyAV). Without a CUDA device the script prints the software figures and why no
device could be opened (operators.decode.cuda_unavailable), and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import av  # noqa: E402
import numpy as np  # noqa: E402

from longvid.operators.decode import cuda_unavailable, decode  # noqa: E402
from longvid.operators.probe import probe  # noqa: E402
from longvid.operators.frame_rule import PROFILES, select_frames  # noqa: E402

MODES = {"exact": "auto", "keyframe": "keyframe"}


def default_videos(minutes: float) -> list[Path]:
    """bench/ingest.py's synthetic 720p and 1080p videos with 2 s and 10 s GOPs (its generator and cache)."""
    import ingest as bench_ingest  # bench/ingest.py

    opts = argparse.Namespace(bframes=3, preset="veryfast")
    return [bench_ingest.concat_hour(bench_ingest.clip(w, h, 30.0, g, opts), minutes)
            for w, h in ((1280, 720), (1920, 1080)) for g in (2, 10)]


def run(path: Path, idx: list[int], info, mode: str, hwaccel: str, size: int | None = 224):
    w0, c0 = time.perf_counter(), time.process_time()
    res = decode(path, idx, info, size=size, mode=mode, threads=1, resize_method="torch", hwaccel=hwaccel)
    return res, time.perf_counter() - w0, time.process_time() - c0


def full_decode(path: Path, hwaccel: str, threads: int | None) -> tuple[float, float, int]:
    """(frames/s of wall, CPU s, frames) of a sequential decode of every frame."""
    kw = {}
    if hwaccel == "cuda":
        from av.codec.hwaccel import HWAccel

        kw["hwaccel"] = HWAccel("cuda", allow_software_fallback=True)
    w0, c0 = time.perf_counter(), time.process_time()
    with av.open(str(path), **kw) as c:
        st = c.streams.video[0]
        if threads == 1:
            st.thread_count = 1
        else:
            st.thread_type = "AUTO"
        n = sum(1 for _ in c.decode(st))
    wall = time.perf_counter() - w0
    return n / wall, time.process_time() - c0, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="*", type=Path, help="videos to measure (default: bench/ingest.py's)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the default videos")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full-frames", type=int, default=16, help="targets compared at full resolution")
    ap.add_argument("--no-full-decode", action="store_true", help="skip the sequential decode of every frame")
    args = ap.parse_args(argv)
    why = cuda_unavailable()
    decoders = ["none"] + ([] if why else ["cuda"])
    paths = args.videos or default_videos(args.minutes)
    run(paths[0], [0, 1], probe(paths[0]), "auto", "none")  # untimed: the first resize imports torch
    print("| video | mode | frames | decoder | frames/s | CPU s | max diff (224 / full res) |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        info = probe(path)
        idx = list(select_frames(info.num_frames, info.fps, PROFILES["long"]).indices)
        for label, mode in MODES.items():
            walls: dict[str, list[float]] = {d: [] for d in decoders}
            cpus: dict[str, list[float]] = {d: [] for d in decoders}
            out = {}
            for r in range(args.rounds):
                for hw in (decoders if r % 2 == 0 else decoders[::-1]):
                    res, wall, cpu = run(path, idx, info, mode, hw)
                    walls[hw].append(wall)
                    cpus[hw].append(cpu)
                    out[hw] = res
            diff = "-"
            if "cuda" in out:
                small = int(np.abs(out["cuda"].frames.astype(np.int16) - out["none"].frames.astype(np.int16)).max())
                few = idx[: args.full_frames]
                a = run(path, few, info, mode, "none", size=None)[0].frames
                b = run(path, few, info, mode, "cuda", size=None)[0].frames
                diff = f"{small} / {int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())}"
            for hw in decoders:
                wall = statistics.median(walls[hw])
                print(f"| {path.name} | {label} | {len(idx)} | {out[hw].stats.decoder} | {len(idx) / wall:.1f} | "
                      f"{statistics.median(cpus[hw]):.2f} | {diff if hw == 'cuda' else '-'} |", flush=True)
        if not args.no_full_decode:
            for hw, threads in [("none", 1), ("none", None)] + ([("cuda", 1)] if "cuda" in decoders else []):
                fps, cpu, n = full_decode(path, hw, threads)
                name = "software" if hw == "none" else "cuda"
                print(f"| {path.name} | full decode ({'1 thread' if threads == 1 else 'auto threads'}) | {n} | "
                      f"{name} | {fps:.1f} | {cpu:.2f} | - |", flush=True)
    if why:
        print(f"\nNo CUDA device: {why}. Software figures only; run this on a GPU node for the NVDEC columns.")
    print(f"\nCommand: `python bench/decode_hw.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
          f"({os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
