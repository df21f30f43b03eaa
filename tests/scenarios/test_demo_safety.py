"""`longvid demo --out DIR` never deletes what the demo did not write (no Ray: the corpus step only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longvid.jobs.demo import MARKER, OWNER_FILE, DemoFolder, run_demo
from longvid.operators.errors import ConfigError
from longvid.pipelines import out_claim

ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def demo_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "longvid", "demo", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_a_folder_with_a_users_file_is_refused_and_kept_byte_for_byte(tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_bytes(b"\\documentclass{article} \x00\xff")
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    r = demo_cli("--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--out NEWDIR" in lines[0] and str(out) in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.rglob("*")) == ["data.csv", "sub", "thesis.tex"]  # nothing added either


def test_a_file_as_out_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = demo_cli("--out", str(f))
    assert r.returncode == 2 and "is a file" in r.stderr and "--out NEWDIR" in r.stderr, r.stderr
    assert f.read_text() == "keep me"


def test_a_damaged_marker_is_not_taken_as_ours(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / MARKER).write_text('{"written": "everything"}')
    (out / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="NEWDIR"):
        DemoFolder(out).check()


def test_rerun_into_our_demo_folder_removes_only_what_the_demo_wrote(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, per_source=1, stages=(), log=lambda s: None)
    assert (out / MARKER).is_file() and (out / "corpus").is_dir()
    first = json.loads((out / MARKER).read_text())
    assert first["written"] and first["kept"] == [] and "pending" not in first
    # the user adds files next to and inside the demo's folders, and one path the demo will never write again
    (out / "notes.txt").write_bytes(b"my notes \xe2\x9c\x93")
    (out / "corpus" / "webvid" / "mine.bin").write_bytes(os.urandom(64))
    (out / "my-folder").mkdir()
    (out / "my-folder" / "keep.txt").write_text("keep")
    user = {k: v for k, v in snapshot(out).items() if k in ("notes.txt", "corpus/webvid/mine.bin",
                                                              "my-folder/keep.txt")}
    stale = out / "corpus" / "old-demo-output.txt"  # written by "an earlier demo" (listed in its record)
    stale.write_text("old")
    first["written"].append("corpus/old-demo-output.txt")
    (out / MARKER).write_text(json.dumps(first))

    run_demo(out, per_source=1, stages=(), log=lambda s: None)
    now = snapshot(out)
    assert {k: now.get(k) for k in user} == user  # byte for byte
    assert not stale.exists()
    second = json.loads((out / MARKER).read_text())
    assert sorted(second["kept"]) == sorted(user)
    assert not set(second["written"]) & set(user)
    assert set(second["written"]) - {"corpus/old-demo-output.txt"} == set(first["written"]) - {
        "corpus/old-demo-output.txt"}  # the demo wrote the same files again


def test_an_interrupted_stage_is_moved_aside_without_touching_older_user_files(tmp_path):
    """A demo killed mid-stage: the unlisted files newer than the stage's start under its folders are probably its
    output, but one may be a file the user put there after the kill (`late`): they are moved to
    demo-leftovers-<time>/, byte for byte, never removed; older and listed user files stay where they are."""
    out = tmp_path / "demo"
    folder = DemoFolder(out)
    folder.check()
    (out / "ingest").mkdir(parents=True)
    user_old = out / "ingest" / "user-before.txt"
    user_old.write_text("before the demo")
    folder.begin()  # user-before.txt is the user's: recorded as kept
    folder.update(pending="ingest")  # the demo starts its ingest stage ... and is killed while writing
    part = out / "ingest" / "webvid" / "manifests" / "part-000000.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    old_user_inside = out / "ingest" / "older.txt"  # a file of the user's, older than the stage (not listed)
    old_user_inside.write_text("older")
    past = time.time_ns() - 3600 * 10**9
    os.utime(old_user_inside, ns=(past, past))

    late = out / "ingest" / "put-there-after-the-kill.txt"
    late.write_text("mine, newer than the stage start")

    again = DemoFolder(out)
    again.check()
    assert again.clean() == (0, 2)
    assert not part.exists() and not (out / "ingest" / "webvid").exists()
    assert user_old.read_text() == "before the demo" and old_user_inside.read_text() == "older"
    aside = again.moved_to
    assert aside is not None and aside.parent == out and aside.name.startswith("demo-leftovers-")
    assert (aside / "ingest" / "webvid" / "manifests" / "part-000000.parquet").read_bytes() == b"PAR1"
    assert (aside / "ingest" / "put-there-after-the-kill.txt").read_text() == "mine, newer than the stage start"
    again.begin()  # the re-run: the moved files are now the user's, kept by every later run
    assert {"ingest/user-before.txt", "ingest/older.txt"} | {
        str(p.relative_to(out)) for p in aside.rglob("*") if p.is_file()} <= set(again.kept)


def test_a_running_demo_holds_its_folder(tmp_path):
    """A second demo on a folder that a live one owns exits 2 naming its pid (the lock of pipelines.out_claim)."""
    assert OWNER_FILE == out_claim.OWNER_FILE
    out = tmp_path / "demo"
    out.mkdir()
    out_claim.claim_out(str(out), "demo")
    try:
        r = demo_cli("--out", str(out))
    finally:
        out_claim.release_out(str(out))
    assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr and "in use" in r.stderr, r.stderr
