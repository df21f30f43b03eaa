"""Source adapters: every format variant, every bad-row kind, deterministic order, VTT, rolling ASR."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from longvid.operators.errors import MetadataError
from longvid.operators.records import Failure, SourceRecord, TextSpan
from longvid.operators.sources import available, get_adapter
from longvid.operators.sources.base import (
    BadValue,
    merge_rolling,
    parse_hms,
    parse_iso_duration,
    parse_number,
    texts_in_span,
    youtube_id,
)
from longvid.operators.sources.ego4d import clean_narration, windows
from longvid.operators.sources.hdvila import parse_vtt
from longvid.operators.sources.miradata import parse_timestamp_list, raw_video_path

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
SHARED = Path(__file__).resolve().parents[3] / "shared"
MIRA_V0_REAL = SHARED / "data" / "sources" / "miradata_v0_100_samples.csv"


def read(source, paths, **opts):
    return list(get_adapter(source).read([str(p) for p in paths], opts))


def split(items):
    recs = [i for i in items if isinstance(i, SourceRecord)]
    fails = [i for i in items if isinstance(i, Failure)]
    assert len(recs) + len(fails) == len(items)
    return recs, fails


def fails_by_line(fails):
    return {f.file.rsplit("/", 1)[-1]: (f.field, f.reason) for f in fails}


# ------------------------------------------------------------------------------------------------ registry


def test_registry_finds_every_source_module():
    assert set(available()) >= {"ego4d", "howto100m", "hdvila", "miradata", "webvid"}
    for name in ("ego4d", "howto100m", "hdvila", "miradata", "webvid"):
        assert get_adapter(name).name == name
    for bad in ("nope", "base", "../x", "", "Ego4D"):
        with pytest.raises(ValueError, match="unknown source"):
            get_adapter(bad)


# ------------------------------------------------------------------------------------------------ value parsers


@pytest.mark.parametrize(
    "s,sec",
    [("00:00:17.759", 17.759), ("1:30:42", 5442.0), ("01:02:03,5", 3723.5), ("02:03.25", 123.25), ("7", 7.0)],
)
def test_parse_hms(s, sec):
    assert parse_hms(s, "f") == pytest.approx(sec)


@pytest.mark.parametrize("s", ["", "aa:bb", "00:61:00", "-00:00:01", "1:2:3:4", None, "00:00:3x.000"])
def test_parse_hms_rejects(s):
    with pytest.raises(BadValue) as e:
        parse_hms(s, "span")
    assert e.value.field == "span"


@pytest.mark.parametrize(
    "s,sec", [("PT00H00M17S", 17), ("PT17S", 17), ("PT1M2.5S", 62.5), ("PT1H", 3600), ("P1DT1S", 86401)]
)
def test_iso_duration(s, sec):
    assert parse_iso_duration(s) == pytest.approx(sec)


@pytest.mark.parametrize("s", ["", "PT", "P", "17S", "PT17", "P17 seconds", "PT1S2M", "PT-1S"])
def test_iso_duration_rejects(s):
    with pytest.raises(BadValue, match="ISO-8601"):
        parse_iso_duration(s)


def test_youtube_id_normalisation():
    assert youtube_id("v_QMi8x8o55Ns") == "QMi8x8o55Ns"
    assert youtube_id("https://www.youtube.com/watch?v=QMi8x8o55Ns&t=3") == "QMi8x8o55Ns"
    assert youtube_id("https://youtu.be/Zyx987_-abc") == "Zyx987_-abc"
    assert youtube_id("QMi8x8o55Ns") == "QMi8x8o55Ns"
    assert youtube_id("not an id") is None


# ------------------------------------------------------------------------------------------------ WebVid


def test_webvid_both_column_orders_and_bad_rows():
    recs, fails = split(read("webvid", [FIX / "webvid"]))
    # directory expansion: results_2M_val before results_10M_train (natural order)
    assert [r.video_id for r in recs] == ["31353427", "14781349", "2965702", "1021", "1022"]
    r = recs[0]
    assert r.video_paths[0] == "016401_016450/31353427.mp4"
    assert r.texts == (TextSpan("Merida, mexico - march 28, 2019: tourists walk in the main square", kind="caption"),)
    assert r.start is None and r.end is None
    assert r.meta_dict()["duration_sec"] == 31
    assert r.meta_dict()["url"].startswith("https://ak.picdn.net/")
    assert recs[2].meta_dict()["duration_sec"] == 17  # PT17S
    assert recs[3].meta_dict()["duration_sec"] == 62.5  # PT1M2.5S, other column order
    assert recs[3].meta_dict()["page_idx"] == "1"
    assert recs[3].origin.endswith("results_10M_train.csv:2")
    got = fails_by_line(fails)
    assert got["results_2M_val.csv:5"][0] == "videoid"
    assert got["results_2M_val.csv:6"][0] == "duration"
    assert got["results_10M_train.csv:4"][0] == "page_dir"
    assert all(f.stage == "metadata" for f in fails)


def test_webvid_missing_header_column_is_a_metadata_error():
    with pytest.raises(MetadataError, match=r"results_noid\.csv.*videoid"):
        get_adapter("webvid").read([str(FIX / "bad" / "results_noid.csv")], {})


def test_missing_metadata_file_is_a_metadata_error(tmp_path):
    with pytest.raises(MetadataError, match="results_x.csv"):
        get_adapter("webvid").read([str(tmp_path / "results_x.csv")], {})


# ------------------------------------------------------------------------------------------------ MiraData


def test_miradata_v0_fixture():
    recs, fails = split(read("miradata", [FIX / "miradata" / "miradata_v0_sample.csv"]))
    assert [r.video_id for r in recs] == ["AJp_ANXoGoM", "ol7OupLmFBU", "nofps000000"]
    r = recs[0]
    assert (r.start, r.end) == (pytest.approx(163272 / 30), pytest.approx(166872 / 30))
    assert r.video_paths == ("AJp_ANXoGoM.mp4", "000000008/000000008783.mp4")
    kinds = {t.kind: t.text for t in r.texts}
    assert kinds["main_object_caption"] == "some are closely inspecting the vehicles."  # leading space gone
    assert kinds["dense_caption"] == "The vibrant atmosphere of an indoor car show, where vehicles are on display."
    assert set(kinds) == {
        "short_caption", "dense_caption", "main_object_caption", "background_caption", "style_caption",
        "camera_caption",
    }
    assert recs[1].start == pytest.approx(30596 / 23.97602398, abs=1e-5)
    assert recs[1].origin.endswith(":4")  # the multi-line caption above took two lines
    assert (recs[2].start, recs[2].end) == (4.0, 16.0)  # no fps: H:MM:SS timesteps
    got = fails_by_line(fails)
    assert got == {
        "miradata_v0_sample.csv:5": ("fps", "not a number: 'thirty'"),
        "miradata_v0_sample.csv:6": ("end_frame", "empty or negative span [20.0, 16.0]"),
    }  # and the trailing row of empty cells is no input at all


def test_miradata_v1_fixture_and_safe_timestamp():
    recs, fails = split(read("miradata", [FIX / "miradata" / "miradata_v1.csv"]))
    assert len(recs) == 2 and len(fails) == 4
    r = recs[0]
    assert r.video_id == "AJp_ANXoGoM"
    assert r.video_paths == ("000000008/000000008783.mp4",)
    assert (r.start, r.end) == (5442.0, 5462.5)
    m = r.meta_dict()
    assert m["clip_id"] == "8783.114" and m["download_id"] == 8783 and m["clip_index"] == 114
    assert m["clip_path"] == "000000008/000000008783.114.mp4"
    assert recs[1].video_paths == ("000000000/000000000012.mp4",)
    fields = [f.field for f in fails]
    assert fields == ["timestamp", "timestamp", "timestamp", "clip_id"]
    assert "not a list literal" in fails[0].reason  # the code string was never run


def test_parse_timestamp_list():
    assert parse_timestamp_list("['00:00:10.000', '00:00:20.500']") == (10.0, 20.5)
    assert parse_timestamp_list('["0:01:00", "0:01:30"]') == (60.0, 90.0)
    for bad in ["[1]", "'x'", "__import__('os')", "['00:00:20', '00:00:10']", "", "[(1, 2)]"]:
        with pytest.raises(BadValue):
            parse_timestamp_list(bad)
    assert raw_video_path(8783) == "000000008/000000008783.mp4"
    assert raw_video_path(1234567) == "000001234/000001234567.mp4"


@pytest.mark.skipif(not MIRA_V0_REAL.exists(), reason="shared data not available")
def test_miradata_v0_real_file_conformance():
    recs, fails = split(read("miradata", [MIRA_V0_REAL]))
    assert fails == []
    assert len(recs) == 100
    assert len({r.key for r in recs}) == 100
    for r in recs:
        m = r.meta_dict()
        assert r.end > r.start >= 0
        assert r.video_paths[0] == f"{r.video_id}.mp4"
        assert m["fps"] > 0
        # frames / fps agree with the H:MM:SS timesteps to within a second and a half
        assert abs(r.start - parse_hms(m["start_timestep"], "t")) < 1.5
        assert any(t.kind == "dense_caption" for t in r.texts)
        assert all(t.text == t.text.strip() and t.text for t in r.texts)
    first = recs[0]
    assert first.meta_dict()["clip_id"] == "000000008783_AJp_ANXoGoM-000114"
    assert (first.start, first.end) == (pytest.approx(5442.4), pytest.approx(5562.4))


# ------------------------------------------------------------------------------------------------ HD-VILA


def test_hdvila_clips_and_failures():
    recs, fails = split(read("hdvila", [FIX / "hdvila"]))
    assert [(r.video_id, r.start, r.end) for r in recs] == [
        ("QMi8x8o55Ns", 17.759, 23.279),
        ("QMi8x8o55Ns", 23.279, 31.0),
        ("Abc_def-123", 65.5, 72.25),
        ("Zyx987_-abc", 600.0, 609.0),
    ]
    m = recs[0].meta_dict()
    assert recs[0].video_paths == ("QMi8x8o55Ns.mp4",)
    assert m["subtitle_paths"] == ("QMi8x8o55Ns.en.vtt",)
    assert m["clip_id"] == "QMi8x8o55Ns.1.mp4" and m["url"].endswith("QMi8x8o55Ns")
    assert recs[0].key != recs[1].key
    got = [(f.file.rsplit("/", 1)[-1], f.field) for f in fails]
    assert got == [
        ("hdvila_part0.jsonl:1", "clip[2].span"),  # bad time string: that clip only
        ("hdvila_part0.jsonl:2", "clip[0].span"),  # empty span
        ("hdvila_part0.jsonl:3", "line"),  # malformed line
        ("hdvila_part1.jsonl:2", "video_id"),  # not a string
        ("hdvila_part1.jsonl:4", "clip"),  # no clip list
    ]
    assert len({f.key for f in fails}) == len(fails)


YOUTUBE_VTT = (FIX / "hdvila" / "QMi8x8o55Ns.en.vtt").read_text()


def test_parse_vtt_rolling_youtube_captions():
    spans = parse_vtt(YOUTUBE_VTT)
    assert [(s.text, s.start, s.end) for s in spans] == [
        ("so today we're", 17.8, 20.32),  # the 10 ms repeat cue only extends the line
        ("going to fix a & bike", 20.32, 23.01),  # the repeated first line of the cue is gone
        ("first remove the wheel", 23.01, 26.5),
        ("Thanks for watching", 40.0, 42.0),
    ]
    assert all(s.kind == "subtitle" for s in spans)
    words = " ".join(s.text for s in spans).split()
    assert words.count("today") == 1 and words.count("bike") == 1


def test_parse_vtt_plain_cues_with_ids_and_crlf():
    vtt = "\ufeffWEBVTT\r\n\r\n1\r\n00:01.000 --> 00:03.500\r\nHello <b>there</b>\r\n\r\n2\r\n00:00:04.000 --> 00:00:06.000 line:0\r\nGeneral Kenobi\r\nsecond line\r\n\r\nbad --> cue\r\nskipped\r\n"
    spans = parse_vtt(vtt)
    assert [(s.text, s.start, s.end) for s in spans] == [
        ("Hello there", 1.0, 3.5),
        ("General Kenobi second line", 4.0, 6.0),
    ]
    assert parse_vtt("") == [] and parse_vtt("WEBVTT\n") == []


# ------------------------------------------------------------------------------------------------ HowTo100M


def test_merge_rolling_asr():
    segs = [
        (0.0, 4.5, "hello everyone welcome to"),
        (2.1, 6.0, "welcome to my channel today we"),
        (4.0, 9.0, "today we are going to make"),
        (8.0, 12.5, "going to make pancakes"),
        (12.5, 13.0, "pancakes"),
        (20.0, 22.0, "first the flour"),
    ]
    out = merge_rolling(segs, max_span=10.0)
    assert [(t.text, t.start, t.end) for t in out] == [
        ("hello everyone welcome to my channel today we are going to make", 0.0, 9.0),
        ("pancakes", 9.0, 13.0),
        ("first the flour", 20.0, 22.0),
    ]
    # spans never overlap, no word is repeated at a seam
    assert all(a.end <= b.start for a, b in zip(out, out[1:]))
    # unsorted input gives the same result
    assert merge_rolling(list(reversed(segs)), max_span=10.0) == out
    # with a long max span everything overlapping merges into one
    assert merge_rolling(segs[:4], max_span=60)[0].text == "hello everyone welcome to my channel today we are going to make pancakes"


def test_howto100m_rows_tasks_and_captions():
    recs, fails = split(read("howto100m", [FIX / "howto100m"]))
    assert [r.video_id for r in recs] == ["nVbIUDjzWY4", "CTPAZ2euJ2Q", "noCaption01"]
    r = recs[0]
    assert r.video_paths == ("nVbIUDjzWY4.mp4",) and r.start is None
    assert r.texts[0] == TextSpan("Replace a Motorcycle Chain", kind="task")
    asr = [t for t in r.texts if t.kind == "asr"]
    assert asr[0].text == "hello everyone welcome to my channel today we are going to replace"
    assert asr[1].text == "the chain"  # "going to replace" repeated at the seam was dropped
    assert asr[-1] == TextSpan("first loosen the rear axle", 30.5, 33.0, "asr")
    assert recs[1].texts[1].text == "so we mix the flour and the eggs"
    assert recs[2].texts == (TextSpan("Make Pancakes", kind="task"),)  # no captions: still a record
    assert recs[2].meta_dict()["has_captions"] is False
    got = fails_by_line(fails)
    assert got["HowTo100M_v1.csv:5"][0] == "caption[badCaption1]" and "lengths differ" in got["HowTo100M_v1.csv:5"][1]
    assert got["HowTo100M_v1.csv:6"][0] == "video_id"


def test_howto100m_raw_caption_and_header_task_ids(tmp_path):
    (tmp_path / "HowTo100M_v1.csv").write_text("rank,task_id,video_id\n1,7,aaaaaaaaaaa\n")
    (tmp_path / "task_ids.csv").write_text("task_id,task_name\n7,Tie a Tie\n")
    (tmp_path / "raw_caption.json").write_text(json.dumps({"aaaaaaaaaaa": {"start": [0, 1], "end": [2, 3], "text": ["a b", "b c"]}}))
    recs, fails = split(read("howto100m", [tmp_path]))
    assert fails == []
    assert recs[0].texts == (TextSpan("Tie a Tie", kind="task"), TextSpan("a b c", 0.0, 3.0, "asr"))


def test_howto100m_caption_file_not_json(tmp_path):
    (tmp_path / "HowTo100M_v1.csv").write_text("video_id\naaaaaaaaaaa\n")
    (tmp_path / "caption.json").write_text("{not json")
    with pytest.raises(MetadataError, match=r"caption\.json: not valid JSON"):
        list(get_adapter("howto100m").read([str(tmp_path)], {}))


# ------------------------------------------------------------------------------------------------ Ego4D


def test_clean_narration():
    assert clean_narration("#C C picks a bag") == "C picks a bag"
    assert clean_narration("#O man X opens the door #unsure") == "man X opens the door"
    assert clean_narration("#Summary C was cooking.") == "C was cooking."
    assert clean_narration("#unsure") == ""
    assert clean_narration(None) == ""


def test_windows():
    assert windows(300, 480, 8) == [None]
    assert windows(1000, 480, 8) == [(0.0, 480.0), (480.0, 960.0), (960.0, 1000.0)]
    assert windows(965, 480, 8) == [(0.0, 480.0), (480.0, 965.0)]  # 5 s tail merged
    assert windows(1000, 0, 8) == [None]


def test_ego4d_records_windows_texts_and_failures():
    recs, fails = split(read("ego4d", [FIX / "ego4d"]))
    assert [(r.video_id[-1], r.start, r.end) for r in recs] == [
        ("1", None, None),
        ("2", 0.0, 480.0),
        ("2", 480.0, 960.0),
        ("2", 960.0, 1000.0),
        ("5", 0.0, 480.0),
        ("5", 480.0, 965.0),
    ]
    r = recs[0]
    assert r.video_paths == (
        "v2/full_scale/1a2b3c4d-0000-4000-8000-000000000001.mp4",
        "v1/full_scale/1a2b3c4d-0000-4000-8000-000000000001.mp4",
    )
    assert [(t.kind, t.text, t.start) for t in r.texts] == [
        ("summary", "C was cooking in the kitchen.", 0.0),
        ("narration", "C picks a bag of clothes from the floor", 12.3),
        ("narration", "man X hands C a knife", 13.1),  # pass 2
        ("narration", "C opens the fridge", 15.0),
    ]
    m = r.meta_dict()
    assert m["fps"] == 30.0 and m["duration_sec"] == 300.0 and m["eval_split"] is False
    assert m["texts_dropped"] == 1  # the narration with a bad timestamp
    # windows hold only their own texts; a summary goes where its middle is, clipped
    assert [t.text for t in recs[1].texts] == ["C measures a plank"]
    assert [(t.kind, t.start, t.end) for t in recs[2].texts] == [("summary", 480.0, 700.0), ("narration", 600.0, 600.0)]
    assert [t.text for t in recs[3].texts] == ["C sweeps the floor"]
    assert recs[1].meta_dict()["eval_split"] is True and recs[1].meta_dict()["splits"] == (("em", "val"),)
    assert recs[4].meta_dict()["duration_sec"] == 965.0  # from video_metadata.mp4_duration_sec
    assert recs[4].meta_dict()["splits"] == (("av", "test"),)
    assert [(f.field, f.file.rsplit("/", 1)[-1]) for f in fails] == [
        ("video_uid", "ego4d.json:videos[2]"),
        ("duration_sec", "ego4d.json:videos[3]"),
    ]


def test_ego4d_window_option_and_v1_narration_name(tmp_path):
    shutil.copy(FIX / "ego4d" / "v2" / "ego4d.json", tmp_path / "ego4d.json")
    shutil.copy(FIX / "ego4d" / "v2" / "annotations" / "narration.json", tmp_path / "narration.json")
    recs, _ = split(read("ego4d", [tmp_path / "ego4d.json", tmp_path / "narration.json"], window_sec=0))
    assert all(r.start is None for r in recs) and len(recs) == 3
    recs, _ = split(read("ego4d", [tmp_path], window_sec=200, min_window_sec=50))
    assert [(r.start, r.end) for r in recs if r.video_id.endswith("1")] == [(0.0, 200.0), (200.0, 300.0)]
    with pytest.raises(ValueError, match="window_sec"):
        get_adapter("ego4d").read([str(tmp_path)], {"window_sec": "big"})


def test_ego4d_not_json_is_a_metadata_error():
    with pytest.raises(MetadataError, match=r"ego4d\.json: not valid JSON"):
        list(get_adapter("ego4d").read([str(FIX / "bad" / "ego4d.json")], {}))


# ------------------------------------------------------------------------------------------------ common


@pytest.mark.parametrize("source", ["ego4d", "howto100m", "hdvila", "miradata", "webvid"])
def test_deterministic_order_and_unique_keys(source):
    a = read(source, [FIX / source])
    b = read(source, [FIX / source])
    assert a == b and a
    keys = [i.key for i in a]
    assert len(set(keys)) == len(keys)
    for i in a:
        origin = i.origin if isinstance(i, SourceRecord) else i.file
        assert origin.startswith(str(FIX / source))


def test_duplicate_rows_become_failures(tmp_path):
    p = tmp_path / "results_2M_val.csv"
    p.write_text("videoid,page_dir,name,duration\n5,d,a,PT5S\n5,d,b,PT5S\n")
    recs, fails = split(read("webvid", [p]))
    assert len(recs) == 1 and len(fails) == 1
    assert "duplicate" in fails[0].reason and fails[0].file.endswith(":3")
    recs, fails = split(read("webvid", [p], dedupe=False))
    assert len(recs) == 2


def test_texts_in_span():
    texts = [
        TextSpan("untimed"),
        TextSpan("point in", 5.0, 5.0, "narration"),
        TextSpan("point out", 50.0, 50.0, "narration"),
        TextSpan("straddles", 8.0, 12.0, "asr"),
    ]
    got = texts_in_span(texts, 4.0, 10.0)
    assert [(t.text, t.start, t.end) for t in got] == [
        ("untimed", None, None),
        ("point in", 5.0, 5.0),
        ("straddles", 8.0, 10.0),
    ]
    assert texts_in_span(texts, None, None) == texts


def test_s3_metadata_through_storage(monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    from longvid.operators import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with moto.mock_aws():
        storage.configure_s3()
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="meta")
        for f in ("results_2M_val.csv", "results_10M_train.csv"):
            s3.put_object(Bucket="meta", Key=f"webvid/{f}", Body=(FIX / "webvid" / f).read_bytes())
        remote = read("webvid", ["s3://meta/webvid/"])
        local = read("webvid", [FIX / "webvid"])
        assert [i.key for i in remote] == [i.key for i in local]
        assert remote[0].origin == "s3://meta/webvid/results_2M_val.csv:2"
        with pytest.raises(MetadataError, match="s3://meta/webvid/nope.csv"):
            read("webvid", ["s3://meta/webvid/nope.csv"])
    storage.configure_s3()


# ------------------------------------------------------------------------------------------------ demo corpus


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from longvid.synthetic.demo_corpus import make_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    return root, make_demo_corpus(root, per_source=3, seed=0)


def test_demo_corpus_read_back_by_every_adapter(demo):
    root, corpus = demo
    assert set(corpus) == {"ego4d", "howto100m", "hdvila", "miradata", "webvid"}
    counts = {}
    for source, entry in corpus.items():
        assert Path(entry["videos"]).is_dir()
        assert all(Path(p).is_file() for p in entry["metadata"])
        items = list(get_adapter(source).read(entry["metadata"], entry["options"]))
        recs, fails = split(items)
        counts[source] = (len(recs), len(fails))
        exp = entry["expect"]
        assert (len(recs), len(fails)) == (exp["records"], exp["metadata_failures"])
        assert [f.file for f in fails] == exp["malformed_rows"]
        bad = set(exp["missing_videos"]) | set(exp["empty_videos"])
        for r in recs:
            found = [p for p in r.video_paths if (Path(entry["videos"]) / p).is_file()]
            if r.video_paths[0] in exp["missing_videos"]:
                assert found == []
            elif found and found[0] in exp["empty_videos"]:
                assert (Path(entry["videos"]) / found[0]).stat().st_size == 0
            else:
                assert found and (Path(entry["videos"]) / found[0]).stat().st_size > 1000, r.key
                assert found[0] not in bad
    # seed 0, three videos a source: Ego4D windows (20 s) of 3 videos, HD-VILA 2 clips a video + 1 malformed line,
    # MiraData 2 clips of the first video, WebVid one row without its video
    assert counts == {"ego4d": (5, 0), "howto100m": (3, 0), "hdvila": (6, 1), "miradata": (4, 0), "webvid": (4, 0)}
    assert sum(len(e["expect"]["missing_videos"]) + len(e["expect"]["empty_videos"]) for e in corpus.values()) == 2


def test_demo_corpus_formats_are_the_real_ones(demo):
    import av

    root, corpus = demo
    # WebVid: shuffled column order, durations that match the files
    entry = corpus["webvid"]
    header = Path(entry["metadata"][0]).read_text().splitlines()[0].split(",")
    assert set(header) == {"videoid", "contentUrl", "duration", "page_dir", "name", "page_idx"}
    assert header[0] != "videoid"
    rec = next(i for i in get_adapter("webvid").read(entry["metadata"], {}) if isinstance(i, SourceRecord))
    with av.open(str(Path(entry["videos"]) / rec.video_paths[0])) as c:
        s = c.streams.video[0]
        assert float(s.frames / s.average_rate) == pytest.approx(rec.meta_dict()["duration_sec"], abs=0.2)
    # MiraData v1: the real header
    header = Path(corpus["miradata"]["metadata"][0]).read_text().splitlines()[0]
    assert header == ("clip_id,source,video_url,video_id,width,height,fps,seconds,timestamp,frame_number,framestamp,"
                      "file_path,short_caption,dense_caption,background_caption,main_object_caption,style_caption,"
                      "camera_caption")
    # Ego4D: both narration passes with tags, a summary, a val split
    recs = [i for i in get_adapter("ego4d").read(corpus["ego4d"]["metadata"], corpus["ego4d"]["options"])]
    kinds = {t.kind for r in recs for t in r.texts}
    assert kinds == {"narration", "summary"}
    assert not any("#" in t.text for r in recs for t in r.texts)
    assert any(r.meta_dict()["eval_split"] for r in recs)
    assert any(r.video_paths[1].startswith("v1/") and (Path(corpus["ego4d"]["videos"]) / r.video_paths[1]).exists() for r in recs)
    # HowTo100M: rolling ASR merged (no repeated words at seams), a video without captions
    recs = [i for i in get_adapter("howto100m").read(corpus["howto100m"]["metadata"], {})]
    asr = [t for t in recs[0].texts if t.kind == "asr"]
    words = " ".join(t.text for t in asr).split()
    assert words[:6] == "hello everyone and welcome back to".split()
    assert all(a != b or a in ("the",) for a, b in zip(words, words[1:]))
    assert [t.kind for t in recs[1].texts] == ["task"]
    # HD-VILA: a subtitle sidecar next to every video, parsed into non-repeating spans; every clip has cues
    entry = corpus["hdvila"]
    vtts = sorted(Path(entry["videos"]).glob("*.en.vtt"))
    assert len(vtts) == len(list(Path(entry["videos"]).glob("*.mp4")))
    recs = [i for i in get_adapter("hdvila").read(entry["metadata"], {}) if isinstance(i, SourceRecord)]
    for rec in recs:
        vtt = Path(entry["videos"]) / rec.meta_dict()["subtitle_paths"][0]
        subs = parse_vtt(vtt.read_text())
        text = " ".join(t.text for t in subs).split()
        assert text[:8] == "hello everyone and welcome back to my channel".split()
        assert len(texts_in_span(subs, rec.start, rec.end)) >= 2


# ------------------------------------------------------------------------------------------------ hostile input
# one regression test per broken promise of issue 12; tests/fuzz/test_fuzz_sources.py fuzzes the same classes


def _by_origin(items):
    """{"file-name:line": (field, reason)} of the failures, {"file-name:line": record} of the records."""
    fails = {f.file.rsplit("/", 1)[-1]: (f.field, f.reason) for f in items if isinstance(f, Failure)}
    recs = {r.origin.rsplit("/", 1)[-1]: r for r in items if isinstance(r, SourceRecord)}
    return fails, recs


def test_numbers_that_overflow_a_float_are_failures_naming_line_and_field(tmp_path):
    (tmp_path / "ego4d.json").write_text(
        '{"videos": [{"video_uid": "a", "duration_sec": %s}, {"video_uid": "b", "duration_sec": %s},'
        ' {"video_uid": "c", "duration_sec": 1e300}, {"video_uid": "d", "duration_sec": 1e999},'
        ' {"video_uid": "e", "duration_sec": 30}]}' % ("9" * 400, "9" * 5000))
    fails, recs = _by_origin(read("ego4d", [tmp_path / "ego4d.json"]))
    assert fails["ego4d.json:videos[0]"] == ("duration_sec", "number too large: " + "9" * 18 + "..." + "9" * 19)
    assert fails["ego4d.json:videos[1]"][0] == "duration_sec" and "5000 digits" in fails["ego4d.json:videos[1]"][1]
    assert fails["ego4d.json:videos[2]"] == ("duration_sec", "duration_sec 1e+300 is larger than 1e+07")
    assert fails["ego4d.json:videos[3]"] == ("duration_sec", "not a finite number: inf")
    assert list(recs) == ["ego4d.json:videos[4]"]  # the stream went on

    (tmp_path / "m.csv").write_text(
        "index,video_id,start_frame,end_frame,fps\n"
        f"1_a,aaaaaaaaaaa,0,30,1e309\n2_b,bbbbbbbbbbb,0,{'9' * 400},30\n3_c,ccccccccccc,0,30,1e-300\n"
        "4_d,ddddddddddd,0,30,30\n")
    fails, recs = _by_origin(read("miradata", [tmp_path / "m.csv"]))
    assert fails["m.csv:2"] == ("fps", "not a finite number: '1e309'")
    assert fails["m.csv:3"][0] == "end_frame" and "not a finite number" in fails["m.csv:3"][1]  # 400 digits
    assert fails["m.csv:4"][0] == "end_frame" and "beyond" in fails["m.csv:4"][1]  # 30 frames at 1e-300 fps
    assert list(recs) == ["m.csv:5"]

    (tmp_path / "results_1.csv").write_text(f"videoid,page_dir,name,duration\n1,d,a,P{'9' * 400}D\n2,d,b,PT1S\n")
    fails, recs = _by_origin(read("webvid", [tmp_path / "results_1.csv"]))
    assert fails["results_1.csv:2"][0] == "duration" and list(recs) == ["results_1.csv:3"]


def test_unicode_digits_are_not_numbers():
    for bad in ("²", "¹²", "٣", "1_000", "0x10", "nan", "inf", "Infinity", "1e999", " "):
        with pytest.raises(BadValue):
            parse_number(bad, "fps")
    for bad in ("٠١:٠٢:٠٣", "²:00", "00:00:1e3"):
        with pytest.raises(BadValue):
            parse_hms(bad, "span")
    assert parse_number(" 29.97 ", "fps") == 29.97 and parse_number("1e3", "fps") == 1000.0
    with pytest.raises(BadValue, match="too large"):
        parse_number(10**400, "duration_sec")
    with pytest.raises(BadValue, match="larger than"):
        parse_number("2e7", "duration_sec", limit=1e7)


def test_unicode_digit_ids_are_failures(tmp_path):
    (tmp_path / "results_1.csv").write_text("videoid,page_dir,name\n²,d,a\n٣,d,b\n" + "1" * 40 + ",d,c\n7,d,ok\n",
                                            encoding="utf-8")
    fails, recs = _by_origin(read("webvid", [tmp_path / "results_1.csv"]))
    assert fails["results_1.csv:2"] == ("videoid", "videoid must be an integer, got '²'")
    assert fails["results_1.csv:3"][0] == "videoid" and fails["results_1.csv:4"][0] == "videoid"
    assert [r.video_id for r in recs.values()] == ["7"]
    (tmp_path / "v1.csv").write_text("clip_id,timestamp\n²³.1,\"['0:00:01', '0:00:02']\"\n12.1,\"['0:00:01', '0:00:02']\"\n")
    fails, recs = _by_origin(read("miradata", [tmp_path / "v1.csv"]))
    assert fails["v1.csv:2"][0] == "clip_id" and list(recs) == ["v1.csv:3"]


def test_lone_surrogates_never_reach_the_output(tmp_path):
    lines = [
        '{"video_id": "\\ud800abc", "clip": [{"span": ["0:00:01", "0:00:05"]}]}',
        '{"video_id": "QMi8x8o55Ns", "url": "https://youtu.be/\\udfff", '
        '"clip": [{"span": ["0:00:01", "0:00:05"], "clip_id": "c\\ud83d.mp4"}]}',
        '{"video_id": "Abc_def-123", "url": "\\ud800", "clip": [{"span": ["0:00:01", "0:00:05"]}]}',
    ]
    (tmp_path / "hdvila_part0.jsonl").write_text("\n".join(lines) + "\n")
    items = read("hdvila", [tmp_path])
    fails, recs = _by_origin(items)
    assert fails["hdvila_part0.jsonl:1"][0] == "video_id" and "lone surrogate" in fails["hdvila_part0.jsonl:1"][1]
    assert fails["hdvila_part0.jsonl:2"][0] == "clip[0].clip_id"
    assert recs["hdvila_part0.jsonl:3"].meta_dict()["url"] == "\ufffd"  # text, not an id: repaired
    for it in items:
        for v in (it.as_row().values() if isinstance(it, Failure) else (it.video_id, it.origin, repr(it.meta))):
            if isinstance(v, str):
                v.encode("utf-8")
    # narration text with a lone surrogate: U+FFFD in the record's text
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "ego4d.json").write_text('[{"video_uid": "u1", "duration_sec": 30}]')
    (tmp_path / "e" / "narration.json").write_text(
        '{"u1": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1, "narration_text": "#C C cuts \\ud800"}]}}}')
    [rec] = read("ego4d", [tmp_path / "e"])
    assert rec.texts[0].text == "C cuts \ufffd"


def test_records_and_failures_repair_lone_surrogates():
    from longvid.operators.records import safe_text, sample_key

    assert safe_text("a\ud800b\udfff") == "a\ufffdb\ufffd" and safe_text("plain ü") == "plain ü"
    r = SourceRecord("hdvila", "v", ("v.mp4",), texts=(TextSpan("x\ud800", kind="asr\udc00"),),
                     origin="m\ud800.jsonl:1", meta=(("title", ("a\ud800",)),))
    assert r.texts[0] == TextSpan("x\ufffd", kind="asr\ufffd")
    assert r.origin == "m\ufffd.jsonl:1" and r.meta == (("title", ("a\ufffd",)),)
    f = Failure("hdvila", "\ud800", "", "metadata", "bad \udfff", "f\ud800", "video_id")
    for v in f.as_row().values():
        if isinstance(v, str):
            v.encode("utf-8")
    assert f.video_id == "\ufffd" and f.file == "f\ufffd"
    assert sample_key("hdvila", "\ud800", None, None) != sample_key("hdvila", "\udfff", None, None)


def test_too_deep_json_is_one_failure_and_the_rest_is_read(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "ego4d.json").write_text(
        '{"videos": [{"video_uid": "a", "duration_sec": 30}, %s, {"video_uid": "c", "duration_sec": 30}]}' % deep)
    (tmp_path / "narration.json").write_text(
        '{"c": {"narration_pass_1": %s}, "a": {"narration_pass_1": {"narrations": '
        '[{"timestamp_sec": 1, "narration_text": "#C C waves"}]}}}' % deep)
    fails, recs = _by_origin(read("ego4d", [tmp_path]))
    assert fails["ego4d.json:videos[1]"][0] == "videos[]" and "deeper than" in fails["ego4d.json:videos[1]"][1]
    assert fails["ego4d.json:videos[2]"][0] == "narration_pass_1"
    assert "narration.json" in fails["ego4d.json:videos[2]"][1] and "deeper than" in fails["ego4d.json:videos[2]"][1]
    assert [t.text for t in recs["ego4d.json:videos[0]"].texts] == ["C waves"]

    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "hdvila_part0.jsonl").write_text(
        deep + '\n{"video_id": "QMi8x8o55Ns", "clip": [{"span": ["0:00:01", "0:00:05"]}]}\n')
    fails, recs = _by_origin(read("hdvila", [tmp_path / "h"]))
    assert fails == {"hdvila_part0.jsonl:1": ("line", "JSON line nested too deep to read")}
    assert list(recs) == ["hdvila_part0.jsonl:2"]

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "HowTo100M_v1.csv").write_text("video_id\naaaaaaaaaaa\nbbbbbbbbbbb\n")
    (tmp_path / "t" / "caption.json").write_text(
        '{"aaaaaaaaaaa": {"text": %s, "start": [0], "end": [1]}, "bbbbbbbbbbb": {"text": ["hi"], "start": [0], '
        '"end": [1]}}' % deep)
    fails, recs = _by_origin(read("howto100m", [tmp_path / "t"]))
    assert fails["HowTo100M_v1.csv:2"][0] == "caption[aaaaaaaaaaa].text"
    assert recs["HowTo100M_v1.csv:3"].texts[0].text == "hi"


def test_a_whole_json_file_that_is_not_json_stays_a_metadata_error(tmp_path):
    (tmp_path / "ego4d.json").write_text('{"videos": [' + "[" * 5000 + "]" * 4999 + "]")  # deep and cut short
    with pytest.raises(MetadataError, match=r"ego4d\.json: not valid JSON"):
        read("ego4d", [tmp_path / "ego4d.json"])
    (tmp_path / "ego4d.json").write_text('{"videos": 5}')
    with pytest.raises(MetadataError, match=r"ego4d\.json: expected ego4d\.json with a top-level 'videos' list"):
        read("ego4d", [tmp_path / "ego4d.json"])


def test_wrong_json_types_are_failures_naming_the_field(tmp_path):
    (tmp_path / "ego4d.json").write_text(json.dumps({"videos": [
        {"video_uid": "a", "duration_sec": 30, "scenarios": 5},
        {"video_uid": "b", "duration_sec": 30, "video_metadata": [1, 2]},
        {"video_uid": "c", "duration_sec": [30]},
        {"video_uid": ["d"], "duration_sec": 30},
        "e",
        {"video_uid": "f", "duration_sec": 30},
        {"video_uid": "g", "duration_sec": 30},
        {"video_uid": "h", "duration_sec": 30},
    ]}))
    (tmp_path / "narration.json").write_text(json.dumps({
        "f": {"narration_pass_1": {"narrations": 5}}, "g": [], "h": {"narration_pass_2": {"summaries": [1, "x"]}}}))
    fails, recs = _by_origin(read("ego4d", [tmp_path]))
    got = {k.split(":")[1]: v[0] for k, v in fails.items()}
    assert got == {"videos[0]": "scenarios", "videos[1]": "video_metadata", "videos[2]": "duration_sec",
                   "videos[3]": "video_uid", "videos[4]": "videos[]", "videos[5]": "narration_pass_1.narrations",
                   "videos[6]": "narrations"}
    assert fails["ego4d.json:videos[5]"][1] == (f"{tmp_path / 'narration.json'}: narration_pass_1.narrations must "
                                                "be a list, got number 5")
    assert recs["ego4d.json:videos[7]"].meta_dict()["texts_dropped"] == 2  # malformed items inside a list: counted

    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "x.jsonl").write_text("\n".join(json.dumps(o) for o in [
        {"video_id": "a", "clip": {"span": [1, 2]}}, {"video_id": "b", "clip": [[1, 2]]},
        {"video_id": "c", "clip": [{"span": "0:01-0:02"}]}, {"video_id": "d", "clip": [{"span": [[1], 2]}]},
        [1], "x", None]) + "\n")
    fails, _ = _by_origin(read("hdvila", [tmp_path / "h" / "x.jsonl"]))
    assert [v[0] for v in fails.values()] == ["clip", "clip[0]", "clip[0].span", "clip[0].span", "line", "line",
                                               "line"]


def test_window_settings_cannot_make_unbounded_windows(tmp_path):
    from longvid.operators.errors import ConfigError

    (tmp_path / "ego4d.json").write_text(json.dumps({"videos": [
        {"video_uid": "a", "duration_sec": 9_000_000}, {"video_uid": "b", "duration_sec": 5}]}))
    for bad in (1e-9, 0.5, float("inf"), float("nan"), -1, "480", True, 1e300):
        with pytest.raises(ConfigError, match="source_options.window_sec"):
            get_adapter("ego4d").read([str(tmp_path)], {"window_sec": bad})
    with pytest.raises(ConfigError, match="source_options.window: unknown option"):
        get_adapter("ego4d").read([str(tmp_path)], {"window": 5})
    fails, recs = _by_origin(read("ego4d", [tmp_path], window_sec=1))
    assert fails["ego4d.json:videos[0]"] == (
        "duration_sec", "duration_sec 9e+06 s makes more than 10000 windows of 1 s (window_sec)")
    assert len(recs) == 1
    assert len(read("ego4d", [tmp_path], window_sec=1000)) == 9001  # a long video in many (bounded) windows


def test_unexpected_error_in_one_row_is_that_rows_failure(tmp_path):
    from longvid.operators.sources.base import Adapter, Row

    class Boom(Adapter):
        name = "boom"

        def _read(self, paths, options):
            def rows():
                yield Row("m.csv:2", lambda: 1 / 0)
                yield Row("m.csv:3", lambda: [])
                yield Row("m.csv:4", lambda: SourceRecord("boom", "x", ("x.mp4",), 0.0, float("inf")))
                yield Row("m.csv:5", lambda: SourceRecord("boom", "y", ("y.mp4",), origin="m.csv:5"))
            return rows()

    (tmp_path / "m.csv").write_text("x\n")
    items = list(Boom().read([str(tmp_path / "m.csv")]))
    assert [(f.file, f.field) for f in items if isinstance(f, Failure)] == [
        ("m.csv:2", "row"), ("m.csv:3", "row"), ("m.csv:4", "span")]
    assert "ZeroDivisionError" in items[0].reason and items[1].reason == "the row gave no record"
    assert items[3].video_id == "y"


def test_bad_task_ids_row_fails_only_its_videos(tmp_path):
    (tmp_path / "HowTo100M_v1.csv").write_text("video_id,task_id\naaaaaaaaaaa,7\nbbbbbbbbbbb,8\n")
    (tmp_path / "task_ids.csv").write_text("8\tMake Tea\n7\n")
    fails, recs = _by_origin(read("howto100m", [tmp_path]))
    assert fails["HowTo100M_v1.csv:2"][0] == "task_id" and "task_ids.csv:2" in fails["HowTo100M_v1.csv:2"][1]
    assert recs["HowTo100M_v1.csv:3"].texts[0] == TextSpan("Make Tea", kind="task")


def test_ids_that_cannot_name_a_file_are_failures(tmp_path):
    long_id = "a" * 300
    (tmp_path / "v0.csv").write_text(
        f"index,video_id,start_frame,end_frame,fps\n1_x,{long_id},0,30,30\n2_x,a\x00b,0,30,30\n3_x,\x1b[31m,0,30,30\n"
        "4_x,ok,0,30,30\n")
    fails, recs = _by_origin(read("miradata", [tmp_path / "v0.csv"]))
    assert fails["v0.csv:2"][0] == "video_id" and "300 characters" in fails["v0.csv:2"][1]
    assert "control character" in fails["v0.csv:3"][1] and "control character" in fails["v0.csv:4"][1]
    assert list(recs) == ["v0.csv:5"]


def test_csv_header_with_a_second_bom_and_duplicate_columns(tmp_path):
    (tmp_path / "results_1.csv").write_bytes(
        "\ufeff\ufeffvideoid, page_dir ,name,videoid\n5,d,a kite,6\n".encode())
    [rec] = read("webvid", [tmp_path / "results_1.csv"])
    assert rec.video_id == "5"  # the first of two columns of one name wins


def test_duplicates_of_several_clips_of_one_row_have_distinct_failure_keys(tmp_path):
    """Found by the fuzz suite: a line repeating an earlier line's two clips gave two failures of one key."""
    line = '{"video_id": "QMi8x8o55Ns", "clip": [{"span": ["0:00:01", "0:00:05"]}, {"span": ["0:00:06", "0:00:09"]}]}'
    (tmp_path / "hdvila_part0.jsonl").write_text(line + "\n" + line + "\n")
    recs, fails = split(read("hdvila", [tmp_path]))
    assert len(recs) == 2 and len(fails) == 2 and all("duplicate" in f.reason for f in fails)
    assert len({i.key for i in recs + fails}) == 4
