"""The one reader of the small YAML files users hand us (job files, data mixtures, roots maps).

Safe types only, and none of what such a file never needs and an attacker would use: anchors and aliases (a
"billion laughs" file expands exponentially), explicit tags, nesting deeper than MAX_DEPTH, a key given twice (the
last would win silently; `repeats="equal"` accepts the same key with the same scalar value, as the released
stage-3 mixture has), a file over the caller's byte cap, text that is not UTF-8. Every refusal is a YamlRefused
whose message starts with the line where it can; callers prefix the file and turn it into their own error type.
"""
from __future__ import annotations

from typing import Any, Literal

import yaml

from longvid.operators.errors import show

MAX_DEPTH = 32  # mappings and lists nested deeper than this are refused


class YamlRefused(ValueError):
    """A YAML text that is not read: the message says why (and where)."""


class _Loader(yaml.SafeLoader):
    repeats: str = "refuse"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        ev = self.peek_event()
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
            raise YamlRefused(f"line {line}: YAML anchors and aliases (&name, *name) are not allowed")
        if getattr(ev, "tag", None) is not None:
            raise YamlRefused(f"line {line}: YAML tags ({show(ev.tag)}) are not allowed")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlRefused(f"line {line}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[str, Any] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            prev = seen.get(key.value)
            if prev is not None:
                same = (self.repeats == "equal" and isinstance(prev, yaml.ScalarNode)
                        and isinstance(value, yaml.ScalarNode) and (prev.tag, prev.value) == (value.tag, value.value))
                if not same:
                    extra = ", with different values" if self.repeats == "equal" else ""
                    raise YamlRefused(f"line {key.start_mark.line + 1}: key {show(key.value)} given twice{extra}")
            seen[key.value] = value
        return super().construct_mapping(node, deep)


class _EqualRepeatsLoader(_Loader):
    repeats = "equal"


def parse_yaml(raw: bytes, max_bytes: int, repeats: Literal["refuse", "equal"] = "refuse") -> Any:
    """The value of a YAML document given as bytes (read at most max_bytes + 1 of the file); YamlRefused else."""
    if len(raw) > max_bytes:
        raise YamlRefused(f"larger than {max_bytes >> 10} kB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlRefused(f"not UTF-8 text (byte {e.start})") from None
    loader = _EqualRepeatsLoader if repeats == "equal" else _Loader
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YamlRefused(f"not valid YAML: {show(' '.join(str(e).split()), 300)}") from None
    except (ValueError, OverflowError, RecursionError) as e:  # an integer of more than 4300 digits, a bad date
        if isinstance(e, YamlRefused):
            raise
        raise YamlRefused(f"a value cannot be read: {show(str(e), 120)}") from None
