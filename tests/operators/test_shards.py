"""The shard format (operators/shards.py): the tar parser (ustar, PAX, GNU; resuming; mapped members), the simple
streaming reader, and the writer's bytes read back by it. Hostile tars: tests/fuzz/test_fuzz_loader.py."""
from __future__ import annotations

import io
import tarfile

import pytest

from longvid.operators.shards import (
    MappedTar,
    TarError,
    TarPartWriter,
    iter_groups,
    iter_samples,
    tar_member_header,
)


def _tar(members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_iter_groups_reads_groups_skips_unwanted_and_long_names():
    long_key = "k" * 150
    members = [("a.json", b"{}"), ("a.tokens.npy", b"x" * 700), ("dir/b.json", b"[1]"), ("b.mp4", b"m"),
               (f"{long_key}.json", b"{}")]
    f = _tar(members, tarfile.PAX_FORMAT)
    groups = list(iter_groups(f, 0, want=lambda k: k != "b", exts=("json", "tokens.npy")))
    assert [g.key for g in groups] == ["a", "b", long_key]
    assert bytes(groups[0].members["tokens.npy"]) == b"x" * 700
    assert "__skipped__" in groups[1].members  # excluded: data never read
    # restarting at a group's end offset continues with the next group
    f.seek(0)
    again = list(iter_groups(f, groups[0].end, want=lambda k: True))
    assert [g.key for g in again] == ["b", long_key] and set(again[0].members) == {"json", "mp4"}


def test_iter_groups_rejects_corrupt_headers():
    raw = bytearray(_tar([("a.json", b"{}"), ("b.json", b"{}")]).getvalue())
    raw[1024 + 130] ^= 0x55  # second header's size field: checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        list(iter_groups(io.BytesIO(bytes(raw)), 0, want=lambda k: True))


def test_iter_groups_ustar_prefix_and_mapped_members(tmp_path):
    # a name longer than 100 characters in ustar form goes into the prefix field (bytes 345..500): the checksum
    # covers it, and the member is found under its whole path
    deep = "d" * 90 + "/" + "e" * 60 + "/k1.json"
    raw = _tar([(deep, b'{"a": 1}'), ("k1.tokens.npy", b"n" * 1500), ("k2.json", b"{}")]).getvalue()
    (tmp_path / "s.tar").write_bytes(raw)
    groups = list(iter_groups(MappedTar(str(tmp_path / "s.tar")), 0, want=lambda k: True))
    assert [g.key for g in groups] == ["k1", "k2"]
    assert bytes(groups[0].members["json"]) == b'{"a": 1}' and bytes(groups[0].members["tokens.npy"]) == b"n" * 1500
    bad = bytearray(raw)
    bad[400] ^= 0x01  # inside the prefix field: the checksum must catch it
    with pytest.raises(TarError, match="checksum"):
        list(iter_groups(io.BytesIO(bytes(bad)), 0, want=lambda k: True))
    # a member cut short inside its data: the mapped reader says so instead of handing out a short view
    (tmp_path / "cut.tar").write_bytes(raw[:512 + 512 + 700])
    with pytest.raises(TarError, match="truncated member"):
        list(iter_groups(MappedTar(str(tmp_path / "cut.tar")), 0, want=lambda k: True))


def test_iter_samples_streams_a_uri_or_a_file_object_and_raises_tar_error(tmp_path):
    raw = _tar([("a.json", b"{}"), ("a.mp4", b"m" * 600), ("b.json", b"[]"), ("b.mp4", b"n")],
               tarfile.PAX_FORMAT).getvalue()
    (tmp_path / "s.tar").write_bytes(raw)
    want = [("a", {"json": b"{}", "mp4": b"m" * 600}), ("b", {"json": b"[]", "mp4": b"n"})]
    for src in (str(tmp_path / "s.tar"), io.BytesIO(raw)):
        got = [(g.key, g.members) for g in iter_samples(src)]
        assert got == want and all(type(v) is bytes for _, m in got for v in m.values())
    assert [g.members for g in iter_samples(io.BytesIO(raw), exts=("mp4",))] == [{"mp4": b"m" * 600}, {"mp4": b"n"}]
    mapped = [(g.key, {e: bytes(v) for e, v in g.members.items()}) for g in iter_samples(str(tmp_path / "s.tar"),
                                                                                         mapped=True)]
    assert mapped == want
    # damage inside the second sample: the first one comes out, then one error type
    got = []
    with pytest.raises(TarError):
        for g in iter_samples(io.BytesIO(raw[:512 * 7 + 100])):  # inside b.mp4's header
            got.append(g.key)
    assert got[:1] == ["a"]
    with pytest.raises(TarError):
        list(iter_samples(io.BytesIO(b"no tar at all" * 100)))


def test_the_writer_bytes_are_tarfiles_and_read_back(tmp_path):
    """TarPartWriter + tar_member_header give what tarfile writes for the same members (PAX for a long name,
    zero mtime and owners), and iter_samples reads them back."""
    members = [("k.json", b'{"a": 1}'), ("k.tokens.npy", b"x" * 1000), ("l" * 150 + ".json", b"{}")]
    w = TarPartWriter(str(tmp_path / "ours.tar"))
    for name, data in members:
        w.write(tar_member_header(name, len(data)), data)
    w.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uname, ti.gname = len(data), 0o644, "", ""
            t.addfile(ti, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == buf.getvalue()
    got = [(g.key, g.members) for g in iter_samples(str(tmp_path / "ours.tar"))]
    assert got == [("k", {"json": b'{"a": 1}', "tokens.npy": b"x" * 1000}), ("l" * 150, {"json": b"{}"})]
