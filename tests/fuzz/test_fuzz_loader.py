"""Valid and hostile token shards against the training loader (pipelines/loader.py), and our other tar readers.

The promise (issue 12): PAX and GNU long-name tars, as tarfile and webdataset write them, are read exactly; on
anything else a bad sample is skipped and counted by reason, a bad shard costs the rest of that shard (never the
run), and nothing loops without progress. Hypothesis drives the loader with valid shards of random long keys in
the three tar formats, with valid tars of hostile json / npy members, and with byte-level mutations of valid
shards; every example runs under an alarm that fails the test when it rings. Regression tests pin each class.
"""
from __future__ import annotations

import atexit
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from functools import lru_cache
from itertools import count

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.operators.test_shards import _tar
from tests.bounds import bounded as _bounded
from longvid.model.tokenizer import IGNORE_INDEX, build_test_tokenizer
from longvid.operators import shards as sd
from longvid.operators import train_sample as tsample
from longvid.pipelines import loader as ld
from longvid.pipelines import train_sources as ts
from longvid.synthetic import shards as synth

DIM = 8  # token width of the test shards: one clip is 1 KiB of float16
BOUND = 8.0  # seconds one example may take; a loop without progress rings the alarm
FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
SHARD_LOSS = ("corrupt tar", "short shard")  # counters of a shard's unread rest
NOT_SKIPS = {"skipped", "excluded", "below min frames", *SHARD_LOSS}


def bounded(seconds: float = BOUND):
    return _bounded(seconds)


@lru_cache(maxsize=1)
def tokenizer():
    return build_test_tokenizer()


_DIR = tempfile.mkdtemp(prefix="fuzz-loader-")
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
_N = count()


def shard_file(raw: bytes) -> str:
    """A fresh file per example: a mapped shard must never change under the views of an earlier one."""
    path = os.path.join(_DIR, f"s{next(_N)}.tar")
    with open(path, "wb") as f:
        f.write(raw)
    return path


# ---------------------------------------------------------------------------------------------------- builders


def npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


def npy_raw(header: str, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A .npy with the header text given (numpy's layout: magic, version, length, padded text)."""
    width = 2 if version[0] == 1 else 4
    text = header.encode("latin1")
    text += b" " * ((-(8 + width + len(text) + 1)) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(width, "little") + text + data


def sample_info(key: str, clips: int = 2, label: int = 0) -> dict:
    info = synth.synthetic_sample_info(key, "fz", 4 * clips, 8.0, label, long_msg=True)
    info.update({"encoder": "synthetic", "resolution": 224, "tokens_per_frame": 16, "num_clips": clips})
    return info


def tokens(clips: int = 2, label: int = 0) -> np.ndarray:
    return np.full((clips, 64, DIM), (label + 1) / 16, np.float16)


def sample(key: str, label: int = 0, info: bytes | None = None, toks: bytes | None = None) -> list[tuple[str, bytes]]:
    return [(f"{key}.json", json.dumps(sample_info(key, label=label)).encode() if info is None else info),
            (f"{key}.tokens.npy", npy(tokens(label=label)) if toks is None else toks)]


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return _tar(members, fmt).getvalue()


def header(name: bytes, size_field: bytes, kind: bytes = b"0") -> bytes:
    """One ustar header with exactly the size field given and a correct checksum."""
    h = bytearray(512)
    h[:len(name)] = name
    h[100:108] = b"0000644\0"
    h[124:136] = size_field.ljust(12, b"\0")[:12]
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    return fix_checksum(h)


def fix_checksum(h: bytearray) -> bytes:
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def member(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, b"%011o\0" % len(data), kind) + data + b"\0" * ((-len(data)) % 512)


# ---------------------------------------------------------------------------------------------------- one epoch


class EpochEnd(Exception):
    pass


def read_epoch(path: str, **cfg) -> tuple[ts.SourceIndex | None, list[tsample.TrainSample], Counter, str]:
    """Plan the shards of a path or glob without index.json (counts from the tar headers), then read one epoch
    through the loader's own sample path -> (plan, samples, counters, planning error)."""
    try:
        plan = ts.index_source("fz", [path])
    except ts.DataError as e:
        return None, [], Counter(), str(e)
    lc = ld.LoaderConfig(sources=[plan.to_dict()], batch_size=1, buffer=1, mix="samples", dim=DIM, prefetch=0, **cfg)
    lo = ld.StageLoader(lc, 0, 1, tokenizer())
    stream = lo.streams[0]
    advance = stream._advance_piece

    def advance_or_stop() -> None:
        if stream.cursor.piece + 1 >= len(stream.pieces):
            raise EpochEnd
        advance()

    stream._advance_piece = advance_or_stop
    out = []
    try:
        while True:
            out.append(lo._next_sample(0))
    except EpochEnd:
        pass
    finally:
        lo.close()
    return plan, out, lo.counters, ""


def assert_well_formed(s: tsample.TrainSample, max_len: int = 32768) -> None:
    from longvid.model.tokenizer import image_token_id

    assert s.input_ids.dtype == np.int64 and s.input_ids.ndim == 1 and s.labels.shape == s.input_ids.shape
    assert int((s.input_ids == image_token_id(tokenizer())).sum()) == 1
    assert (s.labels != IGNORE_INDEX).any()
    assert s.visual.dtype in (np.float16, np.float32) and s.visual.shape == (s.n_visual, DIM)
    assert s.n_visual > 0 and s.n_visual % 64 == 0 and s.num_frames * 16 == s.n_visual
    assert np.isfinite(s.visual).all() and 0 < s.length <= max_len
    assert isinstance(s.key, str) and s.key.encode("utf-8")


def assert_accounted(plan: ts.SourceIndex, out: list, c: Counter) -> None:
    """Every group read is a sample or a counted skip; fewer than planned only with a counted shard loss."""
    read = len(out) + c["skipped"] + c["excluded"]
    assert read <= plan.nsamples
    if read < plan.nsamples:
        assert sum(c[k] for k in SHARD_LOSS) >= 1, (read, plan.nsamples, dict(c))
    assert c["skipped"] == sum(v for k, v in c.items() if k not in NOT_SKIPS), dict(c)


# ---------------------------------------------------------------------------------------------------- (a) valid tars


KEY = st.text(st.characters(blacklist_characters="./\x00", blacklist_categories=("Cs",)), min_size=1, max_size=160)


def fit(key: str, limit: int) -> str:
    """`key` cut to at most `limit` UTF-8 bytes (a plain ustar name holds 100)."""
    while len(key.encode()) > limit:
        key = key[:-1]
    return key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(KEY, min_size=1, max_size=4), fmt=st.sampled_from(sorted(FORMATS)))
def test_valid_tars_of_every_format_read_exactly_what_was_written(keys, fmt):
    if fmt == "ustar":
        keys = [fit(k, 100 - len(".tokens.npy")) for k in keys]
    keys = [k for i, k in enumerate(keys) if k and k not in keys[:i]]
    if not keys:
        return
    members = [m for i, k in enumerate(keys) for m in sample(k, label=i)]
    raw = tar_bytes(members, FORMATS[fmt])
    path = shard_file(raw)
    with bounded():
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:  # the names tarfile reads: ours must be the same
            assert [m.name for m in t] == [n for n, _ in members]
        for f in (sd.MappedTar(path), open(path, "rb")):
            with f:
                groups = list(sd.iter_groups(f, 0, want=lambda k: True))
                assert [g.key for g in groups] == keys
                got = [(f"{g.key}.{e}", bytes(v)) for g in groups for e, v in g.members.items()]
                assert got == members
                for i, g in enumerate(groups):  # resuming at a group's start or end sees the same names
                    assert next(sd.iter_groups(f, g.start, want=lambda k: True)).key == g.key
                    assert [x.key for x in sd.iter_groups(f, g.end, want=lambda k: False)] == keys[i + 1:]
        assert ts.count_tar_samples(path) == len(keys)
        plan, out, c, err = read_epoch(path, max_frames=4)
    assert not err and plan.count_from == "tar"
    assert [s.key for s in out] == keys and not c["skipped"] and not sum(c[k] for k in SHARD_LOSS)
    for i, s in enumerate(out):
        assert_well_formed(s)
        assert np.array_equal(s.visual, tokens(label=i)[:1].reshape(-1, DIM))  # max_frames=4 keeps one clip


def test_webdataset_long_keys_and_resume_after_a_pax_member(tmp_path):
    """webdataset's TarWriter (PAX) with 150-character keys: the loader reads every sample, and a loader resumed
    from a state taken after a long-named sample gives the batches an uninterrupted one gives."""
    import webdataset as wds

    keys = [f"{i}" + "k" * 149 for i in range(6)]
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "shard-0.tar")) as w:
        for i, k in enumerate(keys):
            w.write({"__key__": k, "json": sample_info(k, label=i), "tokens.npy": npy(tokens(label=i))})
    plan = ts.index_source("w", [str(tmp_path / "shards" / "*.tar")])
    assert plan.nsamples == 6 and plan.count_from == "tar"
    cfg = ld.LoaderConfig(sources=[plan.to_dict()], batch_size=1, buffer=2, mix="samples", dim=DIM, prefetch=0)
    with bounded():
        it = iter(ld.StageLoader(cfg, 0, 1, tokenizer()))
        full = [next(it) for _ in range(8)]
        it2 = iter(ld.StageLoader(cfg, 0, 1, tokenizer(), state=full[2].state))
        again = [next(it2) for _ in range(5)]
    assert sorted(k for b in full[:6] for k in b.keys) == sorted(keys)
    assert [b.keys for b in again] == [b.keys for b in full[3:8]]
    assert all(b.state == a.state for a, b in zip(full[3:8], again))


def test_gnu_name_cut_inside_a_utf8_character():
    """GNU tars keep the first 100 bytes of a long name in the header, cut anywhere, and the whole name in an
    'L' header: the cut header name is never decoded on its own (it crashed the loader)."""
    keys = ["a" * 99 + "é", "é" * 70]
    raw = tar_bytes([m for i, k in enumerate(keys) for m in sample(k, label=i)], tarfile.GNU_FORMAT)
    assert [g.key for g in sd.iter_groups(io.BytesIO(raw), 0, want=lambda k: True)] == keys


def test_pax_size_record_and_base256_size():
    """A PAX size= record gives the member's size (tarfile writes one past 8 GiB); a base-256 size field (GNU)
    is read; a global ('g') header is read and names no member."""
    pax = b"16 path=zz.json\n" + b"10 size=7\n"
    raw = (header(b"././@PaxHeader", b"%011o\0" % len(pax), b"x") + pax.ljust(512, b"\0")
           + header(b"short", b"00000000000\0") + b"1234567".ljust(512, b"\0"))
    glob = b"16 path=gg.json\n"
    raw += header(b"pax_global_header", b"%011o\0" % len(glob), b"g") + glob.ljust(512, b"\0")
    raw += header(b"yy.json", b"\x80" + (3).to_bytes(11, "big")) + b"abc".ljust(512, b"\0") + bytes(1024)
    groups = list(sd.iter_groups(io.BytesIO(raw), 0, want=lambda k: True))
    assert [(g.key, {e: bytes(v) for e, v in g.members.items()}) for g in groups] == [
        ("zz", {"json": b"1234567"}), ("yy", {"json": b"abc"})]
    assert groups[0].start == 0 and groups[1].start == 2048  # the 'g' header starts the second member's chain


def test_signed_checksum_of_old_tars_is_accepted():
    """Some old tars summed the header as signed chars (tarfile accepts both sums); a non-ASCII name makes the
    two differ."""
    h = bytearray(header("é.json".encode(), b"%011o\0" % 2))
    h[148:156] = b" " * 8
    signed = sum(x - 256 if x > 127 else x for x in h)
    assert signed != sum(h)
    h[148:156] = b"%06o\0 " % signed
    groups = list(sd.iter_groups(io.BytesIO(bytes(h) + b"{}".ljust(512, b"\0")), 0, want=lambda k: True))
    assert [(g.key, bytes(g.members["json"])) for g in groups] == [("é", b"{}")]


# ---------------------------------------------------------------------------------------------------- (b) tar damage


GOOD = member(b"a.json", json.dumps(sample_info("a")).encode()) + member(b"a.tokens.npy", npy(tokens()))


DAMAGE = [
    ("PAX record of length 0", header(b"p", b"%011o\0" % 9, b"x") + b"0 path=x\n".ljust(512, b"\0"), "bad length 0"),
    ("PAX record of negative length", header(b"p", b"%011o\0" % 10, b"x") + b"-9 path=x\n".ljust(512, b"\0"),
     "does not start with its length"),
    ("PAX record past its header", header(b"p", b"%011o\0" % 10, b"x") + b"99 path=x\n".ljust(512, b"\0"),
     "bad length 99"),
    ("PAX record without newline", header(b"p", b"%011o\0" % 9, b"x") + b"9 path=xy".ljust(512, b"\0"),
     "bad length 9"),
    ("PAX size that is no number", header(b"p", b"%011o\0" % 11, b"x") + b"11 size=-1\n".ljust(512, b"\0"),
     "is not a number"),
    ("negative base-256 size", header(b"b.json", b"\xff" * 12), "negative base-256"),
    ("size with a sign", header(b"b.json", b"-0000001000\0"), "not an octal number"),
    ("size with digits 8 and 9", header(b"b.json", b"00000000089\0"), "not an octal number"),
    ("size with an underscore", header(b"b.json", b"0000000_010\0"), "not an octal number"),
    ("huge size", header(b"b.json", b"77777777777\0"), "truncated member"),
    ("huge base-256 size", header(b"b.json", b"\x80" + b"\xff" * 11), "truncated member"),
    ("huge extended header", header(b"p", b"77777777777\0", b"L"), "extended header"),
    ("member past the end", header(b"b.json", b"%011o\0" % 4000) + b"x" * 600, "truncated member"),
    ("truncated header", b"\x01" * 300, "truncated header"),
    ("bad checksum", b"b.json".ljust(512, b"\x01"), "not an octal number|bad header checksum"),
]


@pytest.mark.parametrize("what,raw,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_tar_damage_is_a_tar_error_and_costs_only_the_rest_of_the_shard(what, raw, message):
    """Each kind of damage after one good sample: iter_groups raises TarError (never hangs, never another
    error); planned without index.json, the loader yields the good sample and counts the shard as corrupt."""
    data = GOOD + raw
    with bounded():
        groups = []
        with pytest.raises(sd.TarError, match=message):
            for g in sd.iter_groups(io.BytesIO(data), 0, want=lambda k: True):
                groups.append(g.key)
        assert groups == ["a"]  # the sample before the damage is whole
        plan, out, c, err = read_epoch(shard_file(data))
    assert not err and plan.nsamples == 2  # the good sample and one for the damage
    assert [s.key for s in out] == ["a"] and c["corrupt tar"] == 1 and not c["skipped"]


def test_plan_without_index_survives_truncated_and_malformed_shards(tmp_path, caplog):
    """No index.json, no manifests: a shard truncated inside a member, one of garbage and one with a bad header in
    the middle are planned from what is readable plus one sample for the damage (a warning each); one epoch
    trains on the readable samples of all of them and counts each damaged shard once."""
    job = tmp_path / "j" / "shards"
    job.mkdir(parents=True)
    whole = tar_bytes([m for i, k in enumerate("abcd") for m in sample(k, label=i)])
    with tarfile.open(fileobj=io.BytesIO(whole)) as t:
        at = {m.name: m for m in t}
    (job / "s0.tar").write_bytes(whole[: at["c.tokens.npy"].offset_data + 100])  # c loses its tokens
    (job / "s1.tar").write_bytes(b"\x93" * 2000)
    mid = bytearray(whole)
    mid[at["c.json"].offset + 130] ^= 0x11  # c's first header: c and d are lost
    (job / "s2.tar").write_bytes(bytes(mid))
    (job / "s3.tar").write_bytes(whole)
    with bounded(), caplog.at_level(logging.WARNING, logger="longvid.train.data"):
        plan, out, c, err = read_epoch(str(job / "*.tar"))
    assert [p.n for p in plan.pieces] == [4, 1, 3, 4] and plan.count_from == "tar"
    assert sum("unreadable after" in r.getMessage() for r in caplog.records) == 3
    assert sorted(s.key for s in out) == sorted("abababcd")
    assert c["corrupt tar"] == 3 and c["missing tokens.npy"] == 1 and c["skipped"] == 1


# byte-level mutations of valid shards


@lru_cache(maxsize=None)
def base_shard(fmt: str) -> tuple[bytes, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """A valid shard of four samples (a 150-character key, a non-ASCII one) -> (bytes, header block offsets,
    member data ranges)."""
    keys = ["k" * 150, "b", "ü" * 60, "d"]
    raw = tar_bytes([m for i, k in enumerate(keys) for m in sample(k, label=i)], FORMATS[fmt])
    heads, datas = [], []
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        for m in t:
            heads += range(m.offset, m.offset_data, 512)
            datas.append((m.offset_data, m.offset_data + m.size))
    return raw, tuple(heads), tuple(datas)


HOSTILE_SIZES = [b"-1", b"-0000001000", b"77777777777", b"99999999999", b"8", b"1_0", b"0o7", b"+7", b" 1 2", b"",
                 b"\x80" + (2).to_bytes(11, "big"), b"\x80" + b"\xff" * 11, b"\xff" * 12, b"\xc0" + bytes(11)]
HOSTILE_PAX = [b"0 path=x\n", b"-9 path=x\n", b"5 path=x\n", b"99 path=x\n", b"12 path=abc", b"9 pathx\n",
               b"11 size=-1\n", b"30 size=999999999999999999999\n", b"12 path=\xff\xfe\n", b"", b"\0" * 20,
               b" 7 a=b\n", b"1" * 30 + b" a=b\n", b"16 path=zz.json\n", b"11 size=0\n"]
KINDS = [b"0", b"x", b"g", b"L", b"K", b"5", b"2", b"S", b"\0", b"Z", b"X"]

op = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255), st.booleans()),
    st.tuples(st.just("size"), st.integers(0, 10**6), st.sampled_from(HOSTILE_SIZES)),
    st.tuples(st.just("kind"), st.integers(0, 10**6), st.sampled_from(KINDS)),
    st.tuples(st.just("ext"), st.integers(0, 10**6), st.sampled_from([b"x", b"g", b"L", b"K"]),
              st.one_of(st.sampled_from(HOSTILE_PAX), st.binary(max_size=40))),
    st.tuples(st.just("data"), st.integers(0, 10**6), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=600)),
)


def mutate(fmt: str, ops: list[tuple]) -> bytes:
    raw, heads, datas = base_shard(fmt)
    b = bytearray(raw)
    for o in ops:
        kind, at = o[0], o[1]
        h = heads[at % len(heads)]
        if kind in ("flip", "size", "kind") and h + 512 > len(b):
            continue  # that header was cut off by an earlier truncation
        if kind == "flip":  # a byte of a header (checksum fixed or not)
            b[h + at % 512] ^= o[2]
            if o[3]:
                b[h:h + 512] = fix_checksum(b[h:h + 512])
        elif kind == "size":
            b[h + 124:h + 136] = o[2].ljust(12, b"\0")[:12]
            b[h:h + 512] = fix_checksum(b[h:h + 512])
        elif kind == "kind":
            b[h + 156:h + 157] = o[2]
            b[h:h + 512] = fix_checksum(b[h:h + 512])
        elif kind == "ext":  # an extended header inserted before a header
            h = min(h, len(b))
            payload = o[3]
            b[h:h] = header(b"././@PaxHeader", b"%011o\0" % len(payload), o[2]) + payload + bytes(-len(payload) % 512)
        elif kind == "data":  # json or npy bytes (npy headers included) overwritten
            lo, hi = datas[at % len(datas)]
            p = lo + o[2] % max(1, hi - lo)
            b[p:p + len(o[3])] = o[3]
            del b[len(raw):]  # overwrite, never grow
        elif kind == "truncate":
            del b[at % (len(b) + 1):]
        elif kind == "insert":
            p = at % (len(b) + 1)
            b[p:p] = o[2]
    return bytes(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["pax", "gnu"]), ops=st.lists(op, min_size=1, max_size=3))
def test_mutated_shards_never_crash_hang_or_lose_uncounted_samples(fmt, ops):
    raw = mutate(fmt, ops)
    path = shard_file(raw)
    with bounded():
        for f in (sd.MappedTar(path), open(path, "rb")):  # the parser raises TarError and nothing else
            with f:
                try:
                    for _ in sd.iter_groups(f, 0, want=lambda k: True):
                        pass
                except sd.TarError:
                    pass
        for exts in (None, ("json",)):  # the streaming reader encode, the NIAH build and the audit use: TarError only
            try:
                for g in sd.iter_samples(path, exts):
                    assert all(isinstance(v, bytes) for v in g.members.values())
            except sd.TarError:
                pass
        plan, out, c, err = read_epoch(path, max_frames=4)
    if plan is None:
        assert "selects no sample" in err
        return
    for s in out:
        assert_well_formed(s)
    assert_accounted(plan, out, c)


# ---------------------------------------------------------------------------------------------------- (c) bad samples


def _info_bytes(**change) -> bytes:
    info = sample_info("x")
    info.update(change)
    return json.dumps(info).encode()


def _conv(value=None, who="human") -> bytes:
    info = sample_info("x")
    info["conversations"][0] = {"from": who, "value": info["conversations"][0]["value"] if value is None else value}
    return json.dumps(info).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000
# name -> (json bytes, reason or "" for a sample that is fine, when it is found: "early" before the npy is read,
# "late" after its shape and dtype checks, "prepare" after the NaN/inf scan)
_NINES = b'"num_frames": ' + b"9" * 5000
_DEEP_SOURCE = _info_bytes(source=0).replace(b'"source": 0', b'"source": ' + DEEP)


def _orjson_reads(data: bytes) -> bool:
    """orjson (when installed) parses some nestings the standard parser cannot; the loader never recurses into
    a field it does not use, so such a sample is fine."""
    try:
        return tsample._orjson is not None and isinstance(tsample._orjson.loads(data), dict)
    except ValueError:
        return False


BAD_JSON = {
    "ok": (None, "", "early"),
    "400-digit num_clips": (_info_bytes(num_clips=10**400), "clip count mismatch", "late"),
    "400-digit source": (_info_bytes(source=10**400), "", "early"),
    "400-digit duration": (_info_bytes(duration=10**400), "bad json", "early"),
    "1e400 duration": (_info_bytes(duration=0.5).replace(b'"duration": 0.5', b'"duration": 1e400'), "bad json",
                       "early"),
    "NaN duration": (_info_bytes(duration=float("nan")), "bad json", "early"),
    "negative duration": (_info_bytes(duration=-3.0), "bad json", "early"),
    "5000-digit int": (_info_bytes(num_frames=0).replace(b'"num_frames": 0', _NINES), "bad json", "early"),
    "deep json": (DEEP, "bad json", "early"),
    "deep source": (_DEEP_SOURCE, "" if _orjson_reads(_DEEP_SOURCE) else "bad json", "early"),
    "900 deep source": (_info_bytes(source=0).replace(b'"source": 0', b'"source": ' + b"[" * 900 + b"]" * 900), "",
                        "early"),
    "huge padded_frames": (_info_bytes(padded_frames=10**12), "bad json", "late"),
    "negative padded_frames": (_info_bytes(padded_frames=-1), "bad json", "late"),
    "frame_times not numbers": (_info_bytes(frame_times=["x"] * 8), "bad json", "prepare"),
    "frame_times 400 digits": (_info_bytes(frame_times=[10**400] * 8), "bad json", "prepare"),
    "not an object": (b"[1, 2]", "bad json", "early"),
    "not utf-8": (b'{"a": "\xff\xfe"}', "bad json", "early"),
    "empty": (b"", "bad json", "early"),
    "conversations a dict": (_info_bytes(conversations={"a": 1}), "no conversations", "early"),
    "turn value a list": (_conv(["<image>"]), "bad conversations", "early"),
    "turn from a list": (_conv(who=["human"]), "bad conversations", "early"),
    "lone surrogate": (_conv("<image>\ud800"), "bad conversations", "early"),
}
_F16 = "{'descr': '<f2', 'fortran_order': False, 'shape': %s, }"
BAD_NPY = {
    "ok": (None, ""),
    "unknown descr": (npy_raw("{'descr': '<Z9', 'fortran_order': False, 'shape': (2, 64, 8), }", bytes(2048)),
                      "bad npy"),
    "object dtype": (npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (2, 64, 8), }", bytes(8192)),
                     "bad npy"),
    "fortran order": (npy_raw("{'descr': '<f2', 'fortran_order': True, 'shape': (2, 64, 8), }", bytes(2048)),
                      "bad npy"),
    "negative dims": (npy_raw(_F16 % "(-2, 64, 8)", bytes(2048)), "bad npy"),
    "product past 2**63": (npy_raw(_F16 % "(4611686018427387904, 4611686018427387904, 0)"), "bad npy"),
    "dimension past 2**100": (npy_raw(_F16 % "(0, %d)" % 2**100), "bad npy"),
    "shape beyond the bytes": (npy_raw(_F16 % "(3, 64, 8)", bytes(2048)), "bad npy"),
    "5000-digit dimension": (npy_raw(_F16 % ("(" + "9" * 5000 + ", 64, 8)"), bytes(2048)), "bad npy"),
    "zero itemsize": (npy_raw("{'descr': '<V0', 'fortran_order': False, 'shape': (2, 64, 8), }"), "bad npy"),
    "subarray dtype": (npy_raw("{'descr': ('<f2', (2,)), 'fortran_order': False, 'shape': (2, 64, 4), }",
                               bytes(2048)), "bad npy"),
    "structured dtype": (npy_raw("{'descr': [('a', '<f2')], 'fortran_order': False, 'shape': (2, 64, 8), }",
                                 bytes(2048)), "wrong dtype"),
    "big-endian": (npy(tokens().astype(">f2")), "wrong dtype"),
    "float64": (npy(tokens().astype(np.float64)), "wrong dtype"),
    "header length past the data": (b"\x93NUMPY\x01\x00\xff\xff{'descr'", "bad npy"),
    "bad magic": (b"\x93NUMPX\x01\x00" + bytes(100), "bad npy"),
    "version 3, not utf-8": (npy_raw("{'descr': '\xff\xfe', }", bytes(2048), version=b"\x03\x00"), "bad npy"),
    "nested header": (npy_raw(_F16 % ("(" * 1000 + ")" * 1000)), "bad npy"),
    "empty": (b"", "bad npy"),
    "NaN tokens": (npy(np.where(np.arange(2 * 64 * DIM).reshape(2, 64, DIM) == 5, np.nan, 0.5).astype(np.float16)),
                   "non-finite tokens"),
}


def _hostile_shard(picks: list[tuple[str, str]], fmt: int = tarfile.PAX_FORMAT) -> tuple[bytes, list, Counter]:
    """One sample per (json variant, npy variant), keys s0, s1, ... -> (tar, keys expected through, reasons)."""
    members, want, reasons = [], [], Counter()
    for i, (j, n) in enumerate(picks):
        key = f"s{i}" + "q" * (i % 3) * 60  # every third key long
        info, jr, stage = BAD_JSON[j]
        toks, nr = BAD_NPY[n]
        members += sample(key, label=i % 8, info=info, toks=toks)
        # the first check that fails names the sample: json, then npy, then json after the npy, then the scan
        if jr and stage == "early" or nr and nr != "non-finite tokens":
            reason = jr if jr and stage == "early" else nr
        else:
            reason = (jr if stage == "late" else "") or nr or jr
        if reason:
            reasons[reason] += 1
        else:
            want.append(key)
    return tar_bytes(members, fmt), want, reasons


def test_every_hostile_json_and_npy_is_skipped_and_counted_by_reason():
    picks = [(j, "ok") for j in BAD_JSON] + [("ok", n) for n in BAD_NPY]
    raw, want, reasons = _hostile_shard(picks)
    with bounded():
        plan, out, c, err = read_epoch(shard_file(raw), max_frames=4)
    assert not err and plan.nsamples == len(picks)
    assert [s.key for s in out] == want
    for s in out:
        assert_well_formed(s)
    assert {k: v for k, v in c.items() if k not in NOT_SKIPS} == dict(reasons)
    assert c["skipped"] == sum(reasons.values()) and not sum(c[k] for k in SHARD_LOSS)


MIX_JSON = sorted(k for k in BAD_JSON if k not in ("deep json", "deep source"))  # 0.3 s each: tested once above


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.tuples(st.sampled_from(MIX_JSON), st.sampled_from(sorted(BAD_NPY))),
                      min_size=1, max_size=5),
       fmt=st.sampled_from(["pax", "gnu"]))
def test_hostile_samples_in_any_mix(picks, fmt):
    """Any mix of hostile samples in PAX or GNU shards: exactly the good samples come through, every other one is
    a skip counted under the reason of the first check it fails."""
    raw, want, reasons = _hostile_shard(picks, FORMATS[fmt])
    with bounded():
        plan, out, c, err = read_epoch(shard_file(raw), max_frames=4)
    assert not err
    assert [s.key for s in out] == want
    assert {k: v for k, v in c.items() if k not in NOT_SKIPS} == dict(reasons)


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.integers(), st.floats(), st.text(max_size=4))
_JSON = st.recursive(_JSON_LEAF, lambda kids: st.lists(kids, max_size=4), max_leaves=12)
_GRID = st.one_of(st.lists(st.integers(-2, 7), min_size=2, max_size=2), _JSON)


def _as_encoded(grids: list) -> tuple[list[int], list]:
    """(tiles_per_image, image_grids) as encode writes them: 1 + cols x rows tiles per grid, one tile for None."""
    return [1 + g[0] * g[1] if g else 1 for g in grids], [list(g) if g else None for g in grids]


_GRIDS_AS_ENCODED = st.lists(st.one_of(st.tuples(st.integers(1, 4), st.integers(1, 3)), st.none()), min_size=1,
                             max_size=3).map(_as_encoded)
_GRIDS_HOSTILE = st.tuples(st.one_of(st.lists(st.integers(1, 9), min_size=1, max_size=3), _JSON),
                           st.one_of(st.lists(_GRID, max_size=4), _JSON))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=st.one_of(_GRIDS_AS_ENCODED, _GRIDS_HOSTILE),
       order=st.sampled_from(["base_then_rows"] * 3 + ["one_per_image", "rows", 7, None]),
       extra=st.sampled_from([0, 0, 0, -1, 1]))
def test_hostile_image_tile_fields_are_a_sample_error_or_the_stitched_tokens(layout, order, extra):
    """An image sample's json as untrusted input: tiles_per_image, image_grids and tile_order of any JSON shape or
    value (and layouts as encode writes them, next to token arrays of one tile more or less). Parsing gives the
    tokens (each image's base tile first, every token exactly once) or a SampleError; never another exception."""
    per, grids = layout
    tiles = max(1, (sum(per) if isinstance(per, list) and all(type(t) is int for t in per) else 3) + extra)
    arr = np.arange(tiles * 64 * DIM, dtype=np.float32).reshape(tiles, 64, DIM)
    n_img = len(per) if isinstance(per, list) and per else 1
    info = {"key": "k", "media_type": "image", "image_mode": "anyres_nopad", "tiles_per_image": per,
            "image_grids": grids, "tile_order": order, "duration": 0.0,
            "conversations": [{"from": "human", "value": "<image>\n" * n_img + "What?"},
                              {"from": "gpt", "value": "A cat."}]}
    g = sd.Group("k", {"json": bytearray(json.dumps(info).encode()), "tokens.npy": bytearray(npy(arr))}, 0, 0)
    from longvid.model.tokenizer import chat_encoder

    opts = tsample.ParseOptions(kind="tokens", dim=DIM, image_token_id=3, label_mode="qwen_2")
    try:
        got = tsample.parse_train_sample(g, chat_encoder(tokenizer()), opts)
    except tsample.SampleError:
        return
    visual = np.asarray(got.visual, np.float32)
    assert visual.shape == (tiles * 64, DIM) and got.splits == tuple(t * 64 for t in per)
    assert sorted(visual[:, 0].tolist()) == arr.reshape(-1, DIM)[:, 0].tolist()  # a permutation of the tokens
    t0 = 0
    for t in per:  # each image starts with its base tile, as stored
        assert np.array_equal(visual[t0 * 64:(t0 + 1) * 64], arr[t0])
        t0 += t


def test_a_source_without_one_usable_sample_is_an_error_not_a_hang(tmp_path):
    """Every sample bad, or every key excluded: the loader raises DataError after an epoch instead of reading
    the shards round and round for ever."""
    raw, want, _ = _hostile_shard([("deep json", "ok"), ("ok", "negative dims"), ("empty", "ok")])
    assert not want
    plan = ts.index_source("bad", [shard_file(raw)])
    cfg = ld.LoaderConfig(sources=[plan.to_dict()], batch_size=1, buffer=2, mix="samples", dim=DIM, prefetch=0)
    with bounded(), pytest.raises(ts.DataError, match="no usable sample"):
        next(iter(ld.StageLoader(cfg, 0, 1, tokenizer())))
    good = ts.index_source("good", [shard_file(tar_bytes(sample("a") + sample("b", label=1)))])
    cfg = ld.LoaderConfig(sources=[good.to_dict()], batch_size=1, buffer=2, mix="samples", dim=DIM, prefetch=0)
    with bounded(), pytest.raises(ts.DataError, match="every sample .* is excluded"):
        next(iter(ld.StageLoader(cfg, 0, 1, tokenizer(), exclude=frozenset({"a", "b"}))))


def test_non_utf8_member_name_is_a_skipped_sample():
    """A name that is not UTF-8 reads (as tarfile reads it, with surrogates) and its sample is skipped as a bad
    key; the samples after it still come through."""
    bad = member(b"\xff\xfe.json", json.dumps(sample_info("x")).encode()) + member(b"\xff\xfe.tokens.npy", npy(tokens()))
    raw = bad + GOOD + bytes(1024)
    with bounded():
        plan, out, c, err = read_epoch(shard_file(raw))
    assert [s.key for s in out] == ["a"] and c["bad key"] == 1 and c["skipped"] == 1


def test_index_json_with_hostile_counts_is_ignored(tmp_path, caplog):
    """An index.json with counts that are no usable integers: a warning, and the samples are counted another
    way."""
    synth.write_synthetic_token_shards(str(tmp_path / "j"), 4, per_shard=4, dim=DIM, write_index=False)
    for bad in ('{"shardlist": [{"url": "shards/shard-000000-000.tar", "nsamples": 1e400}]}',
                '{"shardlist": [{"url": "shards/shard-000000-000.tar", "nsamples": -3}]}',
                "[" * 100_000, "\udcff"):
        (tmp_path / "j" / "index.json").write_bytes(bad.encode("utf-8", "surrogateescape"))
        with caplog.at_level(logging.WARNING, logger="longvid.train.data"):
            plan = ts.index_source("j", [str(tmp_path / "j" / "shards" / "*.tar")])
        assert plan.nsamples == 4 and "index.json" not in plan.count_from


# ---------------------------------------------------------------------------------------------------- other readers


def _long_key_members(n: int = 3) -> list[tuple[str, dict]]:
    return [(f"{i}" + "v" * 149, {"key": f"{i}" + "v" * 149, "num_frames": 4}) for i in range(n)]


def _mp4() -> bytes:
    from longvid.operators.mp4 import encode_mp4

    return encode_mp4(np.full((4, 32, 32, 3), 90, np.uint8), fps=4.0, crf=30)


def test_encode_reads_long_key_shards_and_fails_only_the_corrupt_samples(tmp_path):
    """encode's read_shard over a webdataset (PAX) shard with 150-character keys reads every sample; a malformed
    PAX record in the middle (operators.shards raises TarError there) fails the samples from there on with a reason,
    never the job."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from longvid.pipelines.encode_samples import read_shard

    samples = _long_key_members()
    (tmp_path / "shards").mkdir()
    (tmp_path / "manifests").mkdir()
    tar = tmp_path / "shards" / "shard-000000-000.tar"
    with wds.TarWriter(str(tar)) as w:
        for k, info in samples:
            w.write({"__key__": k, "json": info, "mp4": b"not decoded here"})
    pq.write_table(pa.table({"key": [k for k, _ in samples], "shard": ["shards/shard-000000-000.tar"] * 3,
                             "num_frames": [4] * 3}), tmp_path / "manifests" / "part-000000.parquet")
    item = {"unit": 0, "shard": "shards/shard-000000-000.tar",
            "manifest": str(tmp_path / "manifests" / "part-000000.parquet")}
    rows = list(read_shard(item, str(tmp_path), 32))
    assert [r["key"] for r in rows] == [k for k, _ in samples] and all(r["mp4"] == b"not decoded here" for r in rows)
    raw = tar.read_bytes()
    with tarfile.open(tar) as t:
        third = [m for m in t][4].offset  # the PAX header of the third sample's json
    bad = b"99 path=x\n"  # a PAX record whose length runs past its header
    tar.write_bytes(raw[:third] + header(b"././@PaxHeader", b"%011o\0" % len(bad), b"x")
                    + bad.ljust(512, b"\0") + raw[third:])
    with bounded():
        rows = {r["key"]: r for r in read_shard(item, str(tmp_path), 32)}
    # the second sample is not known to be whole until the next header reads: it fails with the rest
    assert [rows[k].get("status", "ok") for k, _ in samples] == ["ok", "read", "read"]
    assert all("unreadable after 1 samples: TarError" in rows[k]["reason"] for k, _ in samples[1:])


def test_niah_haystack_reads_long_keys_and_skips_corrupt_members(tmp_path, caplog):
    """The NIAH build's haystack reader: PAX and GNU shards with 150-character keys give their frames; an mp4
    that does not decode and a shard truncated part way are skipped with a warning naming them."""
    from longvid.pipelines.niah_build import iter_shard_frames

    mp4 = _mp4()
    keys = [k for k, _ in _long_key_members()]
    (tmp_path / "a.tar").write_bytes(tar_bytes([(f"{keys[0]}.mp4", mp4), (f"{keys[1]}.mp4", b"garbage" * 50)]))
    whole = tar_bytes([(f"{keys[2]}.mp4", mp4), ("z.mp4", mp4)], tarfile.GNU_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(whole)) as t:
        cut = t.getmember("z.mp4").offset_data + 10
    (tmp_path / "b.tar").write_bytes(whole[:cut])
    (tmp_path / "c.tar").write_bytes(b"\x01" * 3000)
    with bounded(), caplog.at_level(logging.WARNING, logger="longvid.niah.build"):
        got = list(iter_shard_frames([str(tmp_path / n) for n in ("a.tar", "c.tar", "b.tar")], limit=100))
    assert [p[0]["key"] for _, p in got] == [keys[0], keys[2]] and all(f.shape[0] == 4 for f, _ in got)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert f"member {keys[1]}.mp4 skipped" in text and "c.tar: not a readable tar shard" in text
    assert "b.tar: unreadable after 4 frames" in text


def test_audit_reads_long_key_members_and_never_hangs_on_a_negative_size():
    """The audit's shard reader: 150-character keys in PAX and GNU shards; a member size that points backwards
    (which makes the seeking tarfile reader of Python 3.11 loop for ever) is an error, within the bound."""
    from longvid.operators.audit.videos import read_members

    keys = [k for k, _ in _long_key_members()]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        raw = tar_bytes([(f"{k}.mp4", k.encode()) for k in keys] + [(f"{k}.json", b"{}") for k in keys], fmt)
        assert read_members(io.BytesIO(raw), {f"{keys[2]}.mp4", f"{keys[0]}.json"}) == {
            f"{keys[2]}.mp4": keys[2].encode(), f"{keys[0]}.json": b"{}"}
    back = (-1024 & ((1 << 88) - 1)).to_bytes(11, "big")
    raw = member(b"a.mp4", b"x" * 10) + header(b"b.mp4", b"\xff" + back) + bytes(512) + member(b"c.mp4", b"y")
    with bounded():
        with pytest.raises(sd.TarError):
            read_members(io.BytesIO(raw + bytes(1024)), {"c.mp4"})
