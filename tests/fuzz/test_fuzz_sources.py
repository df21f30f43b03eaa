"""Fuzz every source adapter, in every metadata variant it reads, with hostile values (issue 12).

Each example writes metadata files into a fresh temporary folder: valid rows with some fields replaced by hostile
values (numbers that overflow a float, nan/inf, Unicode digits, lone surrogates, control characters, NUL, BOMs,
very long ids, deep JSON, integers of thousands of digits, values of the wrong JSON type, ...), shuffled and
duplicated CSV columns. Then it checks the adapter's promises:
- no exception for a per-row problem (the files are well-formed; MetadataError is for unreadable files only);
- accounting: every input row gives one item (a row of several clips/windows: at least one, at most one a clip),
  and no item comes from anywhere else;
- every failure names the file and line of its row, a field and a reason; every record has a finite, bounded span
  and a computable, unique key;
- every string in the output encodes as UTF-8, and meta is plain JSON;
- no hang: each example runs under an alarm (a generous bound, only to turn a hang into a failure).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bounds import bounded
from longvid.operators.errors import ConfigError, MetadataError
from longvid.operators.records import Failure, SourceRecord, TextSpan
from longvid.operators.sources import available, get_adapter
from longvid.operators.sources.base import MAX_SECONDS

SOURCES = ("ego4d", "howto100m", "hdvila", "miradata", "webvid")
# about 1-2 s an adapter; LONGVID_FUZZ_EXAMPLES=5000 for a long hunt
EXAMPLES = int(os.environ.get("LONGVID_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_S = 20  # per example; a normal example takes milliseconds


def test_every_adapter_is_fuzzed():
    assert set(available()) == set(SOURCES), "a new adapter needs its fuzz test here"


# ------------------------------------------------------------------------------------------------ hostile values


class Raw:
    """JSON text written as is (what Python's json cannot produce: nesting 3000 deep, 5000-digit integers)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:20]!r}...)"


DEEP = "[" * 3000 + "]" * 3000
DEEP_OBJ = '{"a":' * 3000 + "1" + "}" * 3000
HOSTILE_WORDS = [
    "", " ", "\t \t", "nan", "NaN", "-inf", "Infinity", "1e300", "-1e300", "1e309", "9" * 400, "9" * 5000, "-0",
    "²", "¹²³", "٣٤", "1_000", "0x1A", "+5", "\x00", "a\x00b", "\x1b[31m", "\u202e", "\ufeff", "\ufeff123", "\u200b",
    "\ud800", "x\udfffy", "\U0001f600", "../../etc/passwd", "a/b", "..", ".", "\\", "x" * 300, "00:00:10.000",
    "00:00:1e3", "99:99:99", "1:2:3:4", "-00:00:01", "0:00:05,5", "PT17S", "PT1e300S", "P" + "9" * 400 + "D",
    "['00:00:01', '00:00:05']", "['1e300', '1e301']", "[" * 3000, "{'a': 1}", "__import__('os')", '"', '""', ",",
    "\r", "\r\n", "'", "#C C picks a cup", "\x85", "\u2028",
]
WORDS = st.one_of(
    st.sampled_from(HOSTILE_WORDS),
    st.text(st.characters(exclude_categories=()), max_size=12),  # any code point, lone surrogates included
    st.integers().map(str),
    st.floats().map(repr),
)
NUMBERS = st.one_of(
    st.integers(), st.floats(), st.sampled_from([10**400, -(10**400), 1e300, -0.0, 2**63, Raw("9" * 5000)]),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS)
JSON_VALUES = st.one_of(
    st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(WORDS, c, max_size=3),
                 max_leaves=6),
    st.sampled_from([Raw(DEEP), Raw(DEEP_OBJ), Raw("-" + "9" * 5000), Raw("1e999"), Raw("-Infinity"), Raw("NaN")]),
)


def dump(v) -> str:
    """JSON text of v; Raw pieces verbatim, lone surrogates as \\ud800 escapes, NaN/Infinity as Python writes them."""
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dump(x) for x in v) + "]"
    return json.dumps(v)


def overrides(fields: list[str], values) -> st.SearchStrategy:
    """{field: hostile value} for a few of the row's fields (often none: valid rows must pass too)."""
    return st.dictionaries(st.sampled_from(fields), values, max_size=3)


# ------------------------------------------------------------------------------------------------ the checks


def no_hang(seconds: float = HANG_S):
    return bounded(seconds)


def strings(obj):
    """Every string inside an output item (fields, texts, meta), recursively."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from strings(x)
    elif isinstance(obj, dict):
        for k, x in obj.items():
            yield from strings(k)
            yield from strings(x)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from strings(getattr(obj, f.name))


def check(source: str, paths: list[Path], expect: dict[str, tuple[int, int]], options: dict | None = None) -> list:
    """Read `paths` and check every promise. `expect`: origin -> (min, max) items for every input row."""
    with no_hang():
        items = list(get_adapter(source).read([str(p) for p in paths], options or {}))
    by_origin = Counter()
    keys = []
    for it in items:
        assert isinstance(it, (SourceRecord, Failure)), it
        for s in strings(it):
            s.encode("utf-8")  # no lone surrogate reaches a writer
        keys.append(it.key)
        if isinstance(it, Failure):
            by_origin[it.file] += 1
            assert it.stage == "metadata" and it.field and it.reason, it
            assert len(it.reason) < 2000, it.reason[:200]
        else:
            by_origin[it.origin] += 1
            assert it.video_id and it.video_paths and all("\x00" not in p for p in it.video_paths), it
            for t in (it.start, it.end):
                assert t is None or (math.isfinite(t) and 0 <= t <= MAX_SECONDS), it
            if it.start is not None and it.end is not None:
                assert it.start < it.end, it
            assert all(isinstance(t, TextSpan) and t.text.strip() for t in it.texts), it
            json.dumps(it.meta_dict(), allow_nan=False)
    assert len(set(keys)) == len(keys), [k for k, n in Counter(keys).items() if n > 1]
    assert set(by_origin) == set(expect), (set(by_origin) ^ set(expect))
    for origin, n in by_origin.items():
        lo, hi = expect[origin]
        assert lo <= n <= hi, (origin, n, expect[origin])
    return items


def write_csv(path: Path, header: list[str], rows: list[dict], bom: str = "", dup: tuple[str, str] | None = None):
    """A CSV with `header` (+ a duplicate column `dup` = (name, value) whose first occurrence must win) and a
    non-blank `tag` column (so every row is an input row). Lone surrogates are written as their UTF-8-like bytes."""
    cols = header + ["tag"] + ([dup[0]] if dup else [])
    with open(path, "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
        f.write(bom)
        w = csv.writer(f)
        w.writerow(cols)
        for i, r in enumerate(rows):
            w.writerow([r.get(c, "") for c in header] + [f"r{i}"] + ([dup[1]] if dup else []))


def csv_origins(path: Path, n: int) -> dict[str, tuple[int, int]]:
    """The origin of each of n rows: the line where it starts (quoted cells may hold line breaks)."""
    out = {}
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        line = reader.line_num + 1
        for _ in range(n):
            start = line
            next(reader)
            line = reader.line_num + 1
            out[f"{path}:{start}"] = (1, 1)
    return out


LAYOUT = st.tuples(st.sampled_from(["", "\ufeff", "\ufeff\ufeff"]), st.randoms(use_true_random=False),
                   st.one_of(st.none(), WORDS))


def shuffled(header: list[str], layout) -> tuple[list[str], str, tuple[str, str] | None]:
    bom, rnd, dup_value = layout
    cols = list(header)
    rnd.shuffle(cols)
    return cols, bom, (cols[0], dup_value) if dup_value is not None else None


# ------------------------------------------------------------------------------------------------ WebVid


WEBVID = ["videoid", "page_dir", "name", "duration", "contentUrl", "page_idx"]


def webvid_row(i: int) -> dict:
    return {"videoid": str(1000 + i), "page_dir": "d1", "name": f"a kite {i}", "duration": "PT10S",
            "contentUrl": f"http://x/{i}.mp4", "page_idx": "1"}


@FUZZ
@given(st.lists(overrides(WEBVID, WORDS), min_size=1, max_size=6), LAYOUT)
def test_webvid(rows, layout):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "results_2M_val.csv"
        cols, bom, dup = shuffled(WEBVID, layout)
        write_csv(p, cols, [{**webvid_row(i), **o} for i, o in enumerate(rows)], bom, dup)
        check("webvid", [p], csv_origins(p, len(rows)))


# ------------------------------------------------------------------------------------------------ MiraData

CAPTIONS = ["short_caption", "dense_caption", "main_object_caption", "background_caption", "style_caption",
            "camera_caption"]
MIRA_V0 = ["index", "video_id", "start_frame", "end_frame", *CAPTIONS, "fps", "start_timestep", "end_timestep"]
MIRA_V1 = ["clip_id", "source", "video_url", "video_id", "width", "height", "fps", "seconds", "timestamp",
           "frame_number", "framestamp", "file_path", *CAPTIONS]


def mira_v0_row(i: int) -> dict:
    return {"index": f"{i}_vid{i:08d}-000001", "video_id": f"vid{i:08d}", "start_frame": "30", "end_frame": "300",
            "fps": "30", "start_timestep": "0:00:01", "end_timestep": "0:00:10",
            **{c: f"{c} of clip {i}" for c in CAPTIONS}}


def mira_v1_row(i: int) -> dict:
    return {"clip_id": f"{100 + i}.{i}", "source": "youtube", "video_url": "https://youtu.be/QMi8x8o55Ns",
            "video_id": f"vid{i:08d}", "width": "1280", "height": "720", "fps": "30", "seconds": "4",
            "timestamp": "['00:00:01.000', '00:00:05.000']", "file_path": f"000000000/{100 + i}.{i}.mp4",
            **{c: f"{c} of clip {i}" for c in CAPTIONS}}


@FUZZ
@given(st.booleans(), st.lists(overrides(MIRA_V1, WORDS), min_size=1, max_size=6), LAYOUT)
def test_miradata(v1, rows, layout):
    header, make = (MIRA_V1, mira_v1_row) if v1 else (MIRA_V0, mira_v0_row)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "miradata.csv"
        cols, bom, dup = shuffled(header, layout)
        write_csv(p, cols, [{**make(i), **{k: v for k, v in o.items() if k in header}} for i, o in enumerate(rows)],
                  bom, dup)
        check("miradata", [p], csv_origins(p, len(rows)))


# ------------------------------------------------------------------------------------------------ HowTo100M

HOWTO = ["video_id", "category_1", "category_2", "rank", "task_id"]
CAPTION_FIELDS = ["text", "start", "end", "text[0]", "start[0]", "end[0]", "entry"]


def caption_entry(o: dict):
    entry = {"text": ["hello everyone welcome", "welcome to the show"], "start": [0.0, 2.0], "end": [3.0, 5.0]}
    for k, v in o.items():
        if k == "entry":
            return v
        if k.endswith("[0]"):
            cur = entry[k[:-3]]
            entry[k[:-3]] = [v, *cur[1:]] if isinstance(cur, list) else [v]
        else:
            entry[k] = v
    return entry


TASK_LINES = st.lists(st.one_of(st.tuples(st.sampled_from(["7", "8"]), WORDS).map("\t".join),
                                st.sampled_from(["7", "8", "", "\t", "7\t"]), WORDS), max_size=4)


@FUZZ
@given(st.lists(st.tuples(overrides(HOWTO, WORDS), st.one_of(st.none(), overrides(CAPTION_FIELDS, JSON_VALUES))),
                min_size=1, max_size=5),
       TASK_LINES, LAYOUT)
def test_howto100m(rows, task_lines, layout):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cols, bom, dup = shuffled(HOWTO, layout)
        csv_rows, captions = [], {}
        for i, (o, cap) in enumerate(rows):
            row = {"video_id": f"vid{i:08d}", "category_1": "Food", "category_2": "Tea", "rank": "1",
                   "task_id": "7", **o}
            csv_rows.append(row)
            if cap is not None and isinstance(row["video_id"], str):
                captions[row["video_id"].strip()] = caption_entry(cap)
        write_csv(d / "HowTo100M_v1.csv", cols, csv_rows, bom, dup)
        with open(d / "task_ids.csv", "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
            f.write("\n".join(["7\tMake Tea", *[ln.replace("\n", " ").replace("\r", " ") for ln in task_lines]]))
        (d / "caption.json").write_text(dump(captions), encoding="utf-8")
        check("howto100m", [d], csv_origins(d / "HowTo100M_v1.csv", len(csv_rows)))


# ------------------------------------------------------------------------------------------------ HD-VILA

HDVILA = ["video_id", "url", "clip", "clip[0]", "clip[0].span", "clip[0].span[0]", "clip[0].clip_id"]
RAW_LINES = ["null", "[]", "5", '"x"', DEEP, DEEP_OBJ, "9" * 5000, '{"video_id": "\\ud800"}', "{not json",
             '{"video_id": "QMi8x8o55Ns", "clip": [' + DEEP + "]}", "\ufeff{}", "\x00", '{"clip": 1e999}']


def hdvila_line(i: int, o: dict) -> tuple[str, int]:
    """(JSON line, the most items it can give)."""
    clip0 = {"clip_id": f"c{i}.1.mp4", "span": ["00:00:01.000", "00:00:05.500"]}
    if "clip[0].span" in o:
        clip0["span"] = o["clip[0].span"]
    if "clip[0].span[0]" in o and isinstance(clip0["span"], list):
        clip0["span"] = [o["clip[0].span[0]"], *clip0["span"][1:]]
    if "clip[0].clip_id" in o:
        clip0["clip_id"] = o["clip[0].clip_id"]
    obj = {"video_id": f"QMi8x8o55N{i}", "url": f"https://www.youtube.com/watch?v=QMi8x8o55N{i}",
           "clip": [o.get("clip[0]", clip0), {"clip_id": f"c{i}.2.mp4", "span": ["00:00:06.000", "00:00:09.000"]}]}
    obj.update({k: v for k, v in o.items() if k in ("video_id", "url", "clip")})
    clips = obj["clip"]
    return dump(obj), max(1, len(clips)) if isinstance(clips, list) else 1


@FUZZ
@given(st.lists(st.one_of(overrides(HDVILA, JSON_VALUES), st.sampled_from(RAW_LINES)), min_size=1, max_size=6))
def test_hdvila(lines):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "hdvila_part0.jsonl"
        text, expect = [], {}
        for n, ln in enumerate(lines, 1):
            line, most = hdvila_line(n, ln) if isinstance(ln, dict) else (ln, 1)
            text.append(line)
            expect[f"{p}:{n}"] = (1, most)
        p.write_text("\n".join(text) + "\n", encoding="utf-8")
        check("hdvila", [p], expect)


# ------------------------------------------------------------------------------------------------ Ego4D

EGO = ["video_uid", "duration_sec", "video_metadata", "video_metadata.fps", "video_metadata.mp4_duration_sec",
       "scenarios", "split_em", "s3_path", "video"]
NARR = ["entry", "narration_pass_1", "narration_pass_1.narrations", "narration_pass_2.summaries", "timestamp_sec",
        "narration_text", "start_sec", "end_sec"]


def ego_video(i: int, o: dict):
    v = {"video_uid": f"uid-{i}", "duration_sec": 100.0 + i, "scenarios": ["Cooking"], "split_em": "val",
         "video_metadata": {"fps": 30.0, "num_frames": 3000, "display_resolution_width": 1920}}
    for k, x in o.items():
        if k == "video":
            return x
        if k.startswith("video_metadata."):
            v["video_metadata"] = {**v["video_metadata"], k.split(".")[1]: x} \
                if isinstance(v["video_metadata"], dict) else v["video_metadata"]
        else:
            v[k] = x
    return v


def ego_narration(o: dict):
    n = {"timestamp_sec": 12.5, "narration_text": "#C C picks a cup"}
    sm = {"start_sec": 0.0, "end_sec": 50.0, "summary_text": "#Summary C makes tea"}
    entry = {"narration_pass_1": {"narrations": [n]}, "narration_pass_2": {"summaries": [sm]}}
    for k, x in o.items():
        if k == "entry":
            return x
        if k in ("timestamp_sec", "narration_text"):
            n[k] = x
        elif k in ("start_sec", "end_sec"):
            sm[k] = x
        elif k == "narration_pass_1":
            entry[k] = x
        else:
            p, f = k.split(".")
            entry[p] = {f: x}
    return entry


@FUZZ
@given(st.lists(st.tuples(overrides(EGO, JSON_VALUES), st.one_of(st.none(), overrides(NARR, JSON_VALUES))),
                min_size=1, max_size=5),
       st.booleans(), st.sampled_from([0, 20, 480]))
def test_ego4d(videos, listed, window):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        vids, narr = [], {}
        for i, (o, n) in enumerate(videos):
            v = ego_video(i, o)
            vids.append(v)
            if n is not None:
                narr[f"uid-{i}"] = ego_narration(n)
        (d / "ego4d.json").write_text(dump(vids if listed else {"videos": vids}), encoding="utf-8")
        (d / "narration.json").write_text(dump(narr), encoding="utf-8")
        most = 1 if not window else 10_000
        expect = {f"{d / 'ego4d.json'}:videos[{i}]": (1, most) for i in range(len(vids))}
        check("ego4d", [d], expect, {"window_sec": window})


# ------------------------------------------------------------------------------------------------ options, files


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(SOURCES), st.dictionaries(st.sampled_from(["window_sec", "min_window_sec", "max_asr_span_sec",
                                                                  "dedupe", "bogus", ""]),
                                                 st.one_of(NUMBERS.filter(lambda x: not isinstance(x, Raw)),
                                                           st.booleans(), st.none(), WORDS), max_size=2))
def test_source_options_are_accepted_or_refused_naming_the_option(source, options):
    adapter = get_adapter(source)
    try:
        adapter.check_options(options)
    except ConfigError as e:
        assert str(e).startswith("source_options."), e
        assert any(f"source_options.{k}" in str(e) for k in options), e


@pytest.mark.parametrize("source", SOURCES)
def test_unreadable_metadata_files_are_a_metadata_error(source, tmp_path):
    """The one exception an adapter raises: a file that cannot be read at all (exit 2 in the job)."""
    name = {"ego4d": "ego4d.json", "howto100m": "HowTo100M_v1.csv", "hdvila": "hdvila_part0.jsonl",
            "miradata": "m.csv", "webvid": "results_2M_val.csv"}[source]
    with pytest.raises(MetadataError, match="not found"):
        list(get_adapter(source).read([str(tmp_path / name)], {}))
    (tmp_path / name).mkdir()
    with pytest.raises(MetadataError):
        list(get_adapter(source).read([str(tmp_path / name)], {}))
    (tmp_path / name).rmdir()
    if source in ("ego4d",):
        for text in ("{not json", '{"videos": [' + DEEP[:-1], '"just a string"', "9" * 5000):
            (tmp_path / name).write_text(text)
            with pytest.raises(MetadataError, match="ego4d.json"):
                list(get_adapter(source).read([str(tmp_path / name)], {}))
    elif source != "hdvila":
        (tmp_path / name).write_text("nothing,we,know\n1,2,3\n")
        with pytest.raises(MetadataError, match=name):
            list(get_adapter(source).read([str(tmp_path / name)], {}))


# ------------------------------------------------------------------------------------------------ the readers below


PLAIN_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), WORDS),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(WORDS, c, max_size=3), max_leaves=10)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(PLAIN_JSON, st.sampled_from([Raw(DEEP), Raw(DEEP_OBJ)])), max_size=4), st.booleans())
def test_whole_json_files_are_read_item_by_item(items, wrapped):
    """load_json reads what json reads; an item too deep for Python becomes an Unreadable, the rest is intact."""
    from longvid.operators.sources.base import Unreadable, load_json

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ego4d.json"
        p.write_text(dump({"videos": items} if wrapped else items), encoding="utf-8")
        with no_hang():
            got = load_json(str(p))
    got = got["videos"] if wrapped else got
    assert len(got) == len(items)
    for g, want in zip(got, items):
        if isinstance(want, Raw):  # the item, or (an item of a top-level list) the value inside it
            while isinstance(g, (list, dict)) and len(g) == 1:
                g = next(iter(g.values())) if isinstance(g, dict) else g[0]
            assert isinstance(g, Unreadable) and "deeper than" in g.reason
        else:
            assert g == json.loads(dump(want))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["00:00:01.000", "00:01.5", "1e300", "99:99:99", "٣", "00:00:05,25", "-1", ""]),
              st.sampled_from(["00:00:03.000", "00:00:1e3", "9" * 400, "00:00:02"]), WORDS)
    .map(lambda c: f"{c[0]} --> {c[1]}\n{c[2]}"),
    WORDS), max_size=6))
def test_subtitle_files_never_raise(blocks):
    """parse_vtt (HD-VILA sidecars, read while ingesting) skips what it cannot read; its text is clean."""
    from longvid.operators.sources.hdvila import parse_vtt

    with no_hang():
        spans = parse_vtt("WEBVTT\n\n" + "\n\n".join(blocks))
    for s in spans:
        s.text.encode("utf-8")
        assert s.text.strip() and 0 <= s.start <= s.end <= MAX_SECONDS
