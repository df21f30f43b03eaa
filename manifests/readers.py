"""Read job outputs (manifests and failures), local or on S3, as pyarrow datasets streamed in batches.

A path may be a job directory (holding `manifests/` and `failures/`, see manifests/schema.py), a `manifests/`
directory, a single manifest part, or a folder holding several job directories. `s3://bucket/prefix` paths are
read through a pyarrow filesystem: pass one (e.g. pyarrow.fs.S3FileSystem with an endpoint) or let pyarrow build
one from the uri and the usual AWS environment variables.

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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .schema import FAILURE_SCHEMA, MANIFEST_SCHEMA


class ManifestError(ValueError):
    """A manifest or failure file that does not follow its schema; names the file and the column."""


@dataclass
class JobDir:
    """One job's output directory and the parquet parts found in it."""

    uri: str  # as given by the user (for messages and reports)
    root: str  # job directory, in `filesystem`'s path form
    filesystem: pafs.FileSystem
    manifest_files: list[str] = field(default_factory=list)
    failure_files: list[str] = field(default_factory=list)

    def path(self, rel: str) -> str:
        """A path relative to the job directory (e.g. a manifest's `shard`), refusing escapes."""
        p = posixpath.normpath(posixpath.join(self.root, rel))
        if not (p == self.root or p.startswith(self.root.rstrip("/") + "/")):
            raise ManifestError(f"{self.uri}: path {rel!r} escapes the job directory")
        return p


def _fs_and_path(uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return filesystem, path.rstrip("/") or "/"
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), posixpath.abspath(uri)


def _parquet_files(fs: pafs.FileSystem, d: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(d, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                  and not posixpath.basename(i.path).startswith((".", "_")))


def find_jobs(uri: str, filesystem: pafs.FileSystem | None = None) -> list[JobDir]:
    """The job directories under `uri` (see module docstring for what a path may be)."""
    fs, path = _fs_and_path(uri, filesystem)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"--manifests {uri}: not found")
    if info.type == pafs.FileType.File:
        parent = posixpath.dirname(path)
        root = posixpath.dirname(parent) if posixpath.basename(parent) == "manifests" else parent
        fails = _parquet_files(fs, posixpath.join(root, "failures"))
        return [JobDir(uri, root, fs, [path], fails)]
    sub = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(path))}
    if "manifests" in sub and sub["manifests"].type == pafs.FileType.Directory:
        return [JobDir(uri, path, fs, _parquet_files(fs, posixpath.join(path, "manifests")),
                       _parquet_files(fs, posixpath.join(path, "failures")))]
    if posixpath.basename(path) == "manifests":
        root = posixpath.dirname(path)
        return [JobDir(uri, root, fs, _parquet_files(fs, path), _parquet_files(fs, posixpath.join(root, "failures")))]
    # a folder of job directories: every `.../manifests/*.parquet` below it
    found: dict[str, JobDir] = {}
    for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if i.type == pafs.FileType.File and i.path.endswith(".parquet") and posixpath.basename(posixpath.dirname(i.path)) == "manifests":
            root = posixpath.dirname(posixpath.dirname(i.path))
            if root not in found:
                rel = posixpath.relpath(root, path)
                found[root] = JobDir(uri.rstrip("/") + "/" + rel, root, fs, [], _parquet_files(fs, posixpath.join(root, "failures")))
            found[root].manifest_files.append(i.path)
    if not found:
        raise FileNotFoundError(f"--manifests {uri}: no manifests/*.parquet found (expected a job directory, see manifests/schema.py)")
    for j in found.values():
        j.manifest_files.sort()
    return [found[k] for k in sorted(found)]


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


def schema_problem(fs: pafs.FileSystem, path: str, columns: list[str], schema: pa.Schema) -> str | None:
    """Why the file cannot serve `columns` of `schema` (not a readable parquet file, a column missing or of a type
    not castable to the schema's), or None."""
    try:
        actual = pq.read_schema(path, filesystem=fs)
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


def check_schema(fs: pafs.FileSystem, path: str, columns: list[str], schema: pa.Schema, label: str) -> None:
    """Each requested column exists in the file with a type castable to the schema's; else ManifestError."""
    why = schema_problem(fs, path, columns, schema)
    if why:
        raise ManifestError(f"{label}: {why}")


def _label(job: JobDir, f: str) -> str:
    return f"{job.uri}: {posixpath.relpath(f, job.root)}"


def _dataset(job: JobDir, files: list[str], schema: pa.Schema, columns: list[str]) -> ds.Dataset:
    for f in files:
        check_schema(job.filesystem, f, columns, schema, _label(job, f))
    sub = pa.schema([schema.field(c) for c in columns])
    return ds.dataset(files, schema=sub, format="parquet", filesystem=job.filesystem)


def usable_parts(jobs: list[JobDir], columns: list[str], failures: bool = False) -> tuple[list[JobDir], list[tuple[str, str]]]:
    """The jobs with only their manifest (or failure) parts whose schema serves `columns`, and (file, why) for each
    part left out: a corrupt parquet file, a missing column, a column of the wrong type."""
    schema = FAILURE_SCHEMA if failures else MANIFEST_SCHEMA
    out, problems = [], []
    for job in jobs:
        keep = []
        for f in job.failure_files if failures else job.manifest_files:
            why = schema_problem(job.filesystem, f, columns, schema)
            if why:
                problems.append((_label(job, f), why))
            else:
                keep.append(f)
        out.append(replace(job, failure_files=keep) if failures else replace(job, manifest_files=keep))
    return out, problems


def read_manifests(paths: list[str], columns: list[str] | None = None,
                   filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """All manifest parts under `paths` as one dataset with MANIFEST_SCHEMA types (columns checked per file)."""
    columns = list(columns or MANIFEST_SCHEMA.names)
    jobs = [j for p in paths for j in find_jobs(p, filesystem)]
    parts = [_dataset(j, j.manifest_files, MANIFEST_SCHEMA, columns) for j in jobs if j.manifest_files]
    if not parts:
        return ds.dataset(MANIFEST_SCHEMA.empty_table().select(columns))
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def read_failures(paths: list[str], columns: list[str] | None = None,
                  filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """All failure parts under `paths` as one dataset with FAILURE_SCHEMA types."""
    columns = list(columns or FAILURE_SCHEMA.names)
    jobs = [j for p in paths for j in find_jobs(p, filesystem)]
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
            label, rows = _label(job, f), 0
            why = None if checked else schema_problem(job.filesystem, f, columns, schema)
            if why is None:
                try:
                    sub = pa.schema([schema.field(c) for c in columns])
                    batches = ds.dataset([f], schema=sub, format="parquet", filesystem=job.filesystem).to_batches(
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
