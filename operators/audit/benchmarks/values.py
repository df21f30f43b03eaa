"""The field readers of the benchmark readers: one JSON value of a record -> text, options, seconds, or a
`BenchmarkFormatError` naming the field and saying why (never the value itself)."""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .records import BenchmarkFormatError, BenchText, _shown, _valid_text

_OPTION_LABEL = re.compile(r"^\s*\(?[A-Ea-e][.):]\s+")


def _kind(v: Any) -> str:
    """The JSON name of a value's type, for messages (never the value itself: it may be huge or deep)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number" if isinstance(v, int) or math.isfinite(v) else f"the number {v}"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _text(v: Any, fld: str) -> str:
    """`v` as benchmark text: a string of valid Unicode."""
    if v is None:
        raise BenchmarkFormatError(fld, "missing")
    if not isinstance(v, str):
        raise BenchmarkFormatError(fld, f"expected text, got {_kind(v)}")
    if not _valid_text(v):
        raise BenchmarkFormatError(fld, "not valid Unicode text (a lone surrogate or an undecodable byte)")
    return v


def _need(rec: dict, key: str) -> str:
    """A required text field (it may be blank: a record with an empty question still names its video)."""
    return _text(rec.get(key), key)


def _need_id(rec: dict, key: str) -> str:
    """A required id field: text, not blank."""
    v = _text(rec.get(key), key)
    if not v.strip():
        raise BenchmarkFormatError(key, "empty")
    return v


def _opt(rec: dict, key: str) -> str:
    """An optional text field ("" when absent or null); an integer is taken as its digits (question ids)."""
    v = rec.get(key)
    if v is None:
        return ""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return _text(v, key)


def _option(v: Any, fld: str) -> str | None:
    """One answer option: text, or a finite number as its text; None for a null option."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v)):
        return str(v)
    return _OPTION_LABEL.sub("", _text(v, fld))


def _options(rec: dict, key: str) -> list[str]:
    v = rec.get(key)
    if v is None:
        raise BenchmarkFormatError(key, "missing")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, str):  # some exports store the option list as a JSON string
        try:
            v = json.loads(_text(v, key))
        except (ValueError, RecursionError):
            raise BenchmarkFormatError(key, f"expected a list of options, got the string {_shown(rec[key], 40)!r}") from None
    if not isinstance(v, list):
        raise BenchmarkFormatError(key, f"expected a list of options, got {_kind(v)}")
    return [o for o in (_option(x, f"{key}[{j}]") for j, x in enumerate(v)) if o is not None]


def _seconds(v: Any, fld: str) -> float:
    """A time in seconds: a finite number (or a string of one)."""
    if v is None:
        raise BenchmarkFormatError(fld, "missing")
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BenchmarkFormatError(fld, f"expected a number of seconds, got {_kind(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise BenchmarkFormatError(fld, "number too large for seconds") from None
    except ValueError:
        raise BenchmarkFormatError(fld, f"not a number: {_shown(v, 40)!r}") from None
    if not math.isfinite(x):
        raise BenchmarkFormatError(fld, f"not a finite number ({x})")
    return x


def _text_items(bench: str, task: str, ref: str, video: str, question: str | None, options: list[str] = (),
                answer: Any = None, qfield: str = "question") -> list[BenchText]:
    out = []
    if question:
        out.append(BenchText(bench, task, ref, video, qfield, question))
    for o in options:
        if o.strip():
            out.append(BenchText(bench, task, ref, video, "option", o))
    if isinstance(answer, str):
        a = _OPTION_LABEL.sub("", answer)
        if len(a.strip()) > 1 and a not in options:  # a bare letter adds nothing; an option text is already there
            out.append(BenchText(bench, task, ref, video, "answer", a))
    return out

