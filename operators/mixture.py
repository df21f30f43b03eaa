"""Released annotation mixtures (VideoChat-Flash `LazySupervisedDataset`) as an ingest source.

A mixture is YAML `datasets: [{json_path, sampling_strategy, data_root, video_read_type?, media_type?}]`, each
dataset one LLaVA-style annotation file. Reading follows the reference, with the differences said below:

    mix = read_mixture("stage3.yaml", roots={"https://...LLaVA-Video-178K": "/data/llava-video"})
    resolved = resolve_dataset(mix.datasets[0])      # reads the file once: record count, media type, the selection
    for item in iter_records(resolved):            # streams the selected records
        ...                                    # AnnotationRecord, or a Failure naming the file, line and field

- `json_path` is relative to the annotations root (default: the mixture's folder), local or `s3://`; a web address
  (the released stage-2 file names two) must be mapped by `roots`, like a `data_root`.
- `data_root` (the released files name public web pages there) is mapped through `roots` (data_root string -> local
  folder or `s3://` prefix; a key also maps every `key/...` below it), else used when it is itself a readable
  folder (relative: to the mixture's folder) or an `s3://` prefix. A video or image dataset without a usable root
  stops the job before any work (`resolve_dataset` raises MixtureError naming the dataset: the CLI exits 2).
- `.json` files are one JSON list, `.jsonl` one record a line (blank lines are no records; the reference would
  crash on them). A `.json` list is read whole, as the reference does (by `resolve_dataset` and again by each
  `iter_records` call); `.jsonl` is streamed (a counting pass, then the selected lines).
- `media_type` defaults from the FIRST record's keys: `image`, else `video`, else `text`.
- `sampling_strategy`: `all`, `first:N`, `first:N%` (N% of the file, rounded up), `first2:N` .. `first4:N` (the 2nd
  to 4th block of N), `end:N` (the last N); anything else, `random` included, is refused. N must be at least 1
  (the reference's `end:0` would take the whole file).
- media path = the dataset's root joined with the record's path (each path of an `image` list); a path that leaves
  the root (absolute, `..`, a link) is refused, where the reference's os.path.join would follow it.
- every selected record becomes one item: an `AnnotationRecord`, or a metadata `Failure` naming the annotation file
  and line (`file:line`; a JSON list item `file:line [item i]`) and the field, for: a record that is not an object
  or not JSON; empty or malformed conversations; a role other than human/gpt; no gpt turn to train on; an
  `<image>` count (counted as the reference does, over the turns it keeps) that differs from the record's media
  (1 for a video, one per image, 0 for text); a bad `start`/`end`/`duration`; a wrong media field; a hostile value
  (NaN, huge numbers, lone surrogates, wrong types). So written + failed == selected. The reference instead swaps
  a record it cannot load for another one, silently.

Over ~500 lines: one format read end to end (the mixture YAML, its datasets' roots and strategies, the annotation
files, one record), each step shaped by the reference's `LazySupervisedDataset`; the per-record body is annotation.py.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterator


from longvid.operators.safe_yaml import YamlRefused, parse_yaml
from longvid.operators import storage
from longvid.operators.errors import ConfigError, RecordError, show
from longvid.operators.records import Failure, sample_key
from longvid.operators.sources import metadata_files
from longvid.operators.sources.base import make_failure
from longvid.operators.sources.values import MAX_SECONDS, BadValue, check_id, json_type, parse_number

MEDIA_TYPES = ("video", "image", "text")
VIDEO_READ_TYPES = ("decord", "av", "gif", "img", "frame")  # the reference's readers (not its test-only "fake")
DATASET_FIELDS = ("json_path", "sampling_strategy", "data_root", "video_read_type", "media_type")
BLOCKS = {"first": 0, "first2": 1, "first3": 2, "first4": 3}
IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_TURNS = 10_000

_NOT_TEXT = re.compile("[\ud800-\udfff]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_COUNT = re.compile(r"^[0-9]{1,15}$", re.ASCII)
_PERCENT = re.compile(r"^([0-9]{1,15}(?:\.[0-9]{1,15})?)%$", re.ASCII)


class MixtureError(ConfigError):
    """A mixture, roots file or annotation file that cannot be used: names the file, the dataset and the field."""


# ------------------------------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """A parsed `sampling_strategy`: `kind` all | first | first2 | first3 | first4 | end; `number` N (a count, or a
    percentage of the file when `percent`)."""

    kind: str
    number: float = 0
    percent: bool = False

    def count(self, total: int) -> int:
        """N for a file of `total` records: the count, or ceil(N * total / 100) for a percentage."""
        if self.percent:
            return math.ceil(float(self.number) * total / 100)
        return int(self.number)

    def select(self, total: int) -> range:
        """Indices of the records selected from a file of `total` records (Python slicing, as the reference)."""
        if self.kind == "all":
            return range(total)
        n = self.count(total)
        if self.kind == "end":
            return range(max(total - n, 0), total)
        b = BLOCKS[self.kind]
        return range(min(b * n, total), min((b + 1) * n, total))

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        num = f"{self.number:g}%" if self.percent else str(int(self.number))
        return f"{self.kind}:{num}"


def parse_strategy(value: Any, where: str = "sampling_strategy") -> Strategy:
    """`all`, `first:N`, `first:N%`, `first2:N` .. `first4:N` (also with %), `end:N` -> Strategy.

    Raises MixtureError naming `where` for anything else: `random`, unknown kinds, N missing, 0, not a plain
    decimal, or a percentage above 100."""
    if not isinstance(value, str):
        raise MixtureError(f"{where}: must be a string like all, first:1000, first:25%, end:500; got {show(value)}")
    text = value.strip()
    if text == "all":
        return Strategy("all")
    kind, sep, num = text.partition(":")
    if kind.startswith("random"):
        raise MixtureError(f"{where}: {show(value)}: random sampling is refused (the reference refuses it too)")
    if not sep or kind not in (*BLOCKS, "end"):
        raise MixtureError(f"{where}: unknown sampling strategy {show(value)} (all, first:N, first:N%, "
                           "first2:N, first3:N, first4:N, end:N)")
    num = num.strip()
    m = _PERCENT.match(num)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise MixtureError(f"{where}: {show(value)}: a percentage must be above 0 and at most 100")
        return Strategy(kind, pct, True)
    if not _COUNT.match(num):
        raise MixtureError(f"{where}: {show(value)}: N must be a whole number or a percentage like 25%")
    if int(num) < 1:
        raise MixtureError(f"{where}: {show(value)}: N must be at least 1")
    return Strategy(kind, int(num))


# -------------------------------------------------------------------------------------------- mixture files


def load_yaml(uri: str, what: str) -> Any:
    """A small YAML file (local or s3://) read by operators/safe_yaml.py (no anchors, aliases, tags or deep nesting;
    a key repeated only with the same value), at most MAX_YAML_BYTES. MixtureError names the file (and line)."""
    try:
        if storage.is_s3(uri):
            data = storage.read_bytes(uri)
        else:
            path = _local(uri)
            if os.path.getsize(path) > MAX_YAML_BYTES:
                raise MixtureError(f"{uri}: {what} is larger than {MAX_YAML_BYTES} bytes")
            with open(path, "rb") as f:
                data = f.read()
    except storage.ObjectNotFound:
        raise MixtureError(f"{uri}: {what} not found") from None
    except FileNotFoundError:
        raise MixtureError(f"{uri}: {what} not found") from None
    except IsADirectoryError:
        raise MixtureError(f"{uri}: {what} is a folder, not a file") from None
    except PermissionError:
        raise MixtureError(f"{uri}: {what} cannot be read (permission denied)") from None
    try:
        return parse_yaml(data, MAX_YAML_BYTES, repeats="equal")
    except YamlRefused as e:
        raise MixtureError(f"{uri}: {what}: {e}") from None


def read_roots(uri: str) -> dict[str, str]:
    """A roots file (`--roots`): a YAML mapping of data_root strings to local folders or s3:// prefixes.
    Relative local folders are taken relative to the roots file's folder."""
    data = load_yaml(uri, "roots file")
    if not isinstance(data, dict):
        raise MixtureError(f"{uri}: a roots file is a mapping of data_root: folder, got {json_type(data)}")
    folder = _parent(uri)
    out: dict[str, str] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k.strip():
            raise MixtureError(f"{uri}: key {show(k)}: a data_root must be a non-empty string")
        if not isinstance(v, str) or not v.strip() or _NOT_TEXT.search(v) or "\x00" in v:
            raise MixtureError(f"{uri}: {k}: must map to a local folder or an s3:// prefix, got {show(v)}")
        v = v.strip()
        out[k.strip()] = v if storage.is_s3(v) or os.path.isabs(v) else storage.join(folder, v)
    return out


def _parent(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(_local(uri)))


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def dataset_name(json_path: str) -> str:
    """A dataset's name: its annotation file's stem (`annotations/video/foo.jsonl` -> `foo`)."""
    leaf = posixpath.basename(json_path.rstrip("/"))
    for ext in (".jsonl", ".json"):
        if leaf.endswith(ext):
            return leaf[: -len(ext)]
    return leaf


def map_root(value: str, roots: dict[str, str] | None) -> str | None:
    """`value` mapped through `roots`: an exact key, else the longest key K with value = K + "/" + rest (then the
    mapped folder joined with rest). None when no key matches."""
    if not roots:
        return None
    if value in roots:
        return roots[value]
    best = None
    for k in roots:
        stem = k.rstrip("/")
        if stem and value.startswith(stem + "/") and (best is None or len(stem) > len(best.rstrip("/"))):
            best = k
    if best is None:
        return None
    rest = value[len(best.rstrip("/")) + 1 :].strip("/")
    return storage.join(roots[best], rest) if rest else roots[best]


@dataclass(frozen=True)
class MixtureDataset:
    """One entry of a mixture's `datasets`, validated and resolved (no annotation file read yet)."""

    mixture: str  # the mixture file
    index: int  # position in `datasets`
    json_path: str  # as written
    annotation: str | None  # resolved local path or s3:// URI; None when it could not be resolved (see problem)
    strategy: Strategy
    data_root: str  # as written ("" when absent)
    media_root: str | None  # the folder / s3:// prefix media paths are joined to; None when unresolved
    video_read_type: str | None
    media_type: str | None  # as given (None: from the first record)
    problem: str = ""  # why annotation or media_root is None

    @property
    def name(self) -> str:
        """The annotation file's stem: the dataset's name (`DIR/<name>/` on ingest, the failures' source)."""
        return dataset_name(self.json_path)

    @property
    def where(self) -> str:
        return f"{self.mixture}: datasets[{self.index}] ({self.name})"


@dataclass(frozen=True)
class Mixture:
    path: str
    datasets: tuple[MixtureDataset, ...]


def read_mixture(
    path: str, roots: dict[str, str] | None = None, annotations: str | None = None
) -> Mixture:
    """Read and validate a mixture YAML; resolve every json_path and data_root (no annotation file is read).

    Raises MixtureError naming the mixture file, the dataset index and the field for a bad entry (unknown or
    missing field, wrong type, bad strategy, video_read_type or media_type, json_path not .json/.jsonl, two
    datasets of one name). What cannot be resolved (a web address without a `roots` mapping, a folder that does
    not exist) is kept as None with the reason, and refused by `resolve_dataset` when the dataset needs it.
    """
    path = str(path)
    data = load_yaml(path, "mixture")
    if not isinstance(data, dict) or "datasets" not in data:
        raise MixtureError(f"{path}: a mixture is a mapping with a 'datasets' list, got {json_type(data)}")
    extra = [str(k) for k in data if k != "datasets"]
    if extra:
        raise MixtureError(f"{path}: unknown top-level field(s) {', '.join(map(show, extra))} (only 'datasets')")
    entries = data["datasets"]
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"{path}: datasets: must be a non-empty list, got {json_type(entries)}")
    folder = _parent(path)
    ann_root = folder if annotations is None else str(annotations)
    out: list[MixtureDataset] = []
    for i, e in enumerate(entries):
        out.append(_dataset(path, i, e, ann_root, folder, roots))
    names: dict[str, int] = {}
    for d in out:
        if d.name in names:
            raise MixtureError(f"{d.where}: json_path: {show(d.json_path)} has the same name as datasets"
                               f"[{names[d.name]}]; each dataset gets the folder <json stem>")
        names[d.name] = d.index
    return Mixture(path, tuple(out))


def _dataset(path: str, i: int, e: Any, ann_root: str, folder: str, roots: dict[str, str] | None) -> MixtureDataset:
    where = f"{path}: datasets[{i}]"
    if not isinstance(e, dict):
        raise MixtureError(f"{where}: must be a mapping of {', '.join(DATASET_FIELDS)}, got {json_type(e)}")
    unknown = [str(k) for k in e if k not in DATASET_FIELDS]
    if unknown:
        raise MixtureError(f"{where}: unknown field(s) {', '.join(map(show, unknown))} "
                           f"(known: {', '.join(DATASET_FIELDS)})")

    def text(name: str, required: bool = False) -> str | None:
        v = e.get(name)
        if v is None:
            if required:
                raise MixtureError(f"{where}: {name}: missing")
            return None
        if not isinstance(v, str) or not v.strip() or _NOT_TEXT.search(v) or any(ord(c) < 32 for c in v):
            raise MixtureError(f"{where}: {name}: must be a non-empty string of text, got {show(v)}")
        return v.strip()

    json_path = text("json_path", required=True)
    assert json_path is not None
    if not json_path.endswith((".json", ".jsonl")):
        raise MixtureError(f"{where}: json_path: {show(json_path)} must name a .json or .jsonl file")
    where = f"{where} ({dataset_name(json_path)})"
    raw_strategy = e.get("sampling_strategy", "all")
    strategy = parse_strategy(raw_strategy, f"{where}: sampling_strategy")
    data_root = text("data_root") or ""
    vrt = text("video_read_type")
    if vrt is not None and vrt not in VIDEO_READ_TYPES:
        raise MixtureError(f"{where}: video_read_type: must be one of {', '.join(VIDEO_READ_TYPES)}, got {show(vrt)}")
    media_type = text("media_type")
    if media_type is not None and media_type not in MEDIA_TYPES:
        raise MixtureError(f"{where}: media_type: must be one of {', '.join(MEDIA_TYPES)}, got {show(media_type)}")

    problems = []
    annotation = map_root(json_path, roots)
    if annotation is None:
        if _SCHEME.match(json_path) and not json_path.startswith(("s3://", "file://")):
            problems.append(f"json_path: {show(json_path)} is a web address: download it and map it with --roots")
        else:
            p = _local(json_path)
            annotation = p if storage.is_s3(p) or os.path.isabs(p) else storage.join(ann_root, p)
    media_root, why = _resolve_root(data_root, roots, folder)
    if why:
        problems.append(why)
    return MixtureDataset(path, i, json_path, annotation, strategy, data_root, media_root, vrt, media_type,
                          "; ".join(problems))


def _resolve_root(data_root: str, roots: dict[str, str] | None, folder: str) -> tuple[str | None, str]:
    if not data_root:
        return None, "data_root: missing (a video or image dataset needs one)"
    mapped = map_root(data_root, roots)
    if mapped is None and _SCHEME.match(data_root) and not data_root.startswith(("s3://", "file://")):
        return None, f"data_root: {show(data_root)} has no --roots mapping and is not a readable folder"
    target = _local(mapped if mapped is not None else data_root)
    if not storage.is_s3(target) and not os.path.isabs(target):
        target = storage.join(folder, target)  # relative: to the mixture's folder (local or s3://)
    if storage.is_s3(target):
        return target, ""
    if os.path.isdir(target) and os.access(target, os.R_OK | os.X_OK):
        return target, ""
    via = f" (mapped by --roots to {show(mapped)})" if mapped is not None else ""
    return None, f"data_root: {show(data_root)}{via}: {target} is not a readable folder"


# ------------------------------------------------------------------------------------------ annotation files


@dataclass(frozen=True)
class ResolvedDataset:
    """What `resolve_dataset` learnt from one annotation file: record count, media type and the selection (which
    records `iter_records` reads)."""

    dataset: MixtureDataset
    total: int  # records in the file
    media_type: str
    selected: range  # indices of the records the strategy selects

    @property
    def annotation(self) -> str:
        assert self.dataset.annotation is not None
        return self.dataset.annotation


def resolve_dataset(ds: MixtureDataset) -> ResolvedDataset:
    """Read the annotation file once (count its records, look at the first): what to read, resolved.

    Raises MixtureError naming the dataset when the annotation file cannot be resolved, does not exist, is not a
    JSON list (`.json`; not valid JSON: the line and column), when the media type cannot be told from the first
    record, or when a video or image dataset has no usable data_root. Call it for every dataset before any work.
    """
    if ds.annotation is None:
        raise MixtureError(f"{ds.where}: {ds.problem}")
    first: Any = None
    total = 0
    for _, _, obj in _items(ds, ds.annotation):
        if total == 0:
            first = obj
        total += 1
    media_type = ds.media_type
    if media_type is None:
        if total == 0:
            media_type = "text"  # nothing is selected from an empty file: the media type does not matter
        elif not isinstance(first, dict):
            raise MixtureError(f"{ds.where}: cannot tell the media type from the first record of {ds.annotation} "
                               f"({_describe(first)}): give media_type in the mixture")
        else:
            media_type = "image" if "image" in first else "video" if "video" in first else "text"
    if media_type != "text" and ds.media_root is None:
        raise MixtureError(f"{ds.where}: {ds.problem} (the dataset holds {media_type} records)")
    return ResolvedDataset(ds, total, media_type, ds.strategy.select(total))


def iter_records(resolved: ResolvedDataset, lo: int = 0, hi: int | None = None) -> Iterator["AnnotationRecord | Failure"]:
    """The selected records `resolved.selected[lo:hi]`, in file order, each an AnnotationRecord or a Failure."""
    want = resolved.selected[lo:hi]
    if not want:
        return
    for index, origin, obj in _items(resolved.dataset, resolved.annotation):
        if index < want.start:
            continue
        if index >= want.stop:
            return
        yield _record_or_failure(resolved, index, origin, obj)


def read_dataset(ds: MixtureDataset) -> Iterator["AnnotationRecord | Failure"]:
    """resolve_dataset + iter_records."""
    return iter_records(resolve_dataset(ds))


class _BadLine:
    """A JSON-lines line that is not a JSON value (or not UTF-8): its record becomes a Failure of field 'line'."""

    def __init__(self, reason: str):
        self.reason = reason


def _describe(obj: Any) -> str:
    return obj.reason if isinstance(obj, _BadLine) else json_type(obj)


def _items(ds: MixtureDataset, uri: str) -> Iterator[tuple[int, str, Any]]:
    """(record index, origin, decoded value or _BadLine) for every record of an annotation file."""
    if not storage.is_s3(uri) and os.path.isdir(_local(uri)):
        raise MixtureError(f"{ds.where}: json_path: {uri} is a folder, not an annotation file")
    try:
        if uri.endswith(".jsonl"):
            yield from _jsonl_items(uri)
        else:
            yield from _json_list_items(ds, uri)
    except storage.ObjectNotFound:
        raise MixtureError(f"{ds.where}: json_path: annotation file {uri} not found") from None
    except FileNotFoundError:
        raise MixtureError(f"{ds.where}: json_path: annotation file {uri} not found") from None
    except PermissionError:  # storage.AccessDenied too
        raise MixtureError(f"{ds.where}: json_path: annotation file {uri} cannot be read (access denied)") from None


def _jsonl_items(uri: str) -> Iterator[tuple[int, str, Any]]:
    index = 0
    with storage.open_read(uri) as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            origin = f"{uri}:{n}"
            try:
                obj: Any = metadata_files.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                obj = _BadLine(f"not UTF-8 text (byte {e.start} of the line)")
            except json.JSONDecodeError as e:
                obj = _BadLine(f"not a JSON value ({e.msg} at column {e.colno})")
            except RecursionError:
                obj = _BadLine("JSON nested too deeply to read")
            yield index, origin, obj
            index += 1


def _json_list_items(ds: MixtureDataset, uri: str) -> Iterator[tuple[int, str, Any]]:
    data = storage.read_bytes(uri)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MixtureError(f"{ds.where}: {uri}: not UTF-8 text (byte {e.start})") from None
    del data
    ws = metadata_files._WS  # the JSON whitespace of operators.sources.metadata_files
    try:
        i = ws.match(text, 0).end()
        if not text.startswith("[", i):
            raise MixtureError(f"{ds.where}: {uri}: a .json annotation file must hold one JSON list of records")
        i = ws.match(text, i + 1).end()
        line, last = 1, 0
        index = 0
        if text.startswith("]", i):
            i = i + 1
        else:
            while True:
                line += text.count("\n", last, i)
                last = i
                obj, i = metadata_files._decode(text, i, metadata_files._DESCEND)  # an item too deep to read becomes an Unreadable
                yield index, f"{uri}:{line} [item {index}]", obj
                index += 1
                i = ws.match(text, i).end()
                if text.startswith(",", i):
                    i = ws.match(text, i + 1).end()
                    continue
                if text.startswith("]", i):
                    i += 1
                    break
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        if ws.match(text, i).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except json.JSONDecodeError as e:
        raise MixtureError(f"{ds.where}: {uri}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


# ----------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AnnotationRecord:
    """One selected annotation record, checked: what ingest needs to make a sample of it."""

    dataset: str  # the dataset's name (json stem)
    index: int  # record index in the annotation file (0-based)
    origin: str  # "file:line" ("file:line [item i]" in a JSON list)
    id: str | int | None  # the annotation's id, as given
    media_type: str  # video | image | text
    media: tuple[str, ...]  # the annotation's path(s) as written (`video`, `image`); () for text
    media_paths: tuple[str, ...]  # the same joined with the dataset's root
    image_list: bool  # `image` was a list: the reference pads each image of a multi-image list, no tiling
    conversations: tuple[tuple[str, str], ...]  # (from, value) of every turn, as annotated
    start: float | None = None  # seconds (video spans)
    end: float | None = None
    duration: float | None = None
    video_read_type: str | None = None

    @property
    def key(self) -> str:
        """The sample's WebDataset key: the dataset name and record index (and span), never a dot or slash."""
        return sample_key("mix", f"{self.dataset}-{self.index:09d}", self.start, self.end)

    @property
    def image_mode(self) -> str | None:
        """How the reference prepares an image record's images: `anyres_nopad` tiles for one image, `pad` (one
        padded square each) for a list of several. None for video and text records."""
        if self.media_type != "image":
            return None
        return "pad" if self.image_list and len(self.media) > 1 else "anyres_nopad"

    def turns(self) -> list[dict[str, str]]:
        """The conversation as LLaVA turns [{"from": ..., "value": ...}, ...]."""
        return [{"from": w, "value": v} for w, v in self.conversations]

    def info(self) -> dict[str, Any]:
        """What a sample's json keeps of its annotation: enough to trace it back to the annotation line."""
        out: dict[str, Any] = {"id": self.id, "dataset": self.dataset, "annotation": self.origin,
                               "media_type": self.media_type}
        if self.media_type != "text":
            out[self.media_type] = list(self.media) if self.image_list else self.media[0]
        for k in ("start", "end", "duration", "video_read_type"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


def _record_or_failure(resolved: ResolvedDataset, index: int, origin: str, obj: Any) -> "AnnotationRecord | Failure":
    name = resolved.dataset.name
    rid = obj.get("id") if isinstance(obj, dict) else None
    vid = rid if isinstance(rid, str) and not _NOT_TEXT.search(rid) and len(rid) <= 200 else ""
    if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**63:
        vid = str(rid)
    try:
        return parse_record(resolved, index, origin, obj)
    except BadValue as e:
        return make_failure(name, origin, e.field, e.reason, video_id=vid)
    except Exception as e:  # noqa: BLE001 - one record's unforeseen problem is its failure, never the job's
        return make_failure(name, origin, "record", f"unreadable record ({type(e).__name__}: {show(str(e))})",
                            video_id=vid)


def parse_record(resolved: ResolvedDataset, index: int, origin: str, obj: Any) -> AnnotationRecord:
    """Check one decoded record of `resolved`'s dataset; BadValue(field, reason) for the first problem."""
    ds = resolved.dataset
    if isinstance(obj, _BadLine):
        raise BadValue("line", obj.reason)
    if not isinstance(obj, dict):
        raise BadValue("record", f"a record must be a JSON object, got {json_type(obj)}")
    rid = _record_id(obj.get("id"))
    media_type = resolved.media_type
    for other in ("image", "video"):
        if other != media_type and obj.get(other) is not None:
            raise BadValue(other, f"the record has {other!r} but the dataset's media_type is {media_type}")
    media: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    image_list = False
    if media_type != "text":
        media, image_list = _media(obj.get(media_type), media_type)
        assert ds.media_root is not None
        joined = []
        for k, rel in enumerate(media):
            try:
                joined.append(storage.safe_join(ds.media_root, rel))
            except RecordError as e:
                raise BadValue(f"{media_type}[{k}]" if image_list else media_type, e.reason) from None
        paths = tuple(joined)
    turns = _conversations(obj.get("conversations"))
    kept = turns[1:] if turns and turns[0][0] != "human" else turns  # the template drops a leading non-human turn
    if not any(w == "gpt" for w, _ in kept):
        raise BadValue("conversations", "no gpt turn after the first human turn: nothing to train on")
    if not any(v.strip() for _, v in kept):
        raise BadValue("conversations", "every turn is empty")
    n_img = sum(v.count(IMAGE_TOKEN) for _, v in kept)
    if n_img != len(media):
        what = "no media (a text record)" if media_type == "text" else f"{len(media)} {media_type}(s)"
        raise BadValue("conversations", f"{n_img} {IMAGE_TOKEN} placeholder(s) for {what}")
    start = end = duration = None
    vrt = None
    if media_type == "video":
        if "start" in obj or "end" in obj:
            if "start" not in obj or "end" not in obj:
                raise BadValue("end" if "start" in obj else "start", "a span needs both start and end (seconds)")
            start = parse_number(obj["start"], "start", limit=MAX_SECONDS)
            end = parse_number(obj["end"], "end", limit=MAX_SECONDS)
            if end <= start:
                raise BadValue("end", f"empty or negative span [{start:g}, {end:g}]")
        if obj.get("duration") is not None:
            duration = parse_number(obj["duration"], "duration", limit=MAX_SECONDS)
        vrt = ds.video_read_type
        if vrt is None and obj.get("video_read_type") is not None:  # the reference honours a record's own
            vrt = obj["video_read_type"]
            if vrt not in VIDEO_READ_TYPES:
                raise BadValue("video_read_type", f"must be one of {', '.join(VIDEO_READ_TYPES)}, got {show(vrt)}")
    return AnnotationRecord(ds.name, index, origin, rid, media_type, media, paths, image_list, tuple(turns),
                            start, end, duration, vrt)


def _record_id(rid: Any) -> str | int | None:
    if rid is None:
        return None
    if isinstance(rid, int) and not isinstance(rid, bool):
        if abs(rid) >= 2**63:
            raise BadValue("id", f"id {show(rid)} is beyond 64 bits")
        return rid
    if isinstance(rid, str):
        return check_id(rid, "id")
    raise BadValue("id", f"id must be a string or an integer, got {json_type(rid)}")


def _media(raw: Any, media_type: str) -> tuple[tuple[str, ...], bool]:
    if raw is None:
        raise BadValue(media_type, f"missing {media_type} (the dataset's media_type is {media_type})")
    if isinstance(raw, list) and media_type == "image":
        if not raw:
            raise BadValue("image", "an empty list of images")
        return tuple(_media_path(v, f"image[{k}]") for k, v in enumerate(raw)), True
    if isinstance(raw, str):
        return (_media_path(raw, media_type),), False
    what = "a path" if media_type == "video" else "a path or a list of paths"
    raise BadValue(media_type, f"{media_type} must be {what}, got {json_type(raw)}")


def _media_path(v: Any, field: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise BadValue(field, f"{field} must be a non-empty path, got {json_type(v)}")
    if _NOT_TEXT.search(v):
        raise BadValue(field, f"{field} holds a lone surrogate (not valid Unicode): {show(v)}")
    return v


def _conversations(conv: Any) -> list[tuple[str, str]]:
    if conv is None:
        raise BadValue("conversations", "missing conversations")
    if not isinstance(conv, list):
        raise BadValue("conversations", f"conversations must be a list of turns, got {json_type(conv)}")
    if not conv:
        raise BadValue("conversations", "empty conversations")
    if len(conv) > MAX_TURNS:
        raise BadValue("conversations", f"{len(conv)} turns (at most {MAX_TURNS})")
    out = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise BadValue(f"conversations[{i}]", f"a turn must be an object {{from, value}}, got {json_type(t)}")
        who = t.get("from")
        if who not in ROLES:
            raise BadValue(f"conversations[{i}].from", f"must be 'human' or 'gpt', got {json_type(who)}")
        value = t.get("value")
        if not isinstance(value, str):
            raise BadValue(f"conversations[{i}].value", f"must be a string, got {json_type(value)}")
        if _NOT_TEXT.search(value):
            raise BadValue(f"conversations[{i}].value", "holds a lone surrogate (not valid Unicode)")
        out.append((who, value))
    return out
