"""Synthetic token and frame shards, learnable from their tokens, for tests and benchmarks (bench/loader.py).

    write_synthetic_token_shards: an encode-style job folder (shards/, manifests/, index.json), with chosen defects
    write_synthetic_frame_shards: an ingest-style job folder (<key>.json + <key>.mp4) with label-coloured frames
    synthetic_sample_info: the ingest-style json of one such sample
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from longvid.model.constants import TOKENS_PER_CLIP
from longvid.operators.train_sample import FRAME_EXT, JSON_EXT, TOKEN_EXT


_WORDS = ["red car", "blue kite", "green door", "yellow bird", "white cat", "black dog", "orange ball", "grey boat"]


def synthetic_sample_info(key: str, source: str, n_frames: int, duration: float, label: int,
                          long_msg: bool = False) -> dict[str, Any]:
    """An ingest-style json for a synthetic sample whose answer depends on `label` (learnable from tokens)."""
    from longvid.operators.prompt import time_msg

    times = [round(duration * (i + 0.5) / n_frames, 1) for i in range(n_frames)]
    msg = time_msg(duration, n_frames, frame_times=times, long=long_msg)
    what = _WORDS[label % len(_WORDS)]
    return {
        "key": key, "source": source, "video_id": key, "start": 0.0, "end": duration, "duration": duration,
        "num_frames": n_frames, "frame_times": times, "time_msg": msg,
        "conversations": [
            {"from": "human", "value": "<image>" + msg + "\nWhat happens in this video?"},
            {"from": "gpt", "value": f"A {what} moves across the scene."},
        ],
    }


def write_synthetic_token_shards(out: str, n_samples: int, *, source: str = "webvid", dim: int = 64,
                                 frames: tuple[int, int] = (4, 16), duration: tuple[float, float] = (4.0, 20.0),
                                 per_shard: int = 8, dtype: str = "float16", seed: int = 0,
                                 key_prefix: str | None = None, write_index: bool = True,
                                 corrupt: dict[str, str] | None = None, long_msg: bool = False,
                                 profile: str | None = None, text_only: int = 0) -> list[str]:
    """Write a small encode-style token job (shards/, manifests/, index.json) for tests and benchmarks.

    Each sample's tokens are a label-specific pattern plus noise, and its answer names the label, so a model
    can learn it. `corrupt` maps a sample key to a defect: "shape" (wrong token width), "nan", "nan_end" / "inf_end"
    (NaN / -inf in the last token of the last clip), "missing_json", "missing_tokens", "bad_json", "clips"
    (num_clips disagrees). `profile`: the ingest profile the jsons record (none by default). `text_only`: every
    text_only-th sample (1-based) is a text-only sample (`media_type: text`, json only, no <image>). Returns the
    keys in write order.
    """
    from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
    from longvid.operators.write import UnitWriter, sample_members

    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).standard_normal((len(_WORDS), TOKENS_PER_CLIP, dim)).astype(np.float32)
    corrupt = corrupt or {}
    keys: list[str] = []
    prefix = key_prefix or source
    unit = 0
    n = 0
    while n < n_samples:
        w = UnitWriter(out, unit, shard_size_bytes=1 << 40, manifest_schema=TOKEN_MANIFEST_SCHEMA)
        for _ in range(min(per_shard, n_samples - n)):
            key = f"{prefix}_v{n:06d}_full"
            label = int(rng.integers(len(_WORDS)))
            nf = int(rng.integers(frames[0] // 4, frames[1] // 4 + 1)) * 4
            dur = float(np.round(rng.uniform(*duration), 2))
            info = synthetic_sample_info(key, source, nf, dur, label, long_msg=long_msg)
            c = nf // 4
            tok = protos[label][None] + 0.3 * rng.standard_normal((c, TOKENS_PER_CLIP, dim)).astype(np.float32)
            tok = tok.astype(dtype)
            info.update({"encoder": "synthetic", "resolution": 224, "tokens_per_frame": 16, "num_clips": c})
            if profile is not None:
                info["profile"] = profile
            text = bool(text_only and (n + 1) % text_only == 0)
            if text:  # as encode writes a text-only sample: json only, no <image>, no time message
                info = {k: v for k, v in info.items() if k not in ("time_msg", "frame_times", "num_clips",
                                                                   "num_frames", "tokens_per_frame")}
                info["media_type"] = "text"
                info["conversations"] = [{"from": "human", "value": "Which thing moves across the scene?"},
                                         info["conversations"][1]]
            defect = corrupt.get(key)
            if defect == "shape":
                tok = tok[:, :, : dim // 2].copy()
            elif defect == "nan":
                tok = tok.copy()
                tok[0, 1, 2] = np.nan
            elif defect in ("nan_end", "inf_end"):  # in the last clip: dropped by a tight frame bound, yet bad
                tok = tok.copy()
                tok[-1, -1, -1] = np.nan if defect == "nan_end" else -np.inf
            elif defect == "clips":
                info["num_clips"] = c + 1
            buf = io.BytesIO()
            np.save(buf, tok, allow_pickle=False)
            members = sample_members(info, {} if text else {TOKEN_EXT: buf.getvalue()})
            if defect == "missing_json":
                members.pop(JSON_EXT)
            elif defect == "missing_tokens":
                members.pop(TOKEN_EXT)
            elif defect == "bad_json":
                members[JSON_EXT] = b"{not json"
            row = {"key": key, "source": source, "video_id": key, "start": 0.0, "end": dur, "duration": dur,
                   "num_frames": nf, "num_clips": c, "tokens_per_frame": 16, "dim": dim, "encoder": "synthetic",
                   "resolution": 224, "dtype": dtype, "bytes": len(members.get(TOKEN_EXT, b"")), "text": ""}
            w.add(key, members, row)
            keys.append(key)
            n += 1
        w.commit()
        unit += 1
    if write_index:
        from longvid.pipelines.outputs import finalize

        finalize(out, job="encode", config={"synthetic": True}, elapsed=1.0, cpus=1)
    return keys


def write_synthetic_frame_shards(out: str, n_samples: int, *, source: str = "webvid", size: int = 32,
                                 frames: tuple[int, int] = (4, 8), per_shard: int = 8, seed: int = 0) -> list[str]:
    """An ingest-style frame job (<key>.json + <key>.mp4) with label-coloured frames, for encoder-in-the-loop
    stages in tests. Returns the keys."""
    from longvid.operators.mp4 import encode_mp4
    from longvid.operators.write import UnitWriter, sample_members

    rng = np.random.default_rng(seed)
    colors = np.random.default_rng(99).integers(0, 256, (len(_WORDS), 3))
    keys: list[str] = []
    unit = n = 0
    while n < n_samples:
        w = UnitWriter(out, unit, shard_size_bytes=1 << 40)
        for _ in range(min(per_shard, n_samples - n)):
            key = f"{source}_f{n:06d}_full"
            label = int(rng.integers(len(_WORDS)))
            nf = int(rng.integers(frames[0] // 4, frames[1] // 4 + 1)) * 4
            dur = float(np.round(rng.uniform(4, 20), 2))
            info = synthetic_sample_info(key, source, nf, dur, label)
            img = np.broadcast_to(colors[label].astype(np.uint8), (nf, size, size, 3)).copy()
            img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            mp4 = encode_mp4(img, fps=max(nf / dur, 0.5), crf=23)
            w.add(key, sample_members(info, {FRAME_EXT: mp4}),
                  {"key": key, "source": source, "video_id": key, "start": 0.0, "end": dur, "duration": dur,
                   "num_frames": nf, "bytes": len(mp4)})
            keys.append(key)
            n += 1
        w.commit()
        unit += 1
    from longvid.pipelines.outputs import finalize

    finalize(out, job="ingest", config={"synthetic": True}, elapsed=1.0, cpus=1)
    return keys
