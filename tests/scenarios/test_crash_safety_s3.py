"""Crash safety of `longvid ingest` with S3 OUTPUT (moto server on loopback, real subprocesses, embedded Ray, 2 CPUs).

The contract (operators/write.py UnitWriter): a unit's shards are uploaded first (each object atomic: one PUT, or a
multipart upload completed only at the end), then its failures part, then its manifest part, whose presence alone
means "committed". So after a crash S3 may hold *stray* shard/failure objects of a unit without a manifest: they are
complete (never partial), referenced by no manifest, and the unit's re-run overwrites them with the same bytes.

(a) driver SIGKILL once >= 1 unit is committed and before all are; the S3 state is checked at that moment (every
    object complete and equal to the uninterrupted run's, strays unreferenced, no summary/index, no incomplete upload);
    the same command again skips the committed units (their manifests untouched) and ends with the same object keys,
    manifests (timing columns ignored), failures, tar bytes, index and counts as one uninterrupted run; no duplicate or
    missing key; no incomplete multipart upload; no scratch directory of a dead attempt left in the workers' TMPDIR.
    (Ray ends the task workers only a few seconds after their driver: the units in flight usually still commit.)
(b) SIGKILL of a Ray worker while its writer holds samples in its local scratch folder: the job completes, output
    equal to the uninterrupted run's, and a later writer on the node removed the dead worker's scratch folder.
(c) unit level, a writer process SIGKILLed at two points of its commit (in the middle of a multipart shard upload;
    after its shards are uploaded, before its manifest): what is visible then, and what the retry's commit leaves.

The job's shards are far below the multipart threshold (64 MiB), so (a)/(b) upload by single PUTs: their "no
incomplete multipart upload" checks are cheap sanity checks; (c) is where a multipart upload is really killed.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from longvid.synthetic.faulty_corpus import make_corpus
from tests.faults import children, marked_procs, wait_gone
from tests.s3_server import BUCKET, FaultProxy, boto_client, is_upload_part, list_multipart_uploads
from tests.scenarios.test_crash_safety import TIMING_COLUMNS, Run, is_core

ROOT = Path(__file__).resolve().parents[2]
RECORDS_PER_UNIT = 3
MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------------- S3 helpers


def objects(endpoint: str, prefix: str) -> dict[str, dict]:
    """relative key -> {"etag", "modified", "size"} of every object under s3://BUCKET/prefix/."""
    c = boto_client(endpoint)
    out, token = {}, None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix.rstrip("/") + "/"}
        if token:
            kw["ContinuationToken"] = token
        page = c.list_objects_v2(**kw)
        for o in page.get("Contents", []) or []:
            out[o["Key"][len(kw["Prefix"]):]] = {"etag": o["ETag"], "modified": o["LastModified"], "size": o["Size"]}
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def fetch(endpoint: str, prefix: str, rels) -> dict[str, bytes]:
    c = boto_client(endpoint)
    return {r: c.get_object(Bucket=BUCKET, Key=f"{prefix}/{r}")["Body"].read() for r in sorted(rels)}


def parquet(blobs: dict[str, bytes], folder: str) -> pd.DataFrame:
    parts = [pd.read_parquet(io.BytesIO(b)) for r, b in sorted(blobs.items()) if r.startswith(folder + "/")]
    df = pd.concat(parts, ignore_index=True)
    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])
    return df.sort_values("key").reset_index(drop=True)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # raises on a truncated / partial tar
        return [m.name for m in t.getmembers()]


UNIT_RE = re.compile(r"(?:shards/shard-|manifests/part-|failures/part-)(\d{6})")


def unit_of(rel: str) -> int | None:
    m = UNIT_RE.match(rel)
    return int(m.group(1)) if m else None


def scratch_leftovers(tmpdir: Path) -> list[str]:
    """UnitWriter's local scratch folders (S3 output) still in the job's TMPDIR. Not scratch: the per-user folders
    every job shares, longvid-ray-<uid> (the embedded Ray's sessions) and longvid-owners-<uid> (the owner records
    of S3 outputs on this host)."""
    keep = (f"longvid-ray-{os.getuid()}", f"longvid-owners-{os.getuid()}")
    return sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("longvid-") and p.name not in keep)



# ------------------------------------------------------------------------------------------------- job runs


class Job:
    """One `longvid ingest` subprocess writing to s3://BUCKET/<prefix>, with its own short TMPDIR (Ray's session
    folder and UnitWriter's scratch folders go there, so the test can look for the scratch a killed attempt left)."""

    def __init__(self, corpus, endpoint: str, prefix: str, log: Path, tmpdir: Path | None = None):
        self.tmpdir = tmpdir or Path(tempfile.mkdtemp(prefix="lvcs3"))  # short: Ray's socket paths live under it
        args = ["--source", "miradata", "--metadata", str(corpus.metadata), "--videos", str(corpus.videos),
                "--out", f"s3://{BUCKET}/{prefix}", "--s3-endpoint-url", endpoint, "--profile", "short",
                "--records-per-unit", str(RECORDS_PER_UNIT), "--num-cpus", "2", "--shard-size-mb", "0.01",
                # two units in flight: when the driver is killed after the first commit, at most two more are running
                # (the default 2 x CPUs put every unit of this corpus in flight at once, and all could commit)
                "--max-in-flight", "2"]
        with pytest.MonkeyPatch.context() as mp:  # Run copies os.environ
            mp.setenv("TMPDIR", str(self.tmpdir))
            for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(k, raising=False)
            self.run = Run(args, log)

    def finish(self) -> int:
        try:
            return self.run.wait()
        finally:
            self.run.cleanup()

    def remove_tmpdir(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def job_tmpdir():
    """A short TMPDIR for a test's jobs (Ray's socket paths live under it), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="lvcs3"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 4 videos x 2 clips + 2 bad rows = 10 inputs = 4 units of 3 (the last one short); ~7 kB a sample and 10 kB
    # shards: up to three shard objects per unit
    return make_corpus(tmp_path_factory.mktemp("crash-s3"), n_videos=4, clips_per_video=2, bad_per_kind=1,
                       kinds=("missing", "corrupt_middle"), seed=11)


def check_complete(endpoint: str, prefix: str, corpus) -> dict:
    keys = objects(endpoint, prefix)
    blobs = fetch(endpoint, prefix, keys)
    man, fail = parquet(blobs, "manifests"), parquet(blobs, "failures")
    all_keys = list(man.key) + list(fail.key)
    assert len(all_keys) == len(set(all_keys)), "a key was written twice"
    assert set(all_keys) == corpus.keys, (sorted(corpus.keys - set(all_keys)), sorted(set(all_keys) - corpus.keys))
    assert set(man.key) == corpus.good_keys
    shards = {r: b for r, b in blobs.items() if r.startswith("shards/")}
    assert set(man.shard) == set(shards), "a shard object no manifest references, or a manifest row without shard"
    in_tars = [n.rsplit(".", 1)[0] for b in shards.values() for n in tar_names(b)]
    assert sorted(set(in_tars)) == sorted(man.key) and len(in_tars) == 2 * len(man)  # .json + .mp4 per sample
    summary = json.loads(blobs["summary.json"])
    assert summary["inputs"] == corpus.rows == summary["samples"] + summary["failures"] and summary["complete"]
    assert list_multipart_uploads(endpoint, BUCKET, prefix + "/") == []
    return {"keys": keys, "blobs": blobs, "man": man, "fail": fail, "summary": summary, "shards": shards}


@pytest.fixture(scope="module")
def reference(s3_server, corpus, tmp_path_factory):
    ep = s3_server["endpoint"]
    job = Job(corpus, ep, "crash-s3/ref", tmp_path_factory.mktemp("ref") / "log.txt")
    try:
        rc = job.finish()
        assert rc == 0, job.run.tail()
        assert scratch_leftovers(job.tmpdir) == []
    finally:
        job.remove_tmpdir()
    ref = check_complete(ep, "crash-s3/ref", corpus)
    ref["units"] = -(-corpus.rows // RECORDS_PER_UNIT)
    assert sorted(set(ref["man"].unit) | set(ref["fail"].unit)) == list(range(ref["units"]))
    assert any(len([s for s in ref["shards"] if unit_of(s) == u]) >= 2 for u in range(ref["units"]))
    return ref


def assert_same_as_reference(got: dict, ref: dict) -> None:
    data = lambda keys: sorted(k for k in keys if not k.startswith("logs/"))  # noqa: E731 - each run adds its log
    assert data(got["keys"]) == data(ref["keys"]), (set(data(got["keys"])) ^ set(data(ref["keys"])))
    pd.testing.assert_frame_equal(got["man"], ref["man"])
    pd.testing.assert_frame_equal(got["fail"], ref["fail"])
    assert [k for k in got["shards"] if got["shards"][k] != ref["shards"][k]] == [], "tars differ"
    for name in ("index.json", "job.json"):
        assert got["blobs"][name] == ref["blobs"][name], name
    for k in ("inputs", "samples", "failures", "failures_by_stage", "shards", "frames", "bytes", "video_hours"):
        assert got["summary"][k] == ref["summary"][k], k


# ------------------------------------------------------------------------------------------------- (a)


@pytest.mark.slow
def test_driver_sigkill_then_rerun_equals_uninterrupted_run(s3_server, corpus, reference, tmp_path, job_tmpdir):
    ep, prefix = s3_server["endpoint"], "crash-s3/killed"
    units = reference["units"]
    job = Job(corpus, ep, prefix, tmp_path / "log1.txt", tmpdir=job_tmpdir)
    try:
        # kill as soon as a unit is committed: the other unit of the first wave is then mid-way (and the queued
        # units never start, their owner being dead); in-flight workers may still commit before Ray ends them
        t0, done = time.time(), set()
        while job.run.proc.poll() is None and time.time() - t0 < 300:
            now = objects(ep, prefix)
            done = {unit_of(r) for r in now if r.startswith("manifests/")}
            if done:
                break
            time.sleep(0.02)
        at_kill = {"committed": sorted(done), "scratch": scratch_leftovers(job.tmpdir)}
        assert job.run.proc.poll() is None, "the job ended before it could be killed:\n" + job.run.tail()
        job.run.proc.send_signal(signal.SIGKILL)
        job.run.proc.wait(30)
        busy = wait_gone(job.run.marker, 60, keep=is_core)  # nothing may keep writing to S3 after this
        assert busy == {}, f"processes of the killed job still running: {busy}"
    finally:
        job.run.cleanup(5)
    dead_scratch = scratch_leftovers(job.tmpdir)

    # --- what the crash left in S3
    after_kill = objects(ep, prefix)
    blobs = fetch(ep, prefix, after_kill)
    committed = {unit_of(r) for r in after_kill if r.startswith("manifests/")}
    assert 1 <= len(committed) < units, sorted(committed)
    assert "summary.json" not in after_kill and "index.json" not in after_kill
    assert list_multipart_uploads(ep, BUCKET, prefix + "/") == []
    for rel, data in blobs.items():  # every object is whole: the uninterrupted run's bytes under the same key
        if rel.startswith(("shards/", "manifests/", "failures/")):
            assert rel in reference["blobs"], rel
            if rel.startswith("shards/"):
                assert tar_names(data)
                assert data == reference["blobs"][rel], f"{rel} differs from the uninterrupted run's (partial?)"
    man_now = parquet(blobs, "manifests")
    assert {unit_of(s) for s in man_now.shard} <= committed  # manifests reference their own unit's shards only
    for u in committed:  # a committed unit is all there: its shards and its failures part
        assert {s for s in reference["shards"] if unit_of(s) == u} <= set(after_kill)
        assert f"failures/part-{u:06d}.parquet" in after_kill
    strays = sorted(r for r in after_kill if unit_of(r) is not None and unit_of(r) not in committed)
    print(f"killed with {len(committed)}/{units} units committed; stray objects of uncommitted units: {strays}; "
          f"scratch folders of killed attempts: {dead_scratch}; at the kill: {at_kill}")

    # --- the same command again
    # same node, same TMPDIR: the re-run's writers meet the dead attempts' scratch folders
    job2 = Job(corpus, ep, prefix, tmp_path / "log2.txt", tmpdir=job.tmpdir)
    rc = job2.finish()
    assert rc == 0, job2.run.tail()
    got = check_complete(ep, prefix, corpus)
    assert scratch_leftovers(job.tmpdir) == [], "scratch folders of killed attempts were left behind"
    assert got["summary"]["units_skipped"] == len(committed)
    assert got["summary"]["units_run"] == units - len(committed)
    for u in committed:  # skipped, not rewritten
        rel = f"manifests/part-{u:06d}.parquet"
        assert got["keys"][rel]["modified"] == after_kill[rel]["modified"] and got["blobs"][rel] == blobs[rel]
    assert_same_as_reference(got, reference)


# ------------------------------------------------------------------------------------------------- (b)


@pytest.mark.slow
def test_worker_sigkill_mid_unit_is_retried(s3_server, corpus, reference, tmp_path, job_tmpdir):
    ep, prefix = s3_server["endpoint"], "crash-s3/worker"
    job = Job(corpus, ep, prefix, tmp_path / "log.txt", tmpdir=job_tmpdir)
    killed: list[str] = []
    try:
        t0 = time.time()
        # a task worker is "ray::run_unit" while it executes a unit; one with a decoder child is mid-unit. Prefer
        # one whose writer already holds samples in its scratch folder (named ...-p<pid>-...), so the kill leaves one
        while job.run.proc.poll() is None and time.time() - t0 < 300 and not killed:
            scratch = " ".join(scratch_leftovers(job.tmpdir))
            for pid, cmd in marked_procs(job.run.marker).items():
                if (cmd.startswith("ray::run_unit") and children(pid)
                        and (f"-p{pid}-" in scratch or time.time() - t0 > 120)):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"{pid} {cmd} scratch={f'-p{pid}-' in scratch}")
                    break
            time.sleep(0.05)
        assert killed, "no worker caught executing a unit:\n" + job.run.tail()
        rc = job.run.wait()
        busy = wait_gone(job.run.marker, 60, keep=is_core)
        leftovers = scratch_leftovers(job.tmpdir)
    finally:
        job.run.cleanup()
    assert rc == 0, job.run.tail()
    assert busy == {}, f"orphan workers or decoder children after the job: {busy}"
    print("killed:", killed)
    assert leftovers == [], "the killed worker's scratch folder was left behind"
    got = check_complete(ep, prefix, corpus)
    assert got["summary"]["units_run"] == reference["units"]
    assert_same_as_reference(got, reference)


# ------------------------------------------------------------------------------------------------- (c)

_WRITER = r"""
import sys
from longvid.operators import storage
from longvid.operators.write import UnitWriter
endpoint, out, scratch, big = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
storage.configure_s3(storage.S3Options(endpoint_url=endpoint, multipart_threshold=5 * 2**20, part_size=5 * 2**20,
                                       max_attempts=1, read_timeout=300))
w = UnitWriter(out, 3, 64 * 1024, scratch=scratch)
for key, members, row in __import__("tests.scenarios.test_crash_safety_s3", fromlist=["x"]).unit_samples(big):
    w.add(key, members, row)
print("committing", flush=True)
w.commit()
"""


def unit_samples(big: int):
    """Three samples of 40 kB (one shard each at 64 kB shards), plus one of `big` bytes (its own shard) if big."""
    import random

    rng = random.Random(5)
    sizes = [40_000, 40_000, 40_000] + ([big] if big else [])
    for i, n in enumerate(sizes):
        key = f"k{i}"
        yield key, {"json": json.dumps({"key": key}).encode(), "mp4": rng.randbytes(n)}, {"key": key}


def kill_writer_at(endpoint: str, out: str, scratch: Path, big: int, stall_when, tmp: Path) -> list:
    """Run the writer in a child through a proxy that stalls the first request matching `stall_when`; SIGKILL the
    child once that request has reached the proxy. Returns the proxy log."""
    with FaultProxy(endpoint, schedule=["stall"], match=stall_when, stall_seconds=60) as proxy:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("AWS_ENDPOINT_URL_S3", None)
        log = open(tmp / "writer.txt", "w")
        child = subprocess.Popen([sys.executable, "-c", _WRITER, proxy.endpoint, out, str(scratch), str(big)],
                                 cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.time()
            while not proxy.faults and child.poll() is None and time.time() - t0 < 60:
                time.sleep(0.02)
            assert proxy.faults and child.poll() is None, (tmp / "writer.txt").read_text()
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            log.close()
        return list(proxy.log)


@pytest.mark.parametrize("point", ["mid_multipart_upload", "before_manifest"])
def test_writer_killed_during_commit_then_retried(s3, point, tmp_path):
    from longvid.operators import storage
    from longvid.operators.write import UnitWriter

    prefix = s3.prefix[len(f"s3://{BUCKET}/"):].rstrip("/")
    out = s3.uri("job")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if point == "mid_multipart_upload":  # the 4th shard (12 MiB) goes up in 5 MiB parts: stall the second part
        big, n_parts = 12 * MiB, [0]

        def stall_when(method, target, headers):
            if is_upload_part(method, target, headers):
                n_parts[0] += 1
                return n_parts[0] == 2
            return False
    else:  # all shards uploaded, the failures part (then the manifest) not yet
        big = 0

        def stall_when(method, target, headers):
            return method == "PUT" and "/failures/part-000003" in target

    kill_writer_at(s3.endpoint, out, scratch, big, stall_when, tmp_path)
    dead = objects(s3.endpoint, f"{prefix}/job")
    uploads = list_multipart_uploads(s3.endpoint, BUCKET, f"{prefix}/")
    assert not any(r.startswith(("manifests/", "failures/")) for r in dead)  # the unit is not committed
    if point == "mid_multipart_upload":
        assert sorted(dead) == [f"shards/shard-000003-00{i}.tar" for i in range(3)]  # the small ones went first
        assert [u["Key"] for u in uploads] == [f"{prefix}/job/shards/shard-000003-003.tar"]  # never completed
    else:
        assert sorted(dead) == [f"shards/shard-000003-00{i}.tar" for i in range(3)] and uploads == []
    dead_blobs = fetch(s3.endpoint, f"{prefix}/job", dead)
    assert len(os.listdir(scratch)) == 1  # the killed writer's scratch folder, with its tars

    # the retry (a fresh process in real life; here this test process) commits the same unit
    storage.configure_s3(storage.S3Options(endpoint_url=s3.endpoint, multipart_threshold=5 * MiB,
                                           part_size=5 * MiB, max_attempts=2))
    w = UnitWriter(out, 3, 64 * 1024, scratch=str(scratch))
    for key, members, row in unit_samples(big):
        w.add(key, members, row)
    w.commit()
    final = objects(s3.endpoint, f"{prefix}/job")
    n_shards = 4 if big else 3
    assert sorted(final) == sorted([f"shards/shard-000003-00{i}.tar" for i in range(n_shards)]
                                   + ["failures/part-000003.parquet", "manifests/part-000003.parquet"])
    blobs = fetch(s3.endpoint, f"{prefix}/job", final)
    assert all(blobs[r] == b for r, b in dead_blobs.items())  # what the dead attempt left was whole, same bytes
    man = pd.read_parquet(io.BytesIO(blobs["manifests/part-000003.parquet"]))
    assert sorted(man.shard) == sorted(r for r in final if r.startswith("shards/"))
    assert [n for r in sorted(final) if r.startswith("shards/") for n in tar_names(blobs[r])] == [
        f"k{i}.{e}" for i in range(n_shards) for e in ("json", "mp4")]
    assert list_multipart_uploads(s3.endpoint, BUCKET, f"{prefix}/") == [], "the dead attempt's upload is left"
    assert os.listdir(scratch) == [], "the dead attempt's scratch folder is left"


def test_stale_part_lookup_lists_only_its_own_unit(s3, fault_proxy, tmp_path):
    """The commit's look for a dead attempt's extra parts lists the unit's own shard keys, not every shard of the
    job (which would make each commit cost O(all shards) LIST requests at cluster scale)."""
    from longvid.operators import storage
    from longvid.operators.write import UnitWriter

    out = s3.uri("job")
    c = boto_client(s3.endpoint)
    bucket_prefix = out[len(f"s3://{BUCKET}/"):]
    for u in range(6):  # other units' shards, and a dead attempt's extra part of unit 3
        c.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/shards/shard-{u:06d}-000.tar", Body=b"x")
    c.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/shards/shard-000003-001.tar", Body=b"stale")
    storage.configure_s3(storage.S3Options(endpoint_url=fault_proxy.endpoint, max_attempts=2))
    w = UnitWriter(out, 3, 1 << 20, scratch=str(tmp_path))
    w.add("k", {"json": b"{}", "mp4": b"\0" * 10}, {"key": "k"})
    w.commit()
    keys = objects(s3.endpoint, bucket_prefix)
    assert "shards/shard-000003-001.tar" not in keys  # removed: this attempt wrote one part only
    assert {f"shards/shard-{u:06d}-000.tar" for u in range(6)} <= set(keys)
    lists = [t for m, t, _, _ in fault_proxy.log if m == "GET" and "list-type=2" in t]
    assert lists and all("shard-000003-" in t for t in lists), lists


def test_list_files_name_prefix_local(tmp_path):
    from longvid.operators import storage

    names = ("shard-000003-000.tar", "shard-000003-001.tar", "shard-000031-000.tar", ".longvid-tmp-shard-000003-x.tar")
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "shard-000003-009.tar").write_bytes(b"x")
    got = storage.list_files(str(tmp_path), ".tar", name_prefix="shard-000003-")
    assert got == [str(tmp_path / "shard-000003-000.tar"), str(tmp_path / "shard-000003-001.tar")]
    assert storage.list_files(str(tmp_path), name_prefix="sub/") == [str(tmp_path / "sub" / "shard-000003-009.tar")]
