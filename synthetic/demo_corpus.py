"""A small, real demo corpus for all five sources: synthetic H.264 videos in each source's own layout,
plus metadata in each source's real format referencing them (with a few realistic bad inputs).

    corpus = make_demo_corpus(Path("/tmp/demo"), per_source=3)
    corpus["webvid"] == {"metadata": [".../webvid/metadata/results_2M_val.csv"], "videos": ".../webvid/videos",
                         "options": {}, "expect": {...}}

Layout under `root/<source>/`: `metadata/` (what the adapter reads) and the video root:
- ego4d      videos/v2/full_scale/<uid>.mp4 (the last one under v1/), metadata v2/ego4d.json +
             v2/annotations/narration.json (both passes, #C/#O tags, a summary); options window_sec=20
- howto100m  videos/<video_id>.mp4; HowTo100M_v1.csv, task_ids.csv, caption.json (rolling, overlapping ASR)
- hdvila     download_videos/<video_id>.mp4 + <video_id>.en.vtt; hdvila_part0.jsonl, two clips a video
- miradata   videos/<id//1000:09d>/<id:012d>.mp4; miradata_v1.csv with the real v1 header
- webvid     videos/<page_dir>/<videoid>.mp4; results_2M_val.csv with a shuffled column order
Bad inputs: a WebVid row whose video file is missing, a zero-byte HowTo100M video, a malformed HD-VILA line.
`expect` gives what the adapter and the ingest should find: records, metadata failures, bad video paths.
`make_demo_mixture` writes a small annotation mixture in the released LLaVA format (for `ingest --mixture`).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from longvid.synthetic.videos import make_video

SOURCES = ("ego4d", "howto100m", "hdvila", "miradata", "webvid")

ACTIONS = [
    "picks a bag of clothes from the floor", "opens the fridge", "takes a knife from the drawer",
    "cuts an onion on the board", "washes the pan in the sink", "puts the plate on the table",
    "walks to the door", "turns on the stove", "pours water into the pot", "closes the cupboard",
    "wipes the counter with a cloth", "stirs the soup with a spoon",
]
SPEECH = (
    "hello everyone and welcome back to my channel today we are going to show you how to fix a flat "
    "bicycle tire first remove the wheel from the frame then take out the inner tube and look for the "
    "hole once you find it clean the area sand it a little and apply the glue wait a minute and press "
    "the patch firmly then put the tube back inflate it and you are done thanks for watching"
).split()
TASKS = [("52907", "Fix a Flat Bicycle Tire"), ("109097", "Make Pancakes"), ("77135", "Plant a Tomato Seedling")]
SCENES = [
    ("A red kite flies over a grassy hill.", "A bright red kite dances in the wind above a green hill while clouds drift by."),
    ("A chef slices vegetables in a kitchen.", "In a busy kitchen a chef quickly slices carrots and peppers on a wooden board."),
    ("Waves roll onto a sandy beach at sunset.", "Golden light reflects on gentle waves that roll onto a quiet sandy beach."),
    ("Cars drive along a city street at night.", "Headlights streak along a wet city street lined with glowing shop signs."),
]


class _Ids:
    """Deterministic ids of each source's shape from (seed, source, i)."""

    def __init__(self, seed: int):
        self.seed = seed

    def _h(self, *parts: Any) -> bytes:
        return hashlib.sha256("|".join(map(str, (self.seed, *parts))).encode()).digest()

    def youtube(self, source: str, i: int) -> str:
        return base64.urlsafe_b64encode(self._h(source, i)).decode()[:11]

    def uuid(self, source: str, i: int) -> str:
        return str(uuid.UUID(bytes=self._h(source, i)[:16], version=4))

    def number(self, source: str, i: int, lo: int, hi: int) -> int:
        return lo + int.from_bytes(self._h(source, i)[:8], "big") % (hi - lo)


def _hms(sec: float) -> str:
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def make_demo_corpus(root: Path, per_source: int = 3, seed: int = 0) -> dict[str, dict]:
    """Write the corpus under `root`; returns {source: {"metadata": [paths], "videos": video_root,
    "options": adapter options, "expect": {...}}}. Same (per_source, seed) -> same metadata and videos."""
    if per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    root = Path(root)
    rng = random.Random(seed)
    ids = _Ids(seed)
    jobs: list[dict] = []  # video files to make
    out: dict[str, dict] = {}

    def video(path: Path, seconds: float, fps: float, size: tuple[int, int]) -> dict:
        job = {"path": path, "seconds": seconds, "fps": fps, "width": size[0], "height": size[1], "seed": len(jobs) + seed * 101}
        jobs.append(job)
        return job

    def size(k: int) -> tuple[int, int]:
        return (320, 240) if k % 5 == 0 else (160, 120)

    k = 0  # running video number: spreads sizes over the corpus

    # ------------------------------------------------------------------ Ego4D
    base = root / "ego4d"
    vroot, meta = base / "videos", base / "metadata"
    videos, narr = [], {}
    for i in range(per_source):
        uid = ids.uuid("ego4d", i)
        fps = 15.0
        nfr = int(round(rng.uniform(24, 40) * fps))
        dur = nfr / fps
        sub = "v1" if i == per_source - 1 and per_source > 1 else "v2"
        w, h = size(k); k += 1
        video(vroot / sub / "full_scale" / f"{uid}.mp4", dur, fps, (w, h))
        videos.append({
            "video_uid": uid, "duration_sec": dur, "scenarios": ["Cooking"],
            "video_metadata": {"fps": fps, "num_frames": nfr, "video_codec": "h264", "display_resolution_width": w,
                               "display_resolution_height": h, "mp4_duration_sec": dur, "video_start_sec": 0.0},
            "split_em": "val" if i == 1 else None, "split_av": None, "split_fho": "train" if i == 0 else None,
            "s3_path": f"s3://ego4d-consortium-sharing/public/{sub}/full_scale/{uid}.mp4",
            "redacted_intervals": [], "gaps": [],
        })
        p1 = [{"timestamp_sec": round(t, 3), "timestamp_frame": int(t * fps),
               "narration_text": f"#C C {rng.choice(ACTIONS)}" + (" #unsure" if j == 2 else ""),
               "annotation_uid": ids.uuid("ego4d-n1", i * 100 + j)}
              for j, t in enumerate(_times(rng, 1.0, dur - 1.0, 3.0))]
        p2 = [{"timestamp_sec": round(t, 3), "timestamp_frame": int(t * fps),
               "narration_text": (f"#O man X {rng.choice(ACTIONS)}" if j % 3 == 1 else f"#C C {rng.choice(ACTIONS)}"),
               "annotation_uid": ids.uuid("ego4d-n2", i * 100 + j)}
              for j, t in enumerate(_times(rng, 2.0, dur - 1.0, 4.0))]
        narr[uid] = {
            "narration_pass_1": {"narrations": p1, "summaries": [
                {"start_sec": 0.0, "end_sec": dur, "summary_text": "#Summary C prepared a meal in the kitchen.",
                 "annotation_uid": ids.uuid("ego4d-s", i)}]},
            "narration_pass_2": {"narrations": p2, "summaries": []},
            "status": "complete",
        }
    _write_json(meta / "v2" / "ego4d.json", {
        "date": "2022-09-20", "version": "v2", "description": "LongVid demo corpus (synthetic videos)",
        "videos": videos, "concurrent_video_sets": [], "physical_settings": []})
    _write_json(meta / "v2" / "annotations" / "narration.json", narr)
    opts = {"window_sec": 20.0, "min_window_sec": 8.0}
    from longvid.operators.sources.ego4d import windows  # same rule as the adapter

    n_rec = sum(len(windows(v["duration_sec"], opts["window_sec"], opts["min_window_sec"])) for v in videos)
    out["ego4d"] = _entry([meta / "v2" / "ego4d.json", meta / "v2" / "annotations" / "narration.json"], vroot, opts,
                          records=n_rec)

    # ------------------------------------------------------------------ HowTo100M
    base = root / "howto100m"
    vroot, meta = base / "videos", base / "metadata"
    rows, caps, zero = [], {}, []
    for i in range(per_source):
        vid = ids.youtube("howto100m", i)
        task_id, _ = TASKS[i % len(TASKS)]
        fps = rng.choice([10.0, 12.0, 15.0])
        dur = float(rng.randint(15, 30))
        rows.append([vid, "Hobbies and Crafts", "Crafts", str(i + 1), task_id])
        if i == per_source - 1 and per_source > 1:  # a zero-byte download
            p = vroot / f"{vid}.mp4"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
            zero.append(f"{vid}.mp4")
        else:
            video(vroot / f"{vid}.mp4", dur, fps, size(k)); k += 1
        if i != 1:  # video 1 has no captions entry: still a record
            caps[vid] = _rolling_asr(rng, dur)
    meta.mkdir(parents=True, exist_ok=True)
    _write_csv(meta / "HowTo100M_v1.csv", ["video_id", "category_1", "category_2", "rank", "task_id"], rows)
    (meta / "task_ids.csv").write_text("".join(f"{t}\t{n}\n" for t, n in TASKS))
    _write_json(meta / "caption.json", caps)
    out["howto100m"] = _entry([meta / "HowTo100M_v1.csv", meta / "task_ids.csv", meta / "caption.json"], vroot, {},
                              records=per_source, empty_videos=zero)

    # ------------------------------------------------------------------ HD-VILA
    base = root / "hdvila"
    vroot, meta = base / "download_videos", base / "metadata"
    lines = []
    for i in range(per_source):
        vid = ids.youtube("hdvila", i)
        fps = rng.choice([10.0, 15.0, 24000 / 1001])
        dur = float(rng.randint(20, 36))
        video(vroot / f"{vid}.mp4", dur, fps, size(k)); k += 1
        a = round(rng.uniform(0.5, 3.0), 3)
        b = round(a + rng.uniform(5.0, 8.0), 3)
        c = round(b + rng.uniform(0.0, 2.0), 3)
        d = round(min(dur - 0.5, c + rng.uniform(6.0, 10.0)), 3)
        lines.append(json.dumps({"video_id": vid, "url": f"https://www.youtube.com/watch?v={vid}", "clip": [
            {"clip_id": f"{vid}.1.mp4", "span": [_hms(a), _hms(b)]},
            {"clip_id": f"{vid}.2.mp4", "span": [_hms(c), _hms(d)]}]}))
        vroot.mkdir(parents=True, exist_ok=True)  # subtitles beside every video: a clip's text is its cues
        (vroot / f"{vid}.en.vtt").write_text(_youtube_vtt(dur))
    bad_line = len(lines) + 1
    lines.append('{"video_id": "%s", "url": "https://www.youtube.com/watch?v=%s", "clip": [{"clip_id": ' % (
        ids.youtube("hdvila", 999), ids.youtube("hdvila", 999)))  # truncated download: malformed JSON
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "hdvila_part0.jsonl").write_text("\n".join(lines) + "\n")
    out["hdvila"] = _entry([meta / "hdvila_part0.jsonl"], vroot, {}, records=2 * per_source,
                           malformed=[f"{meta / 'hdvila_part0.jsonl'}:{bad_line}"])

    # ------------------------------------------------------------------ MiraData v1
    base = root / "miradata"
    vroot, meta = base / "videos", base / "metadata"
    header = ["clip_id", "source", "video_url", "video_id", "width", "height", "fps", "seconds", "timestamp",
              "frame_number", "framestamp", "file_path", "short_caption", "dense_caption", "background_caption",
              "main_object_caption", "style_caption", "camera_caption"]
    rows = []
    for i in range(per_source):
        did = ids.number("miradata", i, 1000, 90000)
        yid = ids.youtube("miradata", i)
        fps = rng.choice([10.0, 15.0, 24000 / 1001])
        dur = float(rng.randint(10, 30))
        w, h = size(k); k += 1
        video(vroot / f"{did // 1000:09d}" / f"{did:012d}.mp4", dur, fps, (w, h))
        nclips = 2 if i == 0 else 1
        t = 0.0
        for c in range(nclips):
            s = round(t + rng.uniform(0.5, 2.0), 3)
            e = round(min(dur - 0.2, s + rng.uniform(4.0, 8.0)), 3)
            t = e
            short, dense = SCENES[(i + c) % len(SCENES)]
            rows.append([f"{did}.{c}", "youtube", f"https://www.youtube.com/watch?v={yid}", yid, str(w), str(h),
                         repr(fps), f"{e - s:.3f}", repr([_hms(s), _hms(e)]),
                         repr([int(s * fps), int(e * fps)]), repr([str(int(s * fps)), str(int(e * fps))]),
                         f"{did // 1000:09d}/{did:012d}.{c}.mp4", short, " " + dense,
                         "An outdoor scene under soft daylight.", " The main subject moves steadily across the frame.",
                         "Realistic, natural colours.", "A steady shot with a slow pan."])
    meta.mkdir(parents=True, exist_ok=True)
    _write_csv(meta / "miradata_v1.csv", header, rows)
    out["miradata"] = _entry([meta / "miradata_v1.csv"], vroot, {}, records=len(rows))

    # ------------------------------------------------------------------ WebVid
    base = root / "webvid"
    vroot, meta = base / "videos", base / "metadata"
    cols = ["videoid", "contentUrl", "duration", "page_dir", "name", "page_idx"]
    rng.shuffle(cols)
    if cols[0] == "videoid":  # make sure the order really differs from the usual one
        cols.append(cols.pop(0))
    rows, missing = [], []
    for i in range(per_source + 1):
        vid = ids.number("webvid", i, 1_000_000, 1_100_000_000)
        page_dir = f"{(i // 50) * 50 + 1:06d}_{(i // 50) * 50 + 50:06d}"
        dur = rng.randint(6, 20)
        if i < per_source:
            sz = size(k); k += 1
            video(vroot / page_dir / f"{vid}.mp4", float(dur), rng.choice([10.0, 25.0, 30.0]) if sz[0] == 160 else 10.0, sz)
        else:
            missing.append(f"{page_dir}/{vid}.mp4")  # listed, never downloaded
        row = {"videoid": str(vid), "contentUrl": f"https://ak.picdn.net/shutterstock/videos/{vid}/preview/stock-footage-{i}.mp4",
               "duration": f"PT00H00M{dur:02d}S", "page_dir": page_dir, "name": SCENES[i % len(SCENES)][0],
               "page_idx": str(i // 50 + 1)}
        rows.append([row[c] for c in cols])
    meta.mkdir(parents=True, exist_ok=True)
    _write_csv(meta / "results_2M_val.csv", cols, rows)
    out["webvid"] = _entry([meta / "results_2M_val.csv"], vroot, {}, records=per_source + 1, missing_videos=missing)

    # ------------------------------------------------------------------ the videos (2 at a time)
    with ThreadPoolExecutor(max_workers=2) as ex:
        list(ex.map(lambda j: make_video(j["path"], seconds=j["seconds"], fps=j["fps"], width=j["width"],
                                         height=j["height"], seed=j["seed"]), jobs))
    return out


def make_demo_mixture(root: Path, seed: int = 0) -> dict[str, Any]:
    """A small annotation mixture in the released LLaVA format under `root` (for `longvid ingest --mixture`):

    - clips.json (video, `all`): a whole video, two `start`/`end` spans, a multi-turn record, a record whose
      video is missing (a failure row);
    - frames.json (frame folders, `video_read_type: img`, `first:2` of 3);
    - pictures.jsonl (images, `end:2` of 3): one image, a two-image record;
    - chat.json (text-only, `first:50%` of 4).
    `data_root`s are web pages (as in the released files) mapped to media/ by roots.yaml, or a relative folder.
    Returns {"mixture", "roots", "expect": {dataset: {"selected", "samples", "failures", "media_type"}}}."""
    from PIL import Image

    root = Path(root)
    rng = random.Random(seed)
    web = "https://example.org/longvid-demo"
    media = root / "media"
    vids = {"kitchen.mp4": 12.0, "street.mp4": 10.0}
    for j, (name, sec) in enumerate(vids.items()):
        make_video(media / "videos" / name, seconds=sec, fps=10.0, width=160, height=120, seed=seed * 101 + 500 + j)

    def conv(*turns: str) -> list[dict]:
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]

    clips = [
        {"id": "whole", "video": "kitchen.mp4", "conversations": conv("<image>\nWhat happens in the video?",
                                                                       SCENES[1][1])},
        {"id": "span-a", "video": "kitchen.mp4", "start": 1.0, "end": 6.5,
         "conversations": conv("<image>\nDescribe this part.", "A chef slices vegetables.")},
        {"id": "span-b", "video": "street.mp4", "start": 4, "end": 9,
         "conversations": conv("What do you see? <image>", "Headlights on a wet street.")},  # <image> moves first
        {"id": "multi-turn", "video": "street.mp4",
         "conversations": conv("<image>\nWhere is this?", "A city street at night.", "Is it raining?",
                               "The street is wet, so it may have rained.")},
        {"id": "missing", "video": "never-downloaded.mp4",
         "conversations": conv("<image>\nWhat happens?", "Something happens.")},
    ]
    frames = []
    for c, n in (("clip01", 8), ("clip02", 6), ("clip03", 5)):
        d = media / "frames" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_noise(rng, 90, 120, 40 + 20 * i)).save(d / f"{c}_{i + 1}.jpg")
        frames.append({"id": c, "video": c, "conversations": conv("<image>\nWhat is shown?", SCENES[n % 4][0])})
    (media / "images").mkdir(parents=True, exist_ok=True)
    for k, (h, w) in enumerate([(96, 128), (128, 80), (64, 64)]):
        Image.fromarray(_noise(rng, h, w, 60 * (k + 1))).save(media / "images" / f"{k}.jpg")
    pictures = [
        {"id": "not-selected", "image": "2.jpg", "conversations": conv("<image>\nWhat is this?", "Noise.")},
        {"id": "one", "image": "0.jpg", "conversations": conv("<image>\nWhat is in the picture?", "A kite.")},
        {"id": "two", "image": ["1.jpg", "2.jpg"],
         "conversations": conv("<image>\n<image>\nHow do the pictures differ?", "The second is smaller.")},
    ]
    chat = [{"id": f"t{i}", "conversations": conv(q, a)} for i, (q, a) in enumerate([
        ("Name a fruit.", "An apple."), ("What is two plus two?", "Four."), ("Say hello.", "Hello."),
        ("Name a colour.", "Blue.")])]
    ann = root / "annotations"
    _write_json(ann / "clips.json", clips)
    _write_json(ann / "frames.json", frames)
    (ann / "pictures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pictures))
    _write_json(ann / "chat.json", chat)
    (root / "mixture.yaml").write_text(
        "# the demo's mixture in the released format (json_path relative to this folder)\n"
        "datasets:\n"
        f"  - {{json_path: annotations/clips.json, sampling_strategy: all, data_root: {web}/videos}}\n"
        "  - {json_path: annotations/frames.json, sampling_strategy: \"first:2\", data_root: media/frames,"
        " video_read_type: img}\n"
        f"  - {{json_path: annotations/pictures.jsonl, sampling_strategy: \"end:2\", data_root: {web}/images}}\n"
        "  - {json_path: annotations/chat.json, sampling_strategy: \"first:50%\"}\n")
    (root / "roots.yaml").write_text(f"# data_root strings of mixture.yaml -> local folders (relative to this file)\n"
                                     f"{web}: media\n")
    expect = {"clips": (5, 4, 1, "video"), "frames": (2, 2, 0, "video"), "pictures": (2, 2, 0, "image"),
              "chat": (2, 2, 0, "text")}
    return {"mixture": str(root / "mixture.yaml"), "roots": str(root / "roots.yaml"),
            "expect": {k: dict(zip(("selected", "samples", "failures", "media_type"), v)) for k, v in expect.items()}}


def _noise(rng: random.Random, h: int, w: int, level: int):
    import numpy as np

    base = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 60, (h, w, 3), dtype=np.uint8)
    return (base + level).clip(0, 255).astype(np.uint8)


def _entry(metadata, vroot: Path, options: dict, records: int, malformed=(), missing_videos=(), empty_videos=()):
    vroot.mkdir(parents=True, exist_ok=True)
    return {
        "metadata": [str(p) for p in metadata],
        "videos": str(vroot),
        "options": dict(options),
        "expect": {
            "records": records,  # SourceRecords the adapter yields
            "metadata_failures": len(malformed),  # Failures the adapter yields
            "malformed_rows": list(malformed),  # "file:line"
            "missing_videos": list(missing_videos),  # relative paths listed but absent -> locate failures
            "empty_videos": list(empty_videos),  # zero-byte files -> probe failures
        },
    }


def _times(rng: random.Random, start: float, end: float, step: float) -> list[float]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += step * rng.uniform(0.6, 1.4)
    return out


def _rolling_asr(rng: random.Random, dur: float) -> dict:
    """YouTube-style rolling ASR: each segment repeats the last words of the previous one and overlaps it."""
    text, start, end = [], [], []
    w, t = 0, 0.3
    while t < dur - 2.0 and w < len(SPEECH):
        n = rng.randint(5, 8)
        back = 2 if w else 0
        words = SPEECH[max(0, w - back) : w + n]
        seg = rng.uniform(2.5, 4.0)
        text.append(" ".join(words))
        start.append(round(t, 2))
        end.append(round(min(dur, t + seg), 2))
        w += n
        t += seg * 0.7  # the next segment starts before this one ends
    return {"start": start, "end": end, "text": text}


def _youtube_vtt(dur: float) -> str:
    """A WebVTT auto-caption file: rolling two-line cues, 10 ms repeat cues, inline word timings."""
    out = ["WEBVTT", "Kind: captions", "Language: en", ""]
    lines = [" ".join(SPEECH[i : i + 4]) for i in range(0, 40, 4)]
    t, prev, k = 0.5, "", 0
    while t + 2.0 <= dur:  # cues over the whole video, the speech repeated
        line, k = lines[k % len(lines)], k + 1
        words = line.split()
        timed = words[0] + "".join(f"<{_hms(t + 0.3 * (j + 1))}><c> {w}</c>" for j, w in enumerate(words[1:]))
        out += [f"{_hms(t)} --> {_hms(t + 2.0)} align:start position:0%", prev if prev else " ", timed, ""]
        out += [f"{_hms(t + 2.0)} --> {_hms(t + 2.01)} align:start position:0%", line, " ", ""]
        prev, t = line, t + 2.01
    return "\n".join(out)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(header)
        wr.writerows(rows)


if __name__ == "__main__":  # python -m synthetic.demo_corpus /tmp/demo
    import sys
    import time

    t0 = time.time()
    res = make_demo_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/longvid-demo"))
    print(json.dumps({k: {"videos": v["videos"], "expect": v["expect"]} for k, v in res.items()}, indent=1))
    print(f"made in {time.time() - t0:.1f} s")
