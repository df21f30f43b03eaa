"""The optional C kernels of the loader (operators/_native.c) against their numpy / Python twins: NaN/inf scan,
tar header checksum; the page-cache probe and the pull of cold shards; the loader giving the same batches with and
without the kernels, on cached and on cold shards."""
from __future__ import annotations

import io
import logging
import os
import shutil
import sysconfig
import tarfile

import numpy as np
import pytest
import torch

from longvid.model.tokenizer import build_test_tokenizer
from longvid.operators import shards as sd
from longvid.operators import train_sample as tsample
from longvid.pipelines.loader import LoaderConfig, StageLoader
from longvid.pipelines.train_sources import index_source
from longvid.synthetic.shards import write_synthetic_token_shards

native = tsample._native


def _compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None or shutil.which("gcc") is not None


def test_kernels_are_built_where_a_compiler_is():
    """pip builds operators/_native.c when it can; a silent fallback to numpy would only show as a slow loader."""
    if native is None and not _compiler():
        pytest.skip("no C compiler on this machine: the loader runs on its numpy fallback")
    assert native is not None, "operators._native is not built: run `pip install -e .` again and read its output"


needs_native = pytest.mark.skipif(native is None, reason="operators._native is not built")


def _numpy_says(a: np.ndarray) -> bool:
    return not bool(np.isfinite(a).all())


@needs_native
def test_nonfinite_f16_every_bit_pattern():
    """All 65,536 float16 patterns, one at a time in a finite array: NaN (quiet, signalling, either sign) and
    +-inf are found, everything else (subnormals, -0, the largest finite) is not."""
    base = np.zeros(97, dtype=np.float16)
    pats = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = ~np.isfinite(pats.view(np.float16))
    rng = np.random.default_rng(0)
    for p, w in zip(pats, want):
        a = base.copy()
        a.view(np.uint16)[rng.integers(97)] = p
        assert native.nonfinite(a, 2) == bool(w), hex(int(p))


@needs_native
def test_nonfinite_f32_patterns():
    rng = np.random.default_rng(1)
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF,
                        0xFF7FFFFF, 0x00000001, 0x80000000, 0x007FFFFF], dtype=np.uint32)
    pats = np.concatenate([special, rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32),
                           (0x7F800000 | rng.integers(0, 1 << 23, 200)).astype(np.uint32)])
    for p in pats:
        a = rng.standard_normal(33).astype(np.float32)
        a.view(np.uint32)[int(p) % 33] = p
        assert native.nonfinite(a, 4) == _numpy_says(a), hex(int(p))


@needs_native
@pytest.mark.parametrize("dt,size", [(np.float16, 4095), (np.float16, 8193), (np.float32, 4096), (np.float32, 12289)])
def test_nonfinite_at_every_block_edge(dt, size):
    """The kernel checks in blocks of 4096 elements with an early exit: a bad value in the first, last, or any
    partial block is found."""
    a = np.random.default_rng(2).standard_normal(size).astype(dt)
    assert not native.nonfinite(a, a.itemsize)
    for at in sorted({0, 4095, 4096, 4097, 8191, 8192, size - 1} & set(range(size))):
        for bad in (np.nan, -np.inf):
            b = a.copy()
            b[at] = bad
            assert native.nonfinite(b, b.itemsize), (at, bad)
    assert not native.nonfinite(a[:0], a.itemsize)


@needs_native
def test_nonfinite_refuses_what_it_cannot_scan():
    raw = np.zeros(1001, dtype=np.uint8)
    odd = raw[1:1001].view(np.float16)  # address not a multiple of 2
    assert native.nonfinite(odd, 2) is None
    with pytest.raises(ValueError, match="itemsize"):
        native.nonfinite(np.zeros(4, np.float64), 8)
    with pytest.raises(ValueError, match="contiguous"):  # numpy's refusal to export a strided view
        native.nonfinite(np.zeros((4, 4), np.float16)[:, 1], 2)


@pytest.mark.parametrize("path", ["native", "numpy"])
def test_non_finite_same_answer_on_either_path(path, monkeypatch):
    """operators.train_sample.non_finite: the kernel when it can, numpy otherwise (unaligned, strided, other
    dtypes, or no kernel), always the same answer."""
    if path == "native" and native is None:
        pytest.skip("operators._native is not built")
    if path == "numpy":
        monkeypatch.setattr(tsample, "_native", None)
    rng = np.random.default_rng(3)
    for dt in (np.float16, np.float32, np.float64):
        a = rng.standard_normal(5000).astype(dt)
        raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
        un = raw[1:].view(dt)  # the same values at an address that is not a multiple of the item size
        un[:] = a
        for arr in (a, un, a[::3], a.reshape(50, 100)):
            assert tsample.non_finite(arr) is False
            for bad in (np.nan, -np.inf):
                b = arr.copy() if arr is not un else un
                b.flat[len(b.flat) // 2] = bad
                assert tsample.non_finite(b) is True
                un[:] = a


def test_tar_checksum_same_as_tarfile():
    headers = []
    for name, size in [("a.json", 10), ("x" * 99, 0), ("dir/é-key.tokens.npy", 123456789), ("k.mp4", 1 << 33)]:
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.uname = "user"
        headers.append(ti.tobuf(tarfile.GNU_FORMAT)[-512:])
    for h in headers:
        want = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        assert sd._tar_checksum_py(h) == want
        if native is not None:
            assert native.tar_checksum(h) == want
    if native is not None:
        with pytest.raises(ValueError, match="512"):
            native.tar_checksum(b"\0" * 511)


def test_tar_parsing_same_with_and_without_kernels(monkeypatch):
    """The header checksum from the kernel or from Python: PAX and GNU tars with long and non-ASCII names, and
    copies with one byte of their headers changed, parse to the same groups and the same errors either way."""
    if native is None:
        pytest.skip("operators._native is not built")
    shards = []
    rng = np.random.default_rng(5)
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, data in [("k" * 150 + ".json", b"{}"), ("k" * 150 + ".tokens.npy", b"x" * 700),
                               ("é" * 60 + ".json", b"[]")]:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
        raw = buf.getvalue()
        shards.append(raw)
        for _ in range(40):
            b = bytearray(raw)
            b[int(rng.integers(0, 4096))] ^= int(rng.integers(1, 256))
            shards.append(bytes(b))

    def parse(raw: bytes) -> list:
        out: list = []
        try:
            for g in sd.iter_groups(io.BytesIO(raw), 0, want=lambda k: True):
                out.append((g.key, {e: bytes(v) for e, v in g.members.items()}, g.start, g.end))
        except sd.TarError as e:
            out.append(str(e))
        return out

    kernels = [parse(r) for r in shards]
    assert kernels[0][0][0] == "k" * 150 and any(isinstance(x[-1], str) for x in kernels)
    monkeypatch.setattr(sd, "_native", None)
    assert [parse(r) for r in shards] == kernels


def _evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_in_page_cache_probe(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(4 << 20))
    p.read_bytes()
    assert sd.in_page_cache(str(p)) is True
    _evict(str(p))
    assert sd.in_page_cache(str(p)) is False
    (tmp_path / "empty").write_bytes(b"")
    assert sd.in_page_cache(str(tmp_path / "empty")) is True


def _flat(groups):
    return [(g.key, {e: bytes(v) for e, v in g.members.items() if v is not None}, g.start, g.end) for g in groups]


def test_cold_shards_are_pulled_into_the_page_cache_ahead_of_the_mapping(tmp_path, monkeypatch):
    """open_shard: a shard in the page cache is mapped as it is; the same shard evicted is mapped with pull=True:
    what the parser touches is first read with sendfile (large I/Os), members it seeks over are not. Both give
    the same groups; a file system without sendfile falls back to the page faults."""
    keys = write_synthetic_token_shards(str(tmp_path / "t"), 6, per_shard=6, frames=(4, 16), dim=64)
    shard = str(next((tmp_path / "t" / "shards").glob("*.tar")))
    open(shard, "rb").read()
    warm = sd.open_shard(shard)
    assert isinstance(warm, sd.MappedTar) and warm._fd < 0
    flat = [_flat(sd.iter_groups(warm, 0, want=lambda k: True))]  # bytes: no view keeps the pages mapped
    warm.close()
    del warm
    pulls = []
    real = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda o, i, off, n: (pulls.append((off, n)), real(o, i, off, n))[1])
    _evict(shard)
    cold = sd.open_shard(shard)
    assert cold._fd >= 0 and sd.in_page_cache(shard) is False
    groups = list(sd.iter_groups(cold, 0, want=lambda k: k != keys[2], exts=("json", "tokens.npy")))
    assert sd.in_page_cache(shard) is True
    skipped = [g for g in groups if "__skipped__" in g.members][0]
    inside = [(off, n) for off, n in pulls if skipped.start <= off < skipped.end]
    assert inside and all(n <= 512 for _, n in inside)  # its headers were read, its members not
    flat.append(_flat(groups))
    cold.close()
    del cold, groups

    def broken(*a):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "sendfile", broken)
    _evict(shard)
    nosf = sd.open_shard(shard)
    flat.append(_flat(sd.iter_groups(nosf, 0, want=lambda k: True)))
    assert nosf._fd == -1
    nosf.close()
    assert flat[0] == flat[2] and [k for k, *_ in flat[0]] == keys
    assert [g for g in flat[1] if g[0] != keys[2]] == [(k, m, a, b) for k, m, a, b in flat[0] if k != keys[2]]


def test_loader_same_batches_with_and_without_kernels(tmp_path, monkeypatch, caplog):
    """The whole loader over float16 and float32 shards with NaN, inf and other defects: batches, tokens,
    states, counters and warnings are the same on the kernels (shards in the page cache: mapped; evicted: read)
    and on the numpy / Python fallback."""
    if native is None:
        pytest.skip("operators._native is not built")
    tok = build_test_tokenizer()
    corrupt = {"webvid_v000003_full": "nan", "webvid_v000010_full": "inf_end", "webvid_v000015_full": "shape"}
    write_synthetic_token_shards(str(tmp_path / "a"), 24, per_shard=5, frames=(4, 32), dim=64, corrupt=corrupt)
    write_synthetic_token_shards(str(tmp_path / "b"), 10, per_shard=4, frames=(4, 16), dim=64, dtype="float32",
                                 key_prefix="b", corrupt={"b_v000006_full": "nan_end"})
    plans = [index_source(n, [str(tmp_path / n / "shards/*.tar")]) for n in ("a", "b")]
    shards = [str(f) for f in tmp_path.glob("*/shards/*.tar")]
    runs = []
    for kernels, cold in ((native, False), (native, True), (None, False)):
        monkeypatch.setattr(tsample, "_native", kernels)
        monkeypatch.setattr(sd, "_native", kernels)
        for f in shards:
            _evict(f) if cold else open(f, "rb").read()
        cfg = LoaderConfig(sources=[p.to_dict() for p in plans], batch_size=2, buffer=6, mix="samples", dim=64,
                           prefetch=0)
        lo = StageLoader(cfg, 0, 1, tok)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longvid.train.data"):
            it = iter(lo)
            got = [next(it) for _ in range(30)]
        runs.append((got, dict(lo.counters), [r.getMessage() for r in caplog.records]))
        lo.close()
    (a, ca, la) = runs[0]
    assert ca["non-finite tokens"] >= 3 and ca["wrong shape"] >= 1
    for b, cb, lb in runs[1:]:
        assert ca == cb and la == lb
        for x, y in zip(a, b):
            assert x.keys == y.keys and x.state == y.state
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
            assert all(torch.equal(v, w) for v, w in zip(x.visual, y.visual))


def test_kernels_found_in_an_installed_copy_when_the_working_dir_has_none(tmp_path, monkeypatch):
    """A Ray job's working dir comes without the built module (.gitignore'd): the kernels of the longvid installed
    on the node are used instead."""
    import sys

    from longvid.operators import native as finder

    if native is None:
        pytest.skip("operators._native is not built")
    site = tmp_path / "site" / "longvid" / "operators"
    site.mkdir(parents=True)
    shutil.copy(native.__file__, site / os.path.basename(native.__file__))
    import longvid.operators as operators

    monkeypatch.setitem(sys.modules, "longvid.operators._native", None)  # `from longvid.operators import _native` fails
    monkeypatch.delattr(operators, "_native", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "nowhere")])
    assert finder.load() is None  # nothing installed elsewhere (and this folder's own build is not taken)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    mod = finder.load()
    assert mod is not None and os.path.dirname(mod.__file__) == str(site)
    a = np.zeros(8, np.float16)
    a[5] = np.nan
    assert mod.nonfinite(a, 2) is True
