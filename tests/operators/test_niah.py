"""NIAH placement rules, spec readers, splicing, aggregation and the heat map (no model, no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longvid.operators import niah
from longvid.operators.errors import ConfigError
from longvid.operators.niah import SpecError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "niah"
SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_SINGLE = SHARED / "data" / "niah" / "niah-coco-singlehop_20.json"
REAL_MULTI = SHARED / "data" / "niah" / "niah-coco-multihop-100.json"


# ------------------------------------------------------------------------------------------- reference rules


def _reference_single(haystack: list, needle: list, length: int, depth: float) -> list:
    """The released single-hop input, transcribed: haystack[:int(depth * n)] + needle + haystack[that:n]."""
    q = int(depth * length)
    return haystack[:q] + needle + haystack[q:length]


def _reference_multi(haystack: list, needles: list[list], length: int) -> list:
    """The released multi-hop loop, transcribed: needle 0, then for each next needle the haystack segment
    [int((k-1) * interval), int(k * interval)) and the needle."""
    interval = length / (len(needles) - 1)
    out: list = []
    for k in range(len(needles)):
        if k == 0:
            out = list(needles[0])
        else:
            out = out + haystack[int((k - 1) * interval) : int(k * interval)] + needles[k]
    return out


def _labelled(u: int, n_needles: int, tpf: int = 4, ntok: int = 8):
    """Haystack slots whose tokens carry their frame number, needles carrying -(k + 1)."""
    hay = np.repeat(np.arange(u, dtype=np.float32)[:, None, None], tpf, axis=1)  # [U, tpf, 1]
    needles = [np.full((ntok, 1), -(k + 1), np.float32) for k in range(n_needles)]
    return hay, needles


def test_single_hop_positions_match_the_reference_depth_grid():
    ref_depths = np.arange(0, 1 + 0.2, 0.2)  # the reference's grid (0.6000000000000001 included)
    for length in niah.DEFAULT_LENGTHS:
        ours = [niah.single_hop_position(length, d) for d in niah.DEFAULT_DEPTHS]
        assert ours == [int(d * length) for d in ref_depths]
    assert [niah.single_hop_position(1000, d) for d in niah.DEFAULT_DEPTHS] == [0, 200, 400, 600, 800, 1000]
    assert niah.single_hop_position(7, 0.6) == 4  # truncation, not rounding
    with pytest.raises(ValueError):
        niah.single_hop_position(10, 1.5)


def test_multi_hop_positions_first_at_zero_last_at_end_evenly_spread():
    assert niah.multi_hop_positions(1000, 7) == [0, 166, 333, 500, 666, 833, 1000]
    assert niah.multi_hop_positions(1000, 2) == [0, 1000]
    for length in (5, 13, 1000, 3000, 10000):
        for n in (2, 5, 6, 7):
            pos = niah.multi_hop_positions(length, n)
            assert pos[0] == 0 and pos[-1] == length and pos == sorted(pos) and len(pos) == n
            gaps = np.diff(pos)
            assert gaps.max() - gaps.min() <= 1  # evenly spread
    with pytest.raises(ValueError):
        niah.multi_hop_positions(100, 1)


@pytest.mark.parametrize("length,depth", [(8, 0.0), (8, 0.5), (8, 1.0), (13, 0.6), (40, 0.2), (7, 0.8)])
def test_single_hop_splice_equals_the_reference_construction(length, depth):
    tpf = 4
    hay, needles = _labelled(length, 1, tpf)
    pl = niah.placements("single", 1, [length], [depth])[0]
    got = niah.splice_tokens(hay, needles, pl, tpf)[:, 0].tolist()
    ref_frames = _reference_single(list(range(length)), ["N"], length, depth)
    expect = []
    for x in ref_frames:
        expect += [-1.0] * 8 if x == "N" else [float(x)] * tpf
    assert got == expect
    assert pl.token_starts(tpf, 8) == [expect.index(-1.0)]
    assert pl.num_tokens(tpf, 8) == len(expect)


@pytest.mark.parametrize("length,n", [(12, 5), (1000, 7), (17, 6), (9, 2), (3, 7)])
def test_multi_hop_splice_equals_the_reference_loop(length, n):
    tpf = 2
    hay, needles = _labelled(length, n, tpf, ntok=3)
    pl = niah.placements("multi", n, [length], [0.5])[0]  # depths do not apply to multi hop
    assert pl.depth is None
    got = niah.splice_tokens(hay, needles, pl, tpf)[:, 0].tolist()
    ref = _reference_multi(list(range(length)), [[f"N{k}"] for k in range(n)], length)
    expect = []
    for x in ref:
        expect += [-(int(x[1:]) + 1.0)] * 3 if isinstance(x, str) else [float(x)] * tpf
    assert got == expect
    starts = pl.token_starts(tpf, 3)
    assert [got[s] for s in starts] == [-(k + 1.0) for k in range(n)]


def test_haystack_plan_halves_and_repeats_above_7500():
    # the reference asks for half and its read loop keeps two batches of 8 more: a 5,016-frame period
    assert niah.haystack_unique_frames(10000) == 5016
    assert niah.haystack_unique_frames(7500) == 7500
    assert niah.haystack_unique_frames(8000) == niah.reference_frames_read(4000) == (500 + 2) * 8
    assert niah.haystack_unique_frames(7501) == niah.reference_frames_read(3750) == (469 + 2) * 8
    assert niah.haystack_unique_frames(10000, available=3000) == 3000
    assert niah.haystack_unique_frames(16, available=100) == 16
    m = niah.haystack_frame_map(5016, 10000)
    assert m[5015] == 5015 and m[5016] == 0 and m[-1] == 10000 - 1 - 5016
    # a slice of a tiled haystack: frame i is slot i mod U
    hay, needles = _labelled(3, 1, 1)
    pl = niah.Placement("single", 7, 0.0, (0,))
    assert niah.splice_tokens(hay, needles, pl, 1)[8:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        niah.haystack_unique_frames(10, available=0)
    with pytest.raises(ValueError):
        niah.reference_frames_read(0)


def test_video_1fps_indices_step_by_rounded_fps():
    assert niah.video_1fps_indices(100, 30.0) == [0, 30, 60, 90]
    assert niah.video_1fps_indices(3000, 29.97)[:4] == [0, 30, 60, 90]
    assert niah.video_1fps_indices(3000, 29.97)[34] == 34 * 30  # the reference steps by round(fps) frames
    assert niah.video_1fps_indices(1000, 10.0, limit=5) == [0, 10, 20, 30, 40]
    assert niah.video_1fps_indices(100, 2.5) == list(range(0, 100, 2))  # round half to even, as Python's round
    assert niah.video_1fps_indices(0, 30.0) == [] and niah.video_1fps_indices(31, 30.0) == [0, 30]
    for bad in (0.0, -1.0, float("nan"), 0.4):
        with pytest.raises(ValueError):
            niah.video_1fps_indices(100, bad)


def test_splice_rejects_bad_input():
    hay, needles = _labelled(4, 2, 2)
    with pytest.raises(ValueError, match="needles"):
        niah.splice_tokens(hay, needles[:1], niah.Placement("multi", 4, None, (0, 4)), 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        niah.splice_tokens(hay, needles, niah.Placement("multi", 4, None, (4, 0)), 2)
    with pytest.raises(ValueError, match=r"\[U, 3, D\]"):
        niah.splice_tokens(hay, needles, niah.Placement("multi", 4, None, (0, 4)), 3)


# --------------------------------------------------------------------------------------------------- specs


def test_parse_options():
    q = "Find X. what\nOptions: (A) white\n(B) purple (C) of\n(D) orange\nOnly give the best option. Best option: ("
    assert niah.parse_options(q) == ("A", "B", "C", "D")
    assert niah.parse_options("no options here. Best option: (") == ()


def test_fixture_specs_read():
    kind, items = niah.read_spec(FIX / "singlehop_3.json")
    assert kind == "single" and [it.id for it in items] == [0, 1, 2]
    assert items[0].images == ("single/COCO_val2014_000000000001.jpg",)
    assert items[2].questions["single"].answer == "D"
    kind, items = niah.read_spec(FIX / "multihop_3.json")
    assert kind == "multi" and [len(it.images) for it in items] == [5, 6, 7]
    assert items[1].questions["caption"].answer == "B" and items[1].questions["qa"].answer == "C"
    assert [it.id for it in items] == [0, 1, 2]  # no id field: the position in the list


@pytest.mark.skipif(not REAL_SINGLE.is_file(), reason="../shared not present")
def test_released_specs_read():
    kind, items = niah.read_spec(REAL_SINGLE)
    assert kind == "single" and len(items) == 20
    assert all(it.questions["single"].options == ("A", "B", "C", "D") for it in items)
    assert items[0].images == ("single/COCO_val2014_000000152808.jpg",) and items[0].questions["single"].answer == "A"
    kind, items = niah.read_spec(REAL_MULTI, "multi")
    assert kind == "multi" and len(items) == 100
    assert {len(it.images) for it in items} == {5, 6, 7}
    assert items[0].images[0] == "multi/niah_651_5_COCO_val2014_000000353320.jpg"
    assert items[0].questions["caption"].answer == "A" and items[0].questions["qa"].answer == "B"
    with pytest.raises(SpecError, match="use --multi-hop"):
        niah.read_spec(REAL_MULTI, "single")
    with pytest.raises(SpecError, match="drop --multi-hop"):
        niah.read_spec(REAL_SINGLE, "multi")


def _spec(tmp_path, data, name="spec.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_bad_specs_name_file_item_and_field(tmp_path):
    good = json.loads((FIX / "singlehop_3.json").read_text())
    cases = [
        ("{not json", "not a JSON file"),
        ({"a": 1}, "non-empty JSON list"),
        ([], "non-empty JSON list"),
        ([good[0], 5], "item 1: expected an object"),
        ([good[0], {**good[1], "answer": "E"}], "item 1: field 'answer' is 'E', not one of the options"),
        ([good[0], {k: v for k, v in good[1].items() if k != "image"}], "item 1: field 'image' is missing"),
        ([{**good[0], "question": "no options"}], "item 0: field 'question' has fewer than 2 options"),
        ([{**good[0], "image": 3}], "item 0: field 'image' must be a non-empty image file name"),
        ([good[0], {**good[1], "id": 0}], "item 1: field 'id' 0 repeats"),
        ([{**good[0], "id": "x"}], "item 0: field 'id' must be an integer"),
    ]
    for i, (data, msg) in enumerate(cases):
        p = _spec(tmp_path, data, f"bad{i}.json")
        with pytest.raises(SpecError) as e:
            niah.read_spec(p, "single")
        assert str(p) in str(e.value) and msg in str(e.value), (i, str(e.value))
    multi = json.loads((FIX / "multihop_3.json").read_text())
    p = _spec(tmp_path, [{**multi[0], "images": ["only_one.jpg"]}], "m.json")
    with pytest.raises(SpecError, match="item 0: field 'images' must be a list of at least 2"):
        niah.read_spec(p)
    p = _spec(tmp_path, [{k: v for k, v in multi[0].items() if k != "answer2"}], "m2.json")
    with pytest.raises(SpecError, match="item 0: field 'answer2'"):
        niah.read_spec(p)
    with pytest.raises(SpecError, match="not found"):
        niah.read_spec(tmp_path / "missing.json")
    assert issubclass(SpecError, ConfigError)  # the CLI reports it as a configuration error (exit 2)


def test_resolve_image(tmp_path):
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    assert niah.resolve_image(tmp_path, "single/a.jpg") == (tmp_path / "single" / "a.jpg").resolve()
    assert niah.resolve_image(tmp_path, "single/b.jpg") == (tmp_path / "b.jpg").resolve()  # flat folder of files
    with pytest.raises(SpecError, match="must be a relative path"):
        niah.resolve_image(tmp_path, "../etc/passwd", "spec.json: item 3")
    with pytest.raises(SpecError, match="must be a relative path"):
        niah.resolve_image(tmp_path, "/etc/passwd")
    with pytest.raises(SpecError, match=r"spec.json: item 3: needle image 'single/c.jpg' not found \(tried"):
        niah.resolve_image(tmp_path, "single/c.jpg", "spec.json: item 3")


def test_check_lengths_and_depths():
    assert niah.check_lengths("1000 2000".split()) == [1000, 2000]
    with pytest.raises(ConfigError, match="frames"):
        niah.check_lengths([0])
    with pytest.raises(ConfigError, match="frames"):
        niah.check_lengths([5, 5])
    with pytest.raises(ConfigError, match="depths"):
        niah.check_depths([0.5, 1.2])
    assert niah.depth_label(0.6000000000000001) == "60%" and niah.depth_label(None) == "spread"


# ------------------------------------------------------------------------------------------ results, heat map


def _result(row, item, length, depth, q, correct):
    return {"row": row, "item_id": item, "kind": "single" if q == "single" else "multi", "length": length,
            "depth": depth, "question": q, "correct": correct}


def test_aggregate_single_and_multi():
    from longvid.pipelines.niah_results import aggregate

    res = [_result(0, 0, 8, 0.0, "single", True), _result(1, 1, 8, 0.0, "single", False),
           _result(2, 0, 8, 1.0, "single", True), _result(3, 1, 16, 0.0, "single", True)]
    agg = aggregate(res, "single")
    cells = {(c["length"], c["depth"]): (c["accuracy"], c["n"]) for c in agg["by_length_depth"]}
    assert cells == {(8, 0.0): (0.5, 2), (8, 1.0): (1.0, 1), (16, 0.0): (1.0, 1)}
    assert agg["overall"] == 0.75
    res = [_result(0, 0, 8, None, "caption", True), _result(0, 0, 8, None, "qa", False),
           _result(1, 1, 8, None, "caption", True), _result(1, 1, 8, None, "qa", True),
           _result(2, 0, 16, None, "caption", False), _result(2, 0, 16, None, "qa", False)]
    agg = aggregate(res, "multi")
    by = {r["length"]: r for r in agg["by_length"]}
    assert (by[8]["caption"], by[8]["qa"], by[8]["score"]) == (1.0, 0.5, 0.75)
    assert (by[8]["both_correct"], by[8]["only_caption"], by[8]["both_wrong"]) == (1, 1, 0)
    assert by[16]["score"] == 0.0 and by[16]["both_wrong"] == 1
    assert agg["caption"] == 2 / 3 and agg["qa"] == 1 / 3 and agg["overall"] == 0.5


def _ref_correct(predict_str: str, answer_str: str) -> bool:
    """single_eval_vision_niah.py / multi_eval_vision_niah.py `eval_forward`, transcribed: both texts decoded
    from token ids, lower-cased; the prediction's parentheses removed; compared as they are."""
    predict_str = str(predict_str).lower()
    answer_str = str(answer_str).lower()
    return predict_str.replace("(", "").replace(")", "") == answer_str


def test_reference_match_is_the_released_comparison():
    import itertools

    from longvid.pipelines.niah_eval import reference_match

    for pred, ok in [("B", True), ("b", True), ("(B)", True), ("B)", True), ("((b", True), (" B", False),
                     ("B ", False), ("B.", False), ("", False), ("BB", False), ("A", False), ("<|im_end|>", False),
                     ("\nB", False), ("Best option: (B", False)]:
        assert reference_match(pred, "B") is ok, pred
    alphabet = ["", "a", "A", "b", "B", "(", ")", " ", ".", "\n"]
    for parts in itertools.product(alphabet, repeat=3):
        pred = "".join(parts)
        for answer in ("A", "b", "B"):
            assert reference_match(pred, answer) == _ref_correct(pred, answer), (pred, answer)


def _ref_multi_length(cap_accuracies: list[int], qa_accuracies: list[int]) -> dict:
    """multi_eval_vision_niah.py's per-length result, transcribed (1 = correct)."""
    both = only_cap = only_qa = wrong = 0
    for cap, qa in zip(cap_accuracies, qa_accuracies):
        if cap == 1 and qa == 1:
            both += 1
        elif cap == 1 and qa == 0:
            only_cap += 1
        elif cap == 0 and qa == 1:
            only_qa += 1
        else:
            wrong += 1
    return {"Score": (sum(cap_accuracies) + sum(qa_accuracies)) / (len(cap_accuracies) + len(qa_accuracies)),
            "Caption Score": sum(cap_accuracies) / len(cap_accuracies),
            "QA Score": sum(qa_accuracies) / len(qa_accuracies), "Total question pair": len(qa_accuracies),
            "Both correct": both, "Only cap correct": only_cap, "Only qa correct": only_qa, "Both wrong": wrong}


def test_multi_hop_scores_are_the_released_ones():
    from longvid.pipelines.niah_results import aggregate

    rng = np.random.default_rng(4)
    for n in (1, 3, 20):
        res, per_len = [], {}
        for L in (1000, 2000):
            cap, qa = rng.integers(0, 2, n).tolist(), rng.integers(0, 2, n).tolist()
            per_len[L] = _ref_multi_length(cap, qa)
            for i in range(n):
                row = len(res) // 2
                res += [_result(row, i, L, None, "caption", bool(cap[i])), _result(row, i, L, None, "qa", bool(qa[i]))]
        for got in aggregate(res, "multi")["by_length"]:
            ref = per_len[got["length"]]
            assert (got["score"], got["caption"], got["qa"], got["pairs"], got["both_correct"], got["only_caption"],
                    got["only_qa"], got["both_wrong"]) == pytest.approx(tuple(ref.values()))


def test_heatmap_png_colours_cells_by_score(tmp_path):
    """matplotlib heat map: the cells carry the scores (a masked cell where there is none) through the reference's
    colour map, the axes and colour bar are labelled, and the PNG decodes at a size that grows with the grid and
    shows every cell's colour."""
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from longvid.pipelines.niah_results import draw_heatmap, heatmap_figure, score_color

    assert score_color(0.0) == (0xF0, 0x49, 0x6E) and score_color(1.0) == (0x9A, 0xD5, 0xB3)
    assert score_color(0.5) == (0xEB, 0xB8, 0x39)
    grid = [[0.0, 1.0], [0.5, None]]
    fig, im = heatmap_figure(grid, ["0%", "100%"], ["1.0K", "2.0K"], "a title")
    try:
        cells = im.get_array()
        assert cells.mask.tolist() == [[False, False], [False, True]]
        assert cells.filled(-1).tolist() == [[0.0, 1.0], [0.5, -1]]
        rgb = {v: tuple(int(c) for c in im.to_rgba(np.array([v]), bytes=True)[0][:3]) for v in (0.0, 0.5, 1.0)}
        assert len(set(rgb.values())) == 3  # cells differ by score
        assert rgb[0.0] == score_color(0.0) and rgb[1.0] == score_color(1.0)
        assert all(abs(a - b) <= 3 for a, b in zip(rgb[0.5], score_color(0.5)))  # a 256-entry map's middle
        ax = im.axes
        assert ax.get_xlabel() == "Num. of frames" and ax.get_ylabel() == "Depth" and ax.get_title() == "a title"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1.0K", "2.0K"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0%", "100%"]
        assert sorted(t.get_text() for t in ax.texts) == ["-", "0.00", "0.50", "1.00"]
        bar = [a for a in fig.axes if a is not ax]
        assert len(bar) == 1 and bar[0].get_ylabel() == "score"
    finally:
        plt.close(fig)
    p = draw_heatmap(grid, ["0%", "100%"], ["1.0K", "2.0K"], tmp_path / "h.png", "a title")
    img = Image.open(p).convert("RGB")
    assert 300 <= img.width <= 800 and 200 <= img.height <= 600
    px = np.asarray(img).reshape(-1, 3)
    for colour in (*rgb.values(), score_color(None)):  # every cell's colour fills a cell-sized area
        assert (px == colour).all(axis=1).sum() > 500, colour
    big = draw_heatmap([[0.5] * 12] * 10, [f"{d}%" for d in range(0, 100, 10)], [str(n) for n in range(12)],
                       tmp_path / "big.png", "a title")
    w, h = Image.open(big).size
    assert w > img.width + 400 and h > img.height + 200
