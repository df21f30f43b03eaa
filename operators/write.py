"""Write one work unit: WebDataset tar parts, its manifest part and its failures part, committed atomically.

    unit N -> shards/shard-N-000.tar [, shard-N-001.tar ...]   (a new part when the size target is reached)
              failures/part-N.parquet
              manifests/part-N.parquet                          (written last: its presence = unit committed)

Tars are POSIX (ustar headers; a PAX header only for a member name longer than 100 characters) and deterministic
(sorted-key JSON, zeroed mtimes/owners, in the PAX headers too), so re-running a unit rewrites the same bytes; the
tar bytes themselves are operators.shards' (tar_member_header, TarPartWriter).
A sample goes into a tar whole or not at all: its json, key and manifest row are checked before any byte is written,
and a sample that cannot be written (`SampleWriteError`, stage "write", naming the field) is the caller's failure
row while the rest of the unit is written. An I/O error (e.g. a full disk: `storage.NoSpace`) fails the unit.
Credentials never reach a unit's files: the addresses in a sample's json and manifest row (`uri`, `uris`, the
`encoder` weights) and the failure rows' `uri`, `reason` and `file` are redacted here (storage.redact).
Local output: parts are written under temporary names in the destination folder and renamed at commit.
S3 output: parts are written to a local scratch folder and uploaded at commit (an object appears only when
complete, see operators.storage.put_file). Until the manifest part exists, nothing of the unit counts.

An attempt killed mid-unit leaves debris that the next attempt cleans: local temp tars of the unit and extra parts
(at commit), on S3 also the unit's incomplete multipart uploads (at commit) and, on the same machine, the scratch
folders of dead writer processes of the same output (when a writer opens its scratch folder).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longvid.manifests.schema import FAILURE_SCHEMA, MANIFEST_SCHEMA, rows_to_table
from longvid.operators import storage
from longvid.operators.errors import RecordError
from longvid.operators.records import Failure
from longvid.operators.shards import TarPartWriter, tar_member_header

SHARDS, MANIFESTS, FAILURES = "shards", "manifests", "failures"
# A member name `<key>.<ext>` must stay a valid file name (255 bytes: tools unpack shards, encode spills samples to
# files named so), with room for the longest extension (`tokens.npy`).
MAX_KEY_BYTES = 240
MAX_JSON_DEPTH = 64  # a sample json nested deeper is refused (readers bound the depth they accept)
_INT64 = 2**63
_BAD_KEY_CHARS = re.compile(r"[./\\\x00-\x1f\x7f]")
SOURCE_FIELDS = ("uri", "uris", "encoder")  # addresses a user gave: the sample's source, the encoder's weights
FAILURE_TEXT = ("uri", "reason", "file")  # failure-row columns that may hold a user's path or an error message


def shard_name(unit: int, part: int) -> str:
    return f"{SHARDS}/shard-{unit:06d}-{part:03d}.tar"


def manifest_name(unit: int) -> str:
    return f"{MANIFESTS}/part-{unit:06d}.parquet"


def failures_name(unit: int) -> str:
    return f"{FAILURES}/part-{unit:06d}.parquet"


class SampleWriteError(RecordError):
    """One sample cannot be written (stage "write"); `field` names the culprit. Nothing of it was written."""

    def __init__(self, reason: str, field: str):
        super().__init__("write", reason, field)


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class UnitWriter:
    """Collects the samples and failures of one unit and commits them.

    `add(key, members, row)` appends one sample's tar members (ext -> bytes) and its manifest row (without
    `shard`, which the writer fills in). `fail(failure)` records a failure. `commit()` makes it all visible.
    """

    def __init__(self, out: str, unit: int, shard_size_bytes: int, manifest_schema: pa.Schema = MANIFEST_SCHEMA,
                 scratch: str | None = None):
        self.out = out.rstrip("/")
        self.unit = unit
        self.shard_size = int(shard_size_bytes)
        self.schema = manifest_schema
        self.rows: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        self._parts: list[tuple[str, str]] = []  # (temp path, final relative name)
        self._tar: TarPartWriter | None = None
        self._tar_bytes = 0
        self._remote = storage.is_s3(self.out)
        self._scratch = scratch
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ parts
    def _scratch_tag(self) -> str:
        """Scratch folder names: longvid-<output hash>-<host hash>-u<unit>-p<pid>-<random> (S3 output)."""
        out = hashlib.blake2b(self.out.encode(), digest_size=4).hexdigest()
        host = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()
        return f"longvid-{out}-{host}-"

    def _remove_dead_scratch(self, root: str, tag: str) -> None:
        """Scratch folders of this output left on this host by writer processes that no longer exist (killed)."""
        try:
            names = os.listdir(root)
        except OSError:
            return
        for name in names:
            m = re.match(re.escape(tag) + r"u\d+-p(\d+)-", name)
            if not m or int(m.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue  # alive (or not ours to signal): maybe a writer at work
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def _part_dir(self) -> str:
        if self._remote:
            if self._tmpdir is None:
                root = self._scratch or tempfile.gettempdir()
                tag = self._scratch_tag()
                self._remove_dead_scratch(root, tag)
                try:
                    self._tmpdir = tempfile.TemporaryDirectory(prefix=f"{tag}u{self.unit}-p{os.getpid()}-", dir=root)
                except OSError as e:
                    raise storage.os_error(root, f"create the scratch folder of {self.out}", e) from None
            return self._tmpdir.name
        d = os.path.join(self.out, SHARDS)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise storage.os_error(d, "makedirs", e) from None
        return d

    def _open_part(self) -> None:
        final = shard_name(self.unit, len(self._parts))
        d = self._part_dir()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{storage.TMP_PREFIX}shard-{self.unit:06d}-", suffix=".tar", dir=d)
            os.close(fd)
        except OSError as e:
            raise storage.os_error(d, "write", e) from None
        self._parts.append((tmp, final))
        try:
            self._tar = TarPartWriter(tmp)
        except OSError as e:
            raise storage.os_error(self._where(), "write", e) from None
        self._tar_bytes = 0

    def _where(self) -> str:
        """The file an I/O error of the open part is about: its final name (local) or the scratch file (S3)."""
        tmp, final = self._parts[-1]
        return f"{tmp} (local scratch of {storage.join(self.out, final)})" if self._remote else \
            storage.join(self.out, final)

    def add(self, key: str, members: dict[str, bytes], row: dict[str, Any]) -> bool:
        """Append a sample; returns False (and writes nothing) when the key is already in this unit.

        Raises SampleWriteError (and writes nothing) when the sample cannot be written: a key that is not a valid
        member name, a manifest row value its column cannot hold. A StorageError (e.g. NoSpace) is the unit's."""
        if key in self.keys:
            return False
        check_key(key)
        row = _without_credentials(row)
        full = {**row, "shard": "", "unit": self.unit}
        check_row(full, self.schema)
        headers = []
        for ext in sorted(members):
            data = members[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise SampleWriteError(f"member {ext}: expected bytes, got {type(data).__name__}", ext)
            try:
                headers.append((tar_member_header(f"{key}.{ext}", len(data)), data))
            except (ValueError, UnicodeError) as e:
                raise SampleWriteError(f"member {key}.{ext}: no valid tar header: {e}", "key") from None
        size = sum(len(d) for _, d in headers)
        if self._tar is None or (self._tar_bytes > 0 and self._tar_bytes + size > self.shard_size):
            self._close_part()
            self._open_part()
        assert self._tar is not None
        try:
            for header, data in headers:
                self._tar.write(header, data)
        except OSError as e:
            raise storage.os_error(self._where(), "write", e) from None
        self._tar_bytes += size
        self.keys.add(key)
        self.rows.append({**row, "shard": self._parts[-1][1], "unit": self.unit})
        return True

    def fail(self, failure: Failure) -> None:
        """Record a failure row. Its text is made storable whatever it holds (a lone surrogate becomes \\udXXX)."""
        self.failures.append(_storable_failure({**failure.as_row(), "unit": self.unit}))

    def _close_part(self) -> None:
        if self._tar is not None:
            tar, self._tar = self._tar, None
            try:
                tar.close()
            except OSError as e:
                raise storage.os_error(self._where(), "write", e) from None

    # ------------------------------------------------------------------ commit
    def commit(self) -> dict[str, Any]:
        """Shards first, failures next, manifest last. Returns counts for the progress line."""
        self._close_part()
        finals = []
        for tmp, final in self._parts:
            uri = storage.join(self.out, final)
            if self._remote:
                storage.put_file(tmp, uri)
                os.remove(tmp)
            else:
                try:
                    os.chmod(tmp, storage.file_mode())
                    os.replace(tmp, uri)
                except OSError as e:
                    raise storage.os_error(uri, "commit", e) from None
            finals.append(final)
        self._remove_stale_parts(set(finals))
        storage.write_bytes(storage.join(self.out, failures_name(self.unit)),
                            table_bytes(rows_to_table(self.failures, FAILURE_SCHEMA)))
        storage.write_bytes(storage.join(self.out, manifest_name(self.unit)),
                            table_bytes(rows_to_table(self.rows, self.schema)))
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
        return {
            "unit": self.unit,
            "samples": len(self.rows),
            "failures": len(self.failures),
            "shards": finals,
            "nsamples": [sum(1 for r in self.rows if r["shard"] == f) for f in finals],
            "bytes": sum(int(r.get("bytes") or 0) for r in self.rows),
            "frames": sum(int(r.get("num_frames") or 0) for r in self.rows),
            "seconds": sum(float(r.get("duration") or 0.0) for r in self.rows),
            "failure_stages": [f["stage"] for f in self.failures],
        }

    def _remove_stale_parts(self, keep: set[str]) -> None:
        """A crashed earlier attempt of this unit may have left more parts than this one wrote."""
        prefix = storage.join(self.out, SHARDS) + "/"
        stem = f"shard-{self.unit:06d}-"
        # list this unit's parts only: listing every shard of the job at each commit is O(shards) per unit
        for uri in storage.list_files(storage.join(self.out, SHARDS), suffix=".tar", name_prefix=stem):
            rel = uri[len(prefix):] if uri.startswith(prefix) else uri.rsplit("/", 1)[-1]
            if rel.startswith(stem) and f"{SHARDS}/{rel}" not in keep:
                storage.delete(uri)
        if self._remote:  # a dead attempt's shard upload that never completed (this attempt's are all done)
            try:
                storage.abort_multipart_uploads(storage.join(self.out, SHARDS, stem))
            except storage.StorageError:  # e.g. no s3:ListBucketMultipartUploads: a cost, not an error of the unit
                pass
        # ... and, when it was killed mid-unit, its half-written temporary tars (list_files hides them; a glob of
        # shards/*.tar does not). This attempt's own parts are already renamed: only dead attempts' remain.
        local = os.path.join(self.out, SHARDS)
        if not self._remote and os.path.isdir(local):
            for name in os.listdir(local):
                if name.startswith(f"{storage.TMP_PREFIX}{stem}"):
                    try:
                        os.remove(os.path.join(local, name))
                    except FileNotFoundError:
                        pass

    def abort(self) -> None:
        """Remove this attempt's temporary parts and scratch folder (after any error, a full disk included)."""
        if self._tar is not None:
            self._tar.discard()
            self._tar = None
        for tmp, _ in self._parts:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()


def sample_members(info: dict[str, Any], payload: dict[str, bytes]) -> dict[str, bytes]:
    """The tar members of a sample: `json` (sorted keys, UTF-8) plus payload members (mp4, tokens.npy, ...).

    Raises SampleWriteError naming the field (`conversations[1].value`, ...) when `info` holds a value standard
    JSON readers cannot read back as written (see check_json)."""
    check_json(info)
    info = _without_credentials(info)
    return {"json": json.dumps(info, sort_keys=True, ensure_ascii=False, allow_nan=False).encode(), **payload}


def check_key(key: Any) -> None:
    """A sample key must be a non-empty string without dots, slashes, backslashes or control characters (WebDataset
    groups members by the name up to the first dot) and at most MAX_KEY_BYTES bytes of UTF-8."""
    if not isinstance(key, str) or not key:
        raise SampleWriteError(f"sample key {key!r}: must be a non-empty string", "key")
    m = _BAD_KEY_CHARS.search(key)
    if m:
        raise SampleWriteError(f"sample key {key[:80]!r}: holds {m.group()!r} at character {m.start()}", "key")
    try:
        n = len(key.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise SampleWriteError(f"sample key {key[:80]!r}: {_unicode_problem(e)}", "key") from None
    if n > MAX_KEY_BYTES:
        raise SampleWriteError(f"sample key of {n} bytes ({key[:40]}...): at most {MAX_KEY_BYTES} fit a member name "
                               "that stays a valid file name; shorten the video id", "key")


def check_json(value: Any, path: str = "") -> None:
    """Raise SampleWriteError naming the field (a path like `texts[2].text`) for a value that would not be written
    as standard JSON every reader reads back as written: a non-string key, a string that is not valid Unicode
    (a lone surrogate), NaN or an infinity, an integer outside the 64-bit range, a type JSON has no value for, or
    nesting deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        name = where or "(the sample json)"
        if depth > MAX_JSON_DEPTH:
            raise SampleWriteError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels", where)
        if isinstance(v, str):
            _check_text(v, where)
        elif v is None or isinstance(v, bool):
            continue
        elif isinstance(v, int):
            if not -_INT64 <= v < _INT64:
                raise SampleWriteError(f"{name}: integer out of the 64-bit range JSON readers hold exactly", where)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise SampleWriteError(f"{name}: {v!r} is not a JSON number", where)
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise SampleWriteError(f"{name}: key {k!r} is a {type(k).__name__}, JSON keys are strings",
                                           where)
                sub = f"{where}.{k}" if where else k
                _check_text(k, sub)
                stack.append((x, sub, depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        else:
            raise SampleWriteError(f"{name}: a {type(v).__name__} is not a JSON value", where)


def _check_text(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SampleWriteError(f"{where or '(the sample json)'}: {_unicode_problem(e)}", where) from None


def _unicode_problem(e: UnicodeEncodeError) -> str:
    bad = e.object[e.start:e.end]
    return f"character {e.start} ({ascii(bad)}) is a lone surrogate, not valid Unicode text"


def check_row(row: dict[str, Any], schema: pa.Schema) -> None:
    """Raise SampleWriteError naming the column when a manifest row value does not fit its column."""
    extra = set(row) - set(schema.names)
    if extra:
        raise KeyError(f"columns not in schema: {sorted(extra)}")  # a programming error, not the sample's
    for f in schema:
        try:
            pa.array([row.get(f.name)], type=f.type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise SampleWriteError(f"manifest column {f.name}: {str(e).splitlines()[0][:200]}", f.name) from None


def _without_credentials(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with its addresses (SOURCE_FIELDS) redacted: a path or URL a user gave may carry a key."""
    if not any(k in d for k in SOURCE_FIELDS):
        return d
    return {**d, **{k: storage.redact_json(d[k]) for k in SOURCE_FIELDS if k in d}}


def _storable_failure(row: dict[str, Any]) -> dict[str, Any]:
    """A failure row that always fits FAILURE_SCHEMA: text with lone surrogates escaped, paths and messages
    redacted (FAILURE_TEXT), unusable numbers null."""
    out: dict[str, Any] = {}
    for f in FAILURE_SCHEMA:
        v = row.get(f.name)
        if v is None:
            out[f.name] = None
        elif pa.types.is_string(f.type):
            v = storage.redact(v) if f.name in FAILURE_TEXT else str(v)
            out[f.name] = v.encode("utf-8", "backslashreplace").decode("utf-8")
        elif pa.types.is_floating(f.type):
            try:
                out[f.name] = float(v)
            except (TypeError, ValueError, OverflowError):
                out[f.name] = None
        else:
            out[f.name] = v
    return out
