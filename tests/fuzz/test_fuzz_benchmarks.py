"""Fuzz (hypothesis): every benchmark reader and the drop-list parser under hostile input mixed with valid input.

For each benchmark format a file is written with valid records and hostile ones (huge and too-long integers, 1e400,
NaN and infinities, lone surrogates as JSON escapes and as undecodable bytes, nesting deeper than the recursion
limit, values of the wrong JSON type, records that are not objects, syntax errors, wrong csv rows, bad lines), in
a random order, with or without a BOM and CRLF line ends. The promises: no exception escapes; the file is still
recognised; every valid record is found and nothing comes from a hostile one; records == valid + reported; every
report names the file and the record. Example counts are small: the file runs in seconds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longvid.operators.audit.benchmarks import read_benchmark_file
from longvid.manifests.droplist import DropListError, format_drop_list, parse_drop_list, valid_key

FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])

DEEP = b"[" * 3000 + b"]" * 3000  # deeper than Python's recursion limit: json.loads raises RecursionError
DEEP_OBJ = b'{"a":' * 3000 + b"1" + b"}" * 3000
TOO_LONG = b"9" * 5000  # json refuses integers of more than 4300 digits
HUGE = b"9" * 400  # decodes, but overflows a float
# hostile values of a required text field (blank text is allowed: a record with an empty question names its video)
TEXT = [b"null", b"17", b"-3.5", b"true", HUGE, TOO_LONG, b"1e400", b"NaN", b"-Infinity", b"{}", b'{"a": [1, 2]}', b"[]",
        b'["x"]', b'"\\ud800"', b'"half \\udfff surrogate"', b'"raw \xff\xfe bytes"', DEEP, DEEP_OBJ]
ID = TEXT + [b'""', b'"   "']  # ... of an id field: blank is unusable too
LIST = [b"null", b"17", HUGE, TOO_LONG, b"NaN", b"1e400", b"true", b"{}", b'{"0": "a"}', b'"\\ud800"', b'"not a list"',
        b'[{"a": 1}]', b"[[1]]", b"[NaN]", b"[Infinity]", b'["ok", "\\ud800"]', b'["ok", "raw \xff"]', DEEP, b"[true]"]
SECONDS = [b"null", b"true", b"{}", b"[]", b'"soon"', b'"\\ud800"', b"NaN", b"Infinity", b"-Infinity", b"1e400", HUGE,
           TOO_LONG, DEEP]
SYNTAX = [b"{not json}", b'{"video": }', b"[1, 2,]", b'{"a": 1,}']  # broken inside, brackets balanced
RECORD = [b"null", b"17", b'"a string"', b"[1, 2]", TOO_LONG, b"NaN", DEEP, DEEP_OBJ, b"{}", b'{"unrelated": 1}'] + SYNTAX
LINE = RECORD + [b'{"video": ', b"not json at all"]  # a JSON line may be broken anyhow: it is one record


@dataclass
class Fmt:
    """A benchmark format: where its file goes, how records are laid out, valid record i, the refs it yields."""

    name: str
    path: str
    layout: str  # array | jsonl | object | ego4d | csv | lines
    valid: Callable[[int], Any]  # dict (json layouts), (key, value) (object), list of cells (csv), str (lines)
    refs: Callable[[int, int, str], set[str]]  # (i, position, file name) -> refs of its items
    fields: dict[str, list[bytes]] = field(default_factory=dict)  # field -> values that make the record unusable
    whole: list[bytes] = field(default_factory=list)  # hostile whole records (or rows, or lines)
    label: str = ""  # object layout: the word before the key in a problem's `where`
    header: str = ""  # csv layout


def _yt(i: int) -> str:
    return f"vid{i:08d}"  # an 11-character YouTube id


def _uuid(i: int) -> str:
    return f"{i:08x}-aaaa-4bbb-8ccc-{i:012x}"


Q = "what does the person in the video do next number"
FORMATS = [
    Fmt("mvbench", "MVBench/json/action_sequence.json", "array",
        lambda i: {"video": f"Z{i:04d}.mp4", "question": f"{Q} {i}", "candidates": ["sit", "stand"], "answer": "sit"},
        lambda i, pos, n: {f"{n}#{pos}"}, {"video": ID, "question": TEXT, "candidates": LIST}, RECORD),
    Fmt("mlvu", "MLVU_MC/json/1_plotQA.json", "array",
        lambda i: {"video": f"movie_{i}.mp4", "duration": 100, "question": f"{Q} {i}", "candidates": ["a b", "c d"],
                   "answer": "a b", "question_type": "plotQA"},
        lambda i, pos, n: {f"{n}#{pos}"}, {"video": ID, "question": TEXT, "candidates": LIST}, RECORD),
    Fmt("lvbench-clean", "LVBench/json/lvbench_clean.json", "array",
        lambda i: {"video": f"{i:08d}", "question": f"{Q} {i}", "candidates": ["(A) x", "(B) y"], "answer": "A",
                   "time_reference": "00:10-00:20"},
        lambda i, pos, n: {f"{n}#{pos}"}, {"video": ID, "question": TEXT, "candidates": LIST}, RECORD),
    Fmt("videomme", "Video-MME/videomme.json", "array",
        lambda i: {"videoID": _yt(i), "url": f"https://www.youtube.com/watch?v={_yt(i)}", "question_id": f"{i:03d}-1",
                   "duration": "short", "question": f"{Q} {i}", "options": ["A. one", "B. two"], "answer": "A"},
        lambda i, pos, n: {f"{i:03d}-1"}, {"question": TEXT, "options": LIST}, RECORD),
    Fmt("longvideobench", "LongVideoBench/lvb_val.json", "array",
        lambda i: {"video_id": _yt(i), "id": f"lvb_{i}", "question": f"{Q} {i}", "candidates": ["x y", "z w"],
                   "correct_choice": 0, "question_category": "T3E"},
        lambda i, pos, n: {f"lvb_{i}"}, {"video_id": ID, "question": TEXT, "candidates": LIST}, RECORD),
    Fmt("charades-json", "Temporal_Grounding/json/temporal_grounding_charades.json", "array",
        lambda i: {"video": f"C{i:04d}.mp4", "caption": f"person number {i} opens a door", "timestamp": [1.5, 7.0]},
        lambda i, pos, n: {f"{n}#{pos}"},
        {"video": ID + [b'"not-an-id"'], "caption": TEXT,
         "timestamp": [b"null", b"[1]", b"[1, 2, 3]", b"[NaN, 2]", b"[1, 1e400]", b'["a", 2]', b"{}", DEEP, HUGE]}, RECORD),
    Fmt("charades-txt", "Charades-STA/charades_sta_test.txt", "lines",
        lambda i: f"C{i:04d} 1.5 7.0##person number {i} opens a door",
        lambda i, pos, n: {f"{n}#{pos}"}, {},
        [b"garbage line", b"ABCDE 1.0 2.0 no separator", b"ABCDE 1.0 2.0##bad \xff byte", b"ABCDE " + HUGE + b" 2.0##q",
         b"ABC 1 2##short id", b"ABCDE 1.0 2.0##lone \xed\xa0\x80 surrogate bytes"]),
    Fmt("egoschema-windows", "EgoSchema/uid_to_ego4d.json", "object",
        lambda i: (f"q{i}", {"video_uid": _uuid(i), "starting_sec": 10 * i, "ending_sec": 10 * i + 180}),
        lambda i, pos, n: {f"q{i}"},
        {"video_uid": ID + [b'"not-a-uid"'], "starting_sec": SECONDS, "ending_sec": SECONDS + [b"-5"]}, RECORD, label="q_uid"),
    Fmt("egoschema-questions", "EgoSchema/questions.json", "array",
        lambda i: {"q_uid": f"q{i}", "google_drive_id": "x", "question": f"{Q} {i}", "option 0": "C cooks.",
                   "option 1": "C cleans."},
        lambda i, pos, n: {f"q{i}"}, {"q_uid": ID, "question": TEXT}, RECORD),
    Fmt("ego4d", "Ego4D/ego4d.json", "ego4d",
        lambda i: {"video_uid": _uuid(i), "duration_sec": 60.0, "split_em": "val", "split_av": None},
        lambda i, pos, n: {f"videos[{pos}]"}, {"video_uid": ID + [b'"not-a-uid"']}, RECORD),
    Fmt("perception-rows", "PerceptionTest/mc_question_valid.jsonl", "jsonl",
        lambda i: {"video_name": f"video_{i}", "question_id": f"video_{i}_0", "question": f"{Q} {i}",
                   "options": ["drink", "wash"], "answer_id": 0, "area": "semantics"},
        lambda i, pos, n: {f"video_{i}_0"}, {"video_name": ID, "options": LIST}, LINE),
    Fmt("perception-original", "PerceptionTest/all_valid.json", "object",
        lambda i: (f"video_{i}", {"metadata": {"video_id": f"video_{i}"},
                                  "mc_question": [{"id": 0, "question": f"{Q} {i}", "options": ["a", "b"], "area": "x"}]}),
        lambda i, pos, n: {f"video_{i}", f"video_{i}#0"},
        {"mc_question": LIST + [b'[{"question": null}]'], "metadata": [b"17", b"[]", DEEP]},
        RECORD, label="video"),
    Fmt("perception-ids", "PerceptionTest/mc_question_valid_id_list.csv", "lines",
        lambda i: f"video_{i}", lambda i, pos, n: {f"{n}#{pos}"}, {},
        [b"garbage", b"video_x1", b"video_\xff", b"video_1,video_2", b"video_1 extra"]),
    Fmt("nextqa", "NExT-QA/val.csv", "csv",
        lambda i: [str(4000000000 + i), "1200", "640", "480", f"{Q} {i}", "2", str(i), "CW", "to throw it", "to eat it",
                   "to show it", "to hide it", "to clean it"],
        lambda i, pos, n: {f"{4000000000 + i}_{i}"}, {},
        [b"1,2,3", b",1200,640,480,q,2,7,CW,a,b,c,d,e", b"   ,1200,640,480,q,2,7,CW,a,b,c,d,e",
         b"40\xff,1200,640,480,q,2,7,CW,a,b,c,d,e", b"4000,1200,640,480,bad \xff byte,2,7,CW,a,b,c,d,e",
         b"4000,1200,640,480,q,2,7,CW,a,b,c,d,e,extra,cells"],
        header="video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4"),
    Fmt("nextqa-map", "NExT-QA/map_vid_vidorID.json", "object",
        lambda i: (str(4000000000 + i), f"1025/{4000000000 + i}"), lambda i, pos, n: {str(4000000000 + i)}, {},
        TEXT + [b'"not a path"', b'"12/34"'] + SYNTAX, label="video"),
    Fmt("anetqa-q", "ActivityNet-QA/test_q.json", "array",
        lambda i: {"video_name": f"v_{_yt(i)}", "question": f"{Q} {i}", "question_id": f"v_{_yt(i)}_1"},
        lambda i, pos, n: {f"v_{_yt(i)}_1"}, {"video_name": ID, "question": TEXT}, RECORD),
    Fmt("anetqa-a", "ActivityNet-QA/test_a.json", "array",
        lambda i: {"answer": f"answer number {i}", "type": 3, "question_id": f"v_{_yt(i)}_1"},
        lambda i, pos, n: {f"v_{_yt(i)}_1"},
        {"question_id": [b"null", b'""', b"{}", b"[]", b"1.5", b"NaN", b"true", b'"\\ud800"', DEEP, TOO_LONG]}, RECORD),
    Fmt("lvbench-meta", "LVBench/video_info.meta.jsonl", "jsonl",
        lambda i: {"key": _yt(i), "type": "cartoon", "qa": [{"uid": f"u{i}", "question": f"{Q} {i}?\n(A) a\n(B) b"}]},
        lambda i, pos, n: {f"{n}#{pos}", f"u{i}"},
        {"key": ID, "qa": [b for b in LIST if b != b'"not a list"'] + [b'[{"question": 17}]', b'[{"uid": "x"}]']}, LINE),
]


def _dump(v: Any) -> bytes:
    return json.dumps(v).encode()


def _record_bytes(fmt: Fmt, i: int, hostile: tuple[str, bytes] | None) -> bytes:
    """Valid record i, or with one field replaced by a hostile value, or (field "") a hostile record as a whole."""
    rec = fmt.valid(i)
    if fmt.layout == "object":
        rec = rec[1]
    if hostile and hostile[0] == "":
        return hostile[1]
    if fmt.layout in ("csv", "lines"):
        return (",".join(rec) if fmt.layout == "csv" else rec).encode()
    if not isinstance(rec, dict):
        return _dump(rec)
    return b"{" + b", ".join(_dump(k) + b": " + (hostile[1] if hostile and k == hostile[0] else _dump(v))
                             for k, v in rec.items()) + b"}"


@st.composite
def benchmark_file(draw, fmt: Fmt):
    """(file bytes, [(kind, i or j, position)]): kind "v" valid record i, "h" hostile record j."""
    n_valid = draw(st.integers(1, 6))
    n_hostile = draw(st.integers(0, n_valid))  # hostile records never outnumber valid ones: the format stays recognisable
    choices = [("", v) for v in fmt.whole] + [(k, v) for k, vs in fmt.fields.items() for v in vs]
    hostile = [draw(st.sampled_from(choices)) for _ in range(n_hostile)]
    order = draw(st.permutations([("v", i) for i in range(n_valid)] + [("h", j) for j in range(n_hostile)]))
    nl = b"\r\n" if draw(st.booleans()) else b"\n"
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    items = [_record_bytes(fmt, i, None if kind == "v" else hostile[i]) for kind, i in order]
    if fmt.layout == "object":
        keys = [_dump(fmt.valid(i)[0]) if kind == "v" else _dump(f"hostile{i}") for kind, i in order]
        body = b"{" + nl + (b"," + nl).join(k + b": " + v for k, v in zip(keys, items)) + nl + b"}"
    elif fmt.layout == "array":
        body = b"[" + nl + (b"," + nl).join(items) + nl + b"]"
    elif fmt.layout == "ego4d":
        body = b'{"version": "v2", "videos": [' + nl + (b"," + nl).join(items) + nl + b'], "physical_settings": []}'
    elif fmt.layout == "csv":
        body = fmt.header.encode() + nl + nl.join(items) + nl
    else:  # jsonl, lines
        body = nl.join(items) + nl
    return bom + body, order, hostile


def _where(fmt: Fmt, kind_i: tuple[str, int], pos: int) -> str:
    if fmt.layout == "object":
        return f"{fmt.label} hostile{kind_i[1]}"
    if fmt.layout == "ego4d":
        return f"videos[{pos}]"
    if fmt.layout == "array":
        return f"record {pos}"
    return f"line {pos + (2 if fmt.layout == 'csv' else 1)}"


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_reader_survives_hostile_records(fmt, tmp_path_factory):
    root = tmp_path_factory.mktemp(fmt.name)
    path = root / fmt.path
    path.parent.mkdir(parents=True, exist_ok=True)

    @FUZZ
    @given(data=benchmark_file(fmt))
    def run(data):
        body, order, hostile = data
        path.write_bytes(body)
        bf = read_benchmark_file(path)  # no exception escapes
        assert not isinstance(bf, str), f"{fmt.name}: file not recognised: {bf}"
        want = set().union(*(fmt.refs(i, pos, path.name) for pos, (k, i) in enumerate(order) if k == "v"))
        got = {x.ref for x in bf.videos} | {x.ref for x in bf.texts}
        assert got == want  # every valid record found, nothing taken from a hostile one
        n_hostile = sum(k == "h" for k, _ in order)
        assert bf.records == len(order) and bf.unusable == n_hostile == len(bf.problems)
        expected = {_where(fmt, ki, pos) for pos, ki in enumerate(order) if ki[0] == "h"}
        assert {p.where for p in bf.problems} == expected, [str(p) for p in bf.problems]
        for p in bf.problems:
            assert p.path == str(path) and str(p).startswith(str(path)) and p.why
            str(p).encode("utf-8")  # printable and writable as it is

    run()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**399, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(st.characters(blacklist_categories=()), max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
JSON_FORMATS = [f for f in FORMATS if f.layout in ("array", "jsonl", "object", "ego4d")]


@pytest.mark.parametrize("fmt", JSON_FORMATS, ids=[f.name for f in JSON_FORMATS])
def test_reader_random_values(fmt, tmp_path_factory):
    """Any field of a record set to any JSON value (which may or may not be usable): nothing escapes, the records
    are all counted, the untouched records are all found, only touched records are reported."""
    path = tmp_path_factory.mktemp(fmt.name) / Path(fmt.path).name

    @FUZZ
    @given(data=st.data())
    def run(data):
        n = data.draw(st.integers(2, 6))
        touched = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n // 2, unique=True)))
        items = []
        for i in range(n):
            rec = fmt.valid(i)
            rec = rec[1] if fmt.layout == "object" else rec
            if i in touched and isinstance(rec, dict):
                rec = dict(rec, **{data.draw(st.sampled_from(sorted(rec))): data.draw(JSON_VALUES)})
            elif i in touched:
                rec = data.draw(JSON_VALUES)
            items.append(json.dumps(rec).encode())
        if fmt.layout == "object":
            body = b"{" + b",\n".join(_dump(fmt.valid(i)[0]) + b": " + x for i, x in enumerate(items)) + b"}"
        elif fmt.layout == "jsonl":
            body = b"\n".join(items)
        else:
            body = b"[" + b",\n".join(items) + b"]"
            body = b'{"videos": ' + body + b"}" if fmt.layout == "ego4d" else body
        path.write_bytes(body)
        bf = read_benchmark_file(path)
        assert not isinstance(bf, str), bf
        assert bf.records == n and bf.unusable == len(bf.problems) <= len(touched)
        got = {x.ref for x in bf.videos} | {x.ref for x in bf.texts}
        assert set().union(*(fmt.refs(i, i, path.name) for i in range(n) if i not in touched)) <= got
        untouched = {f"{fmt.label} {fmt.valid(i)[0]}" if fmt.layout == "object" else _where(fmt, ("v", i), i)
                     for i in range(n) if i not in touched}
        assert not {p.where for p in bf.problems} & untouched

    run()


# ---------------------------------------------------------------- the drop list

KEY_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="#")
KEYS = st.lists(st.text(KEY_CHARS, min_size=1, max_size=12).filter(valid_key), max_size=12, unique=True)
SPACE = st.sampled_from(["", " ", "\t", "  ", "\r", "\u00a0", "\u3000"])


@FUZZ
@given(keys=KEYS)
def test_drop_list_round_trip(keys):
    text = format_drop_list([("leakage: a comment with # and spaces", keys[: len(keys) // 2]), ("dups", keys[len(keys) // 2:])])
    assert parse_drop_list(text, "drop_list.txt") == set(keys)


@FUZZ
@given(keys=KEYS, data=st.data())
def test_drop_list_grammar(keys, data):
    """Keys with whitespace around them, inline and full-line comments, blank lines, CRLF, a BOM: exactly the keys."""
    lines = []
    for k in keys:
        for _ in range(data.draw(st.integers(0, 2))):
            lines.append(data.draw(st.sampled_from(["", "   ", "# a comment", "  #k1 k2 # k3", "#", "\t# x y"])))
        comment = data.draw(st.sampled_from(["", "#", " # inline comment", "# two words", "#k"]))
        lines.append(data.draw(SPACE) + k + data.draw(SPACE) + comment + data.draw(SPACE))
    bom = "\ufeff" if data.draw(st.booleans()) else ""
    text = bom + ("\r\n" if data.draw(st.booleans()) else "\n").join(lines)
    assert parse_drop_list(text, "drop_list.txt") == set(keys)


@FUZZ
@given(text=st.text(st.characters(blacklist_categories=()), max_size=200))
def test_drop_list_any_text(text):
    """Any text, lone surrogates included: a set of grammatical keys, or DropListError naming the file and line."""
    try:
        keys = parse_drop_list(text, "my/drop.txt")
    except DropListError as e:
        assert str(e).startswith("my/drop.txt: line ") and "one key per line" in str(e)
        str(e).encode("utf-8")
        return
    assert all(valid_key(k) for k in keys)
    assert keys == parse_drop_list(format_drop_list([("again", sorted(keys))]), "x")


@FUZZ
@given(data=st.binary(max_size=200))
def test_drop_list_any_bytes(data, tmp_path_factory):
    from longvid.manifests.droplist import read_drop_list

    p = tmp_path_factory.mktemp("drop") / "drop_list.txt"
    p.write_bytes(data)
    try:
        read_drop_list(p)
    except DropListError as e:
        assert str(p) in str(e)
