"""The benchmark scan's records: the videos and texts a benchmark file gives (`BenchVideo`, `BenchText`), the
file's count of records and its unusable ones (`BenchmarkFile`, `BenchmarkProblem`), the whole scan
(`BenchmarkSet`), and how their text is shown (`_shown`: lone surrogates escaped, cut)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, TypeVar

T = TypeVar("T")

MAX_PROBLEMS_PER_FILE = 200  # problems kept with their details per file; all are counted


class BenchmarkFormatError(ValueError):
    """One field of a benchmark record that cannot be used; the reader guard adds the file and the record."""

    def __init__(self, fld: str, why: str):
        self.field, self.why = fld, why
        super().__init__(f"field {fld!r}: {why}")


@dataclass(frozen=True)
class BenchmarkProblem:
    """A record of a benchmark file that was not used, and why."""

    path: str
    where: str  # "record 3", "row 3", "line 7", "q_uid <key>"
    field: str  # "-" when the record as a whole is unusable
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: " + ("" if self.field == "-" else f"field {self.field!r}: ") + self.why


@dataclass(frozen=True)
class BenchVideo:
    """A benchmark's reference to a video (optionally a window of it, seconds in the source video)."""

    benchmark: str
    task: str
    namespace: str
    video_id: str  # normalised within namespace
    raw: str  # as the file writes it
    ref: str  # "<file>#<record>" or the benchmark's question id
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}:{self.video_id}"


@dataclass(frozen=True)
class BenchText:
    """One benchmark text (question, option, answer, grounding query)."""

    benchmark: str
    task: str
    ref: str
    video: str  # raw video field of the record, for evidence ("" if none)
    field: str  # question | option | answer | query
    text: str


@dataclass
class BenchmarkFile:
    path: str  # as shown to the user (undecodable bytes of the name escaped)
    format: str
    benchmark: str
    videos: list[BenchVideo] = field(default_factory=list)
    texts: list[BenchText] = field(default_factory=list)
    records: int = 0  # records read: usable + unusable
    unusable: int = 0
    problems: list[BenchmarkProblem] = field(default_factory=list)  # the first MAX_PROBLEMS_PER_FILE unusable records

    @property
    def name(self) -> str:
        return Path(self.path).name

    def problem(self, where: str, fld: str, why: str) -> None:
        self.unusable += 1
        if len(self.problems) < MAX_PROBLEMS_PER_FILE:
            self.problems.append(BenchmarkProblem(self.path, _shown(where, 120), _shown(fld, 80), _shown(why, 300)))


def _first_of_each(items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    """`items` in order, each key's first one only."""
    seen, out = set(), []
    for x in items:
        k = key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


@dataclass
class BenchmarkSet:
    files: list[BenchmarkFile]
    unknown: list[tuple[str, str]]  # (path, why it was not recognised or could not be read)

    @property
    def videos(self) -> list[BenchVideo]:
        return _first_of_each((v for f in self.files for v in f.videos),
                              lambda v: (v.benchmark, v.namespace, v.video_id, v.start, v.end))

    @property
    def texts(self) -> list[BenchText]:
        return _first_of_each((t for f in self.files for t in f.texts), lambda t: (t.benchmark, t.video, t.field, t.text))

    @property
    def benchmarks(self) -> list[str]:
        return sorted({f.benchmark for f in self.files})

    @property
    def problems(self) -> list[BenchmarkProblem]:
        """The unusable records with their details (at most MAX_PROBLEMS_PER_FILE per file)."""
        return [p for f in self.files for p in f.problems]

    @property
    def unusable_records(self) -> int:
        return sum(f.unusable for f in self.files)


def _valid_text(s: str) -> bool:
    """Encodable as UTF-8: no lone surrogate (from a JSON escape or an undecodable byte of the file)."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown(s: str, limit: int = 200) -> str:
    """`s` safe to print and to write as UTF-8 (lone surrogates escaped), cut to `limit` characters."""
    s = s if len(s) <= limit else s[:limit] + "..."
    return s if _valid_text(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")

