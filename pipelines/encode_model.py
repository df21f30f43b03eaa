"""The model an encoder actor holds (HiCoBatchEncoder: one HiCoEncoder, a batch of rows per call) and the checkpoint
it loads (fetch_checkpoint: an S3 checkpoint downloaded once per node, only its vision-tower shards)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from longvid.model.constants import FRAMES_PER_CLIP
from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.pipelines.encode_config import DTYPES

def _download(uri: str, dest: Path) -> None:
    tmp = dest.with_name(f"{storage.TMP_PREFIX}{dest.name}")
    with storage.open_read(uri, block_size=16 * storage.MiB) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, length=8 * storage.MiB)
    os.replace(tmp, dest)


def fetch_checkpoint(uri: str, cache_dir: str = "") -> str:
    """A local path for a checkpoint: local paths are returned as they are; an S3 object or prefix is downloaded
    once per node into `cache_dir` (under a lock; `.complete` marks a finished download).

    For a sharded LLaVA checkpoint only the shards holding vision-tower keys are fetched, with an index trimmed to
    them (a 7B checkpoint's LLM shards are not needed to encode).
    """
    if not storage.is_s3(uri):
        return uri
    root = Path(cache_dir or Path.home() / ".cache" / "longvid" / "checkpoints")
    dest = root / hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]
    dest.mkdir(parents=True, exist_ok=True)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if storage.exists(uri):  # one object: a .pt / .safetensors file
                if not (dest / ".complete").exists():
                    _download(uri, dest / name)
                    (dest / ".complete").write_text(uri)
                return str(dest / name)
            if not (dest / ".complete").exists():
                files = storage.list_files(uri, (".safetensors", ".json", ".pt", ".bin"), recursive=False)
                if not files:
                    raise ConfigError(f"checkpoint: no .safetensors/.pt/.bin files under {uri}")
                by_name = {f.rsplit("/", 1)[-1]: f for f in files}
                index_name = "model.safetensors.index.json"
                if index_name in by_name:
                    from longvid.model.checkpoint import encoder_weight_map

                    index = json.loads(storage.read_text(by_name[index_name]))
                    wm = encoder_weight_map(index.get("weight_map", {}))
                    if not wm:
                        raise ConfigError(f"checkpoint: {by_name[index_name]} maps no vision-tower "
                                          "key (no vision tower in this checkpoint)")
                    wanted = sorted(set(wm.values()))
                    for s in wanted:
                        if s not in by_name:
                            raise ConfigError(f"checkpoint: shard {s} named in the index is not under {uri}")
                        _download(by_name[s], dest / s)
                    (dest / index_name).write_text(json.dumps({"metadata": index.get("metadata", {}), "weight_map": wm}))
                else:
                    for n, f in by_name.items():
                        if not n.endswith(".json"):
                            _download(f, dest / n)
                (dest / ".complete").write_text(uri)
            return str(dest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class HiCoBatchEncoder:
    """Holds one HiCoEncoder (on CUDA when there is one, else on CPU); each call encodes a batch of rows (clips of
    4 frames and image tiles) in one forward pass per kind. The encoder actor holds one; a benchmark or test may
    give the actor another class with the same constructor and call (bench/encode_scale.py: a stand-in as fast as
    a GPU)."""

    def __init__(self, model: str, resolution: int, checkpoint: str, dtype: str, seed: int, cache_dir: str,
                 s3: dict | None, cpu_threads: int = 1) -> None:
        import torch

        from longvid.model.build import build_encoder

        storage.configure_s3(s3 or None)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cpu_threads)))
        # random weights (no checkpoint) are seeded: identical in every actor; a checkpoint must fit exactly
        enc, rep = build_encoder(model, img_size=resolution, seed=seed, strict=True,
                                 weights=fetch_checkpoint(checkpoint, cache_dir) if checkpoint else None)
        self.report = rep.summary() if rep is not None else ""
        self.enc = enc.eval().to(self.device)
        self.resolution = resolution
        self.store = np.dtype(DTYPES[dtype])
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype) if self.device.type == "cuda" else None

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [k, F, S, S, 3] (F = 4: clips; F = 1: image tiles) -> tokens [k, 64, D] in the stored dtype."""
        import torch

        from longvid.model.umt import preprocess

        k, f, s = frames.shape[0], frames.shape[1], frames.shape[2]
        x = preprocess(np.ascontiguousarray(frames).reshape(k * f, s, s, 3), self.resolution)  # [3, k*F, S, S]
        clips = x.reshape(3, k, f, self.resolution, self.resolution).permute(1, 0, 2, 3, 4).contiguous()
        with torch.inference_mode():
            clips = clips.to(self.device, non_blocking=True)
            if self.autocast is not None:
                with torch.autocast("cuda", dtype=self.autocast):
                    tokens, _ = self.enc.encode_clips(clips)
            else:
                tokens, _ = self.enc.encode_clips(clips)
        return tokens.float().cpu().numpy().astype(self.store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.asarray(batch["status"]).astype(object)
        reason = np.asarray(batch["reason"]).astype(object)
        fld = np.asarray(batch["field"]).astype(object)
        n = len(status)
        mode = np.asarray(batch["mode"]).astype(object) if "mode" in batch else np.full(n, "clip", dtype=object)
        todo = (status == "ok") & (np.asarray(batch["num_clips"]) > 0)  # text rows carry no frames to encode
        out = np.zeros((n, self.enc.tokens_per_clip, self.enc.out_dim), dtype=self.store)
        frames = np.asarray(batch["frames"])  # [n, 4, S, S, 3] uint8
        # clips of videos and tiles of images share the batch: one forward pass for each kind present
        for kind, f, what in (("clip", FRAMES_PER_CLIP, "clip"), ("image", 1, "tile")):
            idx = np.flatnonzero(todo & (mode == kind))
            if not idx.size:
                continue
            tok = self._encode(frames[idx][:, :f])  # an image tile is one frame (T = 1), as the reference encodes it
            out[idx] = tok
            finite = np.isfinite(tok).reshape(idx.size, -1).all(axis=1)
            for j in np.flatnonzero(~finite):
                i = idx[j]
                status[i], fld[i] = "encode", "tokens"
                reason[i] = f"non-finite tokens (NaN/Inf) in {what} {int(batch['clip'][i])} as {self.store.name}"
        return {"unit": batch["unit"], "key": batch["key"], "clip": batch["clip"], "num_clips": batch["num_clips"],
                "status": status, "reason": reason, "field": fld, "info": batch["info"], "tokens": out}
