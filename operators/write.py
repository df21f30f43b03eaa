"""Write one work unit: WebDataset tar parts, its manifest part and its failures part, committed atomically.

    unit N -> shards/shard-N-000.tar [, shard-N-001.tar ...]   (a new part when the size target is reached)
              failures/part-N.parquet
              manifests/part-N.parquet                          (written last: its presence = unit committed)

Tars are deterministic (sorted-key JSON, zeroed mtimes/owners), so re-running a unit rewrites the same bytes.
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
import os
import re
import shutil
import socket
import tarfile
import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longvid.manifests.schema import FAILURE_SCHEMA, MANIFEST_SCHEMA, rows_to_table
from longvid.operators import storage
from longvid.operators.records import Failure

SHARDS, MANIFESTS, FAILURES = "shards", "manifests", "failures"


def shard_name(unit: int, part: int) -> str:
    return f"{SHARDS}/shard-{unit:06d}-{part:03d}.tar"


def manifest_name(unit: int) -> str:
    return f"{MANIFESTS}/part-{unit:06d}.parquet"


def failures_name(unit: int) -> str:
    return f"{FAILURES}/part-{unit:06d}.parquet"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


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
        self._tar: tarfile.TarFile | None = None
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
                self._tmpdir = tempfile.TemporaryDirectory(prefix=f"{tag}u{self.unit}-p{os.getpid()}-", dir=root)
            return self._tmpdir.name
        d = os.path.join(self.out, SHARDS)
        os.makedirs(d, exist_ok=True)
        return d

    def _open_part(self) -> None:
        final = shard_name(self.unit, len(self._parts))
        fd, tmp = tempfile.mkstemp(prefix=f"{storage.TMP_PREFIX}shard-{self.unit:06d}-", suffix=".tar",
                                   dir=self._part_dir())
        os.close(fd)
        self._parts.append((tmp, final))
        self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        self._tar_bytes = 0

    def add(self, key: str, members: dict[str, bytes], row: dict[str, Any]) -> bool:
        """Append a sample; returns False (and writes nothing) when the key is already in this unit."""
        if key in self.keys:
            return False
        size = sum(len(b) for b in members.values())
        if self._tar is None or (self._tar_bytes > 0 and self._tar_bytes + size > self.shard_size):
            self._close_part()
            self._open_part()
        assert self._tar is not None
        for ext in sorted(members):
            data = members[ext]
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._tar_bytes += size
        self.keys.add(key)
        self.rows.append({**row, "shard": self._parts[-1][1], "unit": self.unit})
        return True

    def fail(self, failure: Failure) -> None:
        self.failures.append({**failure.as_row(), "unit": self.unit})

    def _close_part(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

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
                os.chmod(tmp, storage.file_mode())
                os.replace(tmp, uri)
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
        self._close_part()
        for tmp, _ in self._parts:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()


def sample_members(info: dict[str, Any], payload: dict[str, bytes]) -> dict[str, bytes]:
    """The tar members of a sample: `json` (sorted keys, UTF-8) plus payload members (mp4, tokens.npy, ...)."""
    return {"json": json.dumps(info, sort_keys=True, ensure_ascii=False).encode(), **payload}
