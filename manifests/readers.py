"""Read job outputs (manifests and failures), local or on S3, as pyarrow datasets streamed in batches.

A path may be a job directory (holding `manifests/` and `failures/`, see manifests/schema.py), a `manifests/`
directory, a single manifest part, or a folder holding several job directories. Local paths and `s3://bucket/prefix`
are read through operators/storage/ (the project's one storage stack: its S3 settings, retries and ranged reads;
pyarrow.parquet scans the seekable handles it opens).

Memory stays bounded: nothing here materialises a table; callers iterate `iter_batches`. A part that cannot be read
(corrupt, a column missing or of the wrong type, a value the schema's type cannot hold) raises ManifestError naming
the file, or, for callers that go on without it (the audit), is listed by `usable_parts` / `iter_batches(problems=)`.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from longvid.operators import storage

from .schema import FAILURE_SCHEMA, MANIFEST_SCHEMA

_FORMAT = ds.ParquetFileFormat()


class ManifestError(ValueError):
    """A manifest or failure file that does not follow its schema; names the file and the column."""


def _split(uri: str) -> tuple[str, str]:
    """(scheme prefix, posix path): ("s3://", "bucket/key") or ("", "/abs/local/path")."""
    return ("s3://", uri[len("s3://"):]) if storage.is_s3(uri) else ("", uri)


@dataclass
class JobDir:
    """One job's output directory and the parquet parts found in it (URIs: local paths or s3://...)."""

    uri: str  # as given by the user (for messages and reports)
    root: str  # job directory: an absolute local path or s3://bucket/prefix
    manifest_files: list[str] = field(default_factory=list)
    failure_files: list[str] = field(default_factory=list)

    def path(self, rel: str) -> str:
        """A path relative to the job directory (e.g. a manifest's `shard`), refusing escapes."""
        scheme, root = _split(self.root)
        p = posixpath.normpath(posixpath.join(root, rel))
        if not (p == root or p.startswith(root.rstrip("/") + "/")):
            raise ManifestError(f"{self.uri}: path {rel!r} escapes the job directory")
        return scheme + p

    def rel(self, uri: str) -> str:
        """`uri` (a part of this job) relative to the job directory."""
        return posixpath.relpath(_split(uri)[1], _split(self.root)[1])


def _root(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return posixpath.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def _is_part(uri: str) -> bool:
    base = posixpath.basename(uri)
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def _parquet_files(d: str) -> list[str]:
    return [f for f in storage.list_files(d, suffix=".parquet", recursive=False) if _is_part(f)]


def _job(uri: str, root: str, manifests: list[str]) -> JobDir:
    return JobDir(uri, root, manifests, _parquet_files(storage.join(root, "failures")))


def find_jobs(uri: str) -> list[JobDir]:
    """The job directories under `uri` (see module docstring for what a path may be)."""
    path = _root(uri)
    if storage.exists(path):  # one part
        parent = posixpath.dirname(path)
        return [_job(uri, posixpath.dirname(parent) if posixpath.basename(parent) == "manifests" else parent, [path])]
    if not storage.is_folder(path):
        raise FileNotFoundError(f"--manifests {uri}: not found")
    if storage.is_folder(storage.join(path, "manifests")):
        return [_job(uri, path, _parquet_files(storage.join(path, "manifests")))]
    if posixpath.basename(path) == "manifests":
        return [_job(uri, posixpath.dirname(path), _parquet_files(path))]
    # a folder of job directories: every `.../manifests/*.parquet` below it
    found: dict[str, list[str]] = {}
    for f in storage.list_files(path, suffix=".parquet"):
        if _is_part(f) and posixpath.basename(posixpath.dirname(f)) == "manifests":
            found.setdefault(posixpath.dirname(posixpath.dirname(f)), []).append(f)
    if not found:
        raise FileNotFoundError(f"--manifests {uri}: no manifests/*.parquet found (expected a job directory, see manifests/schema.py)")
    base = _split(path)[1]
    return [_job(uri.rstrip("/") + "/" + posixpath.relpath(_split(r)[1], base), r, sorted(found[r]))
            for r in sorted(found)]


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(actual.value_type, expected.value_type)
    return False


def _problem(fh, columns: list[str], schema: pa.Schema) -> str | None:
    try:
        actual = pq.read_schema(fh)
    except Exception as e:
        return f"not a readable parquet file: {e}"
    for c in columns:
        want = schema.field(c).type
        if c not in actual.names:
            return f"column {c!r} missing (expected {want}, see manifests/schema.py)"
        got = actual.field(c).type
        if not _compatible(got, want):
            return f"column {c!r} has type {got}, expected {want}"
    return None


def schema_problem(uri: str, columns: list[str], schema: pa.Schema) -> str | None:
    """Why the file cannot serve `columns` of `schema` (not a readable parquet file, a column missing or of a type
    not castable to the schema's), or None."""
    try:
        fh = storage.open_read(uri)
    except Exception as e:  # a StorageError (missing, denied, an outage past the retries): already redacted
        return f"not a readable parquet file: {e}"
    with fh:
        return _problem(fh, columns, schema)


def check_schema(uri: str, columns: list[str], schema: pa.Schema, label: str) -> None:
    """Each requested column exists in the file with a type castable to the schema's; else ManifestError."""
    why = schema_problem(uri, columns, schema)
    if why:
        raise ManifestError(f"{label}: {why}")


def _label(job: JobDir, f: str) -> str:
    return f"{job.uri}: {job.rel(f)}"


def _scan(handles: list, schema: pa.Schema, columns: list[str]) -> ds.Dataset:
    """A dataset over open parquet handles (storage.open_read), read as `columns` of `schema` (types cast)."""
    sub = pa.schema([schema.field(c) for c in columns])
    return ds.FileSystemDataset([_FORMAT.make_fragment(fh) for fh in handles], sub, _FORMAT)


def _dataset(job: JobDir, files: list[str], schema: pa.Schema, columns: list[str]) -> ds.Dataset:
    for f in files:
        check_schema(f, columns, schema, _label(job, f))
    return _scan([storage.open_read(f) for f in files], schema, columns)  # closed with the dataset


def usable_parts(jobs: list[JobDir], columns: list[str], failures: bool = False) -> tuple[list[JobDir], list[tuple[str, str]]]:
    """The jobs with only their manifest (or failure) parts whose schema serves `columns`, and (file, why) for each
    part left out: a corrupt parquet file, a missing column, a column of the wrong type."""
    schema = FAILURE_SCHEMA if failures else MANIFEST_SCHEMA
    out, problems = [], []
    for job in jobs:
        keep = []
        for f in job.failure_files if failures else job.manifest_files:
            why = schema_problem(f, columns, schema)
            if why:
                problems.append((_label(job, f), why))
            else:
                keep.append(f)
        out.append(replace(job, failure_files=keep) if failures else replace(job, manifest_files=keep))
    return out, problems


def read_manifests(paths: list[str], columns: list[str] | None = None) -> ds.Dataset:
    """All manifest parts under `paths` as one dataset with MANIFEST_SCHEMA types (columns checked per file)."""
    columns = list(columns or MANIFEST_SCHEMA.names)
    jobs = [j for p in paths for j in find_jobs(p)]
    parts = [_dataset(j, j.manifest_files, MANIFEST_SCHEMA, columns) for j in jobs if j.manifest_files]
    if not parts:
        return ds.dataset(MANIFEST_SCHEMA.empty_table().select(columns))
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def read_failures(paths: list[str], columns: list[str] | None = None) -> ds.Dataset:
    """All failure parts under `paths` as one dataset with FAILURE_SCHEMA types."""
    columns = list(columns or FAILURE_SCHEMA.names)
    jobs = [j for p in paths for j in find_jobs(p)]
    parts = [_dataset(j, j.failure_files, FAILURE_SCHEMA, columns) for j in jobs if j.failure_files]
    if not parts:
        return ds.dataset(FAILURE_SCHEMA.empty_table().select(columns))
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def iter_batches(jobs: list[JobDir], columns: list[str], batch_size: int = 65536, failures: bool = False,
                 problems: list[tuple[str, str]] | None = None, checked: bool = False) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(job index, batch) over every job's manifest (or failure) parts, one part and one row group at a time.

    A part that does not follow its schema, or that breaks while it is read (a corrupt row group, a value that does
    not fit the schema's type), raises ManifestError naming the file; with a `problems` list it is appended there
    as (file, why) instead, and the other parts are read. `checked`: the parts passed `usable_parts` already.
    """
    schema = FAILURE_SCHEMA if failures else MANIFEST_SCHEMA
    for n, job in enumerate(jobs):
        for f in job.failure_files if failures else job.manifest_files:
            label, rows, fh, why = _label(job, f), 0, None, None
            try:
                fh = storage.open_read(f)
            except Exception as e:  # a StorageError: already redacted
                why = (f"cannot be read: {type(e).__name__}: {e}" if checked else f"not a readable parquet file: {e}")
            try:
                if why is None and not checked:
                    why = _problem(fh, columns, schema)
                if why is None:
                    try:
                        batches = _scan([fh], schema, columns).to_batches(
                            columns=columns, batch_size=batch_size, batch_readahead=1, fragment_readahead=1)
                    except Exception as e:  # pyarrow refuses the file itself
                        why = f"cannot be read: {type(e).__name__}: {e}"
                if why:
                    if problems is None:
                        raise ManifestError(f"{label}: {why}")
                    problems.append((label, why))
                    continue
                while True:
                    try:
                        b = next(batches)
                    except StopIteration:
                        break
                    except Exception as e:  # a corrupt row group, a value out of range of the schema's type, ...
                        why = f"cannot be read after {rows} rows (the rest of the file is left out): {type(e).__name__}: {e}"
                        if problems is None:
                            raise ManifestError(f"{label}: {why}") from e
                        problems.append((label, why))
                        break
                    if b.num_rows:
                        rows += b.num_rows
                        yield n, b
            finally:
                if fh is not None:
                    fh.close()
