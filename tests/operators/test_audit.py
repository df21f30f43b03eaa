"""Audit core: planted leaks of every kind are found with the right evidence; a clean corpus gives nothing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from longvid.operators.audit import ids
from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, read_drop_list, run_audit
from longvid.operators.audit.ngrams import NgramIndex, normalise_text
from longvid.operators.audit.phash import HashIndex
from longvid.operators.frames import dhash64
from longvid.operators.audit.videos import frames_at_rate
from longvid.manifests.readers import ManifestError, find_jobs, read_failures, read_manifests
from tests.operators.test_audit_util import FIXTURES, make_job, random_hashes, row

VMME_Q = ("When demonstrating the Germany modern Christmas tree is initially decorated with apples, candles and berries, "
          "which kind of the decoration has the largest number?")
EGO_UID = "2d560d56-dc47-4c76-8d41-889c8aa55d66"


def flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


# ---------------------------------------------------------------- unit level

def test_youtube_forms_and_namespaces():
    for form in ["fFjv93ACGo8", "https://youtu.be/fFjv93ACGo8", "youtu.be/fFjv93ACGo8?t=4", "https://www.youtube.com/watch?v=fFjv93ACGo8&t=3s",
                 "https://m.youtube.com/watch?v=fFjv93ACGo8", "https://www.youtube.com/embed/fFjv93ACGo8", "https://youtube.com/shorts/fFjv93ACGo8",
                 "v_fFjv93ACGo8", "v_fFjv93ACGo8.mp4", "download_videos/fFjv93ACGo8.mp4", "fFjv93ACGo8.1.mp4"]:
        assert ids.youtube_id(form) == "fFjv93ACGo8", form
    assert ids.youtube_id("@user-123") is None and ids.youtube_id("https://vimeo.com/123") is None
    assert ids.youtube_id("FFJV93ACGO8") != "fFjv93ACGo8"  # YouTube ids are case-sensitive
    assert ids.id_key("charades", "rpy8d.mp4") == "charades:RPY8D"
    assert ids.manifest_id_key("clevrer", "video_12") != ids.manifest_id_key("perception_test", "video_12")
    assert ids.manifest_id_key("howto100m", "x", uri="https://youtu.be/fFjv93ACGo8") == "youtube:fFjv93ACGo8"
    assert ids.manifest_id_key("star", "RPY8D") == "charades:RPY8D"
    assert ids.manifest_id_key("mysrc", "RPY8D", overrides={"mysrc": "charades"}) == "charades:RPY8D"
    assert ids.id_key("ego4d", EGO_UID.upper()) == f"ego4d:{EGO_UID}"


def test_fixture_formats_recognised_by_content():
    b = scan_benchmarks([FIXTURES])
    fmts = {Path(f.path).relative_to(FIXTURES).as_posix(): f.format for f in b.files}
    assert fmts["Video-MME/videomme/test-00000-of-00001.parquet"] == "videomme-parquet"
    assert fmts["Charades-STA/charades_sta_test.txt"] == "charades-sta-txt"
    assert fmts["EgoSchema/uid_to_ego4d.json"] == "egoschema-uid-to-ego4d"
    assert fmts["LVBench/video_info.meta.jsonl"] == "lvbench-meta-jsonl"
    assert fmts["PerceptionTest/mc_question_valid_id_list.csv"] == "perception-test-id-list"
    assert fmts["NExT-QA/val.csv"] == "nextqa-csv" and fmts["ActivityNet-QA/test_q.json"] == "activitynet-qa-questions"
    assert fmts["Ego4D/ego4d.json"] == "ego4d-json"
    unknown = {Path(p).name: why for p, why in b.unknown}
    assert set(unknown) == {"notes.json", "clevrer_ids.csv"}
    assert "does not say which dataset" in unknown["clevrer_ids.csv"]
    keys = {v.key for v in b.videos}
    assert {"youtube:fFjv93ACGo8", "charades:RPY8D", "perception_test:video_12", "clevrer:video_10012", "youtube:Lf_7RurLgp0",
            "youtube:Cm73ma6Ibcs", "tiktok:@recipesbyanne-7141686631676808454", "vidor:4010069381"} <= keys
    ego = [v for v in b.videos if v.benchmark == "EgoSchema"]
    assert [(v.video_id, v.start, v.end) for v in ego] == [(EGO_UID, 120.0, 300.0)]


def test_format_recognised_by_content_not_name(tmp_path):
    # a Video-MME parquet under a misleading name is still Video-MME; a file named like MVBench but holding junk is unknown
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "questions.bin").write_bytes((FIXTURES / "Video-MME/videomme/test-00000-of-00001.parquet").read_bytes())
    (tmp_path / "a" / "action_localization.json").write_text('{"not": "a benchmark"}')
    b = scan_benchmarks([tmp_path])
    assert [f.format for f in b.files] == ["videomme-parquet"]
    assert [Path(p).name for p, _ in b.unknown] == ["action_localization.json"]


def test_broken_benchmark_record_names_file_and_field(tmp_path):
    # a record that cannot be used is reported (file, record, field, why) and the other records are read
    p = tmp_path / "MVBench" / "action_sequence.json"
    p.parent.mkdir()
    p.write_text(json.dumps([{"video": "ZS9XR.mp4", "question": "q", "candidates": ["a"], "answer": "a"},
                             {"video": "EY6P4.mp4", "question": None, "candidates": ["a"], "answer": "a"},
                             {"video": "ZS9XS.mp4", "question": "q", "candidates": "oops", "answer": "a"}]))
    b = scan_benchmarks([tmp_path])
    (f,) = b.files
    assert [v.raw for v in f.videos] == ["ZS9XR.mp4"] and (f.records, f.unusable) == (3, 2)
    p1, p2 = b.problems
    assert (p1.where, p1.field, p1.why) == ("record 1", "question", "missing")
    assert (p2.where, p2.field) == ("record 2", "candidates") and "expected a list of options" in p2.why
    assert str(p1).startswith(str(p)) and "record 1" in str(p1) and "'question'" in str(p1)


def test_ngram_normalisation_short_questions_and_templates():
    b = scan_benchmarks([FIXTURES])
    ix = NgramIndex(b.texts, n=13, min_tokens=8)
    assert normalise_text("Hello,  WORLD!! it's ﬁne") == ["hello", "world", "it", "s", "fine"]
    caps = [
        "nothing to see",
        "A caption: " + VMME_Q.upper().replace(",", " ;"),  # case and punctuation do not matter
        "what is the genre of this video",  # 7 tokens < min_tokens: never used
        "clip. What color is the main male character in the video? yes",  # 10 tokens: matched whole
        "Which subtitles appear at the same time",
    ]
    import pyarrow as pa

    hits = ix.scan(pa.array(caps))
    rows = {(h.row, ix.texts[h.text_index].benchmark, h.whole) for h in hits}
    assert (1, "Video-MME", False) in rows and (3, "MLVU", True) in rows
    assert not any(r in (0, 2, 4) for r, _, _ in rows)
    d = ix.describe()
    assert d["short_texts_used_whole"] >= 1 and d["texts_too_short"] >= 1
    # a sequence shared by many benchmark videos is a template
    from longvid.operators.audit.benchmarks import BenchText

    tmpl = [BenchText("B", "", f"r{i}", f"v{i}", "question", "what is the action performed by the person in the video") for i in range(9)]
    ix2 = NgramIndex(tmpl, max_videos=5)
    assert ix2.describe()["template_sequences_ignored"] == 1
    assert ix2.scan(pa.array(["what is the action performed by the person in the video"])) == []


def test_hash_index_finds_within_radius_only():
    rng = np.random.default_rng(3)
    base = np.array(random_hashes(rng, 5000), np.uint64)
    ix = HashIndex(base, np.arange(5000), threshold=4)
    q = np.array([flip(int(base[7]), [1, 20, 40, 63]), flip(int(base[9]), [0, 1, 2, 3, 4]), 0, int(base[11])], np.uint64)
    qi, ii, d = ix.query(q)
    got = sorted(zip(qi.tolist(), ii.tolist(), d.tolist()))
    assert got == [(0, 7, 4), (3, 11, 0)]  # 5 bits away is out; hash 0 (a flat frame) is never matched
    # exhaustive check on random pairs: the banded search misses nothing within the radius
    q2 = np.array([flip(int(base[i]), rng.choice(64, 3, replace=False).tolist()) for i in range(200)], np.uint64)
    qi, ii, d = ix.query(q2)
    brute = {(a, b) for a in range(200) for b in range(5000) if bin(int(q2[a]) ^ int(base[b])).count("1") <= 4}
    assert set(zip(qi.tolist(), ii.tolist())) == brute


def test_dhash_matches_ingest():
    frames = pytest.importorskip("longvid.operators.frames")
    rng = np.random.default_rng(0)
    for shape in [(64, 64, 3), (31, 97, 3), (240, 320, 3), (50, 40)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert dhash64(img) == frames.dhash64(img)


# ---------------------------------------------------------------- manifests

def test_readers_layouts_and_schema_errors(tmp_path):
    make_job(tmp_path / "corpus" / "a", [row("webvid_1_full", "webvid", "1")], [{"key": "k", "source": "webvid", "stage": "probe", "reason": "no video stream"}], shards=False)
    make_job(tmp_path / "corpus" / "b", [row("webvid_2_full", "webvid", "2")], shards=False)
    assert [len(j.manifest_files) for j in find_jobs(str(tmp_path / "corpus"))] == [1, 1]
    assert len(find_jobs(str(tmp_path / "corpus" / "a"))) == 1
    assert find_jobs(str(tmp_path / "corpus" / "a" / "manifests"))[0].root == str(tmp_path / "corpus" / "a")
    assert read_manifests([str(tmp_path / "corpus")], ["key"]).to_table().column("key").to_pylist() == ["webvid_1_full", "webvid_2_full"]
    assert read_failures([str(tmp_path / "corpus")]).count_rows() == 1
    bad = tmp_path / "bad" / "manifests"
    bad.mkdir(parents=True)
    import pyarrow as pa

    pq.write_table(pa.table({"key": ["x"], "source": ["webvid"]}), bad / "part-000000.parquet")
    with pytest.raises(ManifestError, match=r"manifests/part-000000.parquet: column 'shard' missing"):
        read_manifests([str(tmp_path / "bad")])
    pq.write_table(pa.table({"key": [1]}), bad / "part-000000.parquet")
    with pytest.raises(ManifestError, match=r"column 'key' has type int64, expected string"):
        read_manifests([str(tmp_path / "bad")], ["key"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_jobs(str(tmp_path / "nowhere"))
    with pytest.raises(ManifestError, match="escapes"):
        find_jobs(str(tmp_path / "corpus" / "a"))[0].path("../../etc/passwd")


# ---------------------------------------------------------------- the whole audit

@pytest.fixture(scope="module")
def bench_videos(tmp_path_factory):
    """A 'Video-MME' video on disk (named by its YouTube id) and the dHash of its frames at 1 fps."""
    from longvid.synthetic.videos import make_video

    d = tmp_path_factory.mktemp("bench_videos")
    make_video(d / "fFjv93ACGo8.mp4", seconds=6, fps=10, width=96, height=96, seed=5)
    hashes = [(t, dhash64(img)) for t, img in frames_at_rate(d / "fFjv93ACGo8.mp4", 1.0)]
    return d, hashes


def planted_rows(bench_hashes) -> list[dict]:
    rng = np.random.default_rng(42)
    near = [flip(h, [3, 30]) for _, h in bench_hashes[1:4]]  # 3 frames, 2 bits away each
    shared = random_hashes(rng, 4)
    return [
        row("howto100m_youtu-be-A_full", "howto100m", "https://youtu.be/fFjv93ACGo8", rng=rng),
        row("charades_RPY8D_full", "charades", "rpy8d", rng=rng),
        row("ego4d_in_window", "ego4d", EGO_UID, start=150.0, end=200.0, rng=rng),
        row("ego4d_outside_window", "ego4d", EGO_UID, start=0.0, end=100.0, rng=rng),
        row("ego4d_val_video", "ego4d", "9F3C1A2B-4D5E-4F60-8A7B-1C2D3E4F5A6B", start=0.0, end=60.0, rng=rng),
        row("webvid_caption_copy", "webvid", "1066", text="Stock footage, slow motion. " + VMME_Q, rng=rng),
        row("miradata_near_frames", "miradata", "AJp_ANXoGoM", hashes=random_hashes(rng, 2) + near + random_hashes(rng, 3), rng=rng),
        row("clevrer_video_12", "clevrer", "video_12", rng=rng),  # a CLEVRER video_12 is not Perception Test's
        row("perception_test_video_12", "perception_test", "video_12.mp4", rng=rng),
        # corpus duplicates
        row("hdvila_QMi8x8o55Ns_10", "hdvila", "QMi8x8o55Ns", start=10.0, end=30.0, rng=rng),
        row("miradata_QMi8x8o55Ns_20", "miradata", "https://www.youtube.com/watch?v=QMi8x8o55Ns", start=20.0, end=40.0, rng=rng),
        row("webvid_same_bytes_a", "webvid", "2001", sha="ab" * 32, rng=rng),
        row("webvid_same_bytes_b", "webvid", "2002", sha="ab" * 32, rng=rng),
        row("webvid_reupload", "webvid", "3001", hashes=shared + random_hashes(rng, 4), rng=rng),
        row("howto100m_reupload", "howto100m", "zzzzzzzzzzz", hashes=[flip(h, [5]) for h in shared] + random_hashes(rng, 4), rng=rng),
    ]


def clean_rows(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(7)
    srcs = ["howto100m", "hdvila", "miradata", "webvid", "ego4d"]
    out = []
    for i in range(n):
        s = srcs[i % 5]
        vid = f"{i:032x}"[:8] + "-aaaa-4bbb-8ccc-" + f"{i:012d}" if s == "ego4d" else (f"clean{i:06d}" if s != "webvid" else str(9000 + i))
        out.append(row(f"{s}_{i}", s, vid, start=float(i), end=float(i) + 20, rng=rng))
    return out


@pytest.fixture(scope="module")
def planted_audit(tmp_path_factory, bench_videos):
    d = tmp_path_factory.mktemp("audit")
    vids, hashes = bench_videos
    job = make_job(d / "job", planted_rows(hashes) + clean_rows(10),
                   failures=[{"key": "webvid_x", "source": "webvid", "stage": "probe", "reason": "no video stream"},
                             {"key": "webvid_y", "source": "webvid", "stage": "probe", "reason": "no video stream"},
                             {"key": "ego4d_z", "source": "ego4d", "stage": "locate", "reason": "video file not found"}])
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), d / "out", AuditConfig(), benchmark_videos=vids)
    return res


def findings(res, key):
    return [dict(r, evidence=json.loads(r["evidence"])) for r in res.leakage.to_pylist() if r["key"] == key]


def test_youtu_be_id_in_howto100m_matches_videomme(planted_audit):
    f = findings(planted_audit, "howto100m_youtu-be-A_full")
    assert [(x["benchmark"], x["method"]) for x in f] == [("Video-MME", "video_id")]
    ev = f[0]["evidence"]
    assert ev["normalised"] == "youtube:fFjv93ACGo8" and ev["manifest_video_id"] == "https://youtu.be/fFjv93ACGo8"
    assert ev["benchmark_items"] == ["001-1"] and f[0]["score"] == 1.0


def test_charades_id_any_case_matches_mvbench_and_charades_sta(planted_audit):
    f = findings(planted_audit, "charades_RPY8D_full")
    assert {(x["benchmark"], x["task"], x["method"]) for x in f} == {("MVBench", "action_localization", "video_id"), ("Charades-STA", "test", "video_id")}
    assert all(x["evidence"]["normalised"] == "charades:RPY8D" for x in f)


def test_ego4d_uid_inside_egoschema_window(planted_audit):
    f = findings(planted_audit, "ego4d_in_window")
    assert [(x["benchmark"], x["method"]) for x in f] == [("EgoSchema", "video_id")]
    ev = f[0]["evidence"]
    assert ev["window"] == [120.0, 300.0] and ev["sample_span"] == [150.0, 200.0] and ev["overlap_s"] == 50.0
    assert f[0]["item"] == "0074f737-11cb-497d-8d07-77c3a8127391" and f[0]["score"] == pytest.approx(50 / 180, abs=1e-3)
    assert findings(planted_audit, "ego4d_outside_window") == []


def test_copied_question_in_caption(planted_audit):
    f = findings(planted_audit, "webvid_caption_copy")
    assert [(x["benchmark"], x["item"], x["method"]) for x in f] == [("Video-MME", "001-1", "text_ngram")]
    ev = f[0]["evidence"]
    assert ev["field"] == "question" and ev["ngrams_matched"] == ev["ngrams_total"] == 12 and not ev["whole_text"]
    assert f[0]["score"] == 1.0


def test_near_duplicate_frames_of_benchmark_video(planted_audit):
    f = findings(planted_audit, "miradata_near_frames")
    assert [(x["benchmark"], x["method"]) for x in f] == [("Video-MME", "frame_hash")]
    ev = f[0]["evidence"]
    assert ev["benchmark_file"] == "fFjv93ACGo8.mp4" and ev["matched_frames"] == 3
    assert sorted(p["sample_frame"] for p in ev["pairs"]) == [2, 3, 4] and all(p["distance"] == 2 for p in ev["pairs"])
    assert sorted(p["benchmark_time"] for p in ev["pairs"]) == pytest.approx([1.0, 2.0, 3.0], abs=0.11)


def test_ego4d_val_test_split_videos(planted_audit):
    f = findings(planted_audit, "ego4d_val_video")
    assert [(x["benchmark"], x["task"], x["method"]) for x in f] == [("Ego4D-val/test", "split_em=val", "video_id")]
    assert f[0]["evidence"]["normalised"] == "ego4d:9f3c1a2b-4d5e-4f60-8a7b-1c2d3e4f5a6b"


def test_namespaces_keep_datasets_apart(planted_audit):
    assert findings(planted_audit, "clevrer_video_12") == []
    f = findings(planted_audit, "perception_test_video_12")
    assert {(x["benchmark"], x["task"]) for x in f} == {("MVBench", "action_count"), ("PerceptionTest", "mc")}


def test_nothing_else_flagged_and_drop_list(planted_audit):
    flagged = set(planted_audit.leakage.column("key").to_pylist())
    assert flagged == {"howto100m_youtu-be-A_full", "charades_RPY8D_full", "ego4d_in_window", "webvid_caption_copy",
                       "miradata_near_frames", "perception_test_video_12", "ego4d_val_video"}
    drop = read_drop_list(planted_audit.out_dir / "drop_list.txt")
    assert drop == flagged | {"webvid_same_bytes_b"}  # exact duplicates are dropped by default, the smaller key kept
    text = (planted_audit.out_dir / "drop_list.txt").read_text()
    assert text.startswith("#") and "\n# duplicates" in text
    assert pq.read_schema(planted_audit.out_dir / "leakage.parquet").names[:1] == ["key"]
    assert {"key", "benchmark", "method", "evidence", "score"} <= set(pq.read_schema(planted_audit.out_dir / "leakage.parquet").names)


def test_corpus_duplicates(planted_audit):
    d = {(r["key"], r["method"]): r for r in planted_audit.duplicates.to_pylist()}
    assert set(d) == {("webvid_same_bytes_b", "sha256"), ("miradata_QMi8x8o55Ns_20", "video_id_span"), ("webvid_reupload", "frame_hash")}
    assert d[("webvid_same_bytes_b", "sha256")]["dup_of"] == "webvid_same_bytes_a"
    span = json.loads(d[("miradata_QMi8x8o55Ns_20", "video_id_span")]["evidence"])
    assert span["video"] == "youtube:QMi8x8o55Ns" and span["overlap_s"] == 10.0
    assert d[("miradata_QMi8x8o55Ns_20", "video_id_span")]["dup_of"] == "hdvila_QMi8x8o55Ns_10"
    fh = json.loads(d[("webvid_reupload", "frame_hash")]["evidence"])
    assert fh["matched_frames"] == 4 and d[("webvid_reupload", "frame_hash")]["dup_of"] == "howto100m_reupload"


def test_summary_stats_and_failures(planted_audit):
    s = planted_audit.summary
    assert s["rows"] == 25
    assert s["stats"]["sources"]["webvid"]["failures"] == 2 and s["stats"]["sources"]["ego4d"]["failures"] == 1
    assert {"source": "webvid", "stage": "probe", "reason": "no video stream", "count": 2} in s["stats"]["failures"]
    assert s["leakage"]["Video-MME"] == {"video_id": 1, "text_ngram": 1, "frame_hash": 1, "keys": 3}
    html = (planted_audit.out_dir / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 6  # six contact sheets, plus the benchmark frame
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\(""", html)  # nothing to fetch


def test_clean_manifest_gives_zero_findings(tmp_path, bench_videos):
    vids, _ = bench_videos
    job = make_job(tmp_path / "job", clean_rows(40), shards=False)
    res = run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), tmp_path / "out", AuditConfig(), benchmark_videos=vids)
    assert res.rows == 40 and res.leakage.num_rows == 0 and res.duplicates.num_rows == 0
    assert read_drop_list(tmp_path / "out" / "drop_list.txt") == set()
    assert "No leakage found" in (tmp_path / "out" / "report.html").read_text()


def test_cli(tmp_path, bench_videos, capsys):
    from longvid.jobs.cli import main

    vids, hashes = bench_videos
    job = make_job(tmp_path / "job", planted_rows(hashes)[:2] + clean_rows(5), shards=False)
    out = tmp_path / "out"
    assert main(["audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(out), "--ngram", "10"]) == 0
    assert "Video-MME: 1 samples" in capsys.readouterr().out
    assert read_drop_list(out / "drop_list.txt") == {"howto100m_youtu-be-A_full", "charades_RPY8D_full"}
    assert json.loads((out / "summary.json").read_text())["config"]["ngram"] == 10
    assert main(["audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(out), "--fail-on-leak"]) == 1
    assert main(["audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(out), "--ngram", "0"]) == 2
    assert "ngram" in capsys.readouterr().err
    assert main(["audit", "--manifests", str(job), "--benchmarks", str(FIXTURES), "--out", str(out), "--strict-benchmarks"]) == 2
    assert "notes.json" in capsys.readouterr().err
    assert main(["audit", "--manifests", str(tmp_path / "missing"), "--benchmarks", str(FIXTURES), "--out", str(out)]) == 2


def test_hash_self_join_equals_brute_force():
    rng = np.random.default_rng(5)
    base = random_hashes(rng, 300)
    hs = base + [flip(h, rng.choice(64, int(rng.integers(0, 4)), replace=False).tolist()) for h in base[:100]]
    ix = HashIndex(np.array(hs, np.uint64), np.arange(len(hs)), threshold=2)
    i, j, d = ix.self_pairs()
    hh = ix.hashes.tolist()
    brute = {(a, b) for a in range(len(hh)) for b in range(a + 1, len(hh)) if bin(hh[a] ^ hh[b]).count("1") <= 2}
    assert set(zip(i.tolist(), j.tolist())) == brute and len(brute) >= 60
