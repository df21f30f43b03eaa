"""Opening a source's metadata files: local or s3:// (`open_metadata`, UTF-8, BOM stripped), a folder or prefix
expanded to its files in natural order (`expand_paths`), and JSON read whatever its depth (`load_json`: a valid file
Python cannot hold in one piece is read level by level, an item too deep becomes an `Unreadable`)."""
from __future__ import annotations

import fnmatch
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, TextIO

from longvid.operators.errors import MetadataError


def is_remote(path: str) -> bool:
    return str(path).startswith("s3://")


def open_metadata(path: str | os.PathLike) -> TextIO:
    """Open a metadata file (local path or s3://) as a UTF-8 text stream (BOM stripped, newline='' for csv)."""
    p = str(path)
    if p.startswith("file://"):
        p = p[len("file://") :]
    if is_remote(p):
        try:
            stream = _storage().open_read(p)
        except Exception as e:  # noqa: BLE001 - any storage error is "cannot read this file"
            raise MetadataError(f"{p}: cannot open metadata file: {e}") from e
        if isinstance(stream, io.TextIOBase):
            return stream
        return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    try:
        return open(p, encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError as e:
        raise MetadataError(f"{p}: metadata file not found") from e
    except IsADirectoryError as e:
        raise MetadataError(f"{p}: is a directory, expected a metadata file") from e
    except OSError as e:
        raise MetadataError(f"{p}: cannot open metadata file: {e}") from e


class Unreadable:
    """Stands for a JSON value that is valid JSON but that Python cannot hold: nested deeper than its recursion
    limit, or an integer of more digits than int() converts. Adapters report it like a value of the wrong type."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable: {self.reason}>"


_INT_DIGITS = 4000  # below Python's int/str conversion limit (4300 digits)


def _json_int(s: str) -> int | Unreadable:
    return int(s) if len(s) <= _INT_DIGITS else Unreadable(f"an integer of {len(s.lstrip('-'))} digits")


JSON = json.JSONDecoder(parse_int=_json_int)  # the decoder for every metadata JSON (files and JSON lines)
_WS = re.compile(r"[ \t\n\r]*")
_DESCEND = 2  # a too-deep whole file is split this many levels down: ego4d.json {"videos": [<item>, ...]}


def loads(text: str) -> Any:
    """One JSON document; a too-deep one raises RecursionError (callers with items use load_json)."""
    return JSON.decode(text)


def load_json(path: str) -> Any:
    """Parse a whole JSON file; MetadataError naming the file (and position) when it is not JSON.

    A valid file that Python's parser cannot take in one piece (one item nested thousands of levels deep) is
    parsed level by level: the top container and the containers in it are read here, deeper values each in one
    piece, and a value that still cannot be read becomes an `Unreadable` (the adapter makes its item a Failure).
    """
    with open_metadata(path) as f:
        try:
            text = f.read()
        except OSError as e:
            raise MetadataError(f"{path}: cannot read metadata file: {e}") from e
    try:
        try:
            return JSON.decode(text)
        except RecursionError:
            pass
        i = _WS.match(text, 0).end()
        value, i = _decode(text, i, 0)
        if _WS.match(text, i).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return value
    except json.JSONDecodeError as e:
        raise MetadataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _decode(text: str, i: int, depth: int) -> tuple[Any, int]:
    try:
        return JSON.raw_decode(text, i)
    except RecursionError:
        pass
    if depth < _DESCEND:
        return _container(text, i, depth)
    return Unreadable("nested deeper than Python's JSON parser goes"), _skip(text, i)


def _container(text: str, i: int, depth: int) -> tuple[Any, int]:
    """The object or array at text[i] (only a container can be too deep), its members decoded one by one."""
    is_obj = text.startswith("{", i)
    close = "}" if is_obj else "]"
    out: Any = {} if is_obj else []
    i = _WS.match(text, i + 1).end()
    if text.startswith(close, i):
        return out, i + 1
    while True:
        if is_obj:
            if not text.startswith('"', i):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = JSON.raw_decode(text, i)
            i = _WS.match(text, i).end()
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            value, i = _decode(text, _WS.match(text, i + 1).end(), depth + 1)
            out[key] = value
        else:
            value, i = _decode(text, i, depth + 1)
            out.append(value)
        i = _WS.match(text, i).end()
        if text.startswith(close, i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _WS.match(text, i + 1).end()


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _skip(text: str, i: int) -> int:
    """The end of the (too deep to parse) container at text[i], found without recursion."""
    depth = 0
    for m in _TOKEN.finditer(text, i):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
        elif tok in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    raise json.JSONDecodeError("Unterminated array or object", text, i)


def _storage():
    try:
        from longvid.operators import storage  # written by another engineer; imported only when needed
    except ImportError as e:
        raise MetadataError(f"s3:// metadata needs operators.storage, which is not available ({e})") from e
    return storage


def _expand_s3(prefix: str, patterns: tuple[str, ...]) -> list[str]:
    try:
        keys = _storage().list_files(prefix)
    except Exception as e:  # noqa: BLE001
        raise MetadataError(f"{prefix}: cannot list metadata prefix: {e}") from e
    found: list[str] = []
    for pat in patterns:
        hits = [k for k in keys if fnmatch.fnmatchcase(k[len(prefix) :], pat) and k not in found]
        found.extend(sorted(hits, key=_natural))
    if not found:
        raise MetadataError(f"{prefix}: prefix holds no metadata file matching {', '.join(patterns)}")
    return found


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def expand_paths(paths: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    """Keep files as given (in the given order); a local directory becomes its files matching `patterns`
    (glob patterns relative to the directory, tried in order), each pattern's matches in natural order."""
    out: list[str] = []
    for p in paths:
        p = str(p)
        if p.startswith("file://"):
            p = p[len("file://") :]
        if "\x00" in p:
            raise MetadataError(f"{p!r}: not a valid metadata path (it holds a NUL character)")
        if is_remote(p) and p.endswith("/"):  # an S3 prefix: its objects matching the patterns
            out.extend(_expand_s3(p, patterns))
            continue
        if not is_remote(p) and os.path.isdir(p):
            found: list[str] = []
            for pat in patterns:
                for m in sorted(Path(p).glob(pat), key=lambda x: _natural(str(x))):
                    if m.is_file() and str(m) not in found:
                        found.append(str(m))
            if not found:
                raise MetadataError(f"{p}: directory holds no metadata file matching {', '.join(patterns)}")
            out.extend(found)
        else:
            if not is_remote(p) and not os.path.exists(p):
                raise MetadataError(f"{p}: metadata file not found")
            out.append(p)
    if not out:
        raise MetadataError("no metadata files given")
    return out

