"""Hostile input to the audit, one regression test per class: an unusable benchmark record or manifest part is
reported (file, record, field, why) and the audit goes on; the drop list has one grammar on both sides."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvid.operators.audit.benchmarks import read_benchmark_file, scan_benchmarks
from longvid.operators.audit.core import AuditConfig, run_audit
from longvid.manifests.droplist import DropListError, parse_drop_list, read_drop_list
from longvid.manifests.readers import ManifestError, find_jobs, iter_batches
from tests.operators.test_audit import EGO_UID, clean_rows, planted_rows
from tests.operators.test_audit_util import FIXTURES, make_job, row

GOOD = {"video": "ZS9XR.mp4", "question": "what does the person do after opening the fridge", "candidates": ["eat", "sit"],
        "answer": "eat"}


def _mvbench(hostile: bytes) -> bytes:
    """An MVBench task file: a good record, then one with `hostile` as its question."""
    return b"[" + json.dumps(GOOD).encode() + b',\n{"video": "EY6P4.mp4", "question": ' + hostile + b', "candidates": ["a"], "answer": "a"}]'


# (class, file, content, where, field, a words of the reason)
RECORD_CLASSES = [
    ("huge int (400 digits) as a time", "EgoSchema/uid_to_ego4d.json",
     b'{"q1": {"video_uid": "' + EGO_UID.encode() + b'", "starting_sec": 1, "ending_sec": 9}, "q2": {"video_uid": "'
     + EGO_UID.encode() + b'", "starting_sec": ' + b"9" * 400 + b', "ending_sec": 5}}', "q_uid q2", "starting_sec", "too large"),
    ("integer too long to decode (5000 digits)", "MVBench/action_sequence.json", _mvbench(b"9" * 5000), "record 1",
     "question", "integer too long"),
    ("1e400", "MVBench/action_sequence.json", _mvbench(b"1e400"), "record 1", "question", "number inf"),
    ("NaN", "MVBench/action_sequence.json", _mvbench(b"NaN"), "record 1", "question", "number nan"),
    ("Infinity as a time", "EgoSchema/uid_to_ego4d.json",
     b'{"q1": {"video_uid": "' + EGO_UID.encode() + b'", "starting_sec": 1, "ending_sec": Infinity}, "q2": {"video_uid": "'
     + EGO_UID.encode() + b'", "starting_sec": 1, "ending_sec": 9}}', "q_uid q1", "ending_sec", "not a finite number"),
    ("lone surrogate (JSON escape)", "MVBench/action_sequence.json", _mvbench(b'"why \\ud800?"'), "record 1", "question",
     "not valid Unicode"),
    ("undecodable byte", "PerceptionTest/mc_question_valid.jsonl",
     b'{"video_name": "video_1", "question": "q", "options": ["a"]}\n{"video_name": "video_\xff2", "question": "q", "options": ["a"]}\n',
     "line 2", "video_name", "not valid Unicode"),
    ("deep nesting (RecursionError)", "MVBench/action_sequence.json", _mvbench(b"[" * 5000 + b"]" * 5000), "record 1",
     "question", "nested too deeply"),
    ("a dict where a list goes", "MVBench/action_sequence.json",
     b"[" + json.dumps(GOOD).encode() + b', {"video": "EY6P4", "question": "q", "candidates": {"a": 1}, "answer": "a"}]',
     "record 1", "candidates", "expected a list of options, got an object"),
    ("a number where a string goes", "MVBench/action_sequence.json",
     b"[" + json.dumps(GOOD).encode() + b', {"video": 12345, "question": "q", "candidates": ["a"], "answer": "a"}]',
     "record 1", "video", "expected text, got a number"),
    ("null", "MVBench/action_sequence.json", _mvbench(b"null"), "record 1", "question", "missing"),
    ("a record that is not an object", "MVBench/action_sequence.json", b"[" + json.dumps(GOOD).encode() + b", [1, 2]]",
     "record 1", "-", "expected an object, got an array"),
    ("a truncated JSON file", "MVBench/action_sequence.json", b"[" + json.dumps(GOOD).encode() + b', {"video": "EY6P4", "quest',
     "record 1", "(JSON syntax)", "ends early"),
    ("a JSON syntax error inside a record", "MVBench/action_sequence.json",
     b"[" + json.dumps(GOOD).encode() + b", {not json}, " + json.dumps(dict(GOOD, video="ZS9XS.mp4")).encode() + b"]",
     "record 1", "(JSON syntax)", "broken JSON"),
    ("a JSON line that does not parse", "LVBench/video_info.meta.jsonl",
     b'{"key": "Cm73ma6Ibcs", "qa": []}\n{"key": "Cm73ma6Ibcz", "qa": [\n', "line 2", "-", "not a JSON record"),
    ("a csv row with the wrong number of cells", "NExT-QA/val.csv",
     b"video,question,answer,qid,type,a0,a1\n4010069381,why did he run,2,3,CW,x,y\n4010069382,too few\n", "line 3", "-",
     "expected 7 cells, got 2"),
    ("a Charades-STA line that does not parse", "Charades-STA/charades_sta_test.txt",
     b"3MSZA 24.3 30.4##person turn a light on.\nnot a line\n", "line 2", "-", "not a Charades-STA line"),
    ("a Charades-STA time of 400 digits", "Charades-STA/charades_sta_test.txt",
     b"3MSZA 24.3 30.4##person turn a light on.\nRPY8D 1 " + b"9" * 400 + b"##a person sits.\n", "line 2", "end",
     "not a finite number"),
]


@pytest.mark.parametrize("cls,rel,content,where,fld,why", RECORD_CLASSES, ids=[c[0] for c in RECORD_CLASSES])
def test_hostile_record_is_reported_and_the_file_read(tmp_path, cls, rel, content, where, fld, why):
    p = tmp_path / rel
    p.parent.mkdir(parents=True)
    p.write_bytes(content)
    b = scan_benchmarks([tmp_path])
    assert b.unknown == [] and len(b.files) == 1
    f = b.files[0]
    assert f.records >= 2 and f.unusable == 1 and (f.videos or f.texts)  # the good records are used
    (prob,) = f.problems
    assert (prob.path, prob.where, prob.field) == (str(p), where, fld) and why in prob.why, str(prob)


@pytest.mark.parametrize("name,content,why", [
    ("empty.json", b"", "empty file"),
    ("blank.json", b" \n\t\n", "empty file"),
    ("garbage.json", bytes(range(256)) * 8, "binary content"),
    ("nul.csv", b"video_1\n\x00\x00\n", "binary content"),
    ("corrupt.parquet", b"PAR1" + os.urandom(200), "cannot parse"),
    ("only_bom.json", b"\xef\xbb\xbf", "empty file"),
])
def test_unusable_file_is_reported_not_raised(tmp_path, name, content, why):
    (tmp_path / name).write_bytes(content)
    b = scan_benchmarks([tmp_path])
    assert b.files == [] and len(b.unknown) == 1
    assert b.unknown[0][0] == str(tmp_path / name) and why in b.unknown[0][1]


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text(json.dumps([GOOD]))
    (tmp_path / "b.json").write_text(json.dumps([GOOD]))
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "b.json":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    b = scan_benchmarks([tmp_path])
    assert [Path(f.path).name for f in b.files] == ["a.json"]
    assert b.unknown == [(str(tmp_path / "b.json"), "cannot read: Permission denied")]


@pytest.mark.parametrize("enc,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                     ("utf-32-le", b"\xff\xfe\x00\x00")])
def test_byte_order_marks(tmp_path, enc, bom):
    p = tmp_path / "MVBench" / "action_sequence.json"
    p.parent.mkdir()
    p.write_bytes(bom + json.dumps([GOOD], ensure_ascii=False).encode(enc))
    f = read_benchmark_file(p)
    assert not isinstance(f, str) and f.records == 1 and f.unusable == 0 and f.videos[0].video_id == "ZS9XR"


def test_file_name_that_is_not_utf8(tmp_path):
    d = os.fsencode(tmp_path) + b"/MVBench"
    os.mkdir(d)
    with open(d + b"/action_sequence\xff.json", "wb") as fh:
        fh.write(_mvbench(b"null"))
    b = scan_benchmarks([tmp_path])
    (f,) = b.files
    assert "\\udcff" in f.path and f.unusable == 1 and f.videos  # shown escaped; every record still read
    str(b.problems[0]).encode("utf-8")


def test_videomme_parquet_variants(tmp_path):
    good = {"videoID": "fFjv93ACGo8", "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "question_id": "001-1",
            "duration": "short", "question": "which kind of the decoration has the largest number", "options": ["A. x", "B. y"],
            "answer": "A"}
    rows = [good, dict(good, question_id="001-2", question=None), dict(good, question_id="001-3", options=None),
            dict(good, question_id="001-4", videoID=None, url=None)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    # wrong column types: a question of numbers, options as one string per row
    pq.write_table(pa.table({"videoID": ["fFjv93ACGo8"], "url": ["u"], "question": pa.array([7], pa.int64()),
                             "options": ["oops"], "answer": ["A"]}), tmp_path / "test-00001-of-00002.parquet")
    b = scan_benchmarks([tmp_path])
    f0, f1 = sorted(b.files, key=lambda f: f.path)
    assert (f0.records, f0.unusable) == (4, 3) and {v.ref for v in f0.videos} == {"001-1"}
    assert [(p.where, p.field) for p in f0.problems] == [("row 1", "question"), ("row 2", "options"), ("row 3", "videoID")]
    assert (f1.records, f1.unusable) == (1, 1) and "expected text, got a number" in f1.problems[0].why


# ---------------------------------------------------------------- manifests

def _bad_parts(job: Path) -> None:
    m = job / "manifests"
    pq.write_table(pa.table({"key": ["x"], "source": ["webvid"]}), m / "part-000001.parquet")  # columns missing
    t = pq.read_table(m / "part-000000.parquet")
    pq.write_table(t.set_column(t.schema.get_field_index("text"), "text", pa.array([1] * t.num_rows, pa.int64())),
                   m / "part-000002.parquet")  # a column of the wrong type
    (m / "part-000003.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")  # corrupt
    big = t.set_column(t.schema.get_field_index("num_frames"), "num_frames", pa.array([2**40] * t.num_rows, pa.int64()))
    pq.write_table(big, m / "part-000004.parquet")  # a value that does not fit the schema's int32: breaks while read
    (job / "failures" / "part-000005.parquet").write_bytes(b"not parquet")


def test_unusable_manifest_parts_are_reported_and_the_audit_goes_on(tmp_path):
    job = make_job(tmp_path / "job", [row("charades_RPY8D_full", "charades", "rpy8d")] + clean_rows(4), shards=False)
    _bad_parts(job)
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), tmp_path / "out", AuditConfig())
    assert res.rows == 5 and set(res.leakage.column("key").to_pylist()) == {"charades_RPY8D_full"}
    bad = {Path(u["file"].split(": ", 1)[1]).name: u["why"] for u in res.summary["unusable_manifest_parts"]}
    assert set(bad) == {"part-000001.parquet", "part-000002.parquet", "part-000003.parquet", "part-000004.parquet",
                        "part-000005.parquet"}
    assert "column 'shard' missing" in bad["part-000001.parquet"]
    assert "column 'text' has type int64" in bad["part-000002.parquet"]
    assert "not a readable parquet file" in bad["part-000003.parquet"]
    assert "after 0 rows" in bad["part-000004.parquet"] and "not in range" in bad["part-000004.parquet"]
    assert all(u["file"].startswith(str(job)) for u in res.summary["unusable_manifest_parts"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "part-000004.parquet" in html and "Manifest and failure parts left out" in html


def test_no_usable_manifest_part_exits_2_naming_the_path(tmp_path, capsys):
    from longvid.jobs.cli import main

    job = tmp_path / "job"
    (job / "manifests").mkdir(parents=True)
    (job / "manifests" / "part-000000.parquet").write_bytes(b"garbage")
    rc = main(["audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "part-000000.parquet" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_strict_iter_batches_names_the_file(tmp_path):
    job = make_job(tmp_path / "job", clean_rows(3), shards=False)
    _bad_parts(job)
    with pytest.raises(ManifestError, match=r"part-00000[14]\.parquet"):
        list(iter_batches(find_jobs(str(job)), ["key", "num_frames", "shard"]))


def test_hostile_manifest_video_ids(tmp_path):
    rows = [row("a", "howto100m", "youtube.com/watch?v=[", uri="http://[::1"), row("b", "hdvila", "https://youtu.be:99999999/x"),
            row("charades_RPY8D_full", "charades", "rpy8d")]
    job = make_job(tmp_path / "job", rows, shards=False)
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), tmp_path / "out", AuditConfig(), write_report=False)
    assert res.rows == 3 and set(res.leakage.column("key").to_pylist()) == {"charades_RPY8D_full"}


def test_non_finite_manifest_values(tmp_path):
    """nan and infinite spans and durations: an unknown span counts as the whole video (so a window can leak),
    the statistics count no time for it, and summary.json stays strict JSON."""
    nan, inf = float("nan"), float("inf")
    rows = [row("ego_nan", "ego4d", EGO_UID, start=nan, end=nan), row("ego_inf", "ego4d", EGO_UID, start=inf, end=inf),
            dict(row("w", "webvid", "1", start=-inf, end=1e308), duration=inf)]
    job = make_job(tmp_path / "job", rows, shards=False)
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), tmp_path / "out", AuditConfig())
    assert set(res.leakage.column("key").to_pylist()) == {"ego_nan", "ego_inf"}

    def refuse(c):
        raise ValueError(f"{c} in summary.json")

    s = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert s["stats"]["sources"]["webvid"]["hours"] == 0


# ---------------------------------------------------------------- the drop list

DROP = "\ufeff# audit drop list\r\nkey_a\n  key_b   # inline comment\n\n#key_c\n\tkey_d#no space\n   # indented comment\nkey_e"


def test_drop_list_grammar():
    assert parse_drop_list(DROP, "d.txt") == {"key_a", "key_b", "key_d", "key_e"}
    with pytest.raises(DropListError, match=r"^d\.txt: line 2: one key per line expected, got 2 words"):
        parse_drop_list("a\nb c # comment\n", "d.txt")


def test_train_and_audit_read_drop_lists_alike(tmp_path):
    """Issue #13: the audit's reader and train --exclude are one parser; inline comments mean the same on both sides."""
    from longvid.pipelines.loader import read_exclude
    from longvid.pipelines.train_sources import DataError

    p = tmp_path / "drop_list.txt"
    p.write_text(DROP, encoding="utf-8")
    assert read_exclude([str(p)]) == read_drop_list(p) == {"key_a", "key_b", "key_d", "key_e"}
    p.write_text("key_a\nkey_b key_c\n")
    with pytest.raises(DropListError, match="line 2"):
        read_drop_list(p)
    with pytest.raises(DataError, match=r"drop_list\.txt: line 2"):
        read_exclude([str(p)])


def test_audit_never_writes_a_key_the_grammar_cannot_carry(tmp_path):
    rows = [row("charades_RPY8D_full", "charades", "rpy8d"), row("odd key#1", "charades", "rpy8d"),
            row("dupa", "webvid", "1", sha="cd" * 32), row("dupb c", "webvid", "2", sha="cd" * 32)]  # "dupb c" is dropped
    job = make_job(tmp_path / "job", rows, shards=False)
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), tmp_path / "out", AuditConfig(), write_report=False)
    assert res.summary["drop_list"]["not_writable"] == ["dupb c", "odd key#1"]
    assert read_drop_list(tmp_path / "out" / "drop_list.txt") == {"charades_RPY8D_full"}


# ---------------------------------------------------------------- end to end

def _hostile_benchmarks(root: Path) -> Path:
    """The fixture benchmarks plus a folder of hostile files, each next to good records."""
    d = root / "benchmarks"
    shutil.copytree(FIXTURES, d)
    h = d / "hostile"
    (h / "MVBench").mkdir(parents=True)
    recs = [json.dumps({"video": "123456.webm", "question": "what moves the striped box to the left",
                        "candidates": ["a", "b"], "answer": "a"}).encode(),
            b'{"video": "2.webm", "question": ' + b"[" * 5000 + b"]" * 5000 + b', "candidates": [], "answer": "a"}',
            b'{"video": ' + b"9" * 5000 + b', "question": "q", "candidates": [], "answer": "a"}',
            b'{"video": "3.webm", "question": "\\ud800", "candidates": [], "answer": "a"}',
            b'{"video": "4.webm", "question": 1e400, "candidates": [], "answer": "a"}',
            b'{"video": "5.webm", "question": "q", "candidates": {"a": 1}, "answer": "a"}', b"null"]
    (h / "MVBench" / "action_antonym.json").write_bytes(b"[" + b",\n".join(recs) + b"]")
    (h / "uid_to_ego4d.json").write_bytes(b'{"q1": {"video_uid": "' + EGO_UID.encode() + b'", "starting_sec": '
                                          + b"9" * 400 + b', "ending_sec": NaN}, "q2": [1]}')
    (h / "empty.json").write_bytes(b"")
    (h / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (h / "charades_sta_hostile.txt").write_bytes(b"3MSZA 24.3 30.4##person turn a light on.\n\xff\xfe garbage\n")
    return d


def test_audit_over_hostile_benchmarks_completes_finds_the_leaks_and_reports(tmp_path, capsys):
    from longvid.jobs.cli import main

    bench = _hostile_benchmarks(tmp_path)
    rows = planted_rows([(float(t), 0) for t in range(6)]) + clean_rows(5) + [row("ssv2_123456", "ssv2", "123456")]
    job = make_job(tmp_path / "job", rows, shards=False)
    out = tmp_path / "out"
    assert main(["audit", "--manifests", str(job), "--benchmarks", str(bench), "--out", str(out)]) == 0
    leak = pq.read_table(out / "leakage.parquet")
    assert set(leak.column("key").to_pylist()) == {
        "howto100m_youtu-be-A_full", "charades_RPY8D_full", "ego4d_in_window", "webvid_caption_copy",
        "perception_test_video_12", "ego4d_val_video",
        "ssv2_123456"}  # found through the one good record of a hostile file
    s = json.loads((out / "summary.json").read_text())
    ub = s["unusable_benchmark_records"]
    assert ub["count"] == 9 == len(ub["listed"])
    listed = {(Path(u["path"]).name, u["record"], u["field"]) for u in ub["listed"]}
    assert {("action_antonym.json", f"record {i}", f) for i, f in [(1, "question"), (2, "video"), (3, "question"),
                                                                    (4, "question"), (5, "candidates"), (6, "-")]} <= listed
    assert {("uid_to_ego4d.json", "q_uid q1", "starting_sec"), ("uid_to_ego4d.json", "q_uid q2", "-"),
            ("charades_sta_hostile.txt", "line 2", "-")} <= listed
    unknown = {Path(u["path"]).name: u["why"] for u in s["unknown_benchmark_files"]}
    assert unknown["empty.json"] == "empty file" and "binary" in unknown["garbage.bin"]
    mv = [f for f in s["benchmark_files"] if f["path"].endswith("action_antonym.json")][0]
    assert (mv["records"], mv["unusable_records"]) == (7, 6)
    html = (out / "report.html").read_text()
    assert "Benchmark records that cannot be used (left out): 9" in html and "nested too deeply" in html
    err = capsys.readouterr().err  # the log: one warning line per unusable record (the first 20), no traceback
    assert "9 records in 3 files cannot be used" in err and "action_antonym.json: record 1: field 'question'" in err
    assert "Traceback" not in err
