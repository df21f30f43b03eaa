"""A generated MiraData v1 corpus with known bad inputs, for fault-injection tests and benchmarks.

    corpus = make_corpus(root, n_videos=60, clips_per_video=3, bad_per_kind=3)
    corpus.metadata   # root/miradata_v1.csv   (one row per clip)
    corpus.videos     # root/videos            (MiraData raw layout: 000000000/000000001234.mp4)
    corpus.good_keys  # keys that must come out as samples
    corpus.bad        # key -> (kind, expected failure stage)

Good videos are a few small H.264 clips (synthetic.videos, 160x120) generated once and hard-linked under
many download ids, so hundreds of inputs cost a few seconds to make. Each bad kind is a realistic way an input
goes wrong; `BAD_KINDS` maps it to the stage that must report it:

    zero_byte     an empty .mp4                                          probe
    truncated     the first third of a good file (the moov atom is lost) probe
    not_video     a text file named .mp4                                 probe
    audio_only    an AAC-only .mp4                                       probe
    missing       a row whose video file does not exist                  locate
    span_outside  a clip span that starts after the end of the video     sample
    bad_timestamp a row whose timestamp is not a list of two times       metadata
    corrupt_moov  the sample tables of a good file overwritten with junk probe
    corrupt_middle the bitstream after the first fifth of a good file   decode
                  replaced by random bytes (the container still opens)

`extra_row` / `extra_key` add a row (and give its key) for a video a test places itself, e.g. the leased files of
tests/scenarios/test_crash_safety.py that make the decoder hang or crash (tests/faults.py).
"""
from __future__ import annotations

import csv
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from longvid.operators.records import sample_key
from longvid.operators.sources.miradata import raw_video_path
from longvid.synthetic.videos import make_audio_only, make_video

SOURCE = "miradata"

BAD_KINDS: dict[str, str] = {
    "zero_byte": "probe",
    "truncated": "probe",
    "not_video": "probe",
    "audio_only": "probe",
    "missing": "locate",
    "span_outside": "sample",
    "bad_timestamp": "metadata",
    "corrupt_moov": "probe",
    "corrupt_middle": "decode",
}

HEADER = ["clip_id", "source", "video_url", "video_id", "fps", "seconds", "timestamp", "file_path", "short_caption"]


@dataclass
class Corpus:
    metadata: Path
    videos: Path
    rows: int = 0
    good_keys: set[str] = field(default_factory=set)
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (kind, expected stage)
    bad_video_ids: dict[str, str] = field(default_factory=dict)  # video_id -> kind

    @property
    def keys(self) -> set[str]:
        return self.good_keys | set(self.bad)


def hms(t: float) -> str:
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def base_videos(folder: Path, n: int = 4, seconds: float = 3.0, fps: float = 25.0, width: int = 160,
                height: int = 120) -> list[Path]:
    """`n` distinct small H.264 clips (cached in `folder`: made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"base-{i}-{seconds:g}s-{fps:g}fps-{width}x{height}.mp4"
        if not p.exists():
            tmp = p.with_name(p.name + ".tmp.mp4")
            make_video(tmp, seconds=seconds, fps=fps, width=width, height=height, seed=100 + i, gop=int(fps))
            tmp.rename(p)
        out.append(p)
    return out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copyfile(src, dst)


def corrupt_moov(data: bytes, seed: int = 0) -> bytes:
    """Overwrite the sample tables of the moov atom (stsz/stco/stss/stts payloads) with random bytes.

    The container still opens (the atom tree is intact) but its index points at nonsense."""
    rng = random.Random(seed)
    b = bytearray(data)
    for tag in (b"stsz", b"stco", b"stts", b"stsc"):
        pos = b.find(tag)
        if pos < 4:
            continue
        size = int.from_bytes(b[pos - 4:pos], "big")
        start, end = pos + 12, min(len(b), pos - 4 + size)  # keep version/flags and the entry count
        for i in range(start, end):
            b[i] = rng.randrange(256)
    return bytes(b)


def corrupt_mdat(data: bytes, frac: float = 0.2, seed: int = 0) -> bytes:
    """Random bytes over the media data from `frac` of the way in to the end of the mdat box (headers intact)."""
    rng = random.Random(seed)
    b = bytearray(data)
    pos = b.find(b"mdat")
    if pos < 4:
        raise ValueError("no mdat box in the data")
    size = int.from_bytes(b[pos - 4:pos], "big")
    start, end = pos + 4 + int((size - 8) * frac), pos - 4 + size
    b[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    return bytes(b)


def make_corpus(root: str | Path, n_videos: int = 60, clips_per_video: int = 3, bad_per_kind: int = 3,
                kinds: tuple[str, ...] | None = None, seconds: float = 3.5, fps: float = 25.0, width: int = 160,
                height: int = 120, cache: str | Path | None = None, seed: int = 0) -> Corpus:
    """Write videos + miradata_v1.csv under `root`. Rows are shuffled (seeded) so bad rows land in many units.
    Clips are (seconds - 0.2) / clips_per_video long: keep that >= 1 s (the span rule refuses shorter spans)."""
    root = Path(root)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    bases = base_videos(Path(cache) if cache else root / "base", seconds=seconds, fps=fps, width=width,
                        height=height)
    kinds = tuple(BAD_KINDS) if kinds is None else kinds
    unknown = set(kinds) - set(BAD_KINDS)
    if unknown:
        raise ValueError(f"kinds: unknown bad kinds {sorted(unknown)}; choose from {sorted(BAD_KINDS)}")
    corpus = Corpus(root / "miradata_v1.csv", videos)
    rows: list[dict] = []
    clip_len = (seconds - 0.2) / clips_per_video

    def row(download_id: int, clip: int, start: float, end: float, caption: str, ts: str | None = None) -> dict:
        vid = f"{download_id:012d}"
        return {"clip_id": f"{download_id}.{clip}", "source": "youtube", "video_url": "", "video_id": vid,
                "fps": f"{fps:g}", "seconds": f"{end - start:.3f}",
                "timestamp": ts if ts is not None else repr([hms(start), hms(end)]),
                "file_path": f"{download_id // 1000:09d}/{download_id:012d}.{clip}.mp4", "short_caption": caption}

    did = 1000
    for v in range(n_videos):
        did += 1
        _link(bases[v % len(bases)], videos / raw_video_path(did))
        for c in range(clips_per_video):
            s, e = round(0.1 + c * clip_len, 3), round(0.1 + (c + 1) * clip_len, 3)
            rows.append(row(did, c, s, e, f"Synthetic clip {c} of video {v}."))
            corpus.good_keys.add(sample_key(SOURCE, f"{did:012d}", s, e))

    good_bytes = bases[0].read_bytes()
    did = 900_000
    for kind in kinds:
        for j in range(bad_per_kind):
            did += 1
            path = videos / raw_video_path(did)
            path.parent.mkdir(parents=True, exist_ok=True)
            s, e = 0.5, 1.5
            ts = None
            if kind == "zero_byte":
                path.write_bytes(b"")
            elif kind == "truncated":
                path.write_bytes(good_bytes[: len(good_bytes) // 3])
            elif kind == "not_video":
                path.write_text("<html><body>403 Forbidden</body></html>\n" * (20 + j))
            elif kind == "audio_only":
                make_audio_only(path, seconds=2.0)
            elif kind == "missing":
                pass
            elif kind == "span_outside":
                _link(bases[j % len(bases)], path)
                s, e = seconds + 10.0 + j, seconds + 20.0 + j
            elif kind == "bad_timestamp":
                _link(bases[j % len(bases)], path)
                ts = ["00:00:01", "[1.0, 'soon']", "['00:00:02.000']"][j % 3]
            elif kind == "corrupt_moov":
                path.write_bytes(corrupt_moov(good_bytes, seed=j))
            elif kind == "corrupt_middle":
                path.write_bytes(corrupt_mdat(bases[j % len(bases)].read_bytes(), seed=j))
            r = row(did, 0, s, e, f"bad input: {kind}", ts)
            rows.append(r)
            vid = f"{did:012d}"
            corpus.bad_video_ids[vid] = kind
            if kind != "bad_timestamp":
                corpus.bad[sample_key(SOURCE, vid, s, e)] = (kind, BAD_KINDS[kind])

    random.Random(seed).shuffle(rows)
    for line, r in enumerate(rows, start=2):  # line 1 is the header; no field holds a newline
        if corpus.bad_video_ids.get(r["video_id"]) == "bad_timestamp":
            # a metadata failure's key hashes in the file name, line and field (operators.sources.base.make_failure)
            key = sample_key(SOURCE, f"{r['video_id']}@{corpus.metadata.name}:{line}#timestamp", None, None)
            corpus.bad[key] = ("bad_timestamp", BAD_KINDS["bad_timestamp"])
    with open(corpus.metadata, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    corpus.rows = len(rows)
    return corpus


def extra_row(download_id: int, start: float = 0.5, end: float = 1.5, caption: str = "an extra clip") -> list[str]:
    """A MiraData v1 CSV row (HEADER order) for the video of `download_id`, for tests that add their own videos."""
    vid = f"{download_id:012d}"
    return [f"{download_id}.0", "youtube", "", vid, "25", f"{end - start:.3f}", repr([hms(start), hms(end)]),
            f"{download_id // 1000:09d}/{vid}.0.mp4", caption]


def extra_key(download_id: int, start: float = 0.5, end: float = 1.5) -> str:
    return sample_key(SOURCE, f"{download_id:012d}", start, end)
