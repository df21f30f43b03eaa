"""Encode benchmark: HiCo encoder throughput on this machine, tokens per frame, bytes of token shards.

    python bench/encode.py                          # UMT-L at 224 and 448, 2 threads
    python bench/encode.py --preset tiny --clips 8  # quick smoke run
    python bench/encode.py --sizes 224 --clips 4 --json bench/out/encode.json

Measures, per resolution (random weights: throughput does not depend on the weight values):
- preprocess frames/s (uint8 640x360 -> normalised square, bicubic antialiased),
- ViT frames/s without merging (dense tokens out: 196 per frame at 224, 784 at 448),
- HiCo frames/s with merging (ViT + ToMe to 16 tokens per frame) and the ratio of the two,
- merge time per clip on its own,
- token-shard bytes: a WebDataset tar of `<key>.json` + `<key>.tokens.npy` (float16 [clips, 64, D]) written
  for real, giving bytes per frame; scaled to an hour of video sampled at 1 fps (the dynamic_fps1 rule without
  its cap) and to an hour-long sample at the 512-frame cap of stages 3-4; dense (unmerged) tokens for comparison.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longvid.model.config import get_config  # noqa: E402
from longvid.model.hico import HiCoEncoder  # noqa: E402
from longvid.model.tome import merge_tokens  # noqa: E402
from longvid.model.umt import preprocess  # noqa: E402


def _time(fn, repeats: int) -> float:
    """Best wall time of `repeats` runs (after one warm-up), seconds."""
    return _time_interleaved([fn], repeats)[0]


def _time_interleaved(fns: list, repeats: int) -> list[float]:
    """Best wall time of each function, the functions run alternately (so a busy machine slows them alike)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def shard_bytes(n_samples: int, frames_per_sample: int, tokens_per_frame: int, dim: int) -> int:
    """Bytes of a real tar of n_samples token samples (float16), as the encode job writes them."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    clips = frames_per_sample // 4
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n_samples):
            key = f"webvid-{i:08d}"
            tokens = rng.standard_normal((clips, 4 * tokens_per_frame, dim)).astype(np.float16)
            npy = io.BytesIO()
            np.save(npy, tokens)
            meta = json.dumps({"key": key, "num_frames": frames_per_sample, "tokens_per_frame": tokens_per_frame,
                               "dim": dim, "dtype": "float16"}).encode()
            for name, data in ((f"{key}.json", meta), (f"{key}.tokens.npy", npy.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return len(buf.getvalue())


def bench_size(preset: str, size: int, clips: int, repeats: int) -> dict:
    cfg = get_config(preset, img_size=size)
    torch.manual_seed(0)
    enc = HiCoEncoder(cfg.umt).eval()
    frames_n = clips * cfg.umt.num_frames
    raw = np.random.default_rng(0).integers(0, 256, size=(frames_n, 360, 640, 3), dtype=np.uint8)
    x = preprocess(raw, size)[None]  # [1, 3, T, S, S]
    clip_batch = x.reshape(1, 3, clips, 4, size, size).permute(0, 2, 1, 3, 4, 5).reshape(clips, 3, 4, size, size)

    with torch.inference_mode():
        t_pre = _time(lambda: preprocess(raw, size), repeats)
        t_vit, t_hico = _time_interleaved([lambda: enc.encoder(clip_batch), lambda: enc(x)], repeats)
        dense = enc.encoder(clip_batch)
        t_merge = _time(lambda: merge_tokens(dense, enc.tokens_per_clip, cfg.umt.heads), repeats)
        out = enc(x)
    assert out.shape == (1, clips, 64, cfg.umt.width)

    d = cfg.umt.width
    per_frame_merged = 16 * d * 2  # float16 payload bytes
    sample_frames = 64
    n_samples = 4
    tar = shard_bytes(n_samples, sample_frames, 16, d)
    bytes_per_frame = tar / (n_samples * sample_frames)
    return {
        "preset": preset,
        "img_size": size,
        "clips": clips,
        "frames": frames_n,
        "vit_tokens_per_frame": cfg.umt.tokens_per_frame,
        "hico_tokens_per_frame": 16,
        "preprocess_fps": frames_n / t_pre,
        "vit_only_fps": frames_n / t_vit,
        "hico_fps": frames_n / t_hico,
        "merge_ms_per_clip": 1000 * t_merge / clips,
        "hico_over_vit_time": t_hico / t_vit,
        "payload_bytes_per_frame": per_frame_merged,
        "shard_bytes_per_frame": bytes_per_frame,
        "shard_overhead": bytes_per_frame / per_frame_merged - 1,
        "bytes_per_video_hour_1fps": bytes_per_frame * 3600,
        "bytes_per_hour_sample_cap512": bytes_per_frame * 512,
        "dense_bytes_per_video_hour_1fps": cfg.umt.tokens_per_frame * d * 2 * 3600,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="videochat-flash-7b", help="model preset for the encoder sizes")
    ap.add_argument("--sizes", default="224,448", help="comma-separated input resolutions")
    ap.add_argument("--clips", type=int, default=2, help="4-frame clips per timed batch")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs (best is kept) after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", default="bench/out/encode.json", help="where to write the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench_size(args.preset, int(s), args.clips, args.repeats) for s in args.sizes.split(",") if s]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    Path(args.json).write_text(
        json.dumps({"threads": args.threads, "torch": torch.__version__, "loadavg_1min": load, "rows": rows}, indent=2)
    )
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average {load:.1f}")
    print("| preset @ size | ViT tok/frame | HiCo tok/frame | preprocess fps | ViT-only fps | HiCo fps | "
          "merge ms/clip | shard B/frame | MB per video-hour @1fps | MB per 512-frame sample | dense MB/hour |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} @ {r['img_size']} | {r['vit_tokens_per_frame']} | {r['hico_tokens_per_frame']} | "
              f"{r['preprocess_fps']:.0f} | {r['vit_only_fps']:.2f} | {r['hico_fps']:.2f} | "
              f"{r['merge_ms_per_clip']:.1f} | {r['shard_bytes_per_frame']:.0f} | "
              f"{r['bytes_per_video_hour_1fps'] / 1e6:.1f} | {r['bytes_per_hour_sample_cap512'] / 1e6:.1f} | "
              f"{r['dense_bytes_per_video_hour_1fps'] / 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
