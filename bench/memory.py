"""Memory benchmark: peak RSS of ingesting one hour of 1080p H.264 at the long profile (512 frames).

    python bench/memory.py                 # generate the video once (cached in bench/out/memory/), then measure
    python bench/memory.py --write-md      # also rewrite the "## Memory" section of BENCHMARKS.md
    python bench/memory.py --fps 30        # a 30 fps video instead of 10 fps (generation takes 3x longer)

The video: 1920x1080, H.264 (libx264 ultrafast, crf 28, 2 s GOP, 2 B-frames, yuv420p), low-complexity moving test
pattern (ffmpeg's testsrc2 drawn at 480x270 and scaled up), `--minutes` long (60) at `--fps` (10 by default, to
keep generation near 15 minutes on a loaded 2-core box; decoder memory depends on the frame size and the
reference frames, not on the frame rate). Made with imageio-ffmpeg's ffmpeg binary.

Two measurements:
  A. operators.process.process_record on that video inside an operators.isolate.IsolatedRunner child, as a Ray task
     runs it: the child's peak RSS (VmHWM from /proc just before it exits, and getrusage(RUSAGE_CHILDREN) after),
     wall time, frames.
  B. the whole `longvid ingest` (embedded Ray, 2 CPUs) on a one-row WebVid metadata file naming that video: every
     process of the run is tagged with an environment variable and polled in /proc every 0.2 s; per role the peak
     RSS (VmHWM) and the largest sum of PSS over all the run's processes at one instant.
Target: the worker processing the video (task worker + decoder child) under 1 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import kill_tagged, tagged_pids  # noqa: E402

OUT = ROOT / "bench" / "out" / "memory"
MARK = "LONGVID_BENCH_RUN"
GiB = 2**30


def make_long_video(path: Path, minutes: float, fps: float) -> Path:
    if path.exists():
        return path
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.mp4")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size=480x270:rate={fps:g}", "-vf", "scale=1920:1080:flags=bilinear",
           "-t", f"{minutes * 60:g}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "28",
           "-g", str(int(round(2 * fps))), "-bf", "2", "-pix_fmt", "yuv420p", "-threads", "2", str(tmp)]
    t = time.time()
    print(f"generating {path.name} ({minutes:g} min 1080p at {fps:g} fps) ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    print(f"  generated in {time.time() - t:.0f} s, {path.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)
    return path


def layout(video: Path, root: Path) -> tuple[Path, Path]:
    """A WebVid layout naming the video: videos/d/1.mp4 (a hard link: ingest refuses a symlink out of the video root;
    a copy on another file system) and a one-row results CSV."""
    vdir = root / "videos" / "d"
    vdir.mkdir(parents=True, exist_ok=True)
    link = vdir / "1.mp4"
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.link(video.resolve(), link)
    except OSError:
        shutil.copyfile(video.resolve(), link)
    meta = root / "results_2M_val.csv"
    meta.write_text("videoid,name,page_dir,duration\n1,One hour of a moving test pattern.,d,PT1H\n")
    return meta, root / "videos"


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# --------------------------------------------------------------------------------------------------- A


def measure_record(meta: Path, videos: Path, profile: str, memory_mb: int, backend: str = "pyav") -> dict:
    from longvid.operators.isolate import IsolatedRunner
    from longvid.operators.process import ProcessOptions, process_record
    from longvid.operators.sources import get_adapter

    record = next(iter(get_adapter("webvid").read([str(meta)], {})))
    opts = ProcessOptions(videos_root=str(videos), profile=profile, backend=backend)
    peak = {"hwm": 0}
    stop = threading.Event()

    runner = IsolatedRunner(timeout_s=7200, memory_limit_mb=memory_mb)

    def poll():
        while not stop.is_set():
            p = runner._proc
            if p is not None and p.pid:
                peak["hwm"] = max(peak["hwm"], _status_kib(p.pid, "VmHWM"))
            time.sleep(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.time()
    with runner:
        sample = runner.run(process_record, record, opts, what=str(meta))
        wall = time.time() - t0
        pid = runner._proc.pid
        hwm = _status_kib(pid, "VmHWM")
        peak["hwm"] = max(peak["hwm"], hwm)
    stop.set()
    th.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, largest waited child
    return {"backend": backend, "wall_s": round(wall, 1), "frames": sample.info["num_frames"], "mp4_bytes": len(sample.mp4),
            "child_peak_rss_mib": round(peak["hwm"] / 1024, 1),
            "rusage_children_maxrss_mib": round(children / 1024, 1), "decoder_memory_limit_mb": memory_mb}


# --------------------------------------------------------------------------------------------------- B


def role(cmd: str) -> str:
    if "-m longvid" in cmd or "longvid ingest" in cmd:
        return "driver (longvid ingest)"
    if cmd.startswith("ray::run_unit") or cmd.startswith("ray::IDLE"):
        return "task worker (ray::run_unit)"
    if "spawn_main" in cmd:
        return "decoder child (IsolatedRunner)"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "/raylet/raylet" in cmd or "/gcs/gcs_server" in cmd:
        return "Ray core (gcs_server, raylet)"
    return "Ray agents, monitors, other"


def measure_cli(meta: Path, videos: Path, out: Path, profile: str, log: Path) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    marker = uuid.uuid4().hex
    env = {**os.environ, MARK: marker, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "longvid", "ingest", "--source", "webvid", "--metadata", str(meta), "--videos",
           str(videos), "--out", str(out), "--profile", profile, "--num-cpus", "2", "--records-per-unit", "1",
           "--decode-timeout-s", "7200"]
    tag = f"{MARK}={marker}".encode()
    per_pid: dict[int, tuple[str, int]] = {}
    max_total_pss = 0
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            done = proc.poll() is not None
            total = 0
            for pid in tagged_pids(tag):
                try:
                    c = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                hwm = _status_kib(pid, "VmHWM")
                old = per_pid.get(pid)
                per_pid[pid] = (role(c) if c.strip() else (old[0] if old else "other"), max(hwm, old[1] if old else 0))
                total += _pss_kib(pid)
            max_total_pss = max(max_total_pss, total)
            if done:
                break
            time.sleep(0.2)
    wall = time.time() - t0
    kill_tagged(tag)  # the run's leftovers (Ray agents can outlive their driver): end them by pid
    roles: dict[str, float] = {}
    for r, kib in per_pid.values():
        roles[r] = max(roles.get(r, 0.0), round(kib / 1024, 1))
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "samples": summary.get("samples"),
            "failures": summary.get("failures"), "peak_rss_mib_by_role": dict(sorted(roles.items())),
            "max_total_pss_mib": round(max_total_pss / 1024, 1), "processes": len(per_pid)}


# --------------------------------------------------------------------------------------------------- report


def write_section(md: Path, title: str, body: str) -> None:
    """Replace (or append) the `## <title>` section of a Markdown file, leaving the other sections alone."""
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    head = f"## {title}"
    try:
        i = next(k for k, ln in enumerate(lines) if ln.strip() == head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        new = lines[:i] + body.rstrip("\n").splitlines() + [""] + lines[j:]
    except StopIteration:
        new = lines + ([""] if lines and lines[-1].strip() else []) + body.rstrip("\n").splitlines()
    md.write_text("\n".join(new).rstrip("\n") + "\n")


def markdown(video: Path, args, a: list[dict], b: dict | None, info) -> str:
    cmd = "python bench/memory.py" + (f" --fps {args.fps:g}" if args.fps != 10 else "") + \
          (f" --minutes {args.minutes:g}" if args.minutes != 60 else "") + " --write-md"
    lines = ["## Memory", "",
             f"Command: `{cmd}` (2-core box shared with other jobs; {time.strftime('%Y-%m-%d')}).", "",
             f"Input: one {info.duration / 60:.0f}-minute {info.width}x{info.height} H.264 video at {info.fps:g} fps "
             f"({video.stat().st_size / 2**20:.0f} MiB, {info.num_frames} frames, ultrafast crf 28, 2 s GOP, "
             "2 B-frames; a moving test pattern), made once by the script with ffmpeg (10 fps keeps generation "
             "near 15 minutes here; decoder memory follows the frame size and reference frames, not the rate). "
             f"Profile `{args.profile}`.", ""]
    if a:
        lines += ["| A: process_record in an IsolatedRunner child | " + " | ".join(f"backend {r['backend']}" for r in a)
                  + " |", "|---|" + "---|" * len(a)]
        for label, fmt in (("frames sampled and stored (224x224)", lambda r: f"{r['frames']}"),
                           ("wall time", lambda r: f"{r['wall_s']} s"),
                           ("child peak RSS (VmHWM)", lambda r: f"**{r['child_peak_rss_mib']} MiB**"),
                           ("getrusage(RUSAGE_CHILDREN).ru_maxrss (largest child so far)",
                            lambda r: f"{r['rusage_children_maxrss_mib']} MiB"),
                           ("stored sample mp4", lambda r: f"{r['mp4_bytes'] / 2**20:.2f} MiB")):
            lines.append(f"| {label} | " + " | ".join(fmt(r) for r in a) + " |")
        lines.append("")
        for r in a:
            peak = r["child_peak_rss_mib"]
            if isinstance(peak, float) and peak >= 1024:
                lines += [f"The `{r['backend']}` backend (optional, `--backend {r['backend']}`) peaks at {peak:.0f} MiB "
                          "on this video, above the 1 GiB target, for the same 512 frames (the stored mp4 is "
                          "byte-identical); the default `pyav` backend stays far below it. The decoder child's "
                          f"address-space limit (`decoder_memory_mb`, {r['decoder_memory_limit_mb']} MB by default) is "
                          "what bounds it.", ""]
    if b:
        lines += [f"| B: `longvid ingest` on that one video (embedded Ray, 2 CPUs): peak RSS by role | MiB |",
                  "|---|---|"]
        lines += [f"| {r} | {v} |" for r, v in b["peak_rss_mib_by_role"].items()]
        lines += [f"| largest sum of PSS over all {b['processes']} processes of the run at one instant | "
                  f"{b['max_total_pss_mib']} |", "",
                  f"B wall time {b['wall_s']} s (Ray start included), {b['samples']} sample, {b['failures']} failures, "
                  f"exit code {b['rc']}.", ""]
    worker = None
    if b:
        roles = b["peak_rss_mib_by_role"]
        worker = roles.get("task worker (ray::run_unit)", 0) + roles.get("decoder child (IsolatedRunner)", 0)
        lines += [f"The worker processing the video (task worker + its decoder child, peaks added) peaks at "
                  f"{worker:.0f} MiB: {'under' if worker < 1024 else 'OVER'} the 1 GiB target. The decoder reads "
                  "the file through the demuxer (never whole), keeps only the sampled frames at 224x224 "
                  "(512 x 150 KiB = 77 MiB) and one x264 encoder.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--profile", default="long")
    ap.add_argument("--decoder-memory-mb", type=int, default=4096, help="the ingest default address-space limit")
    ap.add_argument("--backends", default="pyav,decord", help="decoder backends for measurement A")
    ap.add_argument("--skip-record", action="store_true", help="skip measurement A")
    ap.add_argument("--skip-cli", action="store_true", help="skip measurement B")
    ap.add_argument("--write-md", action="store_true", help="rewrite the '## Memory' section of BENCHMARKS.md")
    args = ap.parse_args(argv)

    from longvid.operators.probe import probe

    video = make_long_video(OUT / f"1080p_{args.minutes:g}min_{args.fps:g}fps.mp4", args.minutes, args.fps)
    info = probe(str(video))
    print(f"video: {video} {info.width}x{info.height} {info.fps:g} fps {info.duration:.0f} s "
          f"{info.num_frames} frames, keyframe interval {info.keyframe_interval_s} s", flush=True)
    meta, videos = layout(video, OUT / "job")
    a: list[dict] = []
    b = None
    if not args.skip_record:
        for backend in [x for x in args.backends.split(",") if x]:
            try:
                r = measure_record(meta, videos, args.profile, args.decoder_memory_mb, backend)
            except Exception as e:  # noqa: BLE001 - a backend that fails is a result too
                r = {"backend": backend, "wall_s": "-", "frames": "-", "mp4_bytes": 0,
                     "child_peak_rss_mib": f"failed: {e}"[:200], "rusage_children_maxrss_mib": "-"}
            a.append(r)
            print("A", json.dumps(r), flush=True)
    if not args.skip_cli:
        b = measure_cli(meta, videos, OUT / "job" / "out", args.profile, OUT / "job" / "ingest.log")
        print("B", json.dumps(b), flush=True)
    md = markdown(video, args, a, b, info)
    print(md)
    if args.write_md:
        write_section(ROOT / "BENCHMARKS.md", "Memory", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
