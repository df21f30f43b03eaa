"""Encode's CPU side: the samples of an ingest unit's shards -> encoder rows (4-frame clips, image tiles), or
failure rows. Plain functions, testable without Ray; pipelines/encode.py runs them in decode tasks.

    read_shard     one input shard of a unit -> one row per sample the ingest manifest lists in it (its json and
                   members), or a `read` failure row (missing member, unreadable tar)
    encoder_rows  one sample row -> its encoder rows, by the json's media_type:
                   video  the mp4's frames in clips of 4 (uint8 [4, S, S, 3]; a last partial clip padded by
                          repeating its last frame, json `padded_frames`), frames larger than S resized down
                   image  its tiles (image_tiles), one row each (mode "image")
                   text   one row without frames (num_clips 0): the json passes through
                   or one failure row (`read`: the json; `decode`: the mp4 or an image, naming the field)

Every row is a dict: unit, key, clip, num_clips, status ("ok" or the failure's stage), reason, field, info (the
sample json, on the first row of a sample), mode ("clip" | "image" | "text" | "none") and frames.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from longvid.model.constants import FRAMES_PER_CLIP, TOKENS_PER_CLIP
from longvid.operators import storage
from longvid.operators.errors import RecordError
from longvid.operators.mp4 import decode_mp4
from longvid.operators.shards import TarError, iter_samples
from longvid.operators.train_sample import TILE_ORDER

MEDIA_TYPES = ("video", "image", "text")
IMAGE_MODES = ("anyres_nopad", "pad")
IMAGE_ENCODING = "single_frame"  # each tile encoded alone (T = 1, the image position table), as encode_video_image
INGEST_COLUMNS = ["key", "shard", "source", "video_id", "uri", "start", "end", "duration", "num_frames",
                  "resolution", "text"]


# ------------------------------------------------------------------------------------------------- CPU stages


def _fail_row(unit: int, key: str, stage: str, reason: str, fld: str, size: int) -> dict[str, Any]:
    """A failure travelling through the pipeline (zero frames of the right shape keep the columns uniform)."""
    return {"unit": unit, "key": key, "clip": 0, "num_clips": 0, "status": stage, "reason": reason[:2000],
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


def read_shard(item: dict[str, Any], shards_root: str, resolution: int, s3: dict | None = None
               ) -> Iterator[dict[str, Any]]:
    """One work item (unit, shard relative to `shards_root`, manifest = uri of the ingest manifest part) -> one
    row per sample of that shard in the manifest, or a failure row: `json`, `mp4` (b"" when the sample has none),
    `media_names` / `media` (its other members, e.g. the `0.jpg` of an image sample) and `num_frames` (-1 when the
    manifest has none: image and text samples). Which members a sample needs is encoder_rows's check."""
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
    held = None  # the sample read last: yielded once the next one is read whole (a damaged one is not)

    def row_of(g) -> dict[str, Any]:
        seen.add(g.key)
        if "json" not in g.members:
            return _fail_row(unit, g.key, "read", f"{rel}: sample has no json member", "json", size)
        names = sorted(e for e in g.members if e not in ("json", "mp4"))
        return {"unit": unit, "key": g.key, "json": g.members["json"], "mp4": g.members.get("mp4", b""),
                "media_names": names, "media": [g.members[e] for e in names],
                "num_frames": expected[g.key], "shard": rel}

    try:
        for g in iter_samples(uri, keys=set(expected)):
            if held is not None:
                yield row_of(held)
            held = None if g.key in seen else g  # a key met again later in the tar: the first one counts
        if held is not None:
            yield row_of(held)
    except (TarError, OSError, EOFError, ValueError) as e:  # StorageError is an OSError
        error = f"{rel}: shard unreadable after {len(seen)} samples: {type(e).__name__}: {e}"
    for key in expected:
        if key not in seen:
            yield _fail_row(unit, key, "read", error or f"{rel}: sample listed in the ingest manifest is not in its shard",
                            "shard", size)


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3], bicubic antialiased and rounded exactly as
    model.umt.preprocess resizes (so preprocess on the result equals preprocess on the original)."""
    import torch

    from longvid.model.umt import resize_levels

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return resize_levels(x, size).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def encoder_rows(row: dict[str, Any], resolution: int) -> Iterator[dict[str, Any]]:
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
