"""Encode: ingest shards -> HiCo tokens (16 per frame) -> token shards + manifests, on Ray Data.

    ingest manifests/part-N.parquet ──▶ work items (unit N, shard-N-P.tar)          ◀── resume: committed units skipped
    Ray Data  from_items ─flat_map(read_shard)─▶ samples ─flat_map(decode_sample)─▶ clip rows (4 frames)   CPU tasks
              ─map_batches(HiCoActor, ActorPoolStrategy(actors), num_gpus=gpus_per_actor, batch_size=batch_clips)─▶
              clip rows with tokens [64, D]                                                 GPU (or CPU) actor pool
    driver    clips -> samples (spilled to a local scratch folder) -> when unit N is complete, UnitWriter commits
              shards/shard-N-P.tar (<key>.json + <key>.tokens.npy), failures/part-N, manifests/part-N (last)
    then      index.json + summary.json (pipelines.outputs.finalize)

Why this shape:
- Output unit N is input unit N: the inputs of a unit are the rows of the ingest manifest part N (the manifest is
  the truth; a tar member it does not list is ignored). Resume = skip the units whose output manifest part
  exists; an ingest still running can be encoded again later to pick up its new units.
- Rows are clips, not samples, so the actor always gets `batch_clips` clips whatever the samples' lengths (clips
  of different samples share a forward pass; a 512-frame sample spreads over several actors).
- The tar of a unit lists its samples in the ingest manifest's order, whatever order the clips come back in.
  The token values of a re-run match to float rounding, not bit for bit: a batched matmul may round differently
  with another batch composition (keys, order, json and shapes are identical).
- Failures are data: a sample whose tar members are missing or unreadable (`read`), whose mp4 does not decode or
  holds another number of frames than the manifest says, or whose image does not decode (truncated, not an image,
  beyond PIL's MAX_IMAGE_PIXELS; field = the member, e.g. `1.png`) (`decode`), whose tokens are not finite
  (`encode`), or that the writer refuses (`write`, naming the field) becomes one failure row. Inputs of the
  encode job = rows of the ingest manifests = samples + failures.
- Sample kinds, by the ingest json's `media_type` (`longvid ingest --mixture` writes all three; raw-source shards
  are videos without one):
  video  `<key>.mp4` -> clips of 4 frames -> `<key>.tokens.npy` [num_frames / 4, 64, D];
  image  `<key>.0.jpg`, `<key>.1.png`, ... (json `image_members`) -> tiles (image_tiles: `anyres_nopad` = base
         tile + grid tiles chosen from `image_sizes`, `pad` = one padded square per image) -> `<key>.tokens.npy`
         [num_tiles, 64, D]; each tile is encoded as the reference's `encode_video_image` encodes an image: ONE
         frame (T = 1, the ViT's image position table), its 196 (784 at 448) tokens merged to 64. Tiles are rows of
         the same stream as clips (mode "image"), so they share the actor's batches with the clips of videos.
         The json says num_tiles, tiles_per_image, image_grids ([cols, rows] per image, null for `pad`),
         tile_order, tile_size, tokens_per_tile, image_encoding; num_clips = num_tiles.
  text   json only: written as it is, no tokens (a written sample; manifest media_type "text").
- A sample whose frame count is not a multiple of 4 (ingest never writes one: the sampling rule gives multiples of
  4) is padded by repeating its last frame, as the reference sampler repeats its last index; its json says
  `padded_frames`.
- Precision: bf16/fp16 autocast only on CUDA; on CPU the encoder runs in fp32. Tokens are stored as float16 for
  bf16 and fp16 runs, float32 for fp32 runs. `encode_clips` is called under our own autocast so that fp16 and fp32
  runs on CUDA are possible (HiCoEncoder.forward always autocasts to bf16 on CUDA).
- Decoding happens in-process: the mp4s are the ingest job's own H.264 output and the images were decoded once by
  ingest (untrusted sources were decoded in isolated children there); a corrupt file raises and becomes a failure
  row.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
from longvid.model.constants import FRAMES_PER_CLIP, TOKENS_PER_CLIP, TOKENS_PER_FRAME
from longvid.operators import storage
from longvid.operators.errors import ConfigError, RecordError
from longvid.operators.mp4 import decode_mp4
from longvid.operators.records import Failure
from longvid.operators.write import MANIFESTS, SampleWriteError, UnitWriter, sample_members
from longvid.pipelines import outputs
from longvid.pipelines.encode_config import DTYPES, EncodeConfig
from longvid.pipelines.progress import Progress
from longvid.pipelines.ray_session import ensure_ray, ray_log_path, release_out, route_ray_logs

MEDIA_TYPES = ("video", "image", "text")
IMAGE_MODES = ("anyres_nopad", "pad")
# the json's `tile_order` per image_mode: where each tile of `<key>.tokens.npy` comes from
TILE_ORDER = {"anyres_nopad": "base_then_rows",  # per image: the base tile, then the grid tiles row by row, left to right
              "pad": "one_per_image"}  # per image: one tile, the image padded to a square with the mean colour
IMAGE_ENCODING = "single_frame"  # each tile encoded alone (T = 1, the image position table), as encode_video_image
INGEST_COLUMNS = ["key", "shard", "source", "video_id", "uri", "start", "end", "duration", "num_frames",
                  "resolution", "text"]


# ------------------------------------------------------------------------------------------------- CPU stages


def _fail_row(unit: int, key: str, stage: str, reason: str, fld: str, size: int) -> dict[str, Any]:
    """A failure travelling through the pipeline (zero frames of the right shape keep the columns uniform)."""
    return {"unit": unit, "key": key, "clip": 0, "num_clips": 0, "status": stage, "reason": storage.redact(reason)[:2000],
            "field": fld, "info": "", "mode": "none", "frames": np.zeros((FRAMES_PER_CLIP, size, size, 3), np.uint8)}


def _rows(unit: int, key: str, info: dict[str, Any], units: list[np.ndarray], mode: str, size: int
          ) -> Iterator[dict[str, Any]]:
    """The rows of one decoded sample: one per encoder unit (`mode` "clip": 4 frames; "image": one tile, repeated
    in the 4 frame slots so that every row has the same shape), the sample json on the first; a sample without
    units (text) is one row with num_clips 0 that carries only its json."""
    info_s = json.dumps(info, sort_keys=True, ensure_ascii=False)
    if not units:
        yield {"unit": unit, "key": key, "clip": 0, "num_clips": 0, "status": "ok", "reason": "", "field": "",
               "info": info_s, "mode": "text", "frames": np.zeros((FRAMES_PER_CLIP, size, size, 3), np.uint8)}
        return
    for c, x in enumerate(units):
        frames = np.repeat(x[None], FRAMES_PER_CLIP, axis=0) if mode == "image" else x
        yield {"unit": unit, "key": key, "clip": c, "num_clips": len(units), "status": "ok", "reason": "", "field": "",
               "info": info_s if c == 0 else "", "mode": mode, "frames": np.ascontiguousarray(frames)}


def _member_key(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


def read_shard(item: dict[str, Any], shards_root: str, resolution: int, s3: dict | None = None
               ) -> Iterator[dict[str, Any]]:
    """One work item (unit, shard relative to `shards_root`, manifest = uri of the ingest manifest part) -> one
    row per sample of that shard in the manifest, or a failure row: `json`, `mp4` (b"" when the sample has none),
    `media_names` / `media` (its other members, e.g. the `0.jpg` of an image sample) and `num_frames` (-1 when the
    manifest has none: image and text samples). Which members a sample needs is decode_sample's check."""
    storage.configure_s3(s3 or None)
    unit, rel, size = int(item["unit"]), str(item["shard"]), int(resolution)
    table = pq.read_table(io.BytesIO(storage.read_bytes(item["manifest"])), columns=["key", "shard", "num_frames"])
    expected: dict[str, int] = {}
    for k, s, n in zip(*(table.column(c).to_pylist() for c in ("key", "shard", "num_frames"))):
        if s == rel:
            expected[k] = -1 if n is None else int(n)
    uri = storage.join(shards_root, rel)
    seen: set[str] = set()
    error = ""
    members: dict[str, bytes] = {}
    current = None

    def flush():
        if current is None or current not in expected or current in seen:
            return None
        seen.add(current)
        if "json" not in members:
            return _fail_row(unit, current, "read", f"{rel}: sample has no json member", "json", size)
        names = sorted(e for e in members if e not in ("json", "mp4"))
        return {"unit": unit, "key": current, "json": members["json"], "mp4": members.get("mp4", b""),
                "media_names": names, "media": [members[e] for e in names],
                "num_frames": expected[current], "shard": rel}

    try:
        with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for ti in tar:
                if not ti.isfile():
                    continue
                key, ext = _member_key(ti.name)
                if key != current:
                    row = flush()
                    if row is not None:
                        yield row
                    current, members = key, {}
                if key in expected:
                    data = tar.extractfile(ti)
                    members[ext] = data.read() if data is not None else b""
            row = flush()
            if row is not None:
                yield row
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # StorageError is an OSError; tarfile raises
        # ValueError on some malformed PAX records (GNU sparse fields)
        error = f"{rel}: shard unreadable after {len(seen)} samples: {type(e).__name__}: {e}"
    for key in expected:
        if key not in seen:
            yield _fail_row(unit, key, "read", error or f"{rel}: sample listed in the ingest manifest is not in its shard",
                            "shard", size)


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3], bicubic antialiased and rounded exactly as
    model.umt.preprocess resizes (so preprocess on the result equals preprocess on the original)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def decode_sample(row: dict[str, Any], resolution: int) -> Iterator[dict[str, Any]]:
    """One sample row -> its encoder rows, or one failure row. By the json's `media_type`:

    - video (or none: raw-source shards): the mp4's frames in 4-frame clips (uint8 [4, S, S, 3]). Checks: the mp4
      decodes, holds exactly the manifest's num_frames frames, square and at least `resolution` wide (larger ones
      are resized down: a 448 ingest can be encoded at 224);
    - image: its tiles (image_tiles), one row each;
    - text: one row without frames to encode (num_clips 0): the json passes through.
    """
    unit, key = int(row["unit"]), str(row["key"])
    if "status" in row:  # a failure from read_shard passes through
        yield row
        return
    where = f"{row['shard']}: {key}"
    try:
        info = json.loads(bytes(row["json"]).decode("utf-8"))
        if not isinstance(info, dict):
            raise ValueError("top level is not an object")
    except (ValueError, UnicodeDecodeError) as e:
        yield _fail_row(unit, key, "read", f"{where}.json: not a JSON object: {e}", "json", resolution)
        return
    media = info.get("media_type") or "video"
    if media not in MEDIA_TYPES:
        yield _fail_row(unit, key, "read", f"{where}.json: media_type {str(media)[:80]!r} is not one of "
                        f"{', '.join(MEDIA_TYPES)}", "media_type", resolution)
        return
    if media == "text":
        yield from _rows(unit, key, info, [], "text", resolution)
        return
    if media == "image":
        members = dict(zip(row.get("media_names") or [], row.get("media") or []))
        try:
            tiles, layout = image_tiles(info, members, resolution, where)
        except RecordError as e:
            yield _fail_row(unit, key, e.stage, e.reason, e.field, resolution)
            return
        info.update(layout)
        yield from _rows(unit, key, info, tiles, "image", resolution)
        return
    if not row.get("mp4"):
        yield _fail_row(unit, key, "read", f"{where}: sample has no mp4 member", "mp4", resolution)
        return
    try:
        frames = decode_mp4(bytes(row["mp4"]))
    except RecordError as e:
        yield _fail_row(unit, key, "decode", f"{where}.mp4: {e.reason}", e.field or "mp4", resolution)
        return
    expected = int(row["num_frames"])
    t, h, w = frames.shape[:3]
    if t != expected:
        said = f"num_frames={expected}" if expected >= 0 else "no num_frames for this video sample"
        yield _fail_row(unit, key, "decode", f"{where}.mp4: decoded {t} frames, the manifest says {said}",
                        "num_frames", resolution)
        return
    if h != w or h < resolution:
        yield _fail_row(unit, key, "decode", f"{where}.mp4: frames are {w}x{h}, need square frames of at least "
                        f"{resolution} px (resolution)", "resolution", resolution)
        return
    if h != resolution:
        frames = _resize_square(frames, resolution)
    pad = (-t) % FRAMES_PER_CLIP
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    info["padded_frames"] = pad
    if h != resolution:
        info["source_resolution"] = h
    clips = [frames[c:c + FRAMES_PER_CLIP] for c in range(0, frames.shape[0], FRAMES_PER_CLIP)]
    yield from _rows(unit, key, info, clips, "clip", resolution)


def _size_pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(type(x) is int and x > 0 for x in v):
        return int(v[0]), int(v[1])
    return None


def _pad_square(img, fill: tuple[int, int, int]):
    """LLaVA's `expand2square`: the image centred on a square of its longest side, the rest `fill`."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def image_tiles(info: dict[str, Any], members: dict[str, bytes], size: int, where: str = ""
                ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """An image sample's json and members -> (tiles, layout): tiles uint8 [size, size, 3] in the order they are
    stored in `<key>.tokens.npy`, and the json fields that say where each came from.

    Each image `image_members[k]` is decoded as the reference's `process_image` does (PIL, `.convert("RGB")`, no
    EXIF rotation), then, by `image_mode`:
    - `anyres_nopad`: the base tile (the whole image resized to size x size) and the grid tiles row by row, left to
      right (model.anyres), the grid chosen from the ORIGINAL size `image_sizes[k]` (ingest stores images larger
      than 2688 px resized; their tiles are resized from the stored pixels);
    - `pad`: one tile, the image padded to a square with the ImageNet-mean colour (`expand2square` with the UMT
      processor's image_mean, int(m * 255)) then resized to size x size.
    Resizes are PIL bicubic, the UMT processor's, so the tiles are the reference's pixels before /255 and mean/std.

    Raises RecordError naming the member or json field: stage "read" for a json field or member that is missing
    or malformed, "decode" for an image that does not decode (truncated, not an image, larger than PIL's
    MAX_IMAGE_PIXELS: a decompression bomb) or whose size differs from `stored_sizes`.
    """
    import warnings

    from PIL import Image

    from longvid.model.anyres import anyres_grid, anyres_tiles
    from longvid.model.umt import IMAGENET_MEAN
    from longvid.operators.frames import resize_one

    at = f"{where}.json: " if where else ""
    names = info.get("image_members")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise RecordError("read", f"{at}image_members must be a non-empty list of member names", "image_members")
    n_img = len(names)
    mode = info.get("image_mode")
    if mode not in IMAGE_MODES:
        raise RecordError("read", f"{at}image_mode {str(mode)[:80]!r} is not one of {', '.join(IMAGE_MODES)}",
                          "image_mode")
    if info.get("num_images", n_img) != n_img:
        raise RecordError("read", f"{at}num_images={info.get('num_images')!r} but image_members lists {n_img}",
                          "num_images")
    sizes = info.get("image_sizes")
    if mode == "anyres_nopad" and (not isinstance(sizes, list) or len(sizes) != n_img
                                   or any(_size_pair(v) is None for v in sizes)):
        raise RecordError("read", f"{at}image_sizes must list [width, height] (positive integers) of each of the "
                          f"{n_img} images", "image_sizes")
    stored = info.get("stored_sizes")
    if stored is not None and (not isinstance(stored, list) or len(stored) != n_img):
        raise RecordError("read", f"{at}stored_sizes must list [width, height] of each of the {n_img} images",
                          "stored_sizes")
    fill = tuple(int(m * 255) for m in IMAGENET_MEAN)
    limit = Image.MAX_IMAGE_PIXELS
    tiles: list[np.ndarray] = []
    per_image: list[int] = []
    grids: list[list[int] | None] = []
    for k, name in enumerate(names):
        what = f"{where}.{name}" if where else name
        data = members.get(name)
        if not data:
            why = "zero-byte image member" if data is not None else f"the sample has no {name} member (listed in " \
                "image_members)"
            raise RecordError("read", f"{what}: {why}", name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by name
                with Image.open(io.BytesIO(data)) as img:
                    w, h = img.size
                    if limit and w * h > limit:
                        raise RecordError("decode", f"{what}: {w}x{h} image ({w * h} pixels) is larger than PIL's "
                                          f"MAX_IMAGE_PIXELS ({limit}): refused as a decompression bomb", name)
                    rgb = img.convert("RGB")  # decodes the whole image: a truncated file fails here
        except RecordError:
            raise
        except Image.DecompressionBombError as e:
            raise RecordError("decode", f"{what}: refused as a decompression bomb: {e}", name) from None
        except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types for a damaged file
            raise RecordError("decode", f"{what}: cannot read the image: {type(e).__name__}: {e}", name) from None
        if stored is not None and _size_pair(stored[k]) != rgb.size:
            raise RecordError("decode", f"{what}: the image is {rgb.size[0]}x{rgb.size[1]}, stored_sizes[{k}] says "
                              f"{stored[k]!r}", f"stored_sizes[{k}]")
        try:
            if mode == "anyres_nopad":
                orig = _size_pair(sizes[k])
                mine = [np.asarray(t) for t in anyres_tiles(rgb, size, grid_size=orig)]
                grids.append(list(anyres_grid(orig, size)))
            else:
                mine = [resize_one(np.asarray(_pad_square(rgb, fill)), size)]
                grids.append(None)
        except ValueError as e:  # an encoder resolution the tiling does not know
            raise RecordError("encode", f"{what}: {e}", "resolution") from None
        tiles += mine
        per_image.append(len(mine))
    layout = {"num_tiles": len(tiles), "tiles_per_image": per_image, "image_grids": grids,
              "tile_order": TILE_ORDER[mode], "tile_size": size, "tokens_per_tile": TOKENS_PER_CLIP,
              "image_encoding": IMAGE_ENCODING}
    return tiles, layout


# ------------------------------------------------------------------------------------------------- checkpoints


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
                    raise ConfigError(f"checkpoint: no .safetensors/.pt/.bin files under {storage.redact(uri)}")
                by_name = {f.rsplit("/", 1)[-1]: f for f in files}
                index_name = "model.safetensors.index.json"
                if index_name in by_name:
                    from longvid.model.checkpoint import encoder_weight_map

                    index = json.loads(storage.read_text(by_name[index_name]))
                    wm = encoder_weight_map(index.get("weight_map", {}))
                    if not wm:
                        raise ConfigError(f"checkpoint: {storage.redact(by_name[index_name])} maps no vision-tower "
                                          "key (no vision tower in this checkpoint)")
                    wanted = sorted(set(wm.values()))
                    for s in wanted:
                        if s not in by_name:
                            raise ConfigError(f"checkpoint: shard {s} named in the index is not under {storage.redact(uri)}")
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


# ------------------------------------------------------------------------------------------------- the actor


class HiCoActor:
    """Holds one HiCoEncoder; each call encodes a batch of clip rows (up to batch_clips) in one forward pass."""

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


# ------------------------------------------------------------------------------------------------- the driver


@dataclass
class _Sample:
    num_clips: int
    clips: dict[int, np.ndarray] = field(default_factory=dict)
    info: str = ""
    failure: tuple[str, str, str] | None = None  # (stage, reason, field)
    received: int = 0


@dataclass
class _Unit:
    unit: int
    manifest: str  # ingest manifest part uri
    expected: int
    samples: dict[str, _Sample] = field(default_factory=dict)
    done: dict[str, tuple[str, str, str] | None] = field(default_factory=dict)  # key -> failure or None (ok)


class Assembler:
    """Driver side: clip rows -> complete samples (spilled to scratch) -> committed units, in manifest order."""

    def __init__(self, cfg: EncodeConfig, resolution: int, dim: int, scratch: str, log, t0: float,
                 progress: Progress | None = None) -> None:
        self.cfg, self.resolution, self.dim, self.scratch, self.log, self.t0 = cfg, resolution, dim, scratch, log, t0
        self.progress = progress or Progress("encode", "samples", console=log, quiet=cfg.quiet)
        self.units: dict[int, _Unit] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="commit")
        self.futures: list[Future] = []
        self.lock = threading.Lock()
        self.totals = {"units": 0, "samples": 0, "failures": 0, "frames": 0, "clips": 0, "tiles": 0}
        self.encoder = f"{cfg.model}/{_weights_name(cfg)}"

    def add_unit(self, unit: int, manifest: str, expected: int) -> None:
        self.units[unit] = _Unit(unit, manifest, expected)
        if expected == 0:
            self._commit(unit)

    def feed(self, batch: dict[str, np.ndarray]) -> None:
        for f in self.futures:  # a failed commit (e.g. storage) stops the job now, not at the end
            if f.done() and f.exception() is not None:
                raise f.exception()
        tokens = batch["tokens"]
        for i in range(len(batch["key"])):
            unit, key = int(batch["unit"][i]), str(batch["key"][i])
            u = self.units[unit]
            if key in u.done:
                continue
            status = str(batch["status"][i])
            n = int(batch["num_clips"][i])
            if n == 0:
                if status == "ok":  # nothing to encode (text-only): the json passes through
                    self._finish(u, key, _Sample(0, info=str(batch["info"][i])), None)
                else:  # failed before decoding into clips
                    self._finish(u, key, None, (status, str(batch["reason"][i]), str(batch["field"][i])))
                continue
            s = u.samples.setdefault(key, _Sample(n))
            s.received += 1
            if status != "ok" and s.failure is None:
                s.failure = (status, str(batch["reason"][i]), str(batch["field"][i]))
            if s.failure is None:
                s.clips[int(batch["clip"][i])] = np.array(tokens[i])
            if batch["info"][i]:
                s.info = str(batch["info"][i])
            if s.received == s.num_clips:
                del u.samples[key]
                self._finish(u, key, s, s.failure)

    def _finish(self, u: _Unit, key: str, s: _Sample | None, failure: tuple[str, str, str] | None) -> None:
        if failure is None and s is not None:
            if len(s.clips) != s.num_clips or not s.info:
                failure = ("encode", f"clips missing from the encoder output ({len(s.clips)} of {s.num_clips})", "tokens")
            else:
                d = Path(self.scratch, f"unit-{u.unit:06d}")
                d.mkdir(exist_ok=True)
                info = json.loads(s.info)
                if s.num_clips:  # a text sample has no tokens: its json is written as the ingest wrote it
                    tokens = np.stack([s.clips[c] for c in range(s.num_clips)])
                    np.save(d / f"{key}.tokens.npy", tokens)
                    info.update({"encoder": self.encoder, "model": self.cfg.model, "resolution": self.resolution,
                                 "dtype": self.cfg.store_dtype, "compute_dtype": self.cfg.dtype,
                                 "num_clips": s.num_clips, "dim": self.dim, "tokens_shape": list(tokens.shape)})
                    if info.get("media_type") != "image":
                        info["tokens_per_frame"] = TOKENS_PER_FRAME
                (d / f"{key}.json").write_text(json.dumps(info, sort_keys=True, ensure_ascii=False))
        u.done[key] = failure
        if len(u.done) == u.expected:
            self._commit(u.unit)

    def _commit(self, unit: int) -> None:
        u = self.units[unit]
        self.futures.append(self.pool.submit(self._commit_now, u))

    def _token_row(self, r: dict[str, Any], info: dict[str, Any], npy: bytes | None) -> dict[str, Any]:
        """The token manifest row of a written sample (ingest identity columns + what the encoder did). Image
        samples: num_clips = tiles, no num_frames / tokens_per_frame; text samples: no encoder columns."""
        media = info.get("media_type") or "video"
        row = {"key": r["key"], "source": r["source"], "video_id": r["video_id"], "start": r["start"], "end": r["end"],
               "duration": r["duration"], "num_frames": r["num_frames"], "num_clips": 0, "text": r["text"],
               "bytes": len(npy) if npy is not None else 0, "media_type": media}
        if npy is not None:
            row.update({"num_clips": info["num_clips"], "dim": self.dim, "encoder": self.encoder,
                        "resolution": self.resolution, "dtype": self.cfg.store_dtype,
                        "tokens_per_frame": TOKENS_PER_FRAME if media == "video" else None})
        return row

    def _commit_now(self, u: _Unit) -> dict[str, Any]:
        man = pq.read_table(io.BytesIO(storage.read_bytes(u.manifest)), columns=INGEST_COLUMNS).to_pylist()
        d = Path(self.scratch, f"unit-{u.unit:06d}")
        writer = UnitWriter(self.cfg.out, u.unit, int(self.cfg.shard_size_mb * 2**20), TOKEN_MANIFEST_SCHEMA)
        clips = tiles = 0
        try:
            for r in man:
                key = r["key"]
                failure = u.done.get(key, ("encode", "no output for this sample (lost in the pipeline)", "tokens"))
                if failure is None:
                    npy_path = d / f"{key}.tokens.npy"
                    npy = npy_path.read_bytes() if npy_path.exists() else None
                    info = json.loads((d / f"{key}.json").read_text())
                    try:
                        members = sample_members(info, {"tokens.npy": npy} if npy is not None else {})
                        if writer.add(key, members, self._token_row(r, info, npy)):
                            n = int(info.get("num_clips") or 0) if npy is not None else 0
                            clips += n
                            tiles += n if info.get("media_type") == "image" else 0
                            continue
                        failure = ("write", "duplicate key inside the unit", "key")
                    except SampleWriteError as e:  # nothing of the sample was written; the unit goes on
                        failure = ("write", e.reason, e.field or "")
                stage, reason, fld = failure
                shard = storage.redact(storage.join(self.cfg.shards, r["shard"] or ""))
                writer.fail(Failure(r["source"], r["video_id"], r["uri"], stage, reason, f"{shard}#{key}", fld, key,
                                    r["start"], r["end"]))
            stats = writer.commit()
        except BaseException:
            writer.abort()
            raise
        shutil.rmtree(d, ignore_errors=True)
        with self.lock:
            t = self.totals
            t["units"] += 1
            t["samples"] += stats["samples"]
            t["failures"] += stats["failures"]
            t["frames"] += stats["frames"]
            t["clips"] += clips
            t["tiles"] += tiles
            el = max(time.time() - self.t0, 1e-9)
            self.progress.update(stats["samples"] + stats["failures"])
            self.progress.emit(f"[encode] unit {u.unit}: {stats['samples']} samples, {stats['failures']} failures | "
                               f"total {t['samples']} samples, {t['failures']} failures, {t['units']} units | "
                               f"{self.progress.meter()}, {t['frames'] / el:.1f} frames/s, "
                               f"{t['clips'] / el:.2f} clips/s", postfix=f"{t['samples']} samples, {t['failures']} failures")
        return stats

    def close(self) -> None:
        """Commit what is left (samples the pipeline never returned become failures) and wait for every commit."""
        for unit, u in sorted(self.units.items()):
            if u.expected and len(u.done) < u.expected:
                for key, s in list(u.samples.items()):
                    u.done[key] = ("encode", f"only {s.received} of {s.num_clips} clips came back", "tokens")
                u.samples.clear()
                self._commit(unit)  # keys never seen get the "lost in the pipeline" failure
        self.pool.shutdown(wait=True)
        for f in self.futures:
            f.result()


def _weights_name(cfg: EncodeConfig) -> str:
    if not cfg.checkpoint:
        return f"random-init-seed{cfg.seed}"
    return storage.redact(cfg.checkpoint).rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------- planning


@dataclass
class _Pending:
    unit: int
    manifest: str
    rows: int
    shards: list[str]
    resolution: set[int]  # of the video frames


def _unit_of(uri: str) -> int | None:
    base = uri.rsplit("/", 1)[-1]
    if not (base.startswith("part-") and base.endswith(".parquet")):
        return None
    try:
        return int(base[len("part-"):-len(".parquet")])
    except ValueError:
        return None


def ingest_units(shards: str) -> dict[int, str]:
    """unit -> ingest manifest part uri, for every committed unit of the ingest job at `shards`."""
    parts = storage.list_files(storage.join(shards, MANIFESTS), ".parquet", recursive=False)
    out = {}
    for p in parts:
        u = _unit_of(p)
        if u is not None:
            out[u] = p
    return dict(sorted(out.items()))


def _read_pending(uri: str, unit: int) -> _Pending:
    try:
        t = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["shard", "resolution", "num_frames"])
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ConfigError(f"shards: {storage.redact(uri)}: not an ingest manifest (need columns shard, "
                          f"resolution, num_frames; see manifests/schema.py): {e}") from None
    shards = sorted({s for s in t.column("shard").to_pylist() if s})
    # the frames' resolution, of video rows (num_frames set): images are stored at their own size, text has none
    res = {int(r) for r, n in zip(t.column("resolution").to_pylist(), t.column("num_frames").to_pylist())
           if r is not None and n is not None}
    return _Pending(unit, uri, t.num_rows, shards, res)


def _footer_rows(uri: str) -> int:
    with storage.open_read(uri, block_size=256 * 1024) as f:  # the footer only (ranged reads on S3)
        return pq.ParquetFile(f).metadata.num_rows


def _check_out(cfg: EncodeConfig, resolution: int) -> None:
    job_uri = storage.join(cfg.out, "job.json")
    fp = json.loads(json.dumps(cfg.fingerprint(resolution)))
    if storage.exists(job_uri):
        old = json.loads(storage.read_text(job_uri)).get("fingerprint") or {}
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ConfigError(f"out: {storage.redact(cfg.out)} holds an encode job with other settings "
                              f"({', '.join(diff)}); use a new --out to encode with these settings")
    else:
        storage.makedirs(cfg.out)
        storage.write_text(job_uri, json.dumps({"job": "encode", "fingerprint": fp}, indent=2, sort_keys=True))


def _check_checkpoint(cfg: EncodeConfig) -> None:
    if not cfg.checkpoint or storage.is_s3(cfg.checkpoint):
        return
    from longvid.model.checkpoint import CheckpointError, checkpoint_files

    try:
        checkpoint_files(cfg.checkpoint)
    except CheckpointError as e:
        raise ConfigError(f"checkpoint: {e}") from None


def _actors(cfg: EncodeConfig, cpus: int, gpus: float) -> tuple[int, float, float]:
    """(actors, num_gpus per actor, num_cpus per actor) for this cluster."""
    if gpus > 0 and cfg.gpus_per_actor > 0:
        n = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        return n, cfg.gpus_per_actor, min(cfg.cpus_per_actor, max(1.0, cpus / (n + 1)))
    n = cfg.actors or max(1, int((cpus - 1) // cfg.cpus_per_actor))
    if n * cfg.cpus_per_actor > cpus - 1 and cpus > 1:
        raise ConfigError(f"actors: {n} CPU actors x {cfg.cpus_per_actor} CPUs leave no CPU for decoding on a "
                          f"cluster with {cpus} CPUs (and no GPU); use --actors {max(1, int((cpus - 1) // cfg.cpus_per_actor))}")
    return n, 0.0, cfg.cpus_per_actor


def run_encode(cfg: EncodeConfig, log=print) -> dict[str, Any]:
    """Run the whole job on Ray Data (an embedded Ray unless Ray is already initialised or an address is given;
    a Ray started elsewhere is neither initialised nor shut down here). Returns the summary dict."""
    import ray

    cfg.validate()
    s3 = storage.configure_s3(storage.S3Options(endpoint_url=cfg.s3_endpoint_url or None,
                                                profile=cfg.s3_profile or None,
                                                region=cfg.s3_region or None)).to_dict()
    units = ingest_units(cfg.shards)
    if not units:
        raise ConfigError(f"shards: no committed ingest unit under {storage.redact(cfg.shards)} "
                          f"(expected {MANIFESTS}/part-N.parquet, see manifests/schema.py)")
    if cfg.limit_units:
        units = dict(list(units.items())[: cfg.limit_units])
    committed = {_unit_of(u) for u in storage.list_files(storage.join(cfg.out, MANIFESTS), ".parquet", recursive=False)}
    todo = [_read_pending(uri, u) for u, uri in units.items() if u not in committed]
    skipped = len(units) - len(todo)
    ingest_rows = sum(p.rows for p in todo) + sum(_footer_rows(uri) for u, uri in units.items() if u in committed)
    resolution = cfg.resolution
    if todo:
        have = set().union(*(p.resolution for p in todo))
        if not resolution:
            if len(have) > 1:
                raise ConfigError(f"resolution: the ingest frames have several resolutions {sorted(have)}; choose one")
            from longvid.model.config import get_config

            native = get_config(cfg.model).umt.img_size
            resolution = have.pop() if have else native  # no video frames (images, text): the encoder's own
            if native > resolution:
                raise ConfigError(f"resolution: the {cfg.model} encoder runs at {native} px but the ingest frames are "
                                  f"{resolution} px; ingest with a {native} px profile (highres), or pass "
                                  f"--resolution {resolution} to encode at {resolution} anyway")
        elif have and min(have) < resolution:
            raise ConfigError(f"resolution: {resolution} but the ingest frames are {min(have)} px (manifest column "
                              f"resolution of {storage.redact(cfg.shards)}); frames are never upsampled")
    elif not resolution:  # nothing to do: keep the resolution of the earlier run so the fingerprint matches
        job_uri = storage.join(cfg.out, "job.json")
        old = json.loads(storage.read_text(job_uri)).get("fingerprint", {}) if storage.exists(job_uri) else {}
        resolution = int(old.get("resolution") or 224)
    _check_checkpoint(cfg)
    _check_out(cfg, resolution)
    from longvid.model.config import get_config

    dim = get_config(cfg.model, img_size=resolution).encoder_dim
    t0 = time.time()
    started_here = ensure_ray(cfg.ray_address, cfg.num_cpus, out=cfg.out, job="encode", log=log)
    prog = Progress("encode", "samples", total=ingest_rows, out=cfg.out, console=log, quiet=cfg.quiet)
    prog.skip(ingest_rows - sum(p.rows for p in todo))
    if not cfg.checkpoint:
        prog.write(f"[encode] WARNING: no --checkpoint: the {cfg.model} encoder has RANDOM weights (seed {cfg.seed}); "
                   "the tokens are only good for tests and benchmarks")
    scratch = tempfile.mkdtemp(prefix="longvid-encode-", dir=cfg.scratch_dir or None)
    asm = None
    try:
        res = ray.cluster_resources()
        cpus, gpus = max(1, int(res.get("CPU", 1))), float(res.get("GPU", 0))
        n_actors, actor_gpus, actor_cpus = _actors(cfg, cpus, gpus)
        asm = Assembler(cfg, resolution, dim, scratch, log, t0, prog)
        items = []
        for p in todo:
            asm.add_unit(p.unit, p.manifest, p.rows)
            for rel in p.shards:
                items.append({"unit": p.unit, "shard": rel, "manifest": p.manifest})
        prog.write(f"[encode] {len(todo)} units to encode ({skipped} already committed), {len(items)} input shards, "
                   f"{sum(p.rows for p in todo)} samples | {n_actors} encoder actors on "
                   f"{'GPU x %g' % actor_gpus if actor_gpus else 'CPU'}, {cfg.batch_clips} clips per batch, "
                   f"{cfg.model} at {resolution} px, {cfg.dtype}")
        if items:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # LongVid's progress (above) counts committed samples
            route_ray_logs(ray_log_path(cfg.out))  # Ray Data's own console handler (set up on its import)
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.flat_map(read_shard, fn_kwargs={"shards_root": cfg.shards, "resolution": resolution, "s3": s3},
                             num_cpus=1)
            ds = ds.flat_map(decode_sample, fn_kwargs={"resolution": resolution}, num_cpus=1)
            ds = ds.map_batches(
                HiCoActor,
                fn_constructor_kwargs=dict(model=cfg.model, resolution=resolution, checkpoint=cfg.checkpoint,
                                           dtype=cfg.dtype, seed=cfg.seed, cache_dir=cfg.cache_dir, s3=s3,
                                           cpu_threads=max(1, int(actor_cpus))),
                batch_size=cfg.batch_clips, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors), num_gpus=actor_gpus,
                num_cpus=actor_cpus)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                asm.feed(batch)
        asm.close()
        elapsed = time.time() - t0
        summary = outputs.finalize(
            cfg.out, job="encode", config=_public_config(cfg, resolution), elapsed=elapsed, cpus=cpus,
            extra={"units_run": asm.totals["units"], "units_skipped": skipped, "input_units": len(units),
                   "ingest_rows": ingest_rows,
                   "encoder": asm.encoder, "random_weights": not cfg.checkpoint, "resolution": resolution,
                   "dim": dim, "dtype": cfg.store_dtype, "tokens_per_frame": TOKENS_PER_FRAME,
                   "actors": n_actors, "gpus_per_actor": actor_gpus, "gpus": gpus,
                   "clips_encoded": asm.totals["clips"], "image_tiles_encoded": asm.totals["tiles"],
                   "samples_by_media_type": samples_by_media_type(cfg.out),
                   "frames_per_s": round(asm.totals["frames"] / elapsed, 3) if elapsed > 0 else None})
    finally:
        if asm is not None:
            asm.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)
        prog.close()
        if started_here:
            ray.shutdown()
        release_out(cfg.out)
    if not cfg.quiet:
        log(outputs.format_summary(summary))
    return summary


def samples_by_media_type(out: str) -> dict[str, int]:
    """Written samples per media type, from every committed manifest part (parts written before the column
    existed hold videos only)."""
    t = outputs.read_parts(out, MANIFESTS, ["key", "media_type"])
    if t is None:
        return {}
    kinds = t.column("media_type").to_pylist() if "media_type" in t.column_names else [None] * t.num_rows
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k or "video"] = counts.get(k or "video", 0) + 1
    return dict(sorted(counts.items()))


def _public_config(cfg: EncodeConfig, resolution: int) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["resolution"] = resolution
    for k in ("shards", "out", "checkpoint", "ray_address", "s3_endpoint_url"):
        d[k] = storage.redact(d[k])
    return d
