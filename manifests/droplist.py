"""The drop list: the contract between `longvid audit` (writes drop_list.txt) and `longvid train --exclude` (reads it).

Grammar (UTF-8 text; a leading byte-order mark is ignored):

    file    = line, { "\\n", line }          a "\\r" before the "\\n" is whitespace like any other
    line    = [ key ], [ comment ]          whitespace around the key and the comment is ignored
    comment = "#", any text to the end of the line (a full line or after a key)
    key     = one or more characters, none of them whitespace or "#"

Blank lines and comment lines hold no key. A line with more than one word before its comment is an error naming
the file and the line (one key per line: "a b" is a mistake, not a key). Sample keys as ingest makes them
(operators/records.py `sample_key`) are [A-Za-z0-9_-] only, so every one of them is a valid key here.
"""
from __future__ import annotations

from pathlib import Path

HEADER = "# longvid drop list: one sample key per line; '#' starts a comment (a whole line or after a key)"


class DropListError(ValueError):
    """A drop list that does not follow the grammar; names the file and the line."""


def valid_key(key: str) -> bool:
    """A key the grammar can carry (non-empty, no whitespace, no '#')."""
    return bool(key) and "#" not in key and len(key.split()) == 1 and key.split()[0] == key


def parse_drop_list(text: str, name: str) -> frozenset[str]:
    """The keys of a drop list's text; `name` (the file) is for the error message."""
    keys: set[str] = set()
    if text.startswith("\ufeff"):
        text = text[1:]
    for n, line in enumerate(text.split("\n"), 1):
        words = line.split("#", 1)[0].split()
        if len(words) > 1:
            shown = " ".join(words)[:80].encode("utf-8", "backslashreplace").decode("utf-8")
            raise DropListError(f"{name}: line {n}: one key per line expected, got {len(words)} words: {shown!r}")
        keys.update(words)
    return frozenset(keys)


def read_drop_list(path: str | Path) -> frozenset[str]:
    """The keys of a local drop list file (see `parse_drop_list`)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DropListError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_drop_list(text, str(path))


def format_drop_list(sections: list[tuple[str, list[str]]]) -> str:
    """The text of a drop list: each section is a comment line and its keys. Every key must be `valid_key`."""
    lines = [HEADER]
    for comment, keys in sections:
        lines.append("# " + " ".join(comment.split()))
        for k in keys:
            if not valid_key(k):
                raise DropListError(f"key {k!r} cannot be written to a drop list (empty, or holds whitespace or '#')")
            lines.append(k)
    return "\n".join(lines) + "\n"
