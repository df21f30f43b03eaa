"""Ingest with S3 in and out, end to end: the `longvid ingest` CLI in a subprocess (embedded Ray) against a moto S3
server on loopback, clean and through a proxy that injects transient faults and denies one video.

What is checked: every output kind lands in S3; shards read with plain webdataset after a download; written +
failed = inputs; videos are read by ranged GETs (never one whole-object GET); a planted secret key, session token
and access key id appear in no output object, no stdout/stderr and no Ray log; ~20% transient faults lose nothing
(the same manifest keys and the same sample bytes as the clean run); a permanent 403 on one video is one failure
row, not a crash; the endpoint reaches Ray workers and their decoder children from `--s3-endpoint-url` and from
AWS_ENDPOINT_URL alone.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from longvid.synthetic.videos import make_video
from tests.s3_server import BUCKET, FaultProxy, boto_client, list_multipart_uploads

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

# Recognisable fake credentials: moto accepts any, so the jobs run with these and we search every output for them.
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIALVPLANTED0KEY9Q7",
    "AWS_SECRET_ACCESS_KEY": "lvPlantedSecret/DoNotLeak+9f3c1e77aa02",
    "AWS_SESSION_TOKEN": "lvPlantedSessionToken0DoNotLeak0b41d2",
}
LEAK_MARKS = [*PLANTED.values(), "DoNotLeak", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
              "AWSAccessKeyId="]

# WebVid rows: (videoid, page_dir, seconds of video or None when the object is missing or not a video)
ROWS = [
    ("11", "d1", "A red kite flies over a grey beach.", "PT00H00M12S"),
    ("12", "d1", "Two people walk a dog along the river.", "PT00H00M20S"),
    ("13", "d2", "A tiny clip.", "PT6S"),
    ("14", "d2", "A big, nearly lossless clip (several ranged reads).", "PT00H00M24S"),
    ("22", "d2", "not a video", "PT00H00M10S"),
    ("24", "d2", "missing object", "PT00H00M10S"),
]
GOOD = {"11", "12", "13", "14"}
BAD_STAGE = {"22": "probe", "24": "locate"}
BIG = "d2/14.mp4"


def make_corpus(root: Path) -> Path:
    """Videos in the WebVid layout plus the metadata CSV, locally; returns root (videos/ and meta.csv inside)."""
    v = root / "videos"
    make_video(v / "d1" / "11.mp4", seconds=12, fps=25, width=320, height=240, seed=1)
    make_video(v / "d1" / "12.mp4", seconds=20, fps=30, width=320, height=240, seed=2)
    make_video(v / "d2" / "13.mp4", seconds=6, fps=10, width=160, height=120, seed=3)
    # crf 0: > 4 MiB, so the 4 MiB ranged reader needs several GETs for it
    make_video(v / BIG, seconds=24, fps=25, width=320, height=240, seed=4, crf=0, preset="ultrafast")
    (v / "d2" / "22.mp4").write_text("this is not a video\n" * 100)
    lines = ["videoid,name,page_dir,duration,contentUrl,page_idx"]
    lines += [f'{vid},"{name}",{d},{dur},http://x/{vid}.mp4,1' for vid, d, name, dur in ROWS]
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def upload_corpus(endpoint: str, root: Path, prefix: str) -> dict[str, str]:
    """Upload videos (not 24.mp4: it is missing) and metadata under s3://BUCKET/prefix; returns the input URIs."""
    c = boto_client(endpoint)
    for p in sorted((root / "videos").rglob("*.mp4")):
        c.upload_file(str(p), BUCKET, f"{prefix}/videos/{p.relative_to(root / 'videos').as_posix()}")
    c.upload_file(str(root / "meta.csv"), BUCKET, f"{prefix}/meta/results_2M_val.csv")
    return {"videos": f"s3://{BUCKET}/{prefix}/videos", "metadata": f"s3://{BUCKET}/{prefix}/meta/results_2M_val.csv"}


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job process: planted credentials, no endpoint unless given, no inherited Ray address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS", "AWS_PROFILE")}
    env.update(PLANTED)
    env.update({"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def list_keys(endpoint: str, prefix: str) -> list[str]:
    c = boto_client(endpoint)
    keys, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix.rstrip("/") + "/"}
        if token:
            kw["ContinuationToken"] = token
        page = c.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", []) or []]
        if not page.get("IsTruncated"):
            return sorted(keys)
        token = page["NextContinuationToken"]


def download(endpoint: str, prefix: str, dest: Path) -> dict[str, Path]:
    """Every object under prefix into dest (same relative layout); returns {relative key: local path}."""
    c = boto_client(endpoint)
    out = {}
    for key in list_keys(endpoint, prefix):
        rel = key[len(prefix.rstrip("/")) + 1:]
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        c.download_file(BUCKET, key, str(p))
        out[rel] = p
    return out


def find_leaks(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(name, mark) for name, data in blobs.items() for mark in LEAK_MARKS if mark.encode() in data]


def ray_log_blobs(ray_tmp: Path) -> dict[str, bytes]:
    out = {}
    for p in ray_tmp.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err", ".txt", ".json", ""):
            try:
                if p.stat().st_size < 20 * MiB:
                    out[str(p)] = p.read_bytes()
            except OSError:
                pass
    return out


class FlakyS3(FaultProxy):
    """FaultProxy with two rules: every request for a denied key gets 403 AccessDenied (permanent), and any other
    request gets a transient fault with probability p, but never more than `max_run` in a row for the same
    request (a transient fault goes away; the storage layer gives up after 6 attempts)."""

    def __init__(self, upstream: str, p: float, kinds: tuple[str, ...], deny: tuple[str, ...] = (),
                 max_run: int = 3, seed: int = 0):
        super().__init__(upstream, kinds=kinds, seed=seed)
        self.p, self.deny, self.max_run = p, deny, max_run
        self._runs: dict[tuple[str, str], int] = {}

    def _decide(self, method, target, headers):
        with self._lock:
            self.requests += 1
            path = target.split("?", 1)[0]
            fault = None
            if any(path.endswith("/" + d) for d in self.deny):
                fault = "403"
            else:
                k = (method, target)
                if self._runs.get(k, 0) < self.max_run and self._rng.random() < self.p:
                    fault = self._rng.choice(self.kinds)
                self._runs[k] = self._runs.get(k, 0) + 1 if fault else 0
            if fault:
                self.faults[fault] += 1
            rng = next((v for k, v in headers if k.lower() == "range"), None)
            self.log.append((method, target, rng, fault))
            return fault


def run_ingest_cli(inputs: dict[str, str], out: str, env: dict[str, str], *extra: str,
                   timeout: float = 420) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "longvid", "ingest", "--source", "webvid", "--metadata", inputs["metadata"],
           "--videos", inputs["videos"], "--out", out, "--profile", "short", "--records-per-unit", "2",
           "--num-cpus", "2", "--shard-size-mb", "0.05", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_parquet_dir(files: dict[str, Path], folder: str) -> pd.DataFrame:
    parts = [pd.read_parquet(p) for rel, p in sorted(files.items()) if rel.startswith(folder + "/")]
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(s3_server, tmp_path_factory):
    root = make_corpus(tmp_path_factory.mktemp("s3corpus"))
    prefix = "ingest-s3/in"
    return {"root": root, "prefix": prefix, **upload_corpus(s3_server["endpoint"], root, prefix)}


@pytest.fixture(scope="module")
def clean_run(s3_server, corpus, tmp_path_factory):
    """Through a fault-free proxy (for its request log), endpoint given by --s3-endpoint-url only."""
    ep = s3_server["endpoint"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="lvs3"))  # short: Ray's socket paths live under it
    try:
        with FaultProxy(ep) as proxy:
            out = f"s3://{BUCKET}/ingest-s3/clean"
            r = run_ingest_cli(corpus, out, job_env(RAY_TMPDIR=str(ray_tmp)), "--s3-endpoint-url", proxy.endpoint)
            log = list(proxy.log)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        files = download(ep, "ingest-s3/clean", tmp_path_factory.mktemp("clean-out"))
        logs = ray_log_blobs(ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"r": r, "files": files, "log": log, "ray_logs": logs, "prefix": "ingest-s3/clean",
            "proxy_endpoint": proxy.endpoint}


@pytest.fixture(scope="module")
def faulty_run(s3_server, corpus, tmp_path_factory):
    """~20% transient faults on every request and a 403 on video 11; endpoint from AWS_ENDPOINT_URL only."""
    ep = s3_server["endpoint"]
    with FlakyS3(ep, p=0.2, kinds=("503", "500", "reset", "cut", "reset_early"), deny=("d1/11.mp4",),
                 seed=7) as proxy:
        r = run_ingest_cli(corpus, f"s3://{BUCKET}/ingest-s3/faulty", job_env(AWS_ENDPOINT_URL=proxy.endpoint))
        stats = {"requests": proxy.requests, "faults": dict(proxy.faults)}
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    files = download(ep, "ingest-s3/faulty", tmp_path_factory.mktemp("faulty-out"))
    return {"r": r, "files": files, "stats": stats, "prefix": "ingest-s3/faulty"}


# ----------------------------------------------------------------------------------------------------- tests


def test_all_outputs_in_s3_and_counts_add_up(s3_server, clean_run):
    files = clean_run["files"]
    assert {"job.json", "index.json", "summary.json"} <= set(files)
    n_units = 3  # 6 rows, 2 per unit
    assert sorted(k for k in files if k.startswith("manifests/")) == [f"manifests/part-{u:06d}.parquet"
                                                                     for u in range(n_units)]
    assert sorted(k for k in files if k.startswith("failures/")) == [f"failures/part-{u:06d}.parquet"
                                                                    for u in range(n_units)]
    shards = sorted(k for k in files if k.startswith("shards/"))
    assert len(shards) >= 2 and all(re.fullmatch(r"shards/shard-\d{6}-\d{3}\.tar", k) for k in shards)
    assert not any("longvid-tmp" in k for k in files)
    assert list_multipart_uploads(s3_server["endpoint"], BUCKET, clean_run["prefix"]) == []

    summary = json.loads(files["summary.json"].read_text())
    assert summary["inputs"] == len(ROWS) == summary["samples"] + summary["failures"]
    assert summary["samples"] == len(GOOD) and summary["shards"] == len(shards)
    man = read_parquet_dir(files, "manifests")
    fails = read_parquet_dir(files, "failures")
    assert set(man.video_id) == GOOD and len(man) == len(GOOD)
    assert dict(zip(fails.video_id, fails.stage)) == BAD_STAGE
    assert set(man.shard) == set(shards)
    assert all(u.startswith(f"s3://{BUCKET}/ingest-s3/in/videos/") for u in man.uri)
    index = json.loads(files["index.json"].read_text())
    assert {s["url"] for s in index["shardlist"]} == set(shards)
    assert sum(s["nsamples"] for s in index["shardlist"]) == len(GOOD)
    assert "samples written" in clean_run["r"].stderr


def test_shards_read_with_plain_webdataset_after_download(clean_run):
    import av
    import webdataset as wds

    files = clean_run["files"]
    man = read_parquet_dir(files, "manifests").set_index("key")
    urls = sorted(str(p) for rel, p in files.items() if rel.startswith("shards/"))
    seen = set()
    for s in wds.WebDataset(urls, shardshuffle=False):
        info = json.loads(s["json"])
        assert info["key"] == s["__key__"] and info["key"] in man.index
        with av.open(io.BytesIO(s["mp4"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == info["num_frames"] == man.loc[info["key"], "num_frames"]
        seen.add(s["__key__"])
    assert seen == set(man.index)


def test_videos_are_read_by_ranged_gets_not_whole_objects(clean_run):
    video_gets = [(t.split("?", 1)[0], rng) for m, t, rng, _ in clean_run["log"]
                  if m == "GET" and "/ingest-s3/in/videos/" in t]
    assert video_gets, "no video GET went through the proxy: the endpoint did not reach the workers"
    assert all(rng is not None for _, rng in video_gets), [g for g in video_gets if g[1] is None]
    spans = []
    for _, rng in video_gets:
        lo, hi = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", rng).groups())
        spans.append(hi - lo + 1)
    assert max(spans) <= 4 * MiB  # the reader's block size: never a whole big object in one request
    big = [rng for path, rng in video_gets if path.endswith("/" + BIG)]
    assert len(big) >= 2  # the > 4 MiB video was streamed in several ranges
    # the metadata CSV is read through the same ranged reader
    assert any(m == "GET" and "/meta/results_2M_val.csv" in t and rng for m, t, rng, _ in clean_run["log"])


def test_no_credentials_in_outputs_logs_or_console(clean_run, faulty_run):
    blobs = {f"clean:{k}": p.read_bytes() for k, p in clean_run["files"].items()}
    blobs.update({f"faulty:{k}": p.read_bytes() for k, p in faulty_run["files"].items()})
    for name, run in (("clean", clean_run), ("faulty", faulty_run)):
        blobs[f"{name}:stdout"] = run["r"].stdout.encode()
        blobs[f"{name}:stderr"] = run["r"].stderr.encode()
    blobs.update(clean_run["ray_logs"])
    assert len(clean_run["ray_logs"]) > 5  # the Ray session logs were there to search
    assert find_leaks(blobs) == []
    # the job settings keep the (non-secret) endpoint and no credentials
    cfg = json.loads(clean_run["files"]["summary.json"].read_text())["config"]
    assert cfg["s3_endpoint_url"] == clean_run["proxy_endpoint"]
    assert not any("secret" in k.lower() or "token" in k.lower() for k in cfg)


def test_transient_faults_lose_nothing_and_a_403_is_one_failure_row(clean_run, faulty_run):
    st = faulty_run["stats"]
    assert st["faults"].get("403", 0) >= 1
    transient = sum(n for k, n in st["faults"].items() if k != "403")
    assert transient >= 0.1 * st["requests"] and len([k for k in st["faults"] if k != "403"]) >= 4, st

    clean_man = read_parquet_dir(clean_run["files"], "manifests").set_index("key")
    man = read_parquet_dir(faulty_run["files"], "manifests").set_index("key")
    fails = read_parquet_dir(faulty_run["files"], "failures")
    denied = clean_man.index[clean_man.video_id == "11"].tolist()
    assert len(denied) == 1
    # nothing lost to the transient faults: the same samples, byte for byte
    assert sorted(man.index) == sorted(set(clean_man.index) - set(denied))
    assert (man.sha256 == clean_man.loc[man.index, "sha256"]).all()
    assert (man.frame_indices.map(list) == clean_man.loc[man.index, "frame_indices"].map(list)).all()
    # the denied video is a failure row naming the file and the S3 error, next to the usual bad inputs
    assert sorted(fails.video_id) == sorted([*BAD_STAGE, "11"])
    row = fails[fails.video_id == "11"].iloc[0]
    assert "403" in row.reason or "AccessDenied" in row.reason, row.reason
    assert "d1/11.mp4" in row.file or "d1/11.mp4" in row.reason
    assert dict(zip(fails.video_id, fails.stage)).items() >= BAD_STAGE.items()
    summary = json.loads(faulty_run["files"]["summary.json"].read_text())
    assert summary["inputs"] == len(ROWS) == summary["samples"] + summary["failures"]
    assert summary["samples"] == len(GOOD) - 1
