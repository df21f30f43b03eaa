"""Timestamp message and conversation building: exact strings, relative times, deterministic wording."""
from __future__ import annotations

import pytest

from longvid.operators.prompt import (
    CAPTION_QUESTIONS,
    DENSE_QUESTIONS,
    GROUNDING_QUESTIONS,
    build_conversations,
    sample_text,
    time_msg,
)
from longvid.operators.records import TextSpan


def test_time_msg_short_exact():
    assert time_msg(37.5, 36) == "\nThe video lasts for 37.50 seconds, and 36 frames are uniformly sampled from it. "
    assert time_msg(2.0 / 3, 4) == "\nThe video lasts for 0.67 seconds, and 4 frames are uniformly sampled from it. "


def test_time_msg_long_exact():
    got = time_msg(10.0, 4, frame_times=[0.0, 2.4333, 5.0, 7.56], long=True)
    assert got == "\nThe video lasts for 10.00 seconds, and 4 frames are uniformly sampled at 0.0, 2.4, 5.0, 7.6 seconds. "
    with pytest.raises(ValueError):
        time_msg(10.0, 4, long=True)


def test_first_turn_exact_and_time_msg_only_once():
    texts = [TextSpan("A dog runs on the beach.", kind="caption"), TextSpan("Waves.", kind="style_caption")]
    conv = build_conversations(texts, None, None, 37.5, time_msg(37.5, 36), "webvid_1_full")
    q = next(q for q in CAPTION_QUESTIONS if conv[0]["value"].endswith(q))
    assert conv[0] == {
        "from": "human",
        "value": "<image>\nThe video lasts for 37.50 seconds, and 36 frames are uniformly sampled from it. \n" + q,
    }
    assert conv[1] == {"from": "gpt", "value": "A dog runs on the beach."}
    assert [c["from"] for c in conv] == ["human", "gpt", "human", "gpt"]
    assert conv[3]["value"] == "Waves."
    joined = "".join(c["value"] for c in conv)
    assert joined.count("<image>") == 1 and joined.count("The video lasts") == 1


def test_caption_kind_preference():
    texts = [
        TextSpan("short one", kind="short_caption"),
        TextSpan("the long dense one", kind="dense_caption"),
    ]
    conv = build_conversations(texts, 0.0, 10.0, 10.0, "", "k")
    assert conv[0]["value"].startswith("<image>\n")  # empty time message: "<image>\n<question>"
    assert conv[1]["value"] == "the long dense one"


def test_dense_and_grounding_times_relative_to_span():
    # a window [100, 160] of a long video, narrations (points) and a summary
    texts = [
        TextSpan("C picks a bag", 112.3, 112.3, "narration"),
        TextSpan("C opens the fridge door", 115.0, 115.0, "narration"),
        TextSpan("C closes the fridge door", 150.0, 150.0, "narration"),
        TextSpan("outside the span", 170.0, 170.0, "narration"),
        TextSpan("C cooks a meal in the kitchen", 120.0, 140.0, "summary"),
    ]
    conv = build_conversations(texts, 100.0, 160.0, 60.0, time_msg(60, 60), "ego4d_x_000100000-000160000")
    values = [c["value"] for c in conv]
    dense = next(v for i, v in enumerate(values) if i > 0 and conv[i - 1]["value"].endswith(DENSE_QUESTIONS))
    assert dense.split("\n") == [
        "12.3 - 15.0 seconds, C picks a bag",  # lasts until the next narration
        "15.0 - 23.0 seconds, C opens the fridge door",  # capped at 8 s
        "50.0 - 58.0 seconds, C closes the fridge door",
    ]
    assert "outside the span" not in "".join(values)
    grounding = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2) if "give the start and end time of: " in conv[i]["value"].lower()]
    assert len(grounding) == 2
    answers = {q.rsplit(": ", 1)[1]: a for q, a in grounding}
    for text, answer in answers.items():
        expect = {
            "C cooks a meal in the kitchen": "The event happens in the 20.0 - 40.0 seconds.",
            "C picks a bag": "The event happens in the 12.3 - 15.0 seconds.",
            "C opens the fridge door": "The event happens in the 15.0 - 23.0 seconds.",
            "C closes the fridge door": "The event happens in the 50.0 - 58.0 seconds.",
        }[text]
        assert answer == expect
    for q, _ in grounding:
        assert any(q == t.format(text=q.rsplit(": ", 1)[1]) for t in GROUNDING_QUESTIONS)


def test_times_clamped_to_duration():
    texts = [TextSpan("a long spoken sentence here", 5.0, 30.0, "asr")]
    conv = build_conversations(texts, 0.0, 20.0, 19.9, "", "k")
    assert conv[1]["value"] == "5.0 - 19.9 seconds, a long spoken sentence here"
    assert conv[3]["value"] == "The event happens in the 5.0 - 19.9 seconds."


def test_deterministic_wording_varies_by_key():
    texts = [TextSpan("A cat sleeps.", kind="caption")]
    a = build_conversations(texts, None, None, 10, "", "key-1")
    assert a == build_conversations(texts, None, None, 10, "", "key-1")
    questions = {build_conversations(texts, None, None, 10, "", f"key-{i}")[0]["value"] for i in range(40)}
    assert len(questions) > 1  # wording differs across samples, from the template set only
    assert all(q.removeprefix("<image>\n") in CAPTION_QUESTIONS for q in questions)


def test_no_text_no_conversation():
    assert build_conversations([], None, None, 10, time_msg(10, 8), "k") == []
    assert build_conversations([TextSpan("  ")], None, None, 10, "", "k") == []
    # text only outside the span
    assert build_conversations([TextSpan("late event here", 50, 55, "asr")], 0, 10, 10, "", "k") == []


def test_task_and_summary_as_caption():
    conv = build_conversations([TextSpan("Make Pancakes", kind="task")], None, None, 60, "", "k")
    assert conv[1]["value"] == "Make Pancakes" and "task" in conv[0]["value"]
    conv = build_conversations([TextSpan("C was cooking in the kitchen.", 0.0, 300.0, "summary")], None, None, 300, "", "k")
    assert conv[1]["value"] == "C was cooking in the kitchen."
    assert len(conv) == 2  # used as the caption, not asked again as grounding


def test_sample_text():
    texts = [TextSpan("a  b"), TextSpan("c", 1, 2, "asr"), TextSpan("a b"), TextSpan("")]
    assert sample_text(texts) == "a b\nc"
    assert sample_text([]) == ""


# ------------------------------------------------------------------------------------------------ no text, no sample


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    from longvid.synthetic.videos import make_video

    root = tmp_path_factory.mktemp("videos")
    make_video(root / "QMi8x8o55Ns.mp4", seconds=12, fps=10, width=64, height=48, seed=1)
    return root


def _prompt_failure(record, root):
    from longvid.operators.errors import RecordError
    from longvid.operators.process import ProcessOptions, process_record

    with pytest.raises(RecordError) as e:
        process_record(record, ProcessOptions(videos_root=str(root), profile="stage1"))
    assert e.value.stage == "prompt", e.value
    return e.value


def test_hdvila_clip_without_subtitles_is_a_prompt_failure_not_a_sample(video_root, tmp_path):
    """The demo wrote HD-VILA samples with empty conversations: a clip whose video has no subtitle file."""
    from longvid.operators.process import ProcessOptions, process_record
    from longvid.operators.sources import get_adapter

    meta = tmp_path / "hdvila_part0.jsonl"
    meta.write_text('{"video_id": "QMi8x8o55Ns", "clip": [{"span": ["0:00:01", "0:00:05"]}, '
                    '{"span": ["0:00:06", "0:00:09"]}]}\n')
    first, second = get_adapter("hdvila").read([str(meta)], {})
    e = _prompt_failure(first, video_root)
    assert e.field == "subtitle_paths" and "QMi8x8o55Ns.en.vtt" in e.reason and f"{meta}:1" in e.reason
    # with a subtitle cue inside the first clip only: the first is a sample with text, the second a failure
    (video_root / "QMi8x8o55Ns.en.vtt").write_text("WEBVTT\n\n00:00:02.000 --> 00:00:03.000\nhello there\n")
    try:
        s = process_record(first, ProcessOptions(videos_root=str(video_root), profile="stage1"))
        assert s.info["conversations"] and "hello there" in s.info["conversations"][1]["value"]
        e = _prompt_failure(second, video_root)
        assert e.field == "span" and "6.0 - 9.0 s" in e.reason
    finally:
        (video_root / "QMi8x8o55Ns.en.vtt").unlink()


def test_every_source_record_without_text_is_a_prompt_failure(video_root):
    from longvid.operators.records import SourceRecord

    for source in ("webvid", "howto100m", "miradata", "ego4d"):
        e = _prompt_failure(SourceRecord(source, "QMi8x8o55Ns", ("QMi8x8o55Ns.mp4",), origin="m.csv:7"), video_root)
        assert e.field == "texts" and "m.csv:7" in e.reason
    # texts of kinds that make no turn (an untimed narration) are no conversation either
    rec = SourceRecord("ego4d", "QMi8x8o55Ns", ("QMi8x8o55Ns.mp4",), texts=(TextSpan("C runs", kind="narration"),),
                       origin="ego4d.json:videos[3]")
    e = _prompt_failure(rec, video_root)
    assert e.field == "texts" and "narration" in e.reason
