"""Source text -> LLaVA-style conversations with the VideoChat-Flash timestamp message.

    time_msg(37.5, 36) == "\\nThe video lasts for 37.50 seconds, and 36 frames are uniformly sampled from it. "
    conversations[0]["value"] == "<image>" + time_msg + "\\n" + first question

Turns, in order, each only when its text exists:
- caption: the best untimed description (dense_caption > caption > short_caption, else a summary covering
  most of the span), then MiraData's aspect captions (main object, background, style, camera), then the
  HowTo100M task name;
- dense captions: every timed text of the span as "12.3 - 15.0 seconds, C picks a bag", one per line
  (a narration, a point in time, lasts until the next one, at most `point_sec`);
- temporal grounding: up to `max_grounding` timed texts (picked by a hash of the sample key), answered
  "The event happens in the 12.3 - 15.0 seconds.".
All times are relative to the sample's span, 1 decimal. Question wordings come from small template sets,
chosen by a hash of the sample key and the turn (no global RNG): the same sample always reads the same.
A record without usable text gets no conversation ([]); operators.process makes such a record a failure of stage
"prompt" (never a sample with empty conversations). A non-empty conversation always carries source text: every
answer is a non-blank text of the record or a time span of one.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from longvid.operators.records import TextSpan
from longvid.operators.sources.base import texts_in_span

CAPTION_KINDS = ("dense_caption", "caption", "short_caption")
ASPECTS = {
    "main_object_caption": (
        "Describe the main objects in the video and what they do.",
        "What are the main subjects of the video, and how do they move?",
    ),
    "background_caption": (
        "Describe the background and setting of the video.",
        "Where does this video take place? Describe the environment.",
    ),
    "style_caption": (
        "Describe the visual style of the video.",
        "What is the visual and artistic style of this video?",
    ),
    "camera_caption": (
        "Describe the camera work in the video.",
        "How is the video shot? Describe the camera angles and movement.",
    ),
}
CAPTION_QUESTIONS = (
    "Describe this video in detail.",
    "Please provide a detailed description of the video.",
    "What happens in this video? Describe it in detail.",
    "Give a detailed account of what is shown in the video.",
)
TASK_QUESTIONS = (
    "What task is being demonstrated in this video?",
    "Which how-to task does this video show?",
)
DENSE_QUESTIONS = (
    "Describe the events of the video in order, each with its start and end time in seconds.",
    "List what happens in the video, giving the start and end time of each event in seconds.",
    "Provide a dense, time-stamped description of the video (start - end seconds for each event).",
)
GROUNDING_QUESTIONS = (
    "Please give the start and end time of: {text}",
    "Find the moment in the video and give the start and end time of: {text}",
    "When does this happen in the video? Give the start and end time of: {text}",
    "Watch the video carefully and give the start and end time of: {text}",
)
GROUNDING_ANSWER = "The event happens in the {start} - {end} seconds."
DENSE_KINDS = ("narration", "asr", "subtitle", "dense_event", "event")
GROUNDING_KINDS = ("summary", "narration", "dense_event", "event", "subtitle", "asr")


def time_msg(duration: float, n: int, frame_times: Sequence[float] | None = None, long: bool = False) -> str:
    """VideoChat-Flash's timestamp message (short variant by default; `long` lists the frame times)."""
    if long:
        if frame_times is None:
            raise ValueError("time_msg(long=True) needs frame_times")
        sec = ", ".join(str(round(float(t), 1)) for t in frame_times)
        return f"\nThe video lasts for {duration:.2f} seconds, and {n} frames are uniformly sampled at {sec} seconds. "
    return f"\nThe video lasts for {duration:.2f} seconds, and {n} frames are uniformly sampled from it. "


def _pick(key: str, slot: str, n: int) -> int:
    h = hashlib.sha256(f"{key}\x00{slot}".encode()).digest()
    return int.from_bytes(h[:8], "big") % n


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _intervals(timed: list[TextSpan], hi: float, point_sec: float) -> list[TextSpan]:
    """Give point-in-time texts (narrations) an end: the next point of the same kind, at most point_sec later."""
    out = []
    points = sorted((t for t in timed if t.end is None or t.end == t.start), key=lambda t: t.start)
    nxt: dict[int, float] = {}
    for a, b in zip(points, points[1:]):
        if b.start > a.start:
            nxt[id(a)] = b.start
    for t in timed:
        if t.end is None or t.end == t.start:
            end = min(nxt.get(id(t), t.start + point_sec), t.start + point_sec, hi)
            if end <= t.start:
                end = min(t.start + 1.0, hi)
            out.append(TextSpan(t.text, t.start, end, t.kind))
        else:
            out.append(t)
    return out


def build_conversations(
    record_texts: Iterable[TextSpan],
    span_start: float | None,
    span_end: float | None,
    duration: float,
    time_msg: str,
    rng_key: str,
    *,
    max_grounding: int = 2,
    point_sec: float = 8.0,
) -> list[dict]:
    """LLaVA turns [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...] for one sample.

    record_texts carry absolute times in the source video; span_start/span_end is the sample's span (None:
    the whole video) and `duration` the span duration the timestamp message reports. Times in the
    conversation are relative to span_start and clamped to [0, duration].
    """
    lo = 0.0 if span_start is None else float(span_start)
    hi = lo + float(duration) if span_end is None else min(float(span_end), lo + float(duration))
    texts = [t for t in texts_in_span(record_texts, lo, hi) if t.text and t.text.strip()]
    if not texts:
        return []
    untimed = [t for t in texts if t.start is None]
    timed = _intervals([t for t in texts if t.start is not None], hi, point_sec)

    def rel(x: float) -> float:
        return min(max(x - lo, 0.0), float(duration))

    qa: list[tuple[str, str]] = []
    by_kind: dict[str, TextSpan] = {}
    for t in untimed:
        by_kind.setdefault(t.kind, t)

    # 1. caption
    caption = next((by_kind[k] for k in CAPTION_KINDS if k in by_kind), None)
    if caption is None:
        covering = [t for t in timed if t.kind == "summary" and (t.end - t.start) >= 0.5 * (hi - lo)]
        caption = covering[0] if covering else None
        if caption is not None:
            timed = [t for t in timed if t is not caption]
    if caption is not None:
        qa.append((CAPTION_QUESTIONS[_pick(rng_key, "caption", len(CAPTION_QUESTIONS))], caption.text))
    for kind, questions in ASPECTS.items():
        if kind in by_kind:
            qa.append((questions[_pick(rng_key, kind, len(questions))], by_kind[kind].text))
    if "task" in by_kind:
        qa.append((TASK_QUESTIONS[_pick(rng_key, "task", len(TASK_QUESTIONS))], by_kind["task"].text))

    # 2. dense time-stamped captions
    dense = sorted((t for t in timed if t.kind in DENSE_KINDS), key=lambda t: (t.start, t.end))
    if dense:
        lines = [f"{_fmt(rel(t.start))} - {_fmt(rel(t.end))} seconds, {t.text}" for t in dense]
        qa.append((DENSE_QUESTIONS[_pick(rng_key, "dense", len(DENSE_QUESTIONS))], "\n".join(lines)))

    # 3. temporal grounding
    cands = [t for t in timed if t.kind in GROUNDING_KINDS and t.end > t.start and len(t.text.split()) >= 3]
    cands = sorted(cands, key=lambda t: (GROUNDING_KINDS.index(t.kind), t.start, t.text))
    picked: list[TextSpan] = []
    pool = list(cands)
    for i in range(min(max_grounding, len(pool))):
        picked.append(pool.pop(_pick(rng_key, f"ground{i}", len(pool))))
    for i, t in enumerate(sorted(picked, key=lambda t: (t.start, t.end))):
        q = GROUNDING_QUESTIONS[_pick(rng_key, f"groundq{i}", len(GROUNDING_QUESTIONS))].format(text=t.text)
        qa.append((q, GROUNDING_ANSWER.format(start=_fmt(rel(t.start)), end=_fmt(rel(t.end)))))

    if not qa:
        return []
    conv: list[dict] = []
    for i, (q, a) in enumerate(qa):
        conv.append({"from": "human", "value": ("<image>" + time_msg + "\n" + q) if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def sample_text(texts: Iterable[TextSpan]) -> str:
    """All text of a sample, one piece per line, exact repeats dropped (the manifest's `text` column)."""
    seen: set[str] = set()
    out = []
    for t in texts:
        s = " ".join(t.text.split()) if t.text else ""
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return "\n".join(out)


def insert_time_msg(conversations: Sequence[dict], msg: str = "") -> list[dict]:
    """The reference's `preprocess_multimodal` over annotation turns: new turns, the input is not changed.

    For every turn (human and gpt alike):
    - a turn with exactly one `<image>` that does not start with it: the `<image>` is removed, the rest stripped,
      and the turn becomes `"<image>\\n" + rest` (stripped again);
    - when `msg.rstrip()` is not empty (videos: the `time_msg`), every `<image>` becomes
      `"<image>" + msg.rstrip() + " "`; images pass msg="" and only get the move;
    - the literal `QA_GT_caption_based_noisy` (a marker left in VideoInstruct-100K) is removed.
    Other keys of a turn are kept.
    """
    image = "<image>"
    tail = msg.rstrip()
    out = []
    for turn in conversations:
        value = turn["value"]
        if value.count(image) == 1 and not value.startswith(image):
            value = (image + "\n" + value.replace(image, "").strip()).strip()
        if tail != "":
            value = value.replace(image, image + tail + " ")
        out.append({**turn, "value": value.replace("QA_GT_caption_based_noisy", "")})
    return out
