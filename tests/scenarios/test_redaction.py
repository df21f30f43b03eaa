"""Secrets a user's paths and settings may carry (an AWS access key id, a presigned URL, `scheme://user:secret@host`)
never leave the program: not on the console, not in a log file, not in a failure row, summary.json or job.json.

They are redacted inside the storage stack and at those exits only (tests/scenarios/test_layout.py lists them); these tests
plant the secrets where users put them (the metadata and video paths, the S3 endpoint, a --manifests path) and
search every file a job wrote, and everything it printed.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvid.operators import storage
from longvid.operators.records import Failure
from longvid.operators.write import UnitWriter, sample_members
from longvid.pipelines.progress import Progress

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
PASSWORD = "s3cr3tPlantedPw"
SIGNATURE = "deadbeefcafe0123456789"
PRESIGNED = (f"https://bkt.s3.amazonaws.com/meta.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={KEY_ID}"
             f"%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={SIGNATURE}")
USERINFO = f"http://planted:{PASSWORD}@127.0.0.1:9"
MARKS = (KEY_ID, PASSWORD, SIGNATURE)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
    return [m for m in MARKS if m.encode() in data]


def files_with_leaks(root: Path) -> dict[str, list[str]]:
    """Every file under root (parquet, json, logs, tars: raw bytes) that holds a planted secret."""
    return {str(p.relative_to(root)): found for p in sorted(root.rglob("*")) if p.is_file()
            for found in [leaks(p.read_bytes())] if found}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", "longvid", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


# ------------------------------------------------------------------------------------- the exits, one by one


def test_the_unit_writer_redacts_failure_rows_and_the_source_address(tmp_path):
    w = UnitWriter(str(tmp_path / "out"), 0, 1 << 20)
    path = f"/data/{KEY_ID}/videos/a.mp4"
    info = {"key": "k", "uri": path, "uris": [path, PRESIGNED], "text": "a caption"}
    members = sample_members(info, {"mp4": b"\x00" * 10})
    assert not leaks(members["json"]) and json.loads(members["json"])["text"] == "a caption"
    w.add("k", members, {"key": "k", "source": "s", "video_id": "v", "uri": path})
    w.fail(Failure("s", "v2", path, "locate", f"video file not found: {path} ({USERINFO})", path, "video", "k2"))
    w.commit()
    assert files_with_leaks(tmp_path / "out") == {}
    fail = pq.read_table(tmp_path / "out" / "failures").to_pylist()[0]
    assert fail["reason"].startswith("video file not found: /data/***/videos/a.mp4") and fail["key"] == "k2"


def test_records_of_a_run_and_log_lines_are_redacted(tmp_path, capsys):
    record = {"config": {"videos": f"/data/{KEY_ID}", "endpoint": USERINFO, "metadata": [PRESIGNED]},
              f"by path {KEY_ID}": 1, "n": 3, "obj": Path(f"/x/{KEY_ID}")}
    storage.write_json(str(tmp_path / "summary.json"), record, indent=2, default=str)
    text = (tmp_path / "summary.json").read_text()
    assert not leaks(text) and json.loads(text)["n"] == 3
    assert storage.json_record(record, default=str) == json.loads(text)  # what a settings check compares with

    prog = Progress("ingest", "inputs", out=str(tmp_path), quiet=False, tty=False)
    prog.write(f"reading {PRESIGNED}")
    prog.emit(f"unit 0 from {USERINFO}")
    prog.close()
    out = capsys.readouterr()
    assert "reading https://bkt.s3.amazonaws.com/meta.csv" in out.out and not leaks(out.out + out.err)
    assert not leaks((tmp_path / "logs" / "ingest.log").read_text())

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = storage.get_logger("longvid.test.redaction")
    log.addHandler(handler)
    try:
        log.warning("%s: unreadable (%s)", f"/data/{KEY_ID}/x.tar", USERINFO)
        try:
            raise ValueError(f"cannot open {PRESIGNED}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert "/data/***/x.tar: unreadable" in stream.getvalue() and not leaks(stream.getvalue())


def test_the_cli_error_line_is_redacted(tmp_path):
    r = run_cli("ingest", "--source", "webvid", "--metadata", PRESIGNED, "--videos", str(tmp_path / KEY_ID),
                "--out", str(tmp_path / "out"), timeout=120)
    assert r.returncode == 2 and "configuration error" in r.stderr, r.stderr[-2000:]
    assert not leaks(r.stdout + r.stderr), r.stderr


# ------------------------------------------------------------------------------------- whole jobs


@pytest.mark.slow
def test_an_ingest_with_secrets_in_its_paths_and_endpoint_writes_and_prints_none(tmp_path):
    from tests.pipelines.test_ingest import webvid_corpus

    meta, videos, n_good = webvid_corpus(tmp_path / KEY_ID)  # the metadata and every video path hold a key id
    out = tmp_path / "out"
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(meta), "--videos", str(videos), "--out", str(out),
                "--s3-endpoint-url", USERINFO, "--records-per-unit", "6", "--num-cpus", "1",
                "--log-level", "debug")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not leaks(r.stdout + r.stderr), r.stderr[-3000:]
    assert files_with_leaks(out) == {}  # failures parquet, summary.json, job.json, logs/, shards, manifests
    fails = pq.read_table(out / "failures").to_pylist()
    missing = next(f for f in fails if f["video_id"] == "24")
    assert "/***/videos/d2/24.mp4" in missing["file"]  # the path is kept, the key id is not
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == n_good and summary["config"]["s3_endpoint_url"] == "http://***@127.0.0.1:9"
    assert json.loads((out / "job.json").read_text())["fingerprint"]["videos"].endswith("/***/videos")
    # a re-run with the same (secret-holding) settings is the same job: the settings check compares redacted forms
    r = run_cli("ingest", "--source", "webvid", "--metadata", str(meta), "--videos", str(videos), "--out", str(out),
                "--s3-endpoint-url", USERINFO, "--records-per-unit", "6", "--num-cpus", "1")
    assert r.returncode == 0 and not leaks(r.stdout + r.stderr), r.stderr[-3000:]


def test_an_audit_of_a_path_with_a_key_id_writes_and_prints_none(tmp_path):
    from tests.operators.test_audit_util import FIXTURES, make_job, row

    job = make_job(tmp_path / KEY_ID / "job", [row("webvid_1_full", "webvid", "1")],
                   failures=[{"key": "x", "source": "webvid", "stage": "locate",
                              "reason": f"not found: /v/{KEY_ID}/x.mp4"}])
    r = run_cli("audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(tmp_path / "audit"),
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not leaks(r.stdout + r.stderr)
    assert files_with_leaks(tmp_path / "audit") == {}
    r = run_cli("audit", "--manifests", str(tmp_path / KEY_ID / "nothing"), "--benchmarks", str(FIXTURES),
                "--out", str(tmp_path / "audit2"), timeout=300)
    assert r.returncode == 2 and "/***/nothing" in r.stderr and not leaks(r.stderr), r.stderr[-2000:]
