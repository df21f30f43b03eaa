"""NIAH build: a haystack (a long video, or ingest shards) + a released needle spec + needle images -> a NIAH set.

    haystack frames (a video: every round(fps)-th frame from frame 0; shards: the stored frames in order)
        └─ first U frames (U = longest length; above 7,500 frames the reference's repeat period, 5,016 frames
           for 10,000) ─▶ each padded to a square ─▶ HiCo, 4-frame clips
           ─▶ haystack/tokens.npy [U, 16, D]   (16 tokens per frame slot; frame i of any haystack = slot i mod U)
    needle images (each padded to a square, repeated to a 4-frame clip) ─▶ HiCo
           ─▶ needles/tokens.npy [images, 64, D]
    spec items x lengths x depths ─▶ placement rules (operators/niah.py) ─▶ index.parquet

Why tokens and not frames: the haystack of the longest length is encoded once (U frames) and every input of
every length is a slice of it with the needle tokens spliced in at the item's positions (the eval does the
splicing), exactly how the reference evaluation builds its inputs from a precomputed haystack embedding. Storing
10,000 frames of pixels per length would cost far more and re-encode the same frames for every item.

Output (a local folder):

    set.json               what was built: kind, lengths, depths, counts, haystack plan, encoder, spec, timings
    items.json             the spec items: id, images, needle rows, questions {name: {text, answer, options}}
    index.parquet          one row per input: row, item_id, kind, length, depth, positions, haystack_frames,
                           token_starts, num_tokens
    haystack/tokens.npy    float16 [U, 16, D]; haystack/frames.parquet: provenance of each slot (file, key, frame)
    needles/tokens.npy     float16 [images, 64, D]; needles/images.parquet: name, file, size, sha256

The haystack steps are the reference's (`produce_haystack_embedding.py`, transcribed in operators/niah.py) only
for a video file: frames `video_1fps_indices` (every round(fps)-th from frame 0), `haystack_unique_frames` of them,
each padded to a square with the mean colour (`expand2square`) and resized by the encoder's preprocessing; the
frames are encoded in whole 4-frame clips from frame 0, as the reference's 8-frame batches are, and the last clip
takes the video's next frames when there are any (set.json `haystack.reference_exact` true). Ingest shards are
accepted as a haystack but are not the reference's input (`reference_exact` false, with the reasons in
`haystack.deviation`): their frames were sampled by the dynamic VideoChat-Flash rule (not every round(fps)-th
frame), resized to a square by ingest (stretched, not padded: padding a square frame changes nothing) and stored as
lossy mp4. Each stored frame counts as one haystack frame, shard by shard in name order, samples in tar order.

Over ~500 lines: one job, the set built end to end (haystack sources, the encoder, the set's files); the demo's small
needle spec at the end is a candidate for synthetic/ (kept here while the NIAH build is being reworked).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from longvid.operators import niah, shards, storage
from longvid.operators.errors import ConfigError, RecordError
from longvid.operators.niah import SpecError
from longvid.pipelines.niah_config import NiahBuildConfig
from longvid.pipelines.outputs import JobOutput, versions
from longvid.pipelines.ray_session import OWNER_FILE
from longvid.pipelines.remote_reads import RemoteReads, local_stream

# --------------------------------------------------------------------------------------------------------------
# Haystack sources
# --------------------------------------------------------------------------------------------------------------

FrameChunk = tuple[np.ndarray, list[dict[str, Any]]]  # frames uint8 [n, H, W, 3] + provenance per frame


def shard_uris(haystack: str) -> list[str]:
    """The tars of a haystack given as one .tar, an ingest job folder (shards/ inside) or a folder of tars."""
    if haystack.endswith(".tar"):
        if not storage.exists(haystack):
            raise ConfigError(f"haystack: {haystack}: shard not found")
        return [haystack]
    for folder in (storage.join(haystack, "shards"), haystack):
        tars = storage.list_files(folder, ".tar")
        if tars:
            return tars
    return []


def shard_frames(uri: str, limit: int) -> Iterator[tuple[str, Any]]:
    """The frames of one ingest shard's samples (<key>.mp4), in tar order, up to `limit`: ("frames", (frames,
    provenance)) per sample, ("warn", message) for a sample whose mp4 does not decode (skipped) and for a shard
    that is no tar or turns unreadable part way (corrupt, truncated: the frames before the damage are given).
    Runs where the shard is on a cluster (a Ray streaming task): what it yields is the frames it selected, never
    the shard."""
    from longvid.operators.mp4 import decode_mp4

    got = samples = 0  # frames and samples of this shard
    with storage.open_read(uri) as f:
        try:
            for g in shards.iter_samples(f, exts=("mp4",)):
                samples += 1
                if "mp4" not in g.members:
                    continue
                try:
                    frames = decode_mp4(g.members["mp4"])
                except RecordError as e:
                    yield "warn", f"haystack: {uri}: member {g.key}.mp4 skipped: {e.reason}"
                    continue
                frames = frames[: limit - got]
                yield "frames", (frames, [{"file": uri, "key": g.key, "frame": i} for i in range(len(frames))])
                got += len(frames)
                if got >= limit:
                    return
            if not samples and f.seek(0, 2) == 0:
                raise shards.TarError("empty file")
        except (shards.TarError, OSError) as e:  # OSError: StorageError too (a read failing part way)
            if samples:
                yield "warn", (f"haystack: {uri}: unreadable after {got} frames ({type(e).__name__}: {e}); the rest of "
                               "this shard is skipped")
            else:
                yield "warn", f"haystack: {uri}: not a readable tar shard ({type(e).__name__}: {e}); skipped"


def iter_shard_frames(uris: list[str], limit: int, stream=None) -> Iterator[FrameChunk]:
    """Frames of ingest samples (<key>.mp4), shard by shard in name order, samples in tar order, up to `limit`.
    A sample whose mp4 does not decode is skipped, and a shard that is no tar or turns unreadable part way
    (corrupt, truncated) gives the frames before the damage: each with a warning naming the shard, the member
    and the reason. The build goes on with the next sample or shard (no frames at all is the caller's error).
    `stream(shard_frames, [(uri, limit), ...])` reads the shards (default: here; on a cluster, Ray tasks,
    pipelines/remote_reads.py: one shard at a time, each asked only for the frames still wanted)."""
    import logging

    warn = logging.getLogger("longvid.niah.build").warning
    taken = 0

    def calls() -> Iterator[tuple[str, int]]:
        for uri in uris:
            if taken >= limit:
                return
            yield uri, limit - taken

    for kind, item in (stream or local_stream)(shard_frames, calls()):
        if kind == "warn":
            warn("%s", item)
            continue
        yield item
        taken += len(item[0])
        if taken >= limit:
            return


def iter_video_frames(path: str, limit: int, chunk: int = 64) -> Iterator[FrameChunk]:
    """The haystack frames of a video as the reference reads them: every round(fps)-th frame from frame 0
    (`operators.niah.video_1fps_indices`; 29.97 fps -> frames 0, 30, 60, ...), the first `limit` of them, decoded
    `chunk` at a time, uint8 RGB at the video's own size (the encoder pads each to a square). When the container
    does not state an exact frame count, frames in the last second of the estimate are left out (they may not
    exist)."""
    from longvid.operators.decode import decode_frames
    from longvid.operators.probe import probe

    try:
        info = probe(path)
    except RecordError as e:
        raise ConfigError(f"haystack: {path}: {e.reason}") from None
    idx = niah.video_1fps_indices(info.num_frames, info.fps, limit)
    if not info.num_frames_exact:  # the last frames may not exist: keep a margin of one second
        idx = [i for i in idx if i < info.num_frames - info.fps] or idx[:1]
    for s in range(0, len(idx), chunk):
        part = idx[s : s + chunk]
        try:
            frames = decode_frames(path, part, info)
        except RecordError as e:
            raise ConfigError(f"haystack: {path}: {e.reason}") from None
        yield frames, [{"file": path, "key": "", "frame": i, "time": round(i / info.fps, 3)} for i in part]


SHARD_DEVIATION = ("ingest shards are not the reference's haystack: their frames were sampled by the dynamic "
                   "VideoChat-Flash rule (not every round(fps)-th frame), resized to a square by ingest (stretched, "
                   "not padded) and stored as lossy mp4; give the long video file itself for the reference's steps")


def haystack_source(haystack: str) -> tuple[str, int | None, Any, float | None]:
    """('shards', None, uris, None) or ('video', its haystack frames (every round(fps)-th), path, fps)."""
    if not storage.is_s3(haystack) and Path(haystack).is_file() and not haystack.endswith(".tar"):
        from longvid.operators.probe import probe

        try:
            info = probe(haystack)
        except RecordError as e:
            raise ConfigError(f"haystack: {haystack}: {e.reason}") from None
        return "video", len(niah.video_1fps_indices(info.num_frames, info.fps)), haystack, float(info.fps)
    uris = shard_uris(haystack)
    if not uris:
        raise ConfigError(f"haystack: {haystack}: not a video file and no .tar shards found there (or in shards/)")
    return "shards", None, uris, None


# --------------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------------


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device} asked for but torch sees no CUDA device")
    return torch.device(device)


def make_encoder(preset: str, img_size: int, weights: str, seed: int, device) -> tuple[Any, dict[str, Any]]:
    """The HiCo encoder of a preset with loaded (or seeded random) weights, and what it is (for set.json)."""
    from longvid.model.build import build_encoder
    from longvid.model.checkpoint import CheckpointError

    try:
        enc, rep = build_encoder(preset, img_size=img_size or None, weights=weights or None, seed=seed)
    except CheckpointError as e:
        raise ConfigError(f"encoder: {e}") from None
    ident: dict[str, Any] = {"preset": preset, "img_size": enc.cfg.img_size, "dim": enc.out_dim,
                             "tokens_per_frame": enc.tokens_per_frame}
    if rep is not None:
        if rep.missing:
            raise ConfigError(f"encoder: {weights}: encoder weights missing: {rep.summary()}")
        ident.update(weights=os.path.abspath(weights), load_report=rep.summary())
    else:
        ident.update(weights=f"random(seed={seed})")
    return enc.to(device).eval(), ident


class ClipEncoder:
    """Feeds frames, each padded to a square with the mean colour (LLaVA's `expand2square`, never stretched) and
    resized, through the HiCo encoder in whole 4-frame clips from the first frame; returns [frames, 16, D]."""

    def __init__(self, enc, device, clips_per_pass: int, dtype: str):
        self.enc, self.device, self.cpp, self.dtype = enc, device, clips_per_pass, np.dtype(dtype)
        self.size = enc.cfg.img_size
        self.per_clip = enc.cfg.num_frames
        self.pending: list[Any] = []  # preprocessed [3, 1, S, S] frames
        self.out: list[np.ndarray] = []

    def _run(self, frames) -> None:
        import torch

        x = torch.cat(frames, dim=1)[None].to(self.device)  # [1, 3, T, S, S]
        with torch.no_grad():
            tok = self.enc(x, clips_per_pass=self.cpp)  # [1, C, 64, D]
        tok = tok.float().reshape(-1, self.enc.tokens_per_frame, tok.shape[-1])
        self.out.append(tok.cpu().numpy().astype(self.dtype))

    def add(self, frames: np.ndarray) -> None:
        from longvid.model.umt import preprocess

        x = preprocess(frames, self.size, pad_to_square=True)  # [3, n, S, S]
        self.pending += list(x.split(1, dim=1))
        step = self.per_clip * self.cpp
        while len(self.pending) >= step:
            self._run(self.pending[:step])
            self.pending = self.pending[step:]

    def finish(self) -> np.ndarray:
        n_tail = len(self.pending)
        if n_tail:
            pad = (-n_tail) % self.per_clip  # the last clip is completed with its last frame; the padding is dropped
            self._run(self.pending + [self.pending[-1]] * pad)
            self.out[-1] = self.out[-1][:n_tail]
            self.pending = []
        return np.concatenate(self.out) if self.out else np.zeros((0, 16, self.enc.out_dim), self.dtype)


def load_image(path: Path, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SpecError(f"{where}: needle image {path}: not a readable image: {e}") from None


def encode_images(enc, device, paths: list[Path], wheres: list[str], dtype: str, batch: int = 16) -> np.ndarray:
    """Needle images -> [n, 64, D]: each padded to a square, resized, repeated to a 4-frame clip."""
    import torch

    from longvid.model.umt import preprocess

    out = []
    for s in range(0, len(paths), batch):
        xs = [preprocess(load_image(p, w)[None], enc.cfg.img_size, pad_to_square=True)
              for p, w in zip(paths[s : s + batch], wheres[s : s + batch])]
        x = torch.stack(xs).to(device)  # [B, 3, 1, S, S]
        with torch.no_grad():
            tok = enc(x, image_mode="repeat")  # [B, 1, 64, D]
        out.append(tok[:, 0].float().cpu().numpy().astype(dtype))
    return np.concatenate(out) if out else np.zeros((0, enc.tokens_per_clip, enc.out_dim), dtype)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def _write_parquet(path: Path, table: pa.Table) -> None:
    storage.write_parquet(str(path), table)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


INDEX_SCHEMA = pa.schema([
    ("row", pa.int64()),
    ("item_id", pa.int64()),
    ("kind", pa.string()),
    ("length", pa.int64()),
    ("depth", pa.float64()),  # null for multi hop
    ("positions", pa.list_(pa.int64())),  # haystack frame each needle goes in front of
    ("needle_rows", pa.list_(pa.int64())),  # rows of needles/tokens.npy, in placement order
    ("haystack_frames", pa.int64()),
    ("token_starts", pa.list_(pa.int64())),  # first token of each needle in the spliced sequence
    ("num_tokens", pa.int64()),
])


def _prepare_out(out: Path, job: JobOutput, stack: contextlib.ExitStack) -> None:
    """Refuse a folder that holds anything but a NIAH set (before anything is written there), own it while the
    build runs (a second build into it exits 2 naming the first), then remove the set it holds."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"out: {out} exists and is not a folder")
        ours = (out / "set.json").is_file() or job.last_owner() == job.job  # a set, or a build killed before set.json
        if not ours and any(p.name != OWNER_FILE for p in out.iterdir()):
            raise ConfigError(f"out: {out} is not empty and holds no NIAH set (set.json); use a new folder")
    stack.enter_context(job.claimed())
    for sub in ("haystack", "needles"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("set.json", "items.json", "index.parquet"):
        (out / name).unlink(missing_ok=True)
    for sub in ("haystack", "needles"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def run_niah_build(cfg: NiahBuildConfig, log=print) -> dict[str, Any]:
    """Build a NIAH set (see the module docstring). Returns the summary written to set.json."""
    cfg.validate()
    import torch

    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with contextlib.ExitStack() as stack:  # the claim of --out, once the inputs are checked
            return _build(cfg, log, stack)
    finally:
        torch.set_num_threads(before)


def _build(cfg: NiahBuildConfig, log, stack: contextlib.ExitStack) -> dict[str, Any]:
    t0 = time.time()
    kind_req = "multi" if cfg.multi_hop else "single"
    kind, items = niah.read_spec(cfg.needles, kind_req)
    if cfg.limit_items:
        items = items[: cfg.limit_items]
    images_dir = Path(cfg.images)
    if not images_dir.is_dir():
        raise ConfigError(f"images: {images_dir}: not a folder")
    # needle images: resolve every one before any encoding, so a missing file stops the job at once
    image_rows: dict[str, int] = {}
    image_paths: list[Path] = []
    image_where: list[str] = []
    for it in items:
        for k, name in enumerate(it.images):
            if name in image_rows:
                continue
            where = f"{cfg.needles}: item id {it.id}: " + ("image" if kind == "single" else f"images[{k}]")
            image_paths.append(niah.resolve_image(images_dir, name, where))
            image_where.append(where)
            image_rows[name] = len(image_rows)
    longest = max(cfg.frames)
    src_kind, available, src, fps = haystack_source(cfg.haystack)
    unique = niah.haystack_unique_frames(longest, available)
    out = Path(cfg.out)
    _prepare_out(out, JobOutput(cfg.out, "niah-build", log=log, quiet=cfg.quiet), stack)
    device = pick_device(cfg.device)
    enc, ident = make_encoder(cfg.model, cfg.img_size, cfg.encoder, cfg.seed, device)

    # haystack: the first `unique` frames, encoded once, in whole clips from frame 0 as the reference's 8-frame
    # batches are: the last clip takes the source's next frames when it has them (their tokens are dropped)
    t1 = time.time()
    ce = ClipEncoder(enc, device, cfg.clips_per_pass, cfg.dtype)
    read = -(-unique // ce.per_clip) * ce.per_clip
    if available is not None:
        read = min(read, available)
    prov: list[dict[str, Any]] = []
    # on a cluster (--ray-address, or a Ray this process has) the shards are read and decoded in Ray tasks that
    # return only the frames the haystack takes; a video file is decoded here
    reads = RemoteReads.start(cfg.ray_address, job="niah-build", log=log, inputs={"haystack": cfg.haystack}) \
        if src_kind == "shards" else None
    try:
        frames_iter = (iter_video_frames(src, read) if src_kind == "video"
                       else iter_shard_frames(src, read, reads.stream if reads is not None else None))
        next_log = 512
        for frames, p in frames_iter:
            ce.add(frames)
            prov += p
            if not cfg.quiet and len(prov) >= next_log:
                log(f"[niah build] haystack: {len(prov)}/{unique} frames encoded ({time.time() - t1:.0f} s)")
                next_log += 512
        remote = reads.summary() if reads is not None else None
    finally:
        if reads is not None:
            reads.close()
    hay = ce.finish()
    if len(prov) == 0:
        raise ConfigError(f"haystack: {cfg.haystack}: no frames")
    assert hay.shape[0] == len(prov), (hay.shape, len(prov))
    unique = min(unique, len(prov))  # a source may hold fewer frames than wanted: tiled (frame i = slot i mod U)
    hay, prov = hay[:unique], prov[:unique]
    _save_npy(out / "haystack" / "tokens.npy", hay)
    _write_parquet(out / "haystack" / "frames.parquet", pa.Table.from_pylist(
        [{"slot": i, "file": storage.redact(r["file"]), "key": r["key"], "frame": r["frame"],
          "time": r.get("time")} for i, r in enumerate(prov)]))
    t_hay = time.time() - t1

    # needles
    t1 = time.time()
    ntok = encode_images(enc, device, image_paths, image_where, cfg.dtype)
    _save_npy(out / "needles" / "tokens.npy", ntok)
    _write_parquet(out / "needles" / "images.parquet", pa.Table.from_pylist(
        [{"row": image_rows[n], "name": n, "file": str(pth), "bytes": pth.stat().st_size, "sha256": _sha256(pth)}
         for n, pth in zip(image_rows, image_paths)]))
    t_needles = time.time() - t1

    # items and the index of inputs
    tpf = ident["tokens_per_frame"]
    needle_tokens = int(ntok.shape[1])
    rows = []
    items_json = []
    for it in items:
        nrows = [image_rows[n] for n in it.images]
        items_json.append({"id": it.id, "kind": it.kind, "images": list(it.images), "needle_rows": nrows,
                           "questions": {k: dataclasses.asdict(q) for k, q in it.questions.items()}})
        for pl in niah.placements(kind, len(it.images), cfg.frames, cfg.depths):
            rows.append({"row": len(rows), "item_id": it.id, "kind": kind, "length": pl.length, "depth": pl.depth,
                         "positions": list(pl.positions), "needle_rows": nrows,
                         "haystack_frames": pl.haystack_frames,
                         "token_starts": pl.token_starts(tpf, needle_tokens),
                         "num_tokens": pl.num_tokens(tpf, needle_tokens)})
    _write_json(out / "items.json", items_json)
    _write_parquet(out / "index.parquet", pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))

    summary = {
        "job": "niah-build",
        "kind": kind,
        "items": len(items),
        "inputs": len(rows),
        "lengths": cfg.frames,
        "depths": cfg.depths if kind == "single" else [],
        "questions_per_input": 1 if kind == "single" else 2,
        "spec": {"file": os.path.abspath(cfg.needles), "sha256": _sha256(Path(cfg.needles))},
        "images": {"folder": os.path.abspath(cfg.images), "count": len(image_paths)},
        "haystack": {"source": cfg.haystack, "type": src_kind, "unique_frames": unique,
                     "longest": longest, "repeated": longest > unique,
                     "rule": "frame i = unique frame i mod U; U = longest, or above 7,500 frames the reference's "
                             "repeat period (operators.niah.haystack_unique_frames: 5,016 for 10,000); at most the "
                             "frames the source has",
                     "frames": (f"frames 0, {round(fps)}, {2 * round(fps)}, ...: every round(fps) = {round(fps)} "
                                f"frames at {fps:g} fps" if fps is not None
                                else "the frames stored in the shards, in order"),
                     "pad_to_square": True,
                     "reference_exact": src_kind == "video",
                     "deviation": None if src_kind == "video" else SHARD_DEVIATION,
                     **({"remote_reads": remote} if remote is not None else {})},
        "encoder": ident,
        "tokens_per_frame": tpf,
        "needle_tokens": needle_tokens,
        "dim": int(hay.shape[2]),
        "dtype": cfg.dtype,
        "max_tokens": max((r["num_tokens"] for r in rows), default=0),
        "seconds": {"haystack": round(t_hay, 3), "needles": round(t_needles, 3), "total": round(time.time() - t0, 3)},
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "out": str(out.resolve()),
    }
    storage.write_json(str(out / "set.json"), summary, indent=2, default=str)  # last: set.json = a complete set
    if not cfg.quiet:
        log(f"[niah build] {kind}-hop set: {len(items)} items x {len(cfg.frames)} lengths"
            + (f" x {len(cfg.depths)} depths" if kind == "single" else "")
            + f" = {len(rows)} inputs; haystack {unique} unique frames ({src_kind}) for up to {longest}; "
            f"{len(image_paths)} needle images; {summary['seconds']['total']:.1f} s -> {out}")
    if src_kind != "video":
        log(f"[niah build] note: {SHARD_DEVIATION}")
    return summary


# --------------------------------------------------------------------------------------------------------------
# A small spec with its images, in the released formats (demo, tests)
# --------------------------------------------------------------------------------------------------------------

DEMO_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
               "purple": (140, 50, 170), "orange": (245, 140, 30)}
DEMO_SHAPES = ("square", "circle", "triangle", "cross")


def _demo_image(path: Path, color: str, shape: str, size: tuple[int, int] = (96, 72)) -> None:
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (245, 245, 240))
    d = ImageDraw.Draw(img)
    c, box = DEMO_COLORS[color], (w // 4, h // 6, 3 * w // 4, 5 * h // 6)
    if shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "triangle":
        d.polygon([(w // 2, h // 6), (w // 4, 5 * h // 6), (3 * w // 4, 5 * h // 6)], fill=c)
    else:
        d.rectangle((w // 2 - w // 12, h // 6, w // 2 + w // 12, 5 * h // 6), fill=c)
        d.rectangle((w // 4, h // 2 - h // 12, 3 * w // 4, h // 2 + h // 12), fill=c)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _demo_question(prefix: str, right: str, pool: list[str], letter: str, rng) -> str:
    wrong = [x for x in pool if x != right]
    rng.shuffle(wrong)
    opts = wrong[:3]
    opts.insert("ABCD".index(letter), right)
    lines = "\n".join(f"({L}) {o}" for L, o in zip("ABCD", opts))
    return f"{prefix}\nOptions: {lines}\nOnly give the best option. Best option: ("


def make_demo_needles(folder: str | Path, items: int = 4, multi_hop: bool = False, chain: int = 5,
                      seed: int = 0) -> tuple[Path, Path]:
    """Write a spec in the released format (`spec.json`) and its images (`images/`) under `folder`: coloured
    shapes; single hop asks for the shape, multi hop for the final frame's caption and colour.
    Returns (spec path, images folder)."""
    import random

    rng = random.Random(seed)
    root = Path(folder)
    images = root / "images"
    colors, shapes = list(DEMO_COLORS), list(DEMO_SHAPES)
    spec = []
    for i in range(items):
        if not multi_hop:
            color, shape = colors[i % len(colors)], shapes[(i // len(colors) + i) % len(shapes)]
            name = f"single/demo_{i:03d}.png"
            _demo_image(images / name, color, shape)
            letter = rng.choice("ABCD")
            q = _demo_question(f"Find the frame of a {color} shape. what is the shape", shape, shapes, letter, rng)
            spec.append({"question": q, "answer": letter, "image": name, "id": i})
        else:
            names = []
            for k in range(chain):
                color, shape = rng.choice(colors), rng.choice(shapes)
                name = f"multi/demo_{i}_{k}.png"
                _demo_image(images / name, color, shape)
                names.append(name)
            captions = [f"a {c} {s}" for c in colors for s in shapes]
            l1, l2 = rng.choice("ABCD"), rng.choice("ABCD")
            head = "Find the frame of the first shape. Locate the final frame based on the instructions in the image, "
            spec.append({
                "images": names,
                "question1": _demo_question(head + "and choose the captions that best describe the frame: ",
                                            f"a {color} {shape}", captions, l1, rng),
                "answer1": l1,
                "question2": _demo_question(head + "and answer the following question based on the final frame: "
                                            "what is the color of the shape", color, colors, l2, rng),
                "answer2": l2,
            })
    root.mkdir(parents=True, exist_ok=True)
    path = root / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path, images
