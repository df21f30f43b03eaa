"""Annotation mixtures (operators.mixture): the released mixture files, a fixture mixture with every kind of record
(good and bad), mixture-level configuration errors, S3, and a fuzz of annotation records."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longvid.operators.errors import ConfigError
from longvid.operators.mixture import (
    AnnotationRecord,
    MixtureError,
    Strategy,
    iter_records,
    map_root,
    parse_strategy,
    resolve_dataset,
    read_dataset,
    read_mixture,
    read_roots,
)
from longvid.operators.records import Failure

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mixture"
SHARED = Path(__file__).resolve().parents[3] / "shared"
RELEASED = sorted((SHARED / "data" / "training").glob("stage*.yaml")) if SHARED.is_dir() else []


def _fixture_mixture(root: Path = FIX):
    return read_mixture(str(root / "mixture.yaml"), roots=read_roots(str(root / "roots.yaml")))


def _items(ds):
    return list(read_dataset(ds))


# ------------------------------------------------------------------------------------------ released mixtures


@pytest.mark.skipif(not RELEASED, reason="../shared/data/training not present")
@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.name)
def test_released_mixture_entries_all_parse(path):
    text = path.read_text()
    mix = read_mixture(str(path))
    # every `- json_path:` entry of the file is a dataset, in order
    written = re.findall(r"json_path:\s*(\S+)", text)
    assert [d.json_path for d in mix.datasets] == written
    assert len({d.name for d in mix.datasets}) == len(mix.datasets)
    for d, raw in zip(mix.datasets, re.split(r"\n\s*- json_path:", text)[1:]):
        m = re.search(r"sampling_strategy:\s*\"?([^\"\s#]+)", raw)
        assert str(d.strategy) == (m.group(1) if m else "all")
        assert d.json_path.endswith((".json", ".jsonl")) and d.name and "/" not in d.name
        m = re.search(r"video_read_type:\s*(\S+)", raw)
        assert d.video_read_type == (m.group(1) if m else None)
        if d.json_path.startswith("https://"):  # two stage-2 files: a web address needs a --roots mapping
            assert d.annotation is None and "web address" in d.problem
        else:
            assert d.annotation == str(path.parent / d.json_path)
        if d.data_root:  # public web pages: unusable without --roots
            assert d.media_root is None and "--roots" in d.problem
    kinds = {d.strategy.kind for d in mix.datasets}
    assert kinds <= {"all", "first"}


@pytest.mark.skipif(not RELEASED, reason="../shared/data/training not present")
def test_released_stage3_with_annotations_and_roots(tmp_path):
    """A released dataset runs once its annotation file exists and its data_root is mapped; before that the plan
    stops naming the dataset and the field."""
    path = next(p for p in RELEASED if p.name.startswith("stage3"))
    mix = read_mixture(str(path), annotations=str(tmp_path))
    ds = next(d for d in mix.datasets if d.strategy == Strategy("first", 25, True) and d.json_path.endswith(".json"))
    with pytest.raises(MixtureError, match=re.escape(f"datasets[{ds.index}] ({ds.name}): json_path: annotation file")):
        resolve_dataset(ds)
    ann = tmp_path / ds.json_path
    ann.parent.mkdir(parents=True)
    recs = [{"id": k, "image": f"{k}.jpg", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                             {"from": "gpt", "value": "a"}]} for k in range(10)]
    ann.write_text(json.dumps(recs))
    with pytest.raises(MixtureError, match=r"data_root: .* has no --roots mapping .*holds image records"):
        resolve_dataset(read_mixture(str(path), annotations=str(tmp_path)).datasets[ds.index])
    (tmp_path / "img").mkdir()
    mix = read_mixture(str(path), annotations=str(tmp_path), roots={ds.data_root: str(tmp_path / "img")})
    plan = resolve_dataset(mix.datasets[ds.index])
    assert plan.total == 10 and plan.selected == range(3) and plan.media_type == "image"  # ceil(25% of 10) = 3
    items = list(iter_records(plan))
    assert [it.id for it in items] == [0, 1, 2]
    assert items[0].media_paths == (str(tmp_path / "img" / "0.jpg"),)


# ---------------------------------------------------------------------------------------------- the fixture


def test_fixture_video_dataset_records_and_failures():
    mix = _fixture_mixture()
    ds = mix.datasets[0]
    assert ds.name == "video_qa" and ds.media_root == str(FIX / "media" / "videos")
    plan = resolve_dataset(ds)
    assert (plan.total, plan.media_type, plan.selected) == (23, "video", range(23))  # the blank line is no record
    items = list(iter_records(plan))
    assert len(items) == 23  # written + failed == selected
    ok = [it for it in items if isinstance(it, AnnotationRecord)]
    bad = {int(f.file.rsplit(":", 1)[1]): f for f in items if isinstance(f, Failure)}
    assert [r.id for r in ok] == ["v1", "v2", 3, "leading-gpt"]
    v1, v2, v3, v4 = ok
    assert v1.media == ("a/v1.mp4",) and v1.media_paths == (str(FIX / "media/videos/a/v1.mp4"),)
    assert v1.origin == f"{FIX}/annotations/video_qa.jsonl:1" and v1.start is None and v1.image_mode is None
    assert (v2.start, v2.end, v2.duration) == (10.0, 40.5, 120.0)
    assert v2.turns()[0] == {"from": "human", "value": "Describe the clip. <image>"}  # kept as annotated
    assert len(v3.conversations) == 4 and v4.conversations[0][0] == "gpt" and v4.index == 22
    assert v2.key == "mix_video_qa-000000001_000010000-000040500" and v1.key == "mix_video_qa-000000000_full"
    assert v2.info() == {"id": "v2", "dataset": "video_qa", "annotation": v2.origin, "media_type": "video",
                         "video": "a/v2.mp4", "start": 10.0, "end": 40.5, "duration": 120.0}
    expect = {
        5: ("line", "not a JSON value"),
        6: ("record", "must be a JSON object"),
        7: ("conversations", "missing conversations"),
        8: ("conversations", "empty conversations"),
        9: ("conversations[0].from", "'human' or 'gpt'"),
        10: ("conversations[0].value", "must be a string"),
        11: ("conversations", "2 <image> placeholder(s) for 1 video(s)"),
        12: ("conversations", "no gpt turn"),
        13: ("end", "needs both start and end"),
        14: ("end", "empty or negative span"),
        15: ("start", "not a finite number"),
        16: ("end", "not a finite number"),
        17: ("conversations[0].value", "lone surrogate"),
        18: ("video", "escapes the root"),
        19: ("video", "must be a path"),
        20: ("id", "string or an integer"),
        21: ("line", "not UTF-8"),
        22: ("id", "cannot read"),
        23: ("video", "missing video"),
    }
    assert sorted(bad) == sorted(expect)
    for line, (field, why) in expect.items():
        f = bad[line]
        assert f.field == field and why in f.reason, (line, f)
        assert f.file == f"{FIX}/annotations/video_qa.jsonl:{line}" and f.stage == "metadata" and f.source == "video_qa"
    assert len({f.key for f in bad.values()}) == len(bad)
    assert bad[14].video_id == "bad-span"


def test_fixture_image_text_and_frame_folder_datasets():
    mix = _fixture_mixture()
    img, text, frames = mix.datasets[1:]
    assert img.media_root == str(FIX / "media" / "images")  # by the prefix entry of roots.yaml
    items = _items(img)
    assert len(items) == 6  # first:6 of 7: the 7th (bad) record is not selected, so not reported
    ok = [it for it in items if isinstance(it, AnnotationRecord)]
    assert [(r.id, r.media, r.image_list, r.image_mode) for r in ok] == [
        ("i1", ("coco/1.jpg",), False, "anyres_nopad"),
        ("i2", ("coco/1.jpg", "coco/2.jpg"), True, "pad"),
        ("i6", ("coco/4.jpg",), True, "anyres_nopad"),
    ]
    assert ok[1].info()["image"] == ["coco/1.jpg", "coco/2.jpg"] and ok[0].info()["image"] == "coco/1.jpg"
    fails = [(f.field, f.file.rsplit("/", 1)[1]) for f in items if isinstance(f, Failure)]
    assert [x[0] for x in fails] == ["conversations", "image", "video"]
    assert fails[0][1].startswith("images.json:") and fails[0][1].endswith("[item 2]")

    plan = resolve_dataset(text)
    assert plan.media_type == "text" and text.media_root is None and plan.selected == range(3)
    items = list(iter_records(plan))
    assert isinstance(items[0], AnnotationRecord) and items[0].media == () and items[0].media_paths == ()
    assert len(items[0].conversations) == 4 and items[0].info() == {
        "id": "t1", "dataset": "text", "annotation": items[0].origin, "media_type": "text"}
    assert [f.reason for f in items[1:]] == ["1 <image> placeholder(s) for no media (a text record)",
                                             "no gpt turn after the first human turn: nothing to train on"]

    plan = resolve_dataset(frames)
    assert plan.selected == range(1, 3)  # end:2 of 3
    f1, f2 = iter_records(plan)
    assert f1.video_read_type == f2.video_read_type == "img"
    assert f1.media_paths == (str(FIX / "frames" / "clip01"),) and (f2.start, f2.end) == (2.0, 6.0)
    # a unit of work reads a part of the selection
    assert [r.id for r in iter_records(plan, 1, 2)] == ["f2"] and list(iter_records(plan, 2)) == []


def test_fixture_media_type_given_and_unresolved_roots(tmp_path):
    root = tmp_path / "mix"
    shutil.copytree(FIX, root)
    mix = read_mixture(str(root / "mixture.yaml"))  # no --roots: the web-page data_roots are unresolved
    with pytest.raises(MixtureError) as e:
        resolve_dataset(mix.datasets[0])
    msg = str(e.value)
    assert msg.startswith(f"{root}/mixture.yaml: datasets[0] (video_qa): data_root: 'https://example.org/datasets/videos'")
    assert "holds video records" in msg
    assert resolve_dataset(mix.datasets[2]).media_type == "text"  # a text dataset needs no root
    assert resolve_dataset(mix.datasets[3]).dataset.media_root == str(root / "frames")  # relative to the mixture
    # media_type given: the text file read as images fails record by record
    y = (root / "mixture.yaml").read_text().replace('"first:100%"', '"first:100%"\n    media_type: image\n'
                                                    '    data_root: frames')
    (root / "m2.yaml").write_text(y)
    items = _items(read_mixture(str(root / "m2.yaml")).datasets[2])
    assert [f.field for f in items] == ["image"] * 3 and all(isinstance(f, Failure) for f in items)


# -------------------------------------------------------------------------------------- configuration errors


def _mix(tmp_path, body: str, name: str = "m.yaml") -> str:
    (tmp_path / "a.jsonl").write_text("")
    p = tmp_path / name
    p.write_text(body)
    return str(p)


GOOD = "datasets:\n  - json_path: a.jsonl\n    sampling_strategy: all\n    data_root: .\n"


@pytest.mark.parametrize("body,msg", [
    ("datasets: []\n", "datasets: must be a non-empty list"),
    ("items: []\n", "a mixture is a mapping with a 'datasets' list"),
    (GOOD + "extra: 1\n", "unknown top-level field(s) 'extra'"),
    ("datasets:\n  - 3\n", "datasets[0]: must be a mapping"),
    ("datasets:\n  - sampling_strategy: all\n", "datasets[0]: json_path: missing"),
    ("datasets:\n  - json_path: a.txt\n", "datasets[0]: json_path: 'a.txt' must name a .json or .jsonl file"),
    ("datasets:\n  - json_path: [a.json]\n", "datasets[0]: json_path: must be a non-empty string"),
    (GOOD.replace("all", "random:10"), "datasets[0] (a): sampling_strategy: 'random:10': random sampling is refused"),
    (GOOD.replace("all", "first:0"), "N must be at least 1"),
    (GOOD.replace("all", '"first:150%"'), "a percentage must be above 0 and at most 100"),
    (GOOD.replace("all", "last:5"), "unknown sampling strategy 'last:5'"),
    (GOOD.replace("all", "first"), "unknown sampling strategy 'first'"),
    (GOOD.replace("all", "first:1e3"), "N must be a whole number"),
    (GOOD.replace("all", "5"), "sampling_strategy: must be a string"),
    (GOOD + "    video_read_type: fake\n", "video_read_type: must be one of decord, av, gif, img, frame"),
    (GOOD + "    media_type: audio\n", "media_type: must be one of video, image, text"),
    (GOOD + "    sampling_stratgy: all\n", "datasets[0]: unknown field(s) 'sampling_stratgy'"),
    (GOOD + "  - json_path: other/a.json\n", "datasets[1] (a): json_path: 'other/a.json' has the same name as datasets[0]"),
    (GOOD + "    data_root: elsewhere\n", "line 5: key 'data_root' given twice, with different values"),
    ("datasets:\n  - &d {json_path: a.jsonl}\n  - *d\n", "anchors and aliases"),
    ("datasets:\n  - !!python/object:os.system {json_path: a.jsonl}\n", "tags"),
    ("datasets: [\n", "not valid YAML"),
])
def test_bad_mixtures_name_file_dataset_and_field(tmp_path, body, msg):
    p = _mix(tmp_path, body)
    with pytest.raises(MixtureError) as e:
        read_mixture(p)
    assert str(e.value).startswith(f"{p}: ") and msg in str(e.value), str(e.value)
    assert isinstance(e.value, ConfigError)  # the CLI exits 2


def test_repeated_key_with_the_same_value_is_accepted(tmp_path):
    assert read_mixture(_mix(tmp_path, GOOD + "\n    data_root: .\n")).datasets[0].data_root == "."
    with pytest.raises(MixtureError, match="not found"):
        read_mixture(str(tmp_path / "absent.yaml"))


def test_bad_annotation_files_stop_the_plan(tmp_path):
    def plan(ann: str, content: str | bytes, extra: str = ""):
        f = tmp_path / ann
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        p = tmp_path / "m.yaml"
        p.write_text(f"datasets:\n  - json_path: {ann}\n    data_root: .\n{extra}")
        return resolve_dataset(read_mixture(str(p)).datasets[0])

    for content, msg in [('{"a": 1}', "must hold one JSON list"), ('[{"a": 1}, {"b" 2}]', "not valid JSON (line 1, column"),
                         ('[{"a": 1}]]', "Extra data"), (b"[\xff]", "not UTF-8"), ("[1,\n2,\n", "not valid JSON (line 3")]:
        with pytest.raises(MixtureError, match=re.escape(msg)):
            plan("x.json", content)
    with pytest.raises(MixtureError, match="cannot tell the media type from the first record .* give media_type"):
        plan("y.jsonl", "not json\n{}\n")
    assert plan("y.jsonl", "not json\n{}\n", "    media_type: video\n").total == 2
    assert plan("e.json", "[]").total == 0 and plan("e.json", " [ ] ").selected == range(0)
    assert plan("z.jsonl", "").total == 0
    # a deeply nested item of a JSON list is that item's failure, the others read on
    deep = "[" + "[" * 5000 + "]" * 5000 + ', {"conversations": []}]'
    items = list(iter_records(plan("d.json", deep, "    media_type: text\n")))
    assert [f.field for f in items] == ["record", "conversations"]
    assert "cannot read" in items[0].reason


def test_web_json_path_and_roots(tmp_path):
    url = "https://huggingface.co/datasets/lmms-lab/M4-Instruct-Data/m4_instruct_annotations.json"
    p = _mix(tmp_path, f"datasets:\n  - json_path: {url}\n    sampling_strategy: all\n")
    ds = read_mixture(p).datasets[0]
    assert ds.annotation is None and ds.name == "m4_instruct_annotations"
    with pytest.raises(MixtureError, match="is a web address: download it and map it with --roots"):
        resolve_dataset(ds)
    (tmp_path / "m4").mkdir()
    (tmp_path / "m4" / "m4_instruct_annotations.json").write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]))
    roots_file = tmp_path / "roots.yaml"
    roots_file.write_text("https://huggingface.co/datasets/lmms-lab/M4-Instruct-Data: m4\n")
    roots = read_roots(str(roots_file))
    assert roots == {"https://huggingface.co/datasets/lmms-lab/M4-Instruct-Data": str(tmp_path / "m4")}
    (rec,) = _items(read_mixture(p, roots=roots).datasets[0])
    assert rec.media_type == "text" and rec.turns()[1]["value"] == "yo"
    assert map_root("https://x.org/a/b/c", {"https://x.org/a": "/r", "https://x.org/a/b/": "/s"}) == "/s/c"
    assert map_root("https://x.org/ab", {"https://x.org/a": "/r"}) is None
    for body, msg in [("- a\n", "a roots file is a mapping"), ("x: 3\n", "must map to a local folder"),
                      ("x: &a y\nz: *a\n", "anchors")]:
        roots_file.write_text(body)
        with pytest.raises(MixtureError, match=msg):
            read_roots(str(roots_file))


def test_mapped_root_that_is_missing_is_named(tmp_path):
    p = _mix(tmp_path, "datasets:\n  - json_path: a.jsonl\n    data_root: https://x.org/v\n    media_type: video\n")
    with pytest.raises(MixtureError, match=r"mapped by --roots to '/nonexistent'\): /nonexistent is not a readable"):
        resolve_dataset(read_mixture(p, roots={"https://x.org/v": "/nonexistent"}).datasets[0])


def test_parse_strategy_values():
    assert parse_strategy("all") == Strategy("all") and str(parse_strategy(" first:25% ")) == "first:25%"
    assert parse_strategy("first3:10") == Strategy("first3", 10)
    assert parse_strategy("end:12.5%") == Strategy("end", 12.5, True)
    assert Strategy("first", 25, True).select(21942) == range(5486)  # ceil(5485.5)
    assert Strategy("first2", 10).select(15) == range(10, 15) and Strategy("first4", 10).select(15) == range(15, 15)
    assert Strategy("end", 10).select(4) == range(0, 4)


# ------------------------------------------------------------------------------------------------------- S3


def test_mixture_annotations_and_media_root_on_s3(s3, tmp_path):
    from longvid.operators import storage

    for f in sorted(FIX.rglob("*")):
        if f.is_file():
            storage.write_bytes(s3.uri("mix", str(f.relative_to(FIX))), f.read_bytes())
    mix = read_mixture(s3.uri("mix", "mixture.yaml"),
                       roots={"https://example.org/datasets/videos": s3.uri("mix", "media", "videos"),
                              "https://example.org/datasets": s3.uri("mix", "media")})
    local = _fixture_mixture()
    for ds, lds in zip(mix.datasets, local.datasets):
        assert ds.annotation == s3.uri("mix", lds.json_path)
        got, want = _items(ds), _items(lds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert type(g) is type(w)
            if isinstance(g, AnnotationRecord):
                assert (g.id, g.conversations, g.start, g.end) == (w.id, w.conversations, w.start, w.end)
                want_root = {"video_qa": "media/videos", "images": "media/images", "frames": "frames"}.get(ds.name)
                assert g.media_paths == tuple(s3.uri("mix", want_root, m) for m in g.media)
            else:
                assert (g.field, g.reason) == (w.field, w.reason)
                assert g.file.replace(s3.uri("mix"), "") == w.file.replace(str(FIX), "")


# -------------------------------------------------------------------------------------------------------- fuzz

_text = st.lists(st.sampled_from(["<image>", "\n", " ", "a", "é", "\ud800", "\x00", "<|im_end|>"]), max_size=6).map("".join)
_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "user", 3]), "value": _text | _value})
_H = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A thing."}]
_BASES = [
    {"id": "v", "video": "v.mp4", "conversations": _H},
    {"id": 7, "video": "d/v.mp4", "start": 1, "end": 5.5, "duration": 9, "conversations": _H + _H[1:] + _H[1:]},
    {"id": "i2", "image": ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "<image> <image> q"},
                                                                 {"from": "gpt", "value": "a"}]},
    {"id": "i", "image": "a.jpg", "conversations": [{"from": "human", "value": "q <image>"}, _H[1]]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
]
_FIELDS = [None, "id", "video", "image", "start", "end", "duration", "conversations", "video_read_type"]


def _perturb(base: dict, field: str | None, value, drop: bool) -> dict:
    """A good record with at most one field replaced by (or dropped for) an arbitrary value."""
    out = dict(base)
    if field is not None:
        if drop:
            out.pop(field, None)
        else:
            out[field] = value
    return out


_record = st.one_of(
    _value,
    st.builds(_perturb, st.sampled_from(_BASES), st.sampled_from(_FIELDS),
              _value | _text | st.lists(_turn, max_size=3), st.booleans()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=12), strategy=st.sampled_from(
    ["all", "first:3", "first:50%", "first2:2", "end:4"]), jsonl=st.booleans(),
    media=st.sampled_from([None, "video", "image", "text"]))
def test_fuzzed_annotation_records_each_end_as_one_item(tmp_path, records, strategy, jsonl, media):
    name = f"f{abs(hash((json.dumps(records, default=str), strategy, jsonl, media))) % 10**9}"
    ann = tmp_path / (name + (".jsonl" if jsonl else ".json"))
    if jsonl:
        ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        ann.write_text(json.dumps(records))
    mt = f"    media_type: {media}\n" if media else ""
    mix = tmp_path / f"{name}.yaml"
    mix.write_text(f"datasets:\n  - json_path: {ann.name}\n    sampling_strategy: '{strategy}'\n    data_root: .\n{mt}")
    ds = read_mixture(str(mix)).datasets[0]
    try:
        plan = resolve_dataset(ds)
    except MixtureError as e:  # only the media type of an unusable first record stops a plan
        assert media is None and "cannot tell the media type" in str(e)
        return
    assert plan.total == len(records) and plan.selected == parse_strategy(strategy).select(len(records))
    items = list(iter_records(plan))
    assert len(items) == len(plan.selected)
    for k, it in zip(plan.selected, items):
        if isinstance(it, AnnotationRecord):
            assert it.index == k and it.dataset == name
            assert sum(v.count("<image>") for _, v in it.conversations) >= len(it.media)
            json.dumps(it.info(), ensure_ascii=False).encode("utf-8")  # a sample json can always be written
            for v in (it.id, *it.media, *[x for t in it.conversations for x in t]):
                if isinstance(v, str):
                    v.encode("utf-8")
        else:
            assert isinstance(it, Failure) and it.field and it.reason and it.file.startswith(str(ann))


def test_annotation_path_that_is_a_folder_or_unreadable(tmp_path):
    (tmp_path / "d.json").mkdir()
    p = _mix(tmp_path, "datasets:\n  - json_path: d.json\n    media_type: text\n")
    with pytest.raises(MixtureError, match=r"datasets\[0\] \(d\): json_path: .* is a folder"):
        resolve_dataset(read_mixture(p).datasets[0])
