"""Hostile values at the write end of a job (issue 12): one sample that cannot be written is one failure row and
the rest of its unit is written; long keys are PAX tars every reader reads; symbolic links out of the video root
are locate failures; a full disk is one clear error, leaves no temporary file and a re-run completes; storage
pre-flight checks raise typed one-line errors.
"""
from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longvid.operators import shards, storage
from longvid.operators.errors import RecordError
from longvid.operators.process import ProcessOptions, process_record
from longvid.operators.records import Failure, SourceRecord, TextSpan
from longvid.operators.write import MAX_JSON_DEPTH, MAX_KEY_BYTES, SampleWriteError, UnitWriter, sample_members
from longvid.synthetic.videos import make_video

ROOT = Path(__file__).resolve().parents[2]


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.name.startswith(storage.TMP_PREFIX))


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def webdataset_samples(path: Path) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(str(path), shardshuffle=False))


def ray_samples(path: Path) -> list[dict]:
    """The per-file reader ray.data.read_webdataset runs (its tar iterator and key grouping), without a cluster."""
    from ray.data._internal.datasource.webdataset_datasource import _group_by_keys, _tar_file_iterator

    with open(path, "rb") as f:
        return list(_group_by_keys(_tar_file_iterator(f)))


def sample(key: str, size: int = 700, **info) -> tuple[str, dict[str, bytes], dict]:
    members = sample_members({"key": key, **info}, {"mp4": (key.encode() * size)[:size]})
    return key, members, {"key": key, "source": "webvid", "video_id": key, "bytes": size}


def strict_json(data: bytes):
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


# ------------------------------------------------------------------------------------------- long keys: PAX


@pytest.mark.parametrize("n", [95, 96, 150, MAX_KEY_BYTES])  # <key>.json: 100 characters fit ustar, 101 do not
def test_long_keys_are_pax_tars_read_by_tarfile_webdataset_and_ray(tmp_path, n):
    long_key = "webvid_" + "v" * (n - len("webvid_"))
    assert len(long_key) == n
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        w = UnitWriter(str(out), 0, 1 << 20)
        for k in ("webvid_short_full", long_key, "webvid_after_full"):
            assert w.add(*sample(k))
        stats = w.commit()
        assert stats["samples"] == 3 and stats["failures"] == 0
        outs.append(out / "shards" / "shard-000000-000.tar")
    tar = outs[0]
    assert tar.read_bytes() == outs[1].read_bytes()  # deterministic, PAX headers included
    assert [name for name, _ in read_tar(tar)] == [f"{k}.{e}" for k in ("webvid_short_full", long_key,
                                                                        "webvid_after_full") for e in ("json", "mp4")]
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert set(m.pax_headers) <= {"path"}
    raw = tar.read_bytes()
    if n + len(".json") > 100:  # the PAX header block carries fixed fields too (no time, no owner)
        i = raw.index(b"././@PaxHeader")
        hdr = raw[i:i + 512]
        assert int(hdr[136:148].strip(b"\0 ") or b"0", 8) == 0  # mtime
        assert int(hdr[108:116].strip(b"\0 ") or b"0", 8) == 0 == int(hdr[116:124].strip(b"\0 ") or b"0", 8)
        assert hdr[265:297].strip(b"\0") == b"" == hdr[297:329].strip(b"\0")
    else:
        assert b"@PaxHeader" not in raw  # names that fit ustar: plain ustar headers, as before
    for got in (webdataset_samples(tar), ray_samples(tar)):
        assert [s["__key__"] for s in got] == ["webvid_short_full", long_key, "webvid_after_full"]
        assert json.loads(got[1]["json"])["key"] == long_key and got[1]["mp4"] == sample(long_key)[1]["mp4"]


# ------------------------------------------------------------------------------- one sample, one failure row

NESTED: dict = {}
_d = NESTED
for _ in range(MAX_JSON_DEPTH + 1):
    _d["x"] = {}
    _d = _d["x"]

BAD_INFO = [
    ({"texts": [{"text": "ok"}, {"text": "bad \udc80 text"}]}, "texts[1].text", "lone surrogate"),
    ({"meta": {"fps": float("nan")}}, "meta.fps", "nan"),
    ({"meta": {"fps": float("-inf")}}, "meta.fps", "-inf"),
    ({"meta": {"views": 10**400}}, "meta.views", "64-bit"),
    ({"meta": {"views": 2**63}}, "meta.views", "64-bit"),
    ({"meta": {1: "a", "b": 2}}, "meta", "key 1 is a int"),
    ({"meta": {("a",): 1}}, "meta", "JSON keys are strings"),
    ({"meta": {"bad\ud800key": 1}}, "meta.bad\ud800key", "lone surrogate"),
    ({"meta": {"blob": b"bytes"}}, "meta.blob", "bytes is not a JSON value"),
    ({"meta": {"s": {1, 2}}}, "meta.s", "set is not a JSON value"),
    ({"deep": NESTED}, "deep" + ".x" * MAX_JSON_DEPTH, "nested deeper"),
]


@pytest.mark.parametrize("info,field,why", BAD_INFO, ids=[b[1][:20] + ":" + b[2] for b in BAD_INFO])
def test_a_json_value_that_cannot_be_written_names_its_field(info, field, why):
    with pytest.raises(SampleWriteError) as e:
        sample_members({"key": "k", **info}, {"mp4": b"x"})
    assert e.value.stage == "write" and e.value.field == field and why in e.value.reason


BAD_KEYS = [("", "non-empty"), ("a.b", "'.'"), ("a/b", "'/'"), ("a\\b", "'\\\\'"), ("a\nb", "'\\n'"),
            ("k\udc80", "lone surrogate"), ("k" * (MAX_KEY_BYTES + 1), f"at most {MAX_KEY_BYTES}"),
            ("é" * (MAX_KEY_BYTES // 2 + 1), f"at most {MAX_KEY_BYTES}")]


@pytest.mark.parametrize("key,why", BAD_KEYS, ids=[f"key{i}" for i in range(len(BAD_KEYS))])
def test_a_bad_key_is_refused_before_any_byte_is_written(tmp_path, key, why):
    w = UnitWriter(str(tmp_path), 0, 1 << 20)
    assert w.add(*sample("before"))
    with pytest.raises(SampleWriteError) as e:
        w.add(key, {"json": b"{}", "mp4": b"x"}, {"key": key})
    assert e.value.field == "key" and why in e.value.reason, e.value.reason
    assert w.add(*sample("after"))
    w.commit()
    assert [n for n, _ in read_tar(tmp_path / "shards/shard-000000-000.tar")] == [
        "before.json", "before.mp4", "after.json", "after.mp4"]


def test_a_sample_failing_mid_add_leaves_no_member_and_its_unit_is_written(tmp_path):
    """Bad manifest values and a bad second member are found before the first member is written."""
    w = UnitWriter(str(tmp_path), 0, 1 << 20)
    assert w.add(*sample("a"))
    with pytest.raises(SampleWriteError) as e:  # the json is fine; the second member is not bytes
        w.add("b", {"json": b"{}", "mp4": "not bytes"}, {"key": "b"})
    assert e.value.field == "mp4"
    with pytest.raises(SampleWriteError) as e:  # text the manifest (parquet) cannot hold
        w.add("c", {"json": b"{}", "mp4": b"x"}, {"key": "c", "text": "a\ud800"})
    assert e.value.field == "text" and "manifest column text" in e.value.reason
    with pytest.raises(SampleWriteError) as e:
        w.add("d", {"json": b"{}", "mp4": b"x"}, {"key": "d", "bytes": 2**70})
    assert e.value.field == "bytes"
    assert w.add(*sample("e"))
    stats = w.commit()
    assert stats["samples"] == 2
    assert [n for n, _ in read_tar(tmp_path / "shards/shard-000000-000.tar")] == [
        "a.json", "a.mp4", "e.json", "e.mp4"]
    assert list(pd.read_parquet(tmp_path / "manifests").key) == ["a", "e"]


def test_failure_rows_holding_any_text_or_number_are_stored(tmp_path):
    w = UnitWriter(str(tmp_path), 0, 1 << 20)
    w.fail(Failure("webvid", "id\ud800", "u\udcff", "metadata", "bad value '\udc80'", "m.json:3", "video_id",
                   "webvid_id-x_full", start=10**400, end=float("nan")))
    w.commit()
    f = pd.read_parquet(tmp_path / "failures")
    assert len(f) == 1 and f.stage[0] == "metadata" and f.field[0] == "video_id"
    assert "\udc80" not in f.reason[0] and f.file[0] == "m.json:3" and f.start.isna()[0]


# hostile JSON-ish values: everything JSON has, plus what it has not (NaN, infinities, huge ints, lone surrogates,
# non-string keys, bytes)
_text = st.text(max_size=6) | st.sampled_from(["\ud800", "a\udcffb", "é", ""])
_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text
         | st.binary(max_size=3))
_values = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.one_of(_text, st.integers(-3, 3)), c, max_size=3), max_leaves=12)


def _as_json(v):
    if isinstance(v, (list, tuple)):
        return [_as_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _as_json(x) for k, x in v.items()}
    return v


def _ints(v):
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        yield v
    elif isinstance(v, list):
        for x in v:
            yield from _ints(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _ints(x)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(infos=st.lists(st.dictionaries(_text, _values, max_size=4), min_size=1, max_size=5),
       keys=st.lists(st.text(min_size=0, max_size=130) | st.sampled_from(["k" * 250, "a" * 101]), min_size=5,
                     max_size=5))
def test_fuzz_the_writer_writes_exactly_the_writable_samples(tmp_path_factory, infos, keys):
    """Each sample either raises SampleWriteError (and leaves no trace) or is in the tar, readable as strict JSON
    equal to what was given, under its key, by tarfile and webdataset."""
    out = tmp_path_factory.mktemp("fuzz")
    w = UnitWriter(str(out), 0, 1 << 20)
    expect = {}
    for i, info in enumerate(infos):
        key = keys[i] or f"k{i}"
        try:
            members = sample_members(info, {"mp4": f"payload {i}".encode()})
            added = w.add(key, members, {"key": key})
        except SampleWriteError as e:
            assert e.stage == "write" and e.reason
            continue
        if added:
            expect[key] = info
    stats = w.commit()
    assert stats["samples"] == len(expect)
    if not expect:
        return
    tar = out / "shards/shard-000000-000.tar"
    got = {name.rsplit(".", 1)[0]: data for name, data in read_tar(tar) if name.endswith(".json")}
    assert list(got) == list(expect)
    for key, info in expect.items():
        v = strict_json(got[key])
        assert v == _as_json(info) and all(-(2**63) <= n < 2**63 for n in _ints(v))
    wds = webdataset_samples(tar)
    assert [s["__key__"] for s in wds] == list(expect)


# ------------------------------------------------------------------------------------------------ run_unit


def rec(video_id: str, paths: tuple[str, ...] = ("v.mp4",), source: str = "webvid", **kw) -> SourceRecord:
    return SourceRecord(source, video_id, paths, 0.0, 1.5, texts=(TextSpan("A test clip."),), **kw)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "v.mp4", seconds=2, fps=10, width=64, height=48, seed=3)
    return root


def test_unit_with_unwritable_samples_writes_the_others(video_root, tmp_path):
    from longvid.pipelines import ingest

    long_id = "L" * 200  # key of ~220 characters: written (PAX)
    recs = [rec("ok", origin="m.csv:2"), rec(long_id, origin="m.csv:3"),
            rec("x" * 300, origin="m.csv:4"),  # key too long
            rec("nan", origin="m.csv:5", meta=(("fps_hint", math.nan),)), rec("ok2", origin="m.csv:6")]
    opts = ProcessOptions(videos_root=str(video_root), profile="stage1")
    out = tmp_path / "out"
    try:
        st_ = ingest.run_unit(str(out), 0, recs, opts, 1 << 20, 60.0, 4096, {}, reuse_decoder=False)
    finally:
        ingest._close_decoder()
    assert (st_["samples"], st_["failures"]) == (3, 2)
    fail = pd.read_parquet(out / "failures").set_index("video_id")
    assert set(fail.stage) == {"write"}
    assert fail.loc["x" * 300, "field"] == "key" and fail.loc["x" * 300, "file"] == "m.csv:4"
    assert "at most 240" in fail.loc["x" * 300, "reason"]
    assert fail.loc["nan", "field"] == "meta.fps_hint" and "nan" in fail.loc["nan", "reason"]
    man = pd.read_parquet(out / "manifests")
    keys = [s["__key__"] for s in webdataset_samples(out / "shards/shard-000000-000.tar")]
    assert keys == list(man.key) and len(keys) == 3 and any(long_id in k for k in keys)
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------------ symlinks


@pytest.fixture
def linked_root(tmp_path, video_root):
    """videos/ holds links: in.mp4, rel.mp4 -> inside, out.mp4, relout.mp4 -> outside, dir/ -> an outside folder,
    sub/ -> inside, real/out.en.vtt -> an outside subtitle."""
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    secret = outside / "d" / "v.mp4"
    secret.write_bytes((video_root / "v.mp4").read_bytes())
    (outside / "v.en.vtt").write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nsecret subtitle\n")
    root = tmp_path / "videos"
    (root / "real").mkdir(parents=True)
    (root / "real" / "v.mp4").write_bytes((video_root / "v.mp4").read_bytes())
    (root / "real" / "v.en.vtt").write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\ninside subtitle\n")
    os.symlink(root / "real" / "v.mp4", root / "in.mp4")
    os.symlink(secret, root / "out.mp4")
    os.symlink(outside / "d", root / "dir")
    os.symlink(root / "real", root / "sub")
    os.symlink(outside / "v.en.vtt", root / "real" / "out.en.vtt")
    os.symlink("real/v.mp4", root / "rel.mp4")  # a relative link that stays inside
    os.symlink("../outside/d/v.mp4", root / "relout.mp4")  # ... and one that leaves
    return root


@pytest.mark.parametrize("rel", ["out.mp4", "dir/v.mp4", "relout.mp4"])
def test_a_video_linked_out_of_the_root_is_a_locate_failure(linked_root, rel):
    with pytest.raises(RecordError) as e:
        storage.safe_join(str(linked_root), rel)
    assert e.value.stage == "locate" and "symbolic link leads out of the root" in e.value.reason
    assert rel in e.value.reason and "outside" in e.value.reason
    with pytest.raises(RecordError) as e:
        process_record(rec("v", (rel,)), ProcessOptions(videos_root=str(linked_root), profile="stage1"))
    assert e.value.stage == "locate" and e.value.field == "video_paths" and rel in e.value.reason


def test_links_that_stay_inside_the_root_work(linked_root, tmp_path):
    for rel in ("in.mp4", "sub/v.mp4", "real/v.mp4", "rel.mp4"):
        assert storage.safe_join(str(linked_root), rel) == str(linked_root / rel)
    # the root itself may be a link
    alias = tmp_path / "alias"
    os.symlink(linked_root, alias)
    assert storage.safe_join(str(alias), "in.mp4") == str(alias / "in.mp4")
    s = process_record(rec("v", ("sub/v.mp4",)), ProcessOptions(videos_root=str(alias), profile="stage1"))
    assert s.info["num_frames"] > 0


def test_a_subtitle_linked_out_of_the_root_is_a_locate_failure(linked_root):
    opts = ProcessOptions(videos_root=str(linked_root), profile="stage1")
    ok = process_record(rec("v", ("real/v.mp4",), "hdvila", meta=(("subtitle_paths", ("real/v.en.vtt",)),)), opts)
    assert any("inside subtitle" in t["text"] for t in ok.info["texts"])
    with pytest.raises(RecordError) as e:
        process_record(rec("v", ("real/v.mp4",), "hdvila", meta=(("subtitle_paths", ("real/out.en.vtt",)),)), opts)
    assert e.value.stage == "locate" and e.value.field == "subtitle_paths"
    assert "real/out.en.vtt" in e.value.reason and "symbolic link" in e.value.reason


# ------------------------------------------------------------------------------------------------ disk full


class _Full:
    """A file that takes `budget` bytes, then fails with ENOSPC (as a full disk does)."""

    def __init__(self, f, budget: list[int]):
        self.f, self.budget = f, budget

    def write(self, b):
        if len(b) > self.budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget[0] -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _write_unit(out: str, n: int = 6, **kw) -> dict:
    w = UnitWriter(out, 0, 4000, **kw)
    try:
        for i in range(n):
            w.add(*sample(f"s{i}", size=1500))
        return w.commit()
    except BaseException:
        w.abort()
        raise


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3-scratch"])
def test_disk_full_fails_the_unit_cleanly_and_a_rerun_writes_the_same(tmp_path, monkeypatch, remote):
    """ENOSPC at the lowest layer (the tar file's writes): NoSpace names the file; no temporary file or scratch
    folder is left; with space again the unit is written byte for byte as without the failure."""
    ref = tmp_path / "ref"
    _write_unit(str(ref))
    budget = [5000]
    real_open = open
    monkeypatch.setattr(shards, "open", lambda p, m="r", *a, **k: _Full(real_open(p, m, *a, **k), budget),
                        raising=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    target = "s3://bucket/never" if remote else str(out)
    with pytest.raises(storage.NoSpace) as e:
        _write_unit(target, scratch=str(scratch))
    assert "no space left on device" in str(e.value)
    assert str(scratch if remote else out) in str(e.value) and "\n" not in str(e.value)
    assert leftovers(tmp_path) == [] and list(scratch.iterdir()) == []
    monkeypatch.undo()
    if not remote:
        _write_unit(str(out))
        assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == {
            p.name: p.read_bytes() for p in (ref / "shards").iterdir()}


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only), nearly filled by a filler file that the test can delete to free space."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs (ENOSPC injection is tested above)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mount -t tmpfs not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    st_ = os.statvfs(mnt)
    filler.write_bytes(b"\0" * max(0, st_.f_bavail * st_.f_frsize - leave))
    return filler


def test_really_full_disk_unit_writer(tiny_disk, tmp_path):
    ref = tmp_path / "ref"
    _write_unit(str(ref), n=12)
    filler = _fill(tiny_disk, 8192)
    out = tiny_disk / "out"
    with pytest.raises(storage.NoSpace) as e:
        _write_unit(str(out), n=12)
    assert str(out) in str(e.value) and "no space left on device" in str(e.value)
    assert leftovers(tiny_disk) == []
    filler.unlink()
    _write_unit(str(out), n=12)
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == {
        p.name: p.read_bytes() for p in (ref / "shards").iterdir()}
    assert (out / "manifests/part-000000.parquet").read_bytes() == (ref / "manifests/part-000000.parquet").read_bytes()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longvid", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_ingest_on_a_full_disk_one_line_no_debris_and_the_rerun_completes(tiny_disk, tmp_path):
    from longvid.synthetic.faulty_corpus import make_corpus

    corpus = make_corpus(tmp_path / "c", n_videos=5, clips_per_video=2, bad_per_kind=0, kinds=(), seed=3)
    out = tiny_disk / "out"
    args = ["ingest", "--source", "miradata", "--metadata", str(corpus.metadata), "--videos", str(corpus.videos),
            "--profile", "stage1", "--num-cpus", "1", "--records-per-unit", "2"]
    ref = _cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    filler = _fill(tiny_disk, 48 * 1024)
    r = _cli(*args, "--out", str(out))  # local output: no scratch folder (the S3 scratch: see the test above)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "no space left on device" in last and str(out) in last, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert leftovers(tiny_disk) == []
    filler.unlink()
    r = _cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["samples"] == 10
    tars = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    assert tars == {p.name: p.read_bytes() for p in (tmp_path / "ref" / "shards").iterdir()}
    cols = ["key", "shard", "unit", "sha256"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifests")[cols],
                                  pd.read_parquet(tmp_path / "ref" / "manifests")[cols])


# ------------------------------------------------------------------------------------------------ pre-flight


def test_local_preflight_checks(tmp_path):
    storage.check_writable(str(tmp_path / "new" / "out"))  # nearest existing parent is writable
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []  # nothing made, nothing left
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError, match="is a file, not a folder"):
        storage.check_writable(str(tmp_path / "file"))
    with pytest.raises(storage.StorageError, match="file is a file, not a folder"):
        storage.check_writable(str(tmp_path / "file" / "out"))
    storage.check_readable(str(tmp_path))
    with pytest.raises(storage.ObjectNotFound, match="no such file or folder"):
        storage.check_readable(str(tmp_path / "missing"))


def test_s3_preflight_errors_are_typed_one_liners(s3, monkeypatch):
    storage.write_bytes(s3.uri("videos", "a.mp4"), b"x")
    storage.check_readable(s3.uri("videos"))
    storage.check_readable(s3.uri("videos", "a.mp4"))
    storage.check_writable(s3.uri("out"))
    assert storage.list_files(s3.uri("out")) == []  # the probe object is gone
    with pytest.raises(storage.ObjectNotFound, match="no object under this prefix"):
        storage.check_readable(s3.uri("nothing-here"))
    for check in (storage.check_readable, storage.check_writable):
        with pytest.raises(storage.NoSuchBucket, match="no such bucket") as e:
            check("s3://no-such-bucket-longvid/x")
        assert "\n" not in str(e.value) and str(e.value).startswith("s3://no-such-bucket-longvid/x: ")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage.configure_s3(storage.s3_options(), max_attempts=1)  # a new client, without credentials
    for check in (storage.check_readable, storage.check_writable):
        with pytest.raises(storage.NoCredentials, match="no usable AWS credentials"):
            check(s3.uri("videos"))


def test_s3_access_denied_is_typed(s3, fault_proxy):
    from tests.s3_server import configure_storage_for

    storage.write_bytes(s3.uri("videos", "a.mp4"), b"x")
    configure_storage_for(fault_proxy.endpoint, max_attempts=2)
    fault_proxy.set(probability=1.0, kinds=("403",))
    for check in (storage.check_readable, storage.check_writable):
        with pytest.raises(storage.AccessDenied, match="access denied: .*403") as e:
            check(s3.uri("videos"))
        assert isinstance(e.value, PermissionError) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ mp4 frame rate


@pytest.mark.parametrize("fps", [1e-300, 1e-4, 4000.0, 1e300, 2**70, math.nan, math.inf, True])
def test_an_mp4_frame_rate_out_of_range_is_a_value_error(fps):
    """Once a broken mp4 was written silently: 3 black frames at 4000 fps muxed with equal decode times decode to
    nothing; tiny or huge rates raised ZeroDivisionError/OverflowError (not the ValueError process_record expects)."""
    import numpy as np

    from longvid.operators.mp4 import encode_mp4

    with pytest.raises(ValueError, match="fps must be a number in"):
        encode_mp4(np.zeros((3, 16, 16, 3), np.uint8), fps=fps)


@pytest.mark.parametrize("fps", [0.001, 0.01, 30.0, 1000.0])
def test_mp4_frame_rates_in_range_keep_every_frame(fps):
    import numpy as np

    from longvid.operators.mp4 import decode_mp4, encode_mp4

    assert decode_mp4(encode_mp4(np.zeros((3, 16, 16, 3), np.uint8), fps=fps)).shape == (3, 16, 16, 3)
