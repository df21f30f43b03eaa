"""`longvid demo`: the whole system on a fresh machine, on an embedded Ray, in a few minutes.

    synthetic corpus (real H.264 videos, metadata in the real formats of all five sources, a few bad inputs)
    and a small annotation mixture in the released LLaVA format (video with and without spans, multi-turn, a frame
    folder, images, text-only, one missing video)    ./longvid-demo/corpus/
      -> ingest, one job per source          ./longvid-demo/ingest/<source>/
         and ingest --mixture                ./longvid-demo/ingest/mixture/<json stem>/
      -> encode with a tiny HiCo encoder     ./longvid-demo/tokens/<source>/, ./longvid-demo/tokens/mixture/<json stem>/
      -> audit against a small planted benchmark file   ./longvid-demo/audit/ (report.html, drop_list.txt)
      -> train the tiny short-to-long recipe on the token shards, honouring the drop list   ./longvid-demo/train/
      -> build and score a tiny NIAH set      ./longvid-demo/niah/ (heat map)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from longvid.operators import storage
from longvid.jobs.config import add_flags, config_from_args
from longvid.operators.errors import ConfigError
from longvid.operators.frame_rule import PROFILES
from longvid.operators.settings import Settings, Shared, like, setting

# the pipelines (pandas, pyarrow, Ray...) are imported where used: `longvid --help` must not wait for them
STAGES = ("ingest", "encode", "audit", "train", "niah")
MARKER = ".longvid-demo.json"  # our demo folder: what the demo wrote there, so that a re-run removes only that
OWNER_FILE = ".longvid-owner.json"  # pipelines.out_claim.OWNER_FILE (the lock of a running job)
STAGE_DIRS = {"corpus": ["corpus"], "ingest": ["ingest"], "encode": ["tokens"], "audit": ["audit", "benchmarks"],
              "train": ["train"], "niah": ["niah"]}


@dataclass
class DemoConfig(Settings):
    """The settings of `longvid demo` (flags only: the demo takes no job file)."""

    out: str = setting("longvid-demo", help="output folder (default ./longvid-demo): new or empty, or a demo folder of "
                                            "an earlier run, whose demo files are replaced (nothing else there is "
                                            "touched); any other folder is refused")
    per_source: int = setting(3, ge=1, le=1000, help="videos per source (default 3)")
    num_cpus: int = like(Shared, "num_cpus")
    profile: str = setting("long", choices=PROFILES, help="sampling profile (default long)")
    stages: list[str] = setting(default_factory=lambda: list(STAGES), choices=STAGES, comma=True,
                                help=f"comma-separated subset of {','.join(STAGES)} (default: all)")


def _tree(root: Path) -> tuple[set[str], set[str]]:
    """(files, dirs) under root as relative posix paths; symlinks are files (never followed)."""
    files, dirs = set(), set()
    for d, subdirs, names in os.walk(root):
        rel = Path(d).relative_to(root)
        for s in list(subdirs):
            if (Path(d) / s).is_symlink():
                files.add((rel / s).as_posix())
                subdirs.remove(s)
            else:
                dirs.add((rel / s).as_posix())
        files.update((rel / n).as_posix() for n in names)
    return files, dirs


class DemoFolder:
    """The demo's --out: never delete what the demo did not write.

    - missing or empty: used;
    - a file, or a non-empty folder without our marker file: refused (ConfigError, exit 2), nothing touched;
    - our demo folder (MARKER, written before anything else): the files the marker lists as written by the
      demo are removed, and the folders it created if they are then empty; any other file (a user's, even one
      put inside the demo's folders) stays byte for byte. The marker is updated after each stage; a stage that
      was interrupted (a killed demo) is recorded as pending with its start time. The files under its own folders
      that are newer than that and not listed are probably its output, but a user may have put a file there after
      the kill: they are moved, not removed, to DIR/demo-leftovers-<time>/ (same relative paths), and the demo
      says so; the user deletes that folder once sure.
    """

    def __init__(self, out: Path):
        self.out = out
        self.kept: set[str] = set()
        self.dirs0: set[str] = set()
        self.state: dict[str, Any] = {}
        self.moved_to: Path | None = None  # clean(): where the unlisted files of an interrupted stage went

    def check(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out: {out} is a file, not a folder; choose another with --out NEWDIR")
        if not out.exists() or not [p for p in out.iterdir() if p.name != OWNER_FILE]:  # only our lock: empty
            return
        marker = out / MARKER
        if not marker.is_file():
            raise ConfigError(f"out: {out} is not empty and is not a longvid demo folder (no {MARKER}); nothing "
                              "was changed; choose a new or empty folder with --out NEWDIR")
        try:
            state = json.loads(marker.read_text())
            assert isinstance(state, dict) and isinstance(state.get("written"), list)
        except (OSError, ValueError, AssertionError):
            raise ConfigError(f"out: {marker} is not a demo record this version wrote; nothing was changed; choose "
                              "a new or empty folder with --out NEWDIR") from None
        self.state = state

    def _inside(self, rel: Any) -> Path | None:
        """out/rel when rel is a plain relative path whose folder (symlinks resolved) is inside out."""
        if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in Path(rel).parts:
            return None
        p = self.out / rel
        root, parent = os.path.realpath(self.out), os.path.realpath(p.parent)
        return p if parent == root or parent.startswith(root.rstrip("/") + "/") else None

    def clean(self) -> tuple[int, int]:
        """Remove what an earlier demo wrote here, and move aside the unlisted files of a stage it was killed in
        (see the class doc; `moved_to` says where); returns (files removed, files moved)."""
        st = self.state
        if not st:
            return 0, 0
        ours = {r for r in st.get("written") or [] if isinstance(r, str)}
        pending = st.get("pending") if isinstance(st.get("pending"), dict) else {}
        pending_dirs = [d for d in pending.get("dirs") or [] if isinstance(d, str)]
        guessed: set[str] = set()
        if pending_dirs:
            user = set(st.get("kept") or [])
            since = int(pending.get("since_ns") or 0)
            files, now_dirs = _tree(self.out)
            tops = tuple(f"{d}/" for d in pending_dirs)
            for rel in files - user - ours:
                if rel.startswith(tops) and (self.out / rel).lstat().st_mtime_ns >= since:
                    guessed.add(rel)
            pending_dirs += [d for d in now_dirs - set(st.get("kept_dirs") or []) if d.startswith(tops)]
        removed = moved = 0
        for rel in sorted(ours - {MARKER, OWNER_FILE}):
            p = self._inside(rel)
            if p is not None and (p.is_symlink() or p.is_file()):
                p.unlink()
                removed += 1
        if guessed:
            self.moved_to = self.out / time.strftime("demo-leftovers-%Y%m%d-%H%M%S")
            n = 1
            while self.moved_to.exists():
                n += 1
                self.moved_to = self.out / time.strftime(f"demo-leftovers-%Y%m%d-%H%M%S-{n}")
            for rel in sorted(guessed - {MARKER, OWNER_FILE}):
                p = self._inside(rel)
                if p is not None and (p.is_symlink() or p.is_file()):
                    dest = self.moved_to / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(p, dest)  # same folder tree, same file system: nothing is copied or lost
                    moved += 1
        dirs = ({d for d in st.get("dirs") or [] if isinstance(d, str)} | set(pending_dirs)) - set(
            st.get("kept_dirs") or [])
        for rel in sorted(dirs, key=lambda r: -len(Path(r).parts)):
            p = self._inside(rel)
            if p is not None and p.is_dir() and not p.is_symlink():
                try:
                    p.rmdir()  # only when empty: a user's file keeps its folder
                except OSError:
                    pass
        return removed, moved  # the marker itself is replaced by begin()

    def begin(self) -> None:
        """Record what is here now (a user's files) before the demo writes anything."""
        self.out.mkdir(parents=True, exist_ok=True)
        files, self.dirs0 = _tree(self.out)
        self.kept = files - {MARKER, MARKER + ".tmp", OWNER_FILE}
        self.state = {"longvid_demo": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "kept": sorted(self.kept), "kept_dirs": sorted(self.dirs0), "written": [], "dirs": []}
        self._save()

    def _save(self) -> None:
        tmp = self.out / (MARKER + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.out / MARKER)

    def update(self, pending: str = "") -> None:
        """Record what the demo has written so far (everything here that is not the user's)."""
        files, dirs = _tree(self.out)
        self.state["written"] = sorted(files - self.kept - {MARKER, MARKER + ".tmp", OWNER_FILE})
        self.state["dirs"] = sorted(dirs - self.dirs0)
        if pending:
            self.state["pending"] = {"stage": pending, "dirs": STAGE_DIRS.get(pending, []) + ["logs"],
                                     "since_ns": time.time_ns()}
        else:
            self.state.pop("pending", None)
        self._save()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.update(pending=name)
        yield
        self.update()


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["  ".join(f"{c:>10}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{str(r.get(c, '')):>10}" for c in cols))
    return "\n".join(lines)


def _ingest(out: Path, corpus: dict, profile: str, log: Callable) -> dict[str, Any]:
    from longvid.pipelines.ingest import IngestConfig, run_ingest

    rows, summaries = [], {}
    for source, spec in corpus.items():
        cfg = IngestConfig(source=source, metadata=list(spec["metadata"]), videos=spec["videos"],
                           out=str(out / "ingest" / source), profile=profile, records_per_unit=2,
                           source_options=dict(spec.get("options", {})), quiet=True)
        s = run_ingest(cfg, log=log)
        summaries[source] = s
        rows.append({"source": source, "inputs": s["inputs"], "samples": s["samples"], "failures": s["failures"],
                     "frames": s["frames"], "video_min": round(s["video_hours"] * 60, 2), "seconds": s["elapsed_s"]})
    log("\n[demo] ingest, one job per source:\n"
        + _table(rows, ["source", "inputs", "samples", "failures", "frames", "video_min", "seconds"]))
    total = {k: sum(r[k] for r in rows) for k in ("inputs", "samples", "failures", "frames")}
    log(f"[demo] ingest total: {total['samples']} samples + {total['failures']} failures = {total['inputs']} inputs;"
        f" {total['frames']} frames from {sum(r['video_min'] for r in rows):.1f} min of video")
    for source, s in summaries.items():
        if s["failures"]:
            log(f"[demo]   {source} failures: {json.dumps(s['failures_by_stage'])}  "
                f"(reasons in {out / 'ingest' / source / 'failures'})")
    return summaries


def _ingest_mixture(out: Path, mixture: dict, profile: str, log: Callable) -> dict[str, Any]:
    """`longvid ingest --mixture` of the demo's own mixture into out/ingest/mixture/<json stem>/."""
    from longvid.pipelines.mixture import MixtureConfig, run_mixture

    cfg = MixtureConfig(mixture=mixture["mixture"], roots=mixture["roots"], out=str(out / "ingest" / "mixture"),
                        profile=profile, records_per_unit=2, quiet=True)
    s = run_mixture(cfg, log=log)
    by = s["samples_by_media_type"]
    log(f"[demo] mixture: {len(s['datasets'])} datasets, {s['samples']} samples (video {by.get('video', 0)}, image "
        f"{by.get('image', 0)}, text {by.get('text', 0)}) + {s['failures']} failures = {s['inputs']} records "
        f"selected ({', '.join(d['name'] + ' ' + d['sampling_strategy'] for d in s['datasets'])}); "
        f"reasons in {out / 'ingest' / 'mixture' / '<dataset>' / 'failures'}")
    return {"datasets": {d["name"]: {k: d[k] for k in ("media_type", "sampling_strategy", "selected", "samples",
                                                          "failures", "failures_by_stage", "complete")}
                         for d in s["datasets"]},
            **{k: s[k] for k in ("inputs", "samples", "failures", "samples_by_media_type", "complete")}}


def _encode_mixture(out: Path, names: list[str], log: Callable) -> dict[str, Any]:
    """`longvid encode` of every dataset folder of the mixture into out/tokens/mixture/<json stem>/."""
    from longvid.pipelines.encode import EncodeConfig, run_encode

    res = {}
    for name in names:
        s = run_encode(EncodeConfig(shards=str(out / "ingest" / "mixture" / name),
                                    out=str(out / "tokens" / "mixture" / name), model="tiny", quiet=True), log=log)
        res[name] = {"samples": s["samples"], "failures": s["failures"]}
    counts = ", ".join(f"{n} {r['samples']}" for n, r in res.items())
    log(f"[demo] mixture encode: {counts} samples "
        f"({sum(r['failures'] for r in res.values())} failures)")
    return res


def _encode(out: Path, sources: list[str], log: Callable) -> dict[str, Any]:
    from longvid.pipelines.encode import EncodeConfig, run_encode

    summaries, rows = {}, []
    for source in sources:
        s = run_encode(EncodeConfig(shards=str(out / "ingest" / source), out=str(out / "tokens" / source),
                                    model="tiny", quiet=True), log=log)
        summaries[source] = s
        rows.append({"source": source, "samples": s["samples"], "failures": s["failures"], "seconds": s["elapsed_s"]})
    log("\n[demo] encode (tiny HiCo encoder, random weights; 16 tokens per frame):\n"
        + _table(rows, ["source", "samples", "failures", "seconds"]))
    return summaries


def _demo_benchmark(out: Path) -> Path:
    """A Video-MME-format file with two planted leaks: a HowTo100M video id (youtu.be form) and a copied caption."""
    import pandas as pd

    how = pd.read_parquet(out / "ingest" / "howto100m" / "manifests")
    mira = pd.read_parquet(out / "ingest" / "miradata" / "manifests")
    caption = max(mira.text.iloc[0].split("\n"), key=len)
    d = out / "benchmarks" / "Video-MME" / "videomme"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "video_id": ["001", "002", "003"],
        "duration": ["short"] * 3,
        "domain": ["Knowledge"] * 3,
        "sub_category": ["Demo"] * 3,
        "url": [f"https://youtu.be/{how.video_id.iloc[0]}", "https://www.youtube.com/watch?v=AAAAAAAAAAA",
                "https://www.youtube.com/watch?v=BBBBBBBBBBB"],
        "videoID": [how.video_id.iloc[0], "AAAAAAAAAAA", "BBBBBBBBBBB"],
        "question_id": ["001-1", "002-1", "003-1"],
        "task_type": ["Demo"] * 3,
        "question": ["What tool is used first?", f"Which description fits? {caption}",
                     "How many people appear in the video at the very end of the clip?"],
        "options": [["A. A wrench.", "B. A spoon."], ["A. Yes.", "B. No."], ["A. One.", "B. Two."]],
        "answer": ["A", "A", "B"],
    }).to_parquet(d / "test-00000-of-00001.parquet")
    return out / "benchmarks"


def _audit(out: Path, sources: list[str], log: Callable) -> dict[str, Any]:
    from longvid.pipelines.audit import audit

    bench = _demo_benchmark(out)
    res = audit([str(out / "ingest" / s) for s in sources], [str(bench)], out / "audit", log=log, quiet=True)
    by = res.leakage.to_pandas().groupby(["benchmark", "method"]).size().to_dict() if res.leakage.num_rows else {}
    log(f"\n[demo] audit: {res.rows} samples checked against {bench} (planted leaks): "
        f"{res.leakage.num_rows} findings {by}, {res.duplicates.num_rows} duplicate pairs, "
        f"{len(res.drop_keys)} keys in {out / 'audit' / 'drop_list.txt'}; report: {out / 'audit' / 'report.html'}")
    return {"findings": res.leakage.num_rows, "duplicates": res.duplicates.num_rows, "drop": len(res.drop_keys),
            "report": str(out / "audit" / "report.html")}


def _train(out: Path, log: Callable) -> dict[str, Any]:
    from longvid.jobs.train import load_recipe
    from longvid.pipelines.train import run_train

    cfg = load_recipe("tiny", data_root=str(out), out=str(out / "train"), num_workers=2)
    cfg.record_keys = True  # stages/<stage>/keys-rank*.jsonl: which samples each step trained (the mixture line)
    if (out / "audit" / "drop_list.txt").exists():
        cfg.exclude = ["audit/drop_list.txt"]  # the audit's drop list: those keys never reach a batch
    log("")
    s = run_train(cfg, log_fn=log)
    log(f"[demo] loss plots: {out / 'train' / 'stages' / '<stage>' / 'loss.png'}; metrics: .../metrics.jsonl")
    return s


def _mixture_trained(out: Path, datasets: dict[str, Any], log: Callable) -> dict[str, Any]:
    """Per stage of the tiny recipe: how many of the mixture's samples (by media type) its steps trained, from the
    recorded keys, and the samples the stage skipped by reason (rank 0's counters)."""
    import pandas as pd

    from longvid.pipelines.train_report import read_metrics

    kind = {}  # sample key -> media type, from the token manifests of each mixture dataset
    for name, d in datasets.items():
        folder = out / "tokens" / "mixture" / name / "manifests"
        if folder.is_dir():
            kind.update({k: d["media_type"] for k in pd.read_parquet(folder, columns=["key"]).key})
    total = {m: sum(1 for v in kind.values() if v == m) for m in ("video", "image", "text")}
    res = {}
    for stage in sorted(p for p in (out / "train" / "stages").iterdir() if p.is_dir()):
        seen = {k for f in stage.glob("keys-rank*.jsonl") for row in read_metrics(str(f)) for k in row["keys"]}
        got = {m: len({k for k in seen if kind.get(k) == m}) for m in total}
        if not any(got.values()):
            continue
        rows = read_metrics(str(stage / "metrics.jsonl"))
        res[stage.name] = {"trained": got, "samples": total, "skipped": rows[-1].get("rank0_skipped", {}) if rows
                           else {}}
        log(f"[demo] mixture in {stage.name}: trained " + ", ".join(f"{m} {got[m]}/{total[m]}" for m in total)
            + f" of its samples; skipped (rank 0): {json.dumps(res[stage.name]['skipped'])}")
    return res


def _niah(out: Path, checkpoint: str, log: Callable) -> dict[str, Any]:
    from longvid.pipelines.niah_eval import run_niah_demo

    log("")
    r = run_niah_demo(out / "niah", haystack=str(out / "ingest" / "ego4d"), checkpoint=checkpoint, log=log)
    return {"inputs": r["build"]["inputs"], "accuracy": r["eval"]["overall"], "heatmap": r["heatmap"]}


def run_demo(out: Path, per_source: int = 3, num_cpus: int = 0, profile: str = "long",
             stages: tuple[str, ...] = STAGES, log=print, native_stderr: bool = False) -> dict[str, Any]:
    """The demo into `out` (see DemoFolder for what happens to an existing folder). native_stderr: what native
    code writes to this process's stderr while Ray runs goes to out/logs/ray.log (for the command's console)."""
    from longvid.synthetic.demo_corpus import make_demo_corpus, make_demo_mixture
    from longvid.pipelines.out_claim import claim_out, release_out
    from longvid.pipelines.ray_session import ensure_ray, native_stderr_to

    out = Path(out).resolve()
    folder = DemoFolder(out)
    folder.check()  # before anything is written or removed
    out.mkdir(parents=True, exist_ok=True)
    console = log
    log_file = None

    def log(line: str) -> None:  # noqa: F811 - the console, and DIR/logs/demo.log
        console(line)
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()

    claim_out(str(out), "demo", log)  # a demo still running here: exit 2; a killed one: its processes stopped
    try:
        removed, moved = folder.clean()
        if removed:
            log(f"[demo] removed the {removed} files an earlier demo wrote in {out} (anything else there is kept)")
        if moved:
            log(f"[demo] an earlier demo was interrupted: {moved} unlisted files in the folders of the stage it was "
                f"writing were moved to {folder.moved_to} (its partial output, or files put there since; delete "
                "that folder once sure)")
        folder.begin()
        (out / "logs").mkdir(exist_ok=True)
        log_file = open(out / "logs" / "demo.log", "a", encoding="utf-8")
        t0 = time.time()
        log(f"[demo] generating a synthetic corpus under {out / 'corpus'} ...")
        with folder.stage("corpus"):
            corpus = make_demo_corpus(out / "corpus", per_source=per_source)
            mixture = make_demo_mixture(out / "corpus" / "mixture")
        log(f"[demo] corpus ready in {time.time() - t0:.1f} s: {', '.join(corpus)}, and a mixture of "
            f"{len(mixture['expect'])} datasets ({mixture['mixture']})")
        result: dict[str, Any] = {"out": str(out)}
        timings: dict[str, float] = {}
        # the console is LongVid's: Ray's driver-side logs, and what its C++ core writes to this process's stderr,
        # go to logs/ray.log (errors of Python code, LongVid's and Ray's, are still printed)
        with native_stderr_to(str(out / "logs" / "ray.log")) if native_stderr else contextlib.nullcontext():
            # the dashboard serves the State API, which Ray Train's placement group cleaner queries
            started = bool(stages) and ensure_ray(num_cpus=num_cpus, dashboard="train" in stages, out=str(out),
                                                  job="demo")
            try:
                for stage in stages:
                    t = time.time()
                    with folder.stage(stage):
                        if stage == "ingest":
                            result["ingest"] = _ingest(out, corpus, profile, log)
                            result["mixture"] = {"ingest": _ingest_mixture(out, mixture, profile, log)}
                        elif stage == "encode":
                            result["encode"] = _encode(out, list(corpus), log)
                            if "mixture" in result:
                                result["mixture"]["encode"] = _encode_mixture(
                                    out, list(result["mixture"]["ingest"]["datasets"]), log)
                        elif stage == "audit":
                            result["audit"] = _audit(out, list(corpus), log)
                        elif stage == "train":
                            result["train"] = _train(out, log)
                            if "mixture" in result:
                                result["mixture"]["train"] = _mixture_trained(
                                    out, result["mixture"]["ingest"]["datasets"], log)
                        elif stage == "niah":
                            ckpt = result.get("train", {}).get("checkpoint") or "random:0"
                            result["niah"] = _niah(out, ckpt, log)
                    timings[stage] = round(time.time() - t, 1)
            finally:
                if started:
                    import ray

                    ray.shutdown()
                if stages:
                    release_out(str(out))  # the claim ensure_ray took
        result["elapsed_s"] = round(time.time() - t0, 1)
        result["stage_seconds"] = timings
        log(f"\n[demo] done in {result['elapsed_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})."
            f" Everything is under {out}; per-job summary.json files hold the details.")
        storage.write_json(str(out / "demo-summary.json"), result, indent=2, default=str)
        if log_file is not None:
            log_file.close()
            log_file = None
        folder.update()
    finally:
        if log_file is not None:
            log_file.close()
        release_out(str(out))
    return result


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig, args)
    res = run_demo(Path(cfg.out), per_source=cfg.per_source, num_cpus=cfg.num_cpus, profile=cfg.profile,
                   stages=tuple(cfg.stages) or STAGES, native_stderr=True)
    bad = [s for s, v in res.get("ingest", {}).items() if not v["samples"] or not v.get("complete", True)]
    if not res.get("mixture", {}).get("ingest", {}).get("complete", True):
        bad.append("mixture")
    return 1 if bad else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, DemoConfig)


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthetic corpus in all five formats -> ingest, encode, audit, train, NIAH",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":  # `python -m longvid.jobs.demo ARGS` is `longvid demo ARGS`
    from longvid.jobs.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
