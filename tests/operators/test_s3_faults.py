"""operators.storage under injected S3 faults (FaultProxy in front of a moto server, real HTTP on loopback)."""
from __future__ import annotations

import io
import random
import time

import pytest

from longvid.operators import storage as st
from tests.s3_server import boto_client, configure_storage_for, is_ranged_get, is_upload_part, list_multipart_uploads


@pytest.fixture
def proxied(s3, fault_proxy):
    """storage pointed at the proxy (fast backoff); yields (s3 env, proxy)."""
    configure_storage_for(fault_proxy.endpoint, max_attempts=10, read_timeout=5.0)
    yield s3, fault_proxy
    st.configure_s3()


def _key(uri: str) -> str:
    return uri.split("/", 3)[3]


def _uploads(s3, uri):
    return list_multipart_uploads(s3.endpoint, s3.bucket, _key(uri))


class _FailingSource(io.RawIOBase):
    """A source file whose read fails after `ok` bytes (a disk error in the middle of an upload)."""

    def __init__(self, ok: int):
        self.ok, self.pos = ok, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.pos >= self.ok:
            raise OSError(5, "Input/output error (injected)")
        n = min(len(b), self.ok - self.pos)
        b[:n] = b"z" * n
        self.pos += n
        return n


def test_everything_written_and_read_back_intact_under_random_faults(proxied, tmp_path):
    s3, proxy = proxied
    st.configure_s3(st.s3_options(), multipart_threshold=5 * st.MiB, part_size=5 * st.MiB)
    rng = random.Random(11)
    objects = {s3.uri(f"f/{i:02d}.bin"): rng.randbytes(rng.randrange(0, 200_000)) for i in range(24)}
    big = rng.randbytes(10 * st.MiB + 77)
    (tmp_path / "big.bin").write_bytes(big)
    proxy.set(probability=0.25, kinds=("503", "500", "reset", "cut", "reset_early"))

    for uri, data in objects.items():
        st.write_bytes(uri, data)
    st.put_file(str(tmp_path / "big.bin"), s3.uri("f/zz-big.bin"))
    assert st.list_files(s3.uri("f")) == sorted([*objects, s3.uri("f/zz-big.bin")])
    for uri, data in objects.items():
        assert st.exists(uri) and st.size(uri) == len(data)
        assert st.read_bytes(uri) == data
    with st.open_read(s3.uri("f/zz-big.bin"), block_size=512 * 1024) as f:
        for _ in range(25):
            pos = rng.randrange(0, len(big))
            n = rng.randrange(1, 1_500_000)
            f.seek(pos)
            assert f.read(n) == big[pos : pos + n]
        f.seek(0)
        assert f.read() == big

    assert proxy.total_faults >= 30, proxy.faults  # the faults really happened, of every kind
    assert all(proxy.faults[k] > 0 for k in ("503", "500", "reset", "cut", "reset_early")), proxy.faults
    proxy.set(probability=0.0)
    assert boto_client(s3.endpoint).get_object(Bucket=s3.bucket, Key=_key(s3.uri("f/zz-big.bin")))["Body"].read() == big


def test_reset_mid_body_of_ranged_get_resumes_where_it_stopped(proxied):
    s3, proxy = proxied
    data = random.Random(3).randbytes(3 * st.MiB)
    uri = s3.uri("r.bin")
    st.write_bytes(uri, data)
    proxy.set(schedule=["cut", "reset", "cut"], match=is_ranged_get)
    with st.open_read(uri, block_size=2 * st.MiB) as f:
        assert f.read(1000) == data[:1000]
        assert f.read() == data[1000:]
        raw = f.raw
    assert proxy.faults["cut"] == 2 and proxy.faults["reset"] == 1
    ranges = [r for m, _, r, fault in proxy.log if m == "GET" and r]
    assert ranges[0] == f"bytes=0-{2 * st.MiB - 1}"
    start_of_retry = int(ranges[1].split("=")[1].split("-")[0])
    assert 0 < start_of_retry < 2 * st.MiB  # resumed from the bytes already received, not from 0
    assert raw.bytes_fetched == len(data)  # nothing fetched twice


def test_throttling_and_timeouts_are_retried(proxied):
    s3, proxy = proxied
    configure_storage_for(proxy.endpoint, max_attempts=4, read_timeout=0.5)
    proxy.stall_seconds = 1.0
    proxy.set(schedule=["503", "stall", "500"])
    t0 = time.monotonic()
    st.write_bytes(s3.uri("t.txt"), b"payload")
    assert time.monotonic() - t0 < 5
    assert [f for *_, f in proxy.log] == ["503", "stall", "500", None]
    assert st.read_text(s3.uri("t.txt")) == "payload"


def test_permanent_errors_are_not_retried_and_clearly_reported(proxied):
    s3, proxy = proxied
    with pytest.raises(st.ObjectNotFound) as ei:
        st.read_bytes(s3.uri("does/not/exist.json"))
    assert "exist.json" in str(ei.value) and "NoSuchKey" in str(ei.value)
    assert proxy.requests == 1

    proxy.set(schedule=["403"])
    with pytest.raises(st.StorageError) as ei:
        st.write_bytes(s3.uri("denied.bin"), b"x")
    assert not isinstance(ei.value, st.ObjectNotFound) and not ei.value.transient
    assert "AccessDenied" in str(ei.value) and "denied.bin" in str(ei.value)
    assert proxy.requests == 2  # one more request, no retry

    with pytest.raises(st.ObjectNotFound, match="NoSuchBucket"):
        st.list_files("s3://no-such-bucket-here/x")
    assert proxy.requests == 3

    proxy.set(schedule=["403"])
    with pytest.raises(st.StorageError, match="403"):
        st.exists(s3.uri("hidden.bin"))  # "cannot tell" is an error, never a silent False
    assert proxy.requests == 4


def test_transient_errors_outlasting_retries_give_up_after_max_attempts(proxied):
    s3, proxy = proxied
    configure_storage_for(proxy.endpoint, max_attempts=3)
    proxy.set(probability=1.0, kinds=("503",))
    with pytest.raises(st.StorageError) as ei:
        st.write_bytes(s3.uri("never.bin"), b"x")
    assert ei.value.transient and "after 3 attempts" in str(ei.value) and "SlowDown" in str(ei.value)
    assert proxy.requests == 3
    proxy.set(probability=0.0)
    assert not st.exists(s3.uri("never.bin"))


def test_multipart_failure_leaves_no_object_and_no_upload(proxied, tmp_path):
    s3, proxy = proxied
    configure_storage_for(proxy.endpoint, max_attempts=3, multipart_threshold=5 * st.MiB, part_size=5 * st.MiB)
    uri = s3.uri("shard-0.tar")
    st.write_bytes(uri + ".old", b"unrelated")
    src = tmp_path / "shard.tar"
    src.write_bytes(random.Random(5).randbytes(11 * st.MiB))
    # every attempt at part 2 fails: a fault that outlasts the retries
    proxy.set(probability=1.0, kinds=("reset", "503"),
              match=lambda m, t, h: is_upload_part(m, t, h) and "partNumber=2" in t)
    with pytest.raises(st.StorageError, match="upload part 2 failed after 3 attempts"):
        st.put_file(str(src), uri)
    proxy.set(probability=0.0)
    assert not st.exists(uri)
    assert _uploads(s3, uri) == []  # aborted
    assert any("uploadId=" in t and m == "DELETE" for m, t, _, _ in proxy.log)


def test_source_read_failure_midway_leaves_no_object_and_no_upload(s3):
    st.configure_s3(st.s3_options(), multipart_threshold=5 * st.MiB, part_size=5 * st.MiB)
    big, small = s3.uri("big.tar"), s3.uri("small.tar")
    with pytest.raises(OSError, match="injected"):
        st.put_file(_FailingSource(7 * st.MiB), big)  # after part 1 was uploaded
    with pytest.raises(OSError, match="injected"):
        st.put_file(_FailingSource(1000), small)
    assert not st.exists(big) and not st.exists(small)
    assert _uploads(s3, big) == []
    # the same key still works afterwards
    st.write_bytes(big, b"ok")
    assert st.read_bytes(big) == b"ok"


def test_lost_answer_to_complete_multipart_is_recognised(proxied, tmp_path):
    s3, proxy = proxied
    st.configure_s3(st.s3_options(), multipart_threshold=5 * st.MiB, part_size=5 * st.MiB)
    data = random.Random(9).randbytes(6 * st.MiB)
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    # the server completes the upload, the client never hears it; the retry gets NoSuchUpload
    proxy.set(schedule=["reset"], match=lambda m, t, h: m == "POST" and "uploadId=" in t)
    st.put_file(str(src), s3.uri("x.bin"))
    assert proxy.faults["reset"] == 1
    assert st.read_bytes(s3.uri("x.bin")) == data


def test_object_replaced_while_reading_is_an_error_not_a_mix(s3):
    uri = s3.uri("v.bin")
    st.write_bytes(uri, b"a" * 100_000)
    with st.open_read(uri, block_size=10_000) as f:
        assert f.read(10) == b"a" * 10
        st.write_bytes(uri, b"b" * 100_000)
        with pytest.raises(st.StorageError, match="changed while being read"):
            f.seek(50_000)
            f.read(10)


def test_error_messages_are_redacted(proxied):
    s3, proxy = proxied
    proxy.set(schedule=["403"])
    uri = s3.uri("a?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE&X-Amz-Signature=deadbeef")
    with pytest.raises(st.StorageError) as ei:
        st.read_bytes(uri)
    assert "AKIA" not in str(ei.value) and "deadbeef" not in str(ei.value)
