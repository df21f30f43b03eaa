"""Peers benchmark: the fault-injection corpus through video2dataset 1.3.0 and through `longvid ingest`.

    python bench/peers.py               # install video2dataset into bench/out/peers/venv once, then run both
    python bench/peers.py --write-md    # also rewrite the "## Peers" section of BENCHMARKS.md

Corpus: synthetic.faulty_corpus.make_corpus(n_videos=80, clips_per_video=3, bad_per_kind=3, seed=11), the one
tests/scenarios/test_fault_injection.py uses: 240 good clips of 80 small H.264 videos (160x120, 3 s, 25 fps) and
27 bad rows of nine kinds, in MiraData v1 layout.

video2dataset is given what it can express of the same input: one row per video file (`url` = its local path,
`caption`, `clips` = the [start, end] spans of its rows), with the ClippingSubsampler (precision "exact": the
spans are 0.93 s and the keyframes 1 s apart, so "low" stream-copy cutting yields fewer segments than spans and
fails every video with "list index out of range") and the ResolutionSubsampler (video_size 224, scale+crop),
webdataset output, 2 processes x 1 thread (this box has 2 cores).
The rows with an unparsable timestamp cannot be expressed (it has no metadata adapter) and are left out of its input.
It needs, on this machine (see ../shared/reference/peers.md):
  - `pip install video2dataset==1.3.0 'pyarrow<17'` in its own virtualenv (it pins torch 2.1 and numpy 1.x);
  - `self.encode_formats = {"video": encode_format}` in ResolutionSubsampler.__init__ and FrameSubsampler.__init__
    (1.3.0 crashes with any video subsampler without it): this script patches the installed copy;
  - an `ffmpeg` on PATH: a symlink in the venv's bin to imageio-ffmpeg's binary.
longvid: `longvid ingest --source miradata --profile long --num-cpus 2 --records-per-unit 34` on the same metadata
(frames sampled by the VideoChat-Flash rule, stored at 224x224; 8 units so that both CPUs work).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import kill_tagged, tagged_pids  # noqa: E402

OUT = ROOT / "bench" / "out" / "peers"
VENV = OUT / "venv"
V2D_VERSION = "1.3.0"
# 267 rows -> 8 units, 4 per CPU (the figures in BENCHMARKS.md were measured this way, before the default became a
# ramp of small units; the default would now make 19 units of this corpus).
RECORDS_PER_UNIT = 34

PATCH_MARK = "# patched by longvid bench/peers.py"


def ensure_venv(log: Path) -> tuple[bool, str]:
    """Create the virtualenv and install video2dataset; returns (ok, why not)."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import video2dataset, importlib.metadata as m; print(m.version('video2dataset'))"]
    if py.exists():
        r = subprocess.run(probe, capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == V2D_VERSION:
            return True, ""
    t = time.time()
    print(f"installing video2dataset {V2D_VERSION} into {VENV} (pulls torch 2.1, several GB) ...", file=sys.stderr)
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "venv", str(VENV)], stdout=f, stderr=subprocess.STDOUT)
        if r.returncode == 0:
            r = subprocess.run([str(py), "-m", "pip", "install", f"video2dataset=={V2D_VERSION}", "pyarrow<17"],
                               stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln or "error" in ln][-5:]
        return False, f"pip install failed (exit {r.returncode}): " + " | ".join(tail)
    print(f"  installed in {time.time() - t:.0f} s", file=sys.stderr)
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"video2dataset does not import: {r.stderr.strip().splitlines()[-1:]}"
    return True, ""


def patch_subsamplers() -> list[str]:
    """Give ResolutionSubsampler and FrameSubsampler the `encode_formats` attribute 1.3.0's worker reads."""
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", "import video2dataset, os; "
                        "print(os.path.dirname(video2dataset.__file__))"], capture_output=True, text=True, check=True)
    pkg = Path(r.stdout.strip())
    patched = []
    for name in ("resolution_subsampler.py", "frame_subsampler.py"):
        p = pkg / "subsamplers" / name
        src = p.read_text()
        if PATCH_MARK in src:
            continue
        line = "        self.encode_format = encode_format\n"
        if line not in src:
            raise RuntimeError(f"{p}: cannot find {line.strip()!r} to patch after")
        src = src.replace(line, line + f'        self.encode_formats = {{"video": encode_format}}  {PATCH_MARK}\n', 1)
        p.write_text(src)
        patched.append(str(p))
    return patched


def link_ffmpeg() -> Path:
    import imageio_ffmpeg

    exe = Path(imageio_ffmpeg.get_ffmpeg_exe())
    link = VENV / "bin" / "ffmpeg"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(exe)
    return link


RUNNER = r"""
import json, sys, time
from video2dataset import video2dataset
cfg = json.loads(sys.argv[1])
t = time.time()
video2dataset(url_list=cfg["input"], output_folder=cfg["output"], output_format="webdataset", input_format="parquet",
              url_col="url", caption_col="caption", clip_col="clips", encode_formats={"video": "mp4"},
              tmp_dir=cfg["tmp"], config={
                  "subsampling": {
                      "ClippingSubsampler": {"args": {"min_length": 0.0, "precision": "exact"}},
                      "ResolutionSubsampler": {"args": {"video_size": 224, "resize_mode": "scale,crop"}},
                  },
                  "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100,
                                          "yt_metadata_args": None}, "timeout": 60, "sampler": None},
                  "storage": {"number_sample_per_shard": 100, "oom_shard_count": 5, "captions_are_subtitles": False},
                  "distribution": {"processes_count": 2, "thread_count": 1, "subjob_size": 1000,
                                   "distributor": "multiprocessing"},
              })
print("V2D_SECONDS", time.time() - t)
"""


def v2d_input(corpus, path: Path) -> dict:
    """One row per video file with its clip spans; rows whose timestamp does not parse are left out."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    from longvid.operators.sources.miradata import parse_timestamp_list, raw_video_path
    from longvid.operators.sources.base import BadValue

    clips: dict[str, list] = defaultdict(list)
    caption: dict[str, str] = {}
    skipped = 0
    with open(corpus.metadata, newline="") as f:
        for row in csv.DictReader(f):
            try:
                s, e = parse_timestamp_list(row["timestamp"])
            except BadValue:
                skipped += 1
                continue
            url = str(corpus.videos / raw_video_path(int(row["clip_id"].split(".")[0])))
            clips[url].append([s, e])
            caption.setdefault(url, row["short_caption"])
    urls = sorted(clips)
    pq.write_table(pa.table({"url": urls, "caption": [caption[u] for u in urls],
                             "clips": [sorted(clips[u]) for u in urls]}), path)
    return {"videos": len(urls), "clips": sum(len(c) for c in clips.values()), "rows_left_out": skipped}


def _children_cpu() -> float:
    """User + system seconds of every finished, waited-for descendant (processes reaped along the chain)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[int, float, float]:
    """Run `cmd`; returns (exit code, wall s, CPU s). CPU is the larger of two floors: the CPU of reaped descendants
    (getrusage; misses processes nobody waits for, e.g. Ray workers ended at shutdown) and the sum over every
    process of the run (tagged by an environment variable) of its utime+stime last seen by a 0.2 s /proc poll
    (misses processes shorter than a poll, e.g. video2dataset's ffmpeg calls)."""
    import uuid

    tag = f"LONGVID_PEERS_RUN={uuid.uuid4().hex}".encode()
    env = {**env, "LONGVID_PEERS_RUN": tag.decode().split("=", 1)[1]}
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, float] = {}
    t, c = time.time(), _children_cpu()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            done = proc.poll() is not None
            for pid in tagged_pids(tag):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    seen[pid] = (int(fields[11]) + int(fields[12])) / tick
                except (OSError, IndexError, ValueError):
                    continue
            if done:
                break
            time.sleep(0.2)
    wall, reaped = time.time() - t, _children_cpu() - c
    kill_tagged(tag)  # what the run left behind (Ray agents can outlive their driver)
    return proc.returncode, wall, max(reaped, sum(seen.values()))


def run_v2d(corpus, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inp = v2d_input(corpus, work / "input.parquet")
    (work / "tmp").mkdir()
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    cfg = {"input": str(work / "input.parquet"), "output": str(work / "out"), "tmp": str(work / "tmp")}
    rc, wall, cpu = run_measured([str(VENV / "bin" / "python"), "-c", RUNNER, json.dumps(cfg)], work, env,
                                 work / "log.txt")
    samples = 0
    sizes = set()
    for tar in sorted((work / "out").glob("*.tar")):
        with tarfile.open(tar) as tf:
            samples += sum(1 for n in tf.getnames() if n.endswith(".mp4"))
    stats = {"successes": 0, "failed_to_download": 0, "failed_to_subsample": 0}
    for st in (work / "out").glob("*_stats.json"):
        d = json.loads(st.read_text())
        for k in stats:
            stats[k] += int(d.get(k) or 0)
    first = next(iter(sorted((work / "out").glob("*.tar"))), None)
    if first is not None:
        import av
        import io

        with tarfile.open(first) as tf:
            m = next((m for m in tf.getmembers() if m.name.endswith(".mp4")), None)
            if m is not None:
                with av.open(io.BytesIO(tf.extractfile(m).read())) as c:
                    s = c.streams.video[0]
                    sizes.add(f"{s.codec_context.width}x{s.codec_context.height}")
    return {"rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "samples": samples, "input": inp,
            "stats": stats,
            "output_size": sorted(sizes), "log": str(work / "log.txt")}


def run_longvid(corpus, work: Path, profile: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "longvid", "ingest", "--source", "miradata", "--metadata", str(corpus.metadata),
           "--videos", str(corpus.videos), "--out", str(work / "out"), "--profile", profile, "--num-cpus", "2",
           "--records-per-unit", str(RECORDS_PER_UNIT)]
    rc, wall, cpu = run_measured(cmd, ROOT, env, work / "log.txt")
    s = json.loads((work / "out" / "summary.json").read_text()) if (work / "out" / "summary.json").exists() else {}
    return {"rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "samples": s.get("samples"),
            "failures": s.get("failures"),
            "failures_by_stage": s.get("failures_by_stage"), "frames": s.get("frames"),
            "job_elapsed_s": s.get("elapsed_s"), "log": str(work / "log.txt")}


def _median_run(runs: list[dict]) -> dict | None:
    """The last run's counts with the median wall/CPU seconds and every run's wall seconds."""
    if not runs:
        return None
    out = dict(runs[-1])
    out["wall_s"] = round(statistics.median(r["wall_s"] for r in runs), 1)
    out["cpu_s"] = round(statistics.median(r["cpu_s"] for r in runs), 1)
    out["walls"] = [r["wall_s"] for r in runs]
    return out


def markdown(args, corpus, v2d: dict | None, ours: dict | None, why_not: str, patched: list[str]) -> str:
    cmd = "python bench/peers.py --write-md"
    lines = ["## Peers", "", f"Command: `{cmd}` (2-core box shared with other jobs; {time.strftime('%Y-%m-%d')}).", "",
             f"Input: the fault-injection corpus (`synthetic.faulty_corpus.make_corpus`, seed 11): {corpus.rows} MiraData v1 "
             f"rows = {len(corpus.good_keys)} good clips of 80 small H.264 videos (160x120, 3 s) + {len(corpus.bad)} "
             "bad rows of nine kinds.", ""]
    if v2d is None:
        lines += [f"video2dataset {V2D_VERSION} could not be run here: {why_not}", ""]
    if ours is not None or v2d is not None:
        lines += ["| | wall clock, median (each run) | CPU seconds, median | samples written | "
                  "failures reported | output |", "|---|---|---|---|---|---|"]

        def walls(r: dict) -> str:
            return f"{r['wall_s']} s ({', '.join(f'{w:g}' for w in r['walls'])})"

        if v2d is not None:
            st = v2d["stats"]
            lines.append(f"| video2dataset {V2D_VERSION} (clipping exact + resolution 224, 2 processes) | {walls(v2d)} "
                         f"| {v2d['cpu_s']} | {v2d['samples']} | {st['failed_to_download']} failed_to_download, "
                         f"{st['failed_to_subsample']} failed_to_subsample (counted per video) | every frame of each clip "
                         f"re-encoded at {', '.join(v2d['output_size']) or '?'} |")
        if ours is not None:
            stages = ", ".join(f"{k} {v}" for k, v in (ours["failures_by_stage"] or {}).items())
            lines.append(f"| longvid ingest (profile {args.profile}, 2 CPUs, --records-per-unit {RECORDS_PER_UNIT}) | {walls(ours)} | {ours['cpu_s']} | "
                         f"{ours['samples']} | {ours['failures']} rows, one per input ({stages}) | {ours['frames']} "
                         "sampled frames at 224x224 |")
        lines.append("")
    if v2d is not None and ours is not None and ours["wall_s"]:
        lines += [f"Wall-clock ratio video2dataset / longvid (medians): **{v2d['wall_s'] / ours['wall_s']:.2f}x**. Both "
                  "include their start-up (Ray's for longvid, the process pool's for video2dataset); the box is shared "
                  "with other engineers' jobs, so single runs vary by up to 2x: the runs alternate and medians are "
                  "shown. CPU seconds: the larger of the reaped descendants' getrusage and a 0.2 s /proc poll of "
                  "every process of the run (both are floors).", "",
                  f"video2dataset's input: {v2d['input']['videos']} video rows holding {v2d['input']['clips']} clips; "
                  f"{v2d['input']['rows_left_out']} rows with an unparsable timestamp cannot be expressed and were left "
                  "out. Its stats count failures per video, not per clip, with no stage; the reason is only in its "
                  "per-shard parquet (`error_message`).", "",
                  "The clips are short (0.93 s at 25 fps): video2dataset stores every frame, about 23 per clip, and "
                  "longvid's long profile 20 (every frame of so short a span, rounded down to a multiple of 4), so the "
                  "outputs are of similar size and the comparison is mostly of the machinery around the codec. On long "
                  "videos the long profile keeps about one frame per second (64 to 512) where video2dataset "
                  "re-encodes every frame.", "",
                  "longvid ran with `--records-per-unit 34` (8 units, 4 per CPU); its default unit ramp (8 units "
                  "of 8 rows, then 16, ...) would cut this corpus into 19 units.", ""]
    if patched or v2d is not None:
        lines += ["Needed to run it: `pip install video2dataset==1.3.0 'pyarrow<17'` in its own virtualenv "
                  "(bench/out/peers/venv, about 6 GB with torch 2.1 and CUDA wheels), "
                  "`self.encode_formats = {\"video\": encode_format}` added to ResolutionSubsampler and FrameSubsampler "
                  "(patched by the script), an `ffmpeg` symlink (imageio-ffmpeg's) in the venv's bin.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="long")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating (medians reported)")
    ap.add_argument("--skip-v2d", action="store_true")
    ap.add_argument("--skip-longvid", action="store_true")
    ap.add_argument("--write-md", action="store_true", help="rewrite the '## Peers' section of BENCHMARKS.md")
    args = ap.parse_args(argv)

    from bench.memory import write_section
    from longvid.synthetic.faulty_corpus import make_corpus

    OUT.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(OUT / "corpus", n_videos=80, clips_per_video=3, bad_per_kind=3, seed=11,
                         cache=OUT / "corpus-base")
    v2d_runs: list[dict] = []
    our_runs: list[dict] = []
    why_not = ""
    patched: list[str] = []
    ok = False
    if not args.skip_v2d:
        ok, why_not = ensure_venv(OUT / "pip.log")
        if ok:
            patched = patch_subsamplers()
            link_ffmpeg()
        else:
            print("video2dataset not run:", why_not, flush=True)
    for i in range(args.repeats):  # alternate, so that both see the same (shared, changing) load
        if ok:
            v2d_runs.append(run_v2d(corpus, OUT / "v2d"))
            print("video2dataset", json.dumps(v2d_runs[-1]), flush=True)
        if not args.skip_longvid:
            our_runs.append(run_longvid(corpus, OUT / "longvid", args.profile))
            print("longvid", json.dumps(our_runs[-1]), flush=True)
    v2d, ours = _median_run(v2d_runs), _median_run(our_runs)
    if v2d and ours and ours["wall_s"]:
        print(f"wall-clock ratio video2dataset/longvid (medians) = {v2d['wall_s'] / ours['wall_s']:.2f}; samples "
              f"written: video2dataset {v2d['samples']}, longvid {ours['samples']}")
    md = markdown(args, corpus, v2d, ours, why_not, patched)
    print(md)
    if args.write_md:
        write_section(ROOT / "BENCHMARKS.md", "Peers", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
