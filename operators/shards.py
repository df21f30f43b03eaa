"""The WebDataset shard format, read and written: the one tar module of the project (tests/scenarios/test_layout.py).

    write   tar_member_header(name, size) -> the header block(s) of one member (ustar; PAX for long names);
            TarPartWriter: one tar part written a whole sample at a time (operators.write commits the parts)
    read    iter_groups(f, offset, want, exts): member groups (a WebDataset sample: members sharing the key before
            the first dot of their base name) from a header offset, skipped members seeked over, never read;
            iter_samples(uri or file): the simple streaming form of the same parser, every member as bytes;
            open_shard(uri) / MappedTar: the training loader's mode, a local shard memory-mapped so that members
            come out as zero-copy views (pulled into the page cache first when they are not there)

Anything that cannot be read as a tar is one error, TarError: the rest of that shard cannot be trusted, what came
before it was yielded. I/O errors stay storage.StorageError (an OSError).

Why our own code on both sides. Writer: webdataset's TarWriter can be set to write the same bytes (tarfile's,
which tests/operators/test_shards.py compares ours with), but importing webdataset takes ~1 s per process, it copies
members in 16 KiB chunks (1.6 GB/s against 2.8 here) and builds each member's header only as it writes it, where ours
builds all of a sample's headers first (whole or nothing) and fsyncs the part at close. Reader: tarfile cannot
resume at a byte offset, skip members by seeking or hand out zero-copy mapped members, and its seeking mode loops
on a hostile size (Python 3.11, CVE-2025-8194); ours does all that at the loader's speed (BENCHMARKS.md, Loader).
Over ~500 lines: one format, both directions, kept together.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, IO

import numpy as np

from longvid.operators import native, storage

_native = native.load()  # the C kernels (operators/_native.c) when built: the header checksum; Python otherwise

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: a tar ends padded to a whole record


# ======================================================================================================== writing


def tar_member_header(name: str, size: int) -> bytes:
    """The header block(s) of a member: ustar, preceded by a PAX header when the name does not fit ustar; zero
    mtime, uid and gid, no owner names, mode 0644 (deterministic). Raises ValueError or UnicodeError for a name no
    header can hold."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class TarPartWriter:
    """One tar part being written, a whole sample at a time (tarfile's layout: 512-byte blocks, two zero blocks
    and padding to a 10240-byte record at the end). The file is fsynced at close, so a late ENOSPC shows there."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.f = open(tmp, "wb")
        self.offset = 0

    def write(self, header: bytes, data: bytes) -> None:
        pad = -len(data) % BLOCK
        self.f.write(header)
        self.f.write(data)
        if pad:
            self.f.write(bytes(pad))
        self.offset += len(header) + len(data) + pad

    def close(self) -> None:
        if self.f.closed:
            return
        try:
            end = bytes(2 * BLOCK)
            self.f.write(end + bytes(-(self.offset + len(end)) % RECORD))
            self.f.flush()
            os.fsync(self.f.fileno())
        finally:
            self.f.close()

    def discard(self) -> None:
        try:
            self.f.close()
        except OSError:  # the unflushed tail of a full disk: the file is removed anyway
            pass


# ======================================================================================================== reading


class TarError(Exception):
    """A corrupt or truncated tar: the rest of the shard cannot be read."""


@dataclass
class Group:
    """One sample's tar members: ext -> bytes (None when skipped), header offsets [start, end)."""

    key: str
    members: dict[str, Any]
    start: int
    end: int


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep freed sample buffers in the heap (glibc): without it every multi-MiB sample is a fresh mmap whose page
    faults cost about as much as reading the bytes. Process-wide, once; a no-op off glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the glibc maximum; samples up to it come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not give the heap top back after each sample
    except (OSError, AttributeError):
        pass


_OCTAL = b"01234567"


def _number(field_: bytes, what: str, at: int) -> int:
    """A numeric header field: octal text padded with NULs or spaces, or base-256 (GNU, star: first byte 0x80-0xBF,
    for sizes past 8 GiB). Anything else (a negative base-256 number too) is a TarError naming the field: int()
    alone would take '-1', '+1', '1_0' or '0o7', and a negative size would move the parser backwards."""
    if field_[0] & 0x80:
        if field_[0] & 0x40:
            raise TarError(f"{what} at byte {at}: negative base-256 number")
        return int.from_bytes(bytes([field_[0] & 0x3F]) + field_[1:], "big")
    s = field_.split(b"\0", 1)[0].strip()
    if s.translate(None, _OCTAL):
        raise TarError(f"{what} at byte {at}: {bytes(field_)!r} is not an octal number")
    return int(s, 8) if s else 0


def _tar_checksum_py(hdr: bytes) -> int:
    # the checksum counts its own field as spaces; trailing zero bytes add nothing, so they are not summed
    return sum(hdr.rstrip(b"\0")) - sum(hdr[148:156]) + 256


def _tar_checksum_signed(hdr: bytes) -> int:
    """The checksum some old tars wrote, summing bytes as signed chars (tarfile accepts both)."""
    b = np.frombuffer(hdr, dtype=np.int8)
    return int(b.sum()) - int(b[148:156].sum()) + 256


def _read_into(f, n: int) -> np.ndarray:
    buf = np.empty(n, dtype=np.uint8)  # not zeroed: every byte is read into it
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise TarError(f"truncated member: {got} of {n} bytes")
        got += k
    return buf


def _read_bytes(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise TarError(f"truncated member: {len(data)} of {n} bytes")
    return data


_DEVNULL: list[int] = []


def _devnull() -> int:
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_WRONLY))
    return _DEVNULL[0]


class MappedTar:
    """A local shard mapped into memory (copy-on-write): members come out as zero-copy numpy views, so a sample's
    bytes are never copied on their way to the model (pages are shared with the page cache until written).
    File-like for the header parsing: read / seek / tell; `take(n)` returns the next n bytes as a uint8 view.
    The mapping lives as long as any view of it does.

    pull=True, for a shard that is not in the page cache: every range the parser is about to touch is first read
    into the page cache with sendfile(2) to /dev/null (no copy to user space). Those are large reads, which the
    kernel serves with large I/Os and large pages and follows with its asynchronous read-ahead, whatever the
    device's read_ahead_kb; page faults on the mapping would instead each wait for a read-around of
    read_ahead_kb, and posix_fadvise(WILLNEED) fills the cache with small pages. Measured from disk here:
    2.3 GB/s against 1.8 for read() and 0.7-1.9 for faults (BENCHMARKS.md, Loader)."""

    def __init__(self, path: str, pull: bool = False):
        import mmap

        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self._size = size
        self._pos = 0
        self._fd = os.open(path, os.O_RDONLY) if pull and size else -1
        self._pulled = 0  # [0, _pulled) was read (or skipped)

    def _pull(self, end: int) -> None:
        if self._fd < 0 or end <= self._pulled:
            return
        at = max(self._pulled, self._pos)  # members the parser seeked over are not read
        try:
            while at < end:
                n = os.sendfile(_devnull(), self._fd, at, end - at)
                if n <= 0:  # end of file: the parser reports the truncation
                    break
                at += n
        except OSError:  # a file system without sendfile: the faults read the pages instead
            os.close(self._fd)
            self._fd = -1
        self._pulled = at

    def read(self, n: int = -1) -> bytes:
        if self._mm is None:
            return b""
        end = self._size if n < 0 else min(self._size, self._pos + n)
        self._pull(end)
        out = self._mm[self._pos:end]
        self._pos = end
        return out

    def take(self, n: int) -> np.ndarray:
        if self._mm is None or self._pos + n > self._size:
            raise TarError(f"truncated member: {max(0, self._size - self._pos)} of {n} bytes")
        self._pull(self._pos + n)
        arr = np.frombuffer(self._mm, dtype=np.uint8, count=n, offset=self._pos)
        self._pos += n
        return arr

    def seek(self, off: int, whence: int = 0) -> int:
        self._pos = off if whence == 0 else (self._pos + off if whence == 1 else self._size + off)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._mm = None  # unmapped when the last view is gone
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "MappedTar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def in_page_cache(path: str, probes: int = 8) -> bool | None:
    """Whether a file is in the page cache: True when one byte at each of `probes` evenly spaced offsets reads
    without I/O (preadv2 with RWF_NOWAIT), False when one would wait for the disk (the kernel then reads that one
    page), None when the kernel or file system cannot tell."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None or not hasattr(os, "preadv"):
        return None
    buf = [bytearray(1)]
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for k in range(probes if size else 0):
            try:
                if os.preadv(fd, buf, (size - 1) * k // max(1, probes - 1), flag) != 1:
                    return None
            except BlockingIOError:
                return False
            except OSError:  # EOPNOTSUPP, EINVAL: no non-blocking buffered reads here
                return None
        return True
    finally:
        os.close(fd)


def open_shard(uri: str):
    """Local shards are memory-mapped (zero copy); one that is not in the page cache, or whose state the kernel
    cannot tell, is mapped with pull=True (see MappedTar). S3 shards are read through the ranged reader."""
    if not storage.is_s3(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        try:
            return MappedTar(path, pull=in_page_cache(path) is not True)
        except FileNotFoundError:
            raise storage.ObjectNotFound(uri, "open: no such file") from None
        except OSError as e:
            raise storage.StorageError(uri, f"open: {e.strerror or e}") from None
    return storage.open_read(uri)


_ZERO_BLOCK = bytes(512)
_EXT_KINDS = (b"x", b"X", b"g", b"L", b"K")  # PAX local (Solaris 'X'), PAX global, GNU long name and long link
_FILE_KINDS = (b"0", b"\0", b"7")  # regular files: sample members
_NO_DATA_KINDS = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, FIFOs: no data blocks (tarfile)
_EXT_MAX = 1 << 20  # bytes of one extended header: far above any name; more is a corrupt size, not a name


def _pax_records(data: bytes, at: int) -> dict[bytes, bytes]:
    """The records of a PAX extended header: `<length> <key>=<value>\\n`, the length counting the whole record;
    NUL padding ends them (as tarfile reads). Each record must move forward and end inside the data with a
    newline: anything else is a TarError (a length of 0 would otherwise read the same record forever)."""
    out: dict[bytes, bytes] = {}
    i, n = 0, len(data)
    while i < n and data[i] != 0:
        sp = data.find(b" ", i, i + 21)
        digits = data[i:sp] if sp > i else b""
        if not digits.isdigit():
            raise TarError(f"PAX header at byte {at}: record at {i} does not start with its length")
        length = int(digits)
        if length <= sp + 1 - i or i + length > n or data[i + length - 1] != 0x0A:
            raise TarError(f"PAX header at byte {at}: record at {i} has a bad length {length}")
        key, eq, value = data[sp + 1:i + length - 1].partition(b"=")
        if not eq:
            raise TarError(f"PAX header at byte {at}: record at {i} has no '='")
        out[key] = value
        i += length
    return out


def _past_end(what: str, pos: int, size: int, end: int) -> TarError:
    return TarError(f"{what} at byte {pos}: {size} bytes, {max(0, end - pos - 512)} left in the file")


def _text(raw: bytes) -> str:
    """A name from a header: UTF-8, undecodable bytes kept as surrogates (what tarfile gives on POSIX)."""
    return raw.decode("utf-8", "surrogateescape")


def iter_groups(f, offset: int, want: Callable[[str], bool], exts: tuple[str, ...] | None = None,
                as_bytes: bool = False) -> Iterator[Group]:
    """Member groups (WebDataset: members sharing the key before the first dot of their base name) of a tar,
    starting at the header at byte `offset`. Members of keys for which `want(key)` is false, and members whose
    extension is not in `exts` (None: all), are skipped by seeking, never read.

    ustar, PAX (`x` headers: path and size; `g` headers are checked, their records name no member) and GNU tars
    (`L` long names, `K` long link names) are read as tarfile reads them. A group starts at the first extended
    header of its first member, so resuming at a group's `start` or `end` sees the same names. Every header moves
    the position forward by at least 512 bytes; anything that cannot be read as a tar (bad checksum or number, a
    member or extended header past the end of the file, a malformed PAX record, a truncated header) is a TarError:
    the rest of the shard cannot be trusted. The group before the damage is yielded first (with the members read
    before it; a member lost to the damage shows as missing).

    Members are zero-copy uint8 views from a MappedTar, else uint8 arrays (as_bytes=True: bytes)."""
    end = f.seek(0, 2)  # no member may claim bytes past the end: a corrupt size is found before any read
    f.seek(offset)
    pos = offset
    take_view = getattr(f, "take", None)  # MappedTar: zero-copy views
    if take_view is None:
        take_view = (lambda n: _read_bytes(f, n)) if as_bytes else (lambda n: _read_into(f, n))
    checksum = _native.tar_checksum if _native is not None else _tar_checksum_py
    cur: Group | None = None
    ext_name: str | None = None  # the next member's name from a PAX path or a GNU long name
    ext_size: int | None = None  # the next member's size from a PAX record
    chain = -1  # offset of the first extended header before the next member (-1: none)
    try:
        while True:
            hdr = f.read(512)
            if len(hdr) == 0 or hdr == _ZERO_BLOCK:
                break
            if len(hdr) < 512:
                raise TarError(f"truncated header at byte {pos}")
            want_sum = _number(hdr[148:156], "header checksum", pos)
            if want_sum != checksum(hdr) and want_sum != _tar_checksum_signed(hdr):
                raise TarError(f"bad header checksum at byte {pos}")
            size = _number(hdr[124:136], "member size", pos)
            kind = hdr[156:157]
            data_at = pos + 512
            if kind in _EXT_KINDS:
                if size > _EXT_MAX or data_at + size > end:
                    raise _past_end("extended header", pos, size, end)
                padded = (size + 511) // 512 * 512
                data = f.read(size)
                if len(data) < size:
                    raise _past_end("extended header", pos, size, data_at + len(data))
                f.seek(data_at + padded)
                if kind == b"L":
                    ext_name = _text(data.split(b"\0", 1)[0])
                elif kind != b"K":
                    recs = _pax_records(data, pos)
                    if kind != b"g":
                        if b"path" in recs:
                            ext_name = _text(recs[b"path"])
                        if b"size" in recs:
                            v = recs[b"size"]
                            if not (v.isdigit() and len(v) <= 20):
                                raise TarError(f"PAX header at byte {pos}: size {v[:40]!r} is not a number")
                            ext_size = int(v)
                if chain < 0:
                    chain = pos
                pos = data_at + padded
                continue
            if ext_size is not None:
                size, ext_size = ext_size, None
            member_at = chain if chain >= 0 else pos
            chain = -1
            if ext_name is not None:
                name, ext_name = ext_name, None
            else:
                name = _text(hdr[:100].split(b"\0", 1)[0])
                if hdr[257:263] == b"ustar\x00" and hdr[345] != 0:
                    name = _text(hdr[345:500].split(b"\0", 1)[0]) + "/" + name
            if kind == b"\0" and name.endswith("/"):
                kind = b"5"  # an old (V7) tar's directory
            if kind not in _FILE_KINDS:  # directories, links, other types: not sample members
                if kind in _NO_DATA_KINDS:
                    size = 0
                padded = (size + 511) // 512 * 512
                if data_at + size > end:
                    raise _past_end("truncated member", pos, size, end)
                f.seek(padded, 1)
                pos = data_at + padded
                continue
            padded = (size + 511) // 512 * 512
            if data_at + size > end:
                raise _past_end("truncated member", pos, size, end)
            base = name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if cur is None or key != cur.key:
                if cur is not None:
                    cur.end = member_at
                    yield cur
                    if f.tell() != data_at:  # the consumer may have seeked: stay where this header left us
                        f.seek(data_at)
                cur = Group(key, {} if want(key) else {"__skipped__": None}, member_at, member_at)
            if "__skipped__" not in cur.members and (exts is None or ext in exts):
                cur.members[ext] = take_view(size)
                f.seek(padded - size, 1)
            else:
                f.seek(padded, 1)
            pos = data_at + padded
    except TarError:
        if cur is not None:  # the damage is at or after the header at `pos`: what came before is whole
            cur.end = chain if chain >= 0 else pos
            yield cur
        raise
    if cur is not None:
        cur.end = pos
        yield cur


# ======================================================================================================== decoding

def iter_samples(src: str | IO[bytes], exts: tuple[str, ...] | None = None, *, keys: set[str] | None = None,
                 mapped: bool = False) -> Iterator[Group]:
    """The samples of one shard front to back, streamed (never the whole shard in memory): Group(key, {ext: bytes}).

    `src`: a URI (local path, file:// or s3://, opened here and closed at the end) or a seekable binary file object
    (read/seek/tell; the caller closes it). `exts`: the extensions to read (None: all); the others are seeked over.
    `keys`: only the samples with these keys (None: all); the others are seeked over and not yielded.
    mapped=True (local URIs): the loader's mode, members are zero-copy uint8 views of the mapped file instead of
    bytes. A corrupt or truncated tar raises TarError after the samples before the damage were yielded (the one
    hit by it with the members read before it)."""
    want = _everything if keys is None else keys.__contains__
    if isinstance(src, str):
        with (open_shard(src) if mapped else storage.open_read(src)) as f:
            yield from _wanted(iter_groups(f, 0, want=want, exts=exts, as_bytes=not mapped))
    else:
        yield from _wanted(iter_groups(src, 0, want=want, exts=exts, as_bytes=True))


def _wanted(groups: Iterator[Group]) -> Iterator[Group]:
    return (g for g in groups if "__skipped__" not in g.members)


def _everything(key: str) -> bool:
    return True

