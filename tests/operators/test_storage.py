"""operators.storage: local and S3 (moto server over loopback HTTP) round trips, ranged reader, safety, redaction."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random

import pytest

from longvid.operators import storage as st
from longvid.operators.errors import RecordError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3").prefix.rstrip("/")


# ---------------------------------------------------------------------------------------------- round trips


def test_round_trip_bytes_text_and_listing(root):
    st.makedirs(root)
    st.write_bytes(st.join(root, "a/b/x.bin"), b"\x00\x01binary")
    st.write_text(st.join(root, "a/meta.json"), json.dumps({"k": "vidéo"}))
    st.write_bytes(st.join(root, "top.txt"), b"top")
    st.write_bytes(st.join(root, "empty.bin"), b"")
    assert st.read_bytes(st.join(root, "a/b/x.bin")) == b"\x00\x01binary"
    assert json.loads(st.read_text(st.join(root, "a/meta.json"))) == {"k": "vidéo"}
    assert st.read_bytes(st.join(root, "empty.bin")) == b""
    assert st.exists(st.join(root, "top.txt")) and not st.exists(st.join(root, "nope.txt"))
    assert not st.exists(st.join(root, "a"))  # a folder / prefix is not a file
    assert st.size(st.join(root, "a/b/x.bin")) == 8
    everything = st.list_files(root)
    assert everything == sorted(st.join(root, p) for p in ["a/b/x.bin", "a/meta.json", "top.txt", "empty.bin"])
    assert st.list_files(root, suffix=".json") == [st.join(root, "a/meta.json")]
    assert st.list_files(root, suffix=(".bin", ".txt"), recursive=False) == [
        st.join(root, "empty.bin"), st.join(root, "top.txt")]
    assert st.list_files(st.join(root, "missing-folder")) == []
    # overwrite replaces whole content
    st.write_bytes(st.join(root, "top.txt"), b"second")
    assert st.read_bytes(st.join(root, "top.txt")) == b"second"
    st.delete(st.join(root, "top.txt"))
    st.delete(st.join(root, "top.txt"))  # idempotent
    assert not st.exists(st.join(root, "top.txt"))


def test_put_file_round_trip(root, tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    st.put_file(str(src), st.join(root, "up/src.bin"))
    assert st.read_bytes(st.join(root, "up/src.bin")) == data
    with open(src, "rb") as f:  # an open file object works too
        st.put_file(f, st.join(root, "up/again.bin"))
    assert st.read_bytes(st.join(root, "up/again.bin")) == data
    with pytest.raises(st.ObjectNotFound, match="src-missing"):
        st.put_file(str(tmp_path / "src-missing"), st.join(root, "up/x"))


def test_missing_objects_raise_object_not_found(root):
    missing = st.join(root, "no/such.mp4")
    for fn in (st.read_bytes, st.size, st.open_read):
        with pytest.raises(st.ObjectNotFound) as ei:
            fn(missing)
        assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, OSError)
        assert "such.mp4" in str(ei.value)


def test_local_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path, monkeypatch):
    target = str(tmp_path / "out" / "shard-0.tar")
    st.write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st.os, "replace", boom)
    with pytest.raises(st.NoSpace, match=r"shard-0\.tar: write: no space left on device"):
        st.write_bytes(target, b"new content")
    monkeypatch.undo()
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path / "out") == ["shard-0.tar"]  # temp file removed

    class Failing(io.RawIOBase):
        def __init__(self):
            self.n = 0

        def readable(self):
            return True

        def readinto(self, b):
            self.n += 1
            if self.n > 3:
                raise OSError(5, "Input/output error")
            b[:10] = b"x" * 10
            return 10

    with pytest.raises(OSError, match="Input/output error"):
        st.put_file(Failing(), target)
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path / "out") == ["shard-0.tar"]


def test_list_files_hides_inflight_temp_files(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"1")
    (tmp_path / (st.TMP_PREFIX + "b.tar.123")).write_bytes(b"partial")
    assert st.list_files(str(tmp_path)) == [str(tmp_path / "a.tar")]


def test_s3_multipart_upload_round_trip(s3, tmp_path):
    st.configure_s3(st.s3_options(), multipart_threshold=5 * st.MiB, part_size=5 * st.MiB)
    data = random.Random(1).randbytes(11 * st.MiB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    st.put_file(str(src), s3.uri("big.bin"))
    assert st.size(s3.uri("big.bin")) == len(data)
    assert st.read_bytes(s3.uri("big.bin")) == data
    from tests.s3_server import boto_client

    etag = boto_client(s3.endpoint).head_object(Bucket=s3.bucket, Key=s3.uri("big.bin").split("/", 3)[3])["ETag"]
    assert etag.strip('"').endswith("-3")  # really went as 3 parts


def test_s3_list_paginates(s3):
    for i in range(23):
        st.write_bytes(s3.uri(f"many/{i:03d}.json"), b"{}")
    calls = []

    def small_pages(**kw):
        calls.append(kw)
        return st._client().__class__.list_objects_v2(st._client(), **{**kw, "MaxKeys": 5})

    c = st._client()
    c.list_objects_v2 = small_pages  # instance attribute shadows the method for this client only
    try:
        got = st.list_files(s3.uri("many"))
    finally:
        del c.list_objects_v2
    assert got == [s3.uri(f"many/{i:03d}.json") for i in range(23)]
    assert len(calls) == 5


# ---------------------------------------------------------------------------------------------- ranged reader


def test_ranged_reader_seek_read_patterns(s3):
    rng = random.Random(7)
    data = rng.randbytes(200_000)
    uri = s3.uri("blob.bin")
    st.write_bytes(uri, data)
    block = 16 * 1024
    raw = st.S3RangeReader(uri, block_size=block)
    assert raw.size == len(data) and raw.seekable() and raw.readable()
    f = io.BufferedReader(raw, buffer_size=4096)
    # across block boundaries
    f.seek(block - 10)
    assert f.read(40) == data[block - 10 : block + 30]
    # random seeks of random lengths, all whence kinds
    for _ in range(150):
        pos = rng.randrange(0, len(data) + 50)
        n = rng.choice([0, 1, 7, 4095, 4096, 5000, block, 3 * block + 5])
        how = rng.randrange(3)
        if how == 0:
            f.seek(pos)
        elif how == 1:
            f.seek(pos - f.tell(), io.SEEK_CUR)
        else:
            f.seek(pos - len(data), io.SEEK_END)
        assert f.tell() == pos
        assert f.read(n) == data[pos : pos + n]
        assert f.tell() == min(pos + n, max(pos, len(data))) or pos >= len(data)
    # read past end, read(-1), readall from the middle
    f.seek(len(data) - 5)
    assert f.read(100) == data[-5:]
    assert f.read(100) == b""
    f.seek(len(data) + 1000)
    assert f.read() == b""
    f.seek(123)
    assert f.read(-1) == data[123:]
    f.seek(0)
    assert f.read() == data
    with pytest.raises(ValueError):
        f.seek(-1)
    assert raw.peak_buffered <= block
    f.close()
    with pytest.raises(ValueError):
        f.read(1)


def test_ranged_reader_never_fetches_whole_object_for_small_reads(s3):
    data = os.urandom(3 * st.MiB)
    uri = s3.uri("big.bin")
    st.write_bytes(uri, data)
    with st.open_read(uri, block_size=256 * 1024) as f:
        f.seek(2 * st.MiB)
        assert f.read(1000) == data[2 * st.MiB : 2 * st.MiB + 1000]
        f.seek(10)
        assert f.read(10) == data[10:20]
        raw = f.raw
        assert raw.bytes_fetched <= 2 * 256 * 1024
        assert raw.requests == 2


def test_ranged_reader_text_and_csv(s3):
    rows = [["video_id", "caption"]] + [[f"v{i:04d}", f"a caption, with commas {i} é"] for i in range(2000)]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    uri = s3.uri("meta/captions.csv")
    st.write_text(uri, buf.getvalue())
    with st.open_read(uri, block_size=8192) as f:
        got = list(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    assert got == rows
    lines = [json.dumps({"i": i, "t": "x" * (i % 50)}) for i in range(500)]
    st.write_text(s3.uri("meta/a.jsonl"), "\n".join(lines) + "\n")
    with io.TextIOWrapper(st.open_read(s3.uri("meta/a.jsonl"), block_size=4096), encoding="utf-8") as t:
        assert [json.loads(x)["i"] for x in t] == list(range(500))


def test_av_decodes_through_ranged_reader_with_bounded_buffer(s3, tmp_path):
    av = pytest.importorskip("av")
    from longvid.synthetic.videos import make_video, read_frame_number

    path = make_video(tmp_path / "v.mp4", seconds=4, fps=15, width=640, height=480, seed=3, crf=10)
    local_bytes = path.read_bytes()
    uri = s3.uri("videos/v.mp4")
    st.put_file(str(path), uri)
    block = 48 * 1024  # larger than PyAV's 32 KiB reads, so they are served from the readahead buffer
    assert len(local_bytes) > 6 * block  # the reader really has to move around
    with st.open_read(uri, block_size=block) as f, av.open(f) as c:
        stream = c.streams.video[0]
        numbers = [read_frame_number(fr.to_ndarray(format="rgb24")) for fr in c.decode(stream)]
        # seek into the middle, decode the next frames
        c.seek(int(2.0 / stream.time_base), stream=stream, backward=True, any_frame=False)
        after_seek = [read_frame_number(fr.to_ndarray(format="rgb24")) for _, fr in zip(range(5), c.decode(stream))]
        raw = f.raw
    assert numbers == list(range(60))
    assert after_seek == list(range(after_seek[0], after_seek[0] + 5)) and after_seek[0] <= 30
    assert 0 < raw.peak_buffered <= block
    assert raw.requests > 6 and raw.bytes_fetched < 3 * len(local_bytes)


# ---------------------------------------------------------------------------------------------- config, errors


def test_options_from_env_have_no_secrets_and_configure_workers(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:19")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_PROFILE", "research")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    try:
        st.configure_s3(max_attempts=3)
        d = st.s3_options_from_env()
        assert d["endpoint_url"] == "http://127.0.0.1:19"  # the S3-specific variable wins
        assert d["region"] == "eu-west-3" and d["profile"] == "research" and d["max_attempts"] == 3
        text = json.dumps(d)
        assert "wJalrXUtnFEMI" not in text and "AKIA" not in text
        assert st.configure_s3(d) == st.S3Options.from_dict(d)
        with pytest.raises(ValueError, match="bogus"):
            st.S3Options.from_dict({"bogus": 1})
        with pytest.raises(ValueError, match="max_attempts"):
            st.S3Options(max_attempts=0)
    finally:
        st.configure_s3()


def test_storage_error_pickles_and_is_redacted():
    e = st.ObjectNotFound("s3://AKIAIOSFODNN7EXAMPLE:sekrit@bkt/k", "gone")
    assert "sekrit" not in str(e) and "AKIA" not in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is st.ObjectNotFound and str(e2) == str(e)


def test_client_is_per_process(s3):
    st.exists(s3.uri("x"))
    parent_client = st._client()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must build its own client and still work
        ok = b"0"
        try:
            ok = b"1" if (st._client() is not parent_client and not st.exists(s3.uri("x"))) else b"0"
            st.write_bytes(s3.uri("from-child"), b"hi")
        finally:
            os.write(w, ok)
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert st._client() is parent_client
    assert st.read_bytes(s3.uri("from-child")) == b"hi"


# ---------------------------------------------------------------------------------------------- safe_join, redact


@pytest.mark.parametrize("rel", [
    "/etc/passwd", "../x.mp4", "a/../../x.mp4", "a/b/../../..", "..", ".", "", "./", "a\\..\\..\\x",
    "..\\x.mp4", "a\x00.mp4", "C:/x.mp4", "c:x.mp4", "s3://other-bucket/x.mp4", "file:///etc/passwd", "~/x",
    "a/\n/b", "//server/share/x",
])
def test_safe_join_refuses_escapes(rel):
    for root in ("/data/videos", "s3://bkt/videos"):
        with pytest.raises(RecordError) as ei:
            st.safe_join(root, rel)
        assert ei.value.stage == "locate" and ei.value.field == "video_paths"
        assert "\x00" not in str(ei.value)


@pytest.mark.parametrize("rel,expect", [
    ("a/b.mp4", "a/b.mp4"), ("./a//b.mp4", "a/b.mp4"), ("a/x/../b.mp4", "a/b.mp4"), ("..a/b.mp4", "..a/b.mp4"),
    ("v id:1.mp4", "v id:1.mp4"),
])
def test_safe_join_accepts_and_normalises(rel, expect):
    assert st.safe_join("/data/videos", rel) == "/data/videos/" + expect
    assert st.safe_join("s3://bkt/videos/", rel) == "s3://bkt/videos/" + expect


def test_redact_presigned_urls_and_credentials():
    v4 = ("https://longvid-data.s3.us-east-1.amazonaws.com/videos/clip%20001.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z"
          "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2Fwanother"
          "&X-Amz-Signature=b2754f5b7f5c5e1b4f1a9a0b3b0e6c2a9f0d1e2c3b4a5968778695a4b3c2d1e0")
    v2 = ("https://bkt.s3.amazonaws.com/k.json?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1700000000"
          "&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D")
    text = (f"failed to fetch {v4} (retry) and '{v2}'; creds s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@bkt/a "
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
            '{"AccessKeyId": "ASIAY34FZKBOKMUTVV7A", "SecretAccessKey": "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"}'
            " Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024")
    out = st.redact(text)
    for secret in ("AKIA", "ASIA", "wJalrXUtnFEMI", "je7MtGbClwBF", "b2754f5b", "vjbyPxyb", "IQoJb3Jp", "fe5f80f7",
                   "X-Amz-", "Expires=1700000000"):
        assert secret not in out, (secret, out)
    # what is useful stays
    assert "https://longvid-data.s3.us-east-1.amazonaws.com/videos/clip%20001.mp4" in out
    assert "https://bkt.s3.amazonaws.com/k.json" in out and "s3://***@bkt/a" in out and "failed to fetch" in out
    # ordinary URLs and text are untouched
    plain = "see https://example.com/page?q=1&page=2 and s3://bkt/videos/a.mp4 (size 12)"
    assert st.redact(plain) == plain


def test_configure_same_options_keeps_client_and_new_options_replace_it(s3):
    c = st._client()
    st.configure_s3(st.S3Options.from_dict(st.s3._OPTIONS.to_dict()))
    assert st._client() is c
    st.configure_s3(st.s3._OPTIONS, max_attempts=2)
    assert st._client() is not c
