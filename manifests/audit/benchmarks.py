"""Benchmark annotation readers: every file becomes video references and texts, whatever its format.

`scan_benchmarks(paths)` walks files and folders and recognises each file by its content and structure (the keys
of its records, the shape of its lines), using the path only to break ties (an MVBench task name, the word
"perception" for a bare id list). A file that matches no known format is reported in `BenchmarkSet.unknown`,
never guessed. A recognised file with a broken record raises `BenchmarkFormatError` naming the file, the record
and the field.

Formats (see ../shared/reference/benchmarks.md): MVBench task json, Video-MME parquet, LongVideoBench json, MLVU json,
LVBench clean json and original `video_info.meta.jsonl`, Charades-STA json and `charades_sta_*.txt` lines,
EgoSchema `uid_to_ego4d.json` and `questions.json`, Ego4D `ego4d.json` (val/test splits), Perception Test (HF rows,
original `all_valid.json`, id-list csv), NExT-QA csv and `map_vid_vidorID.json`, ActivityNet-QA `*_q.json` and
`*_a.json`.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import ids

# MVBench task -> the dataset its videos come from (MVBench paper, table 1).
MVBENCH_TASKS: dict[str, str] = {
    "action_antonym": "ssv2",
    "action_count": "perception_test",
    "action_localization": ids.CHARADES,
    "action_prediction": ids.CHARADES,  # STAR
    "action_sequence": ids.CHARADES,  # STAR
    "character_order": "perception_test",
    "counterfactual_inference": "clevrer",
    "egocentric_navigation": "vlnce",
    "episodic_reasoning": "tvqa",
    "fine_grained_action": "mit",
    "fine_grained_pose": "ntu",
    "moving_attribute": "clevrer",
    "moving_count": "clevrer",
    "moving_direction": "clevrer",
    "object_existence": "clevrer",
    "object_interaction": ids.CHARADES,  # STAR
    "object_shuffle": "perception_test",
    "scene_transition": "movqa",
    "state_change": "perception_test",
    "unexpected_action": "funqa",
}

_OPTION_LABEL = re.compile(r"^\s*\(?[A-Ea-e][.):]\s+")
_CHARADES_LINE = re.compile(r"^([A-Za-z0-9]{5}) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)##(.*)$")
_PT_ID = re.compile(r"^video_\d+$")
_VIDOR = re.compile(r"^\d{4}/\d+$")


class BenchmarkFormatError(ValueError):
    """A recognised benchmark file with a record that cannot be read."""

    def __init__(self, path: str, where: str, fld: str, why: str):
        self.path, self.where, self.field = path, where, fld
        super().__init__(f"{path}: {where}: field {fld!r}: {why}")


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
    path: str
    format: str
    benchmark: str
    videos: list[BenchVideo] = field(default_factory=list)
    texts: list[BenchText] = field(default_factory=list)


@dataclass
class BenchmarkSet:
    files: list[BenchmarkFile]
    unknown: list[tuple[str, str]]  # (path, why it was not recognised)

    @property
    def videos(self) -> list[BenchVideo]:
        seen, out = set(), []
        for f in self.files:
            for v in f.videos:
                k = (v.benchmark, v.namespace, v.video_id, v.start, v.end)
                if k not in seen:
                    seen.add(k)
                    out.append(v)
        return out

    @property
    def texts(self) -> list[BenchText]:
        seen, out = set(), []
        for f in self.files:
            for t in f.texts:
                k = (t.benchmark, t.video, t.field, t.text)
                if k not in seen:
                    seen.add(k)
                    out.append(t)
        return out

    @property
    def benchmarks(self) -> list[str]:
        return sorted({f.benchmark for f in self.files})


# ---------------------------------------------------------------- loading

def _load(path: Path) -> tuple[str, Any]:
    """(kind, content): kind is table | json | jsonl | lines | csv | binary. By content, not by extension."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        return "table", pq.read_table(path).to_pylist()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "binary", None
    s = text.lstrip()
    if s[:1] in "[{":
        try:
            return "json", json.loads(s)
        except json.JSONDecodeError:
            lines = [ln for ln in s.splitlines() if ln.strip()]
            try:
                return "jsonl", [json.loads(ln) for ln in lines]
            except json.JSONDecodeError:
                return "text", None
    lines = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()]
    if lines and all(_CHARADES_LINE.match(ln) for ln in lines):
        return "lines", lines
    if lines:
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if rows and len({len(r) for r in rows}) == 1:
            return "csv", rows
    return "text", None


def _dict_rows(kind: str, content: Any) -> list[dict] | None:
    """Records as dicts: a json/jsonl list of objects, a parquet table, or a csv with a header."""
    if kind in ("json", "jsonl", "table") and isinstance(content, list) and content and all(isinstance(r, dict) for r in content):
        return content
    if kind == "csv" and len(content) >= 2:
        header = [h.strip() for h in content[0]]
        return [dict(zip(header, r)) for r in content[1:]]
    return None


def _single_record(d: dict) -> bool:
    """A dict that is one benchmark record (has a question or a qa list), not a mapping of records."""
    return ("question" in d or "qa" in d) and not all(isinstance(v, dict) for v in d.values())


def _has(rows: list[dict], *keys: str) -> bool:
    first = rows[0]
    return all(k in first for k in keys)


def _need(path: str, i: int, rec: dict, key: str, types: tuple = (str,)) -> Any:
    if key not in rec or rec[key] is None:
        raise BenchmarkFormatError(path, f"record {i}", key, "missing")
    v = rec[key]
    if not isinstance(v, types):
        raise BenchmarkFormatError(path, f"record {i}", key, f"expected {'/'.join(t.__name__ for t in types)}, got {type(v).__name__}")
    return v


def _options(path: str, i: int, rec: dict, key: str) -> list[str]:
    v = rec.get(key)
    if v is None:
        raise BenchmarkFormatError(path, f"record {i}", key, "missing")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, str):  # some exports store the option list as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise BenchmarkFormatError(path, f"record {i}", key, f"expected a list of options, got the string {v[:40]!r}") from None
    if not isinstance(v, list):
        raise BenchmarkFormatError(path, f"record {i}", key, f"expected a list of options, got {type(v).__name__}")
    return [_OPTION_LABEL.sub("", str(o)) for o in v if o is not None]


def _text_items(bench: str, task: str, ref: str, video: str, question: str | None, options: list[str] = (),
                answer: Any = None, qfield: str = "question") -> list[BenchText]:
    out = []
    if question:
        out.append(BenchText(bench, task, ref, video, qfield, str(question)))
    for o in options:
        if o.strip():
            out.append(BenchText(bench, task, ref, video, "option", o))
    if isinstance(answer, str):
        a = _OPTION_LABEL.sub("", answer)
        if len(a.strip()) > 1 and a not in options:  # a bare letter adds nothing; an option text is already there
            out.append(BenchText(bench, task, ref, video, "answer", a))
    return out


# ---------------------------------------------------------------- readers (one per format)

def _read_mvbench(path: str, rows: list[dict]) -> BenchmarkFile:
    stem = Path(path).stem
    hinted = stem in MVBENCH_TASKS or "mvbench" in path.lower()
    bench = "MVBench" if hinted else f"MVBench-format:{Path(path).parent.name}"
    ns = MVBENCH_TASKS.get(stem)
    vids = [str(_need(path, i, r, "video")) for i, r in enumerate(rows)]
    if ns is None:  # unknown task: Charades ids are unmistakable, anything else stays in a namespace of its own
        ns = ids.CHARADES if all(ids.charades_id(v) for v in vids) else f"mvbench.{stem}"
    bf = BenchmarkFile(path, "mvbench-json", bench)
    for i, r in enumerate(rows):
        ref = f"{Path(path).name}#{i}"
        q = _need(path, i, r, "question")
        opts = _options(path, i, r, "candidates")
        vid = ids.normalise(ns, vids[i])
        if vid:
            bf.videos.append(BenchVideo(bench, stem, ns, vid, vids[i], ref))
        bf.texts += _text_items(bench, stem, ref, vids[i], q, opts, r.get("answer"))
    return bf


def _read_mlvu(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "mlvu-json", "MLVU")
    stem = Path(path).stem
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video"))
        ref = f"{Path(path).name}#{i}"
        vid = ids.generic_id(v)
        if vid:
            bf.videos.append(BenchVideo("MLVU", stem, "mlvu", vid, v, ref))
        bf.texts += _text_items("MLVU", stem, ref, v, _need(path, i, r, "question"), _options(path, i, r, "candidates"), r.get("answer"))
    return bf


def _read_lvbench_clean(path: str, rows: list[dict]) -> BenchmarkFile:
    # ids here are renamed (00000000): they only match LVBench's own namespace; the text still matches.
    bf = BenchmarkFile(path, "lvbench-clean-json", "LVBench")
    stem = Path(path).stem
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video"))
        ref = f"{Path(path).name}#{i}"
        bf.videos.append(BenchVideo("LVBench", stem, "lvbench", v, v, ref))
        bf.texts += _text_items("LVBench", stem, ref, v, _need(path, i, r, "question"), _options(path, i, r, "candidates"), r.get("answer"))
    return bf


def _read_lvbench_meta(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "lvbench-meta-jsonl", "LVBench")
    for i, r in enumerate(rows):
        key = str(_need(path, i, r, "key"))
        qa = _need(path, i, r, "qa", (list,))
        yt = ids.youtube_id(key)
        ref = f"{Path(path).name}#{i}"
        if yt:
            bf.videos.append(BenchVideo("LVBench", r.get("type", ""), ids.YOUTUBE, yt, key, ref))
        for j, q in enumerate(qa):
            if not isinstance(q, dict) or "question" not in q:
                raise BenchmarkFormatError(path, f"record {i} qa[{j}]", "question", "missing")
            lines = str(q["question"]).split("\n")  # question text, then "(A) ..." option lines
            opts = [_OPTION_LABEL.sub("", ln) for ln in lines[1:] if ln.strip()]
            bf.texts += _text_items("LVBench", r.get("type", ""), str(q.get("uid", f"{ref}.{j}")), key, lines[0], opts)
    return bf


def _read_videomme(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "videomme-parquet", "Video-MME")
    for i, r in enumerate(rows):
        raw = r.get("videoID") or r.get("url")
        if not raw:
            raise BenchmarkFormatError(path, f"row {i}", "videoID", "missing (and no url)")
        yt = ids.youtube_id(str(raw)) or ids.youtube_id(str(r.get("url") or "")) or ids.normalise(ids.YOUTUBE, str(raw))
        ref = str(r.get("question_id") or f"{Path(path).name}#{i}")
        task = str(r.get("duration") or "")
        if yt:
            bf.videos.append(BenchVideo("Video-MME", task, ids.YOUTUBE, yt, str(r.get("url") or raw), ref))
        bf.texts += _text_items("Video-MME", task, ref, str(raw), _need(path, i, r, "question"), _options(path, i, r, "options"), r.get("answer"))
    return bf


def _read_longvideobench(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "longvideobench-json", "LongVideoBench")
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video_id"))
        ref = str(r.get("id") or f"{Path(path).name}#{i}")
        yt = ids.youtube_id(v)
        if yt:
            bf.videos.append(BenchVideo("LongVideoBench", str(r.get("question_category", "")), ids.YOUTUBE, yt, v, ref))
        else:  # `@user-<n>` ids (TikTok)
            bf.videos.append(BenchVideo("LongVideoBench", str(r.get("question_category", "")), "tiktok", v, v, ref))
        opts = _options(path, i, r, "candidates")
        bf.texts += _text_items("LongVideoBench", str(r.get("question_category", "")), ref, v, _need(path, i, r, "question"), opts)
    return bf


def _charades_items(bf: BenchmarkFile, path: str, i: int, raw: str, caption: str, ts: tuple[float, float] | None):
    cid = ids.charades_id(raw)
    if cid is None:
        raise BenchmarkFormatError(path, f"record {i}", "video", f"not a Charades id: {raw!r}")
    ref = f"{Path(path).name}#{i}"
    # The benchmark shows the whole video: any span of it leaks; the timestamp is the queried moment.
    bf.videos.append(BenchVideo("Charades-STA", "test", ids.CHARADES, cid, raw, ref))
    bf.texts.append(BenchText("Charades-STA", "test", ref, raw, "query", caption))


def _read_charades_json(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "charades-sta-json", "Charades-STA")
    for i, r in enumerate(rows):
        ts = _need(path, i, r, "timestamp", (list,))
        if len(ts) != 2:
            raise BenchmarkFormatError(path, f"record {i}", "timestamp", f"expected [start, end], got {ts!r}")
        _charades_items(bf, path, i, str(_need(path, i, r, "video")), str(_need(path, i, r, "caption")), (ts[0], ts[1]))
    return bf


def _read_charades_txt(path: str, lines: list[str]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "charades-sta-txt", "Charades-STA")
    for i, ln in enumerate(lines):
        m = _CHARADES_LINE.match(ln)
        _charades_items(bf, path, i, m.group(1), m.group(4).strip(), (float(m.group(2)), float(m.group(3))))
    return bf


def _read_egoschema_windows(path: str, obj: dict) -> BenchmarkFile:
    bf = BenchmarkFile(path, "egoschema-uid-to-ego4d", "EgoSchema")
    for q_uid, w in obj.items():
        where = f"q_uid {q_uid}"
        if not isinstance(w, dict):
            raise BenchmarkFormatError(path, where, "video_uid", "record is not an object")
        for k in ("video_uid", "starting_sec", "ending_sec"):
            if w.get(k) is None:
                raise BenchmarkFormatError(path, where, k, "missing")
        uid = ids.ego4d_uid(str(w["video_uid"]))
        if uid is None:
            raise BenchmarkFormatError(path, where, "video_uid", f"not an Ego4D uid: {w['video_uid']!r}")
        try:
            s, e = float(w["starting_sec"]), float(w["ending_sec"])
        except (TypeError, ValueError):
            raise BenchmarkFormatError(path, where, "starting_sec/ending_sec", "not numbers") from None
        bf.videos.append(BenchVideo("EgoSchema", "", ids.EGO4D, uid, str(w["video_uid"]), str(q_uid), s, e))
    return bf


def _read_egoschema_questions(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "egoschema-questions", "EgoSchema")
    for i, r in enumerate(rows):
        q_uid = str(_need(path, i, r, "q_uid"))
        opts = [str(r[k]) for k in sorted(r) if k.startswith("option") and r[k]]
        bf.texts += _text_items("EgoSchema", "", q_uid, q_uid, _need(path, i, r, "question"), opts)
    return bf


def _read_ego4d_splits(path: str, obj: dict) -> BenchmarkFile:
    bf = BenchmarkFile(path, "ego4d-json", "Ego4D-val/test")
    for i, v in enumerate(obj["videos"]):
        if not isinstance(v, dict) or not v.get("video_uid"):
            raise BenchmarkFormatError(path, f"videos[{i}]", "video_uid", "missing")
        splits = [f"{k}={v[k]}" for k in ("split_em", "split_av", "split_fho") if v.get(k) in ("val", "test")]
        uid = ids.ego4d_uid(str(v["video_uid"]))
        if splits and uid:
            bf.videos.append(BenchVideo("Ego4D-val/test", ",".join(splits), ids.EGO4D, uid, str(v["video_uid"]), f"videos[{i}]"))
    return bf


def _read_perception_rows(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "perception-test-rows", "PerceptionTest")
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video_name"))
        ref = str(r.get("question_id") or f"{Path(path).name}#{i}")
        vid = ids.generic_id(v)
        if vid:
            bf.videos.append(BenchVideo("PerceptionTest", str(r.get("area", "")), "perception_test", vid, v, ref))
        bf.texts += _text_items("PerceptionTest", str(r.get("area", "")), ref, v, r.get("question"), _options(path, i, r, "options"))
    return bf


def _read_perception_original(path: str, obj: dict) -> BenchmarkFile:
    bf = BenchmarkFile(path, "perception-test-json", "PerceptionTest")
    for vkey, rec in obj.items():
        meta = rec.get("metadata") or {}
        v = str(meta.get("video_id") or vkey)
        bf.videos.append(BenchVideo("PerceptionTest", "", "perception_test", v, v, v))
        for j, q in enumerate(rec.get("mc_question") or []):
            if not isinstance(q, dict) or "question" not in q:
                raise BenchmarkFormatError(path, f"{vkey} mc_question[{j}]", "question", "missing")
            opts = [str(o) for o in q.get("options") or []]
            bf.texts += _text_items("PerceptionTest", str(q.get("area", "")), f"{v}#{q.get('id', j)}", v, q["question"], opts)
    return bf


def _read_perception_ids(path: str, rows: list[list[str]]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "perception-test-id-list", "PerceptionTest")
    for i, r in enumerate(rows):
        for c in r:
            if _PT_ID.match(c.strip()):
                bf.videos.append(BenchVideo("PerceptionTest", "mc", "perception_test", c.strip(), c.strip(), f"{Path(path).name}#{i}"))
    return bf


def _read_nextqa(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "nextqa-csv", "NExT-QA")
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video")).strip()
        ref = str(r.get("qid") and f"{v}_{r['qid']}" or f"{Path(path).name}#{i}")
        bf.videos.append(BenchVideo("NExT-QA", str(r.get("type", "")), "vidor", ids.vidor_id(v) or v, v, ref))
        opts = [str(r[k]) for k in ("a0", "a1", "a2", "a3", "a4") if r.get(k)]
        bf.texts += _text_items("NExT-QA", str(r.get("type", "")), ref, v, _need(path, i, r, "question"), opts,
                                r.get("answer") if isinstance(r.get("answer"), str) and not str(r.get("answer")).isdigit() else None)
    return bf


def _read_nextqa_map(path: str, obj: dict) -> BenchmarkFile:
    bf = BenchmarkFile(path, "nextqa-vidor-map", "NExT-QA")
    for k, v in obj.items():
        bf.videos.append(BenchVideo("NExT-QA", "", "vidor", ids.vidor_id(str(v)) or str(v), str(v), str(k)))
    return bf


def _read_anetqa_q(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "activitynet-qa-questions", "ActivityNet-QA")
    for i, r in enumerate(rows):
        v = str(_need(path, i, r, "video_name"))
        ref = str(r.get("question_id") or f"{Path(path).name}#{i}")
        yt = ids.youtube_id(v) or ids.youtube_id("v_" + v)
        if yt:
            bf.videos.append(BenchVideo("ActivityNet-QA", "", ids.YOUTUBE, yt, v, ref))
        bf.texts += _text_items("ActivityNet-QA", "", ref, v, _need(path, i, r, "question"))
    return bf


def _read_anetqa_a(path: str, rows: list[dict]) -> BenchmarkFile:
    bf = BenchmarkFile(path, "activitynet-qa-answers", "ActivityNet-QA")
    for i, r in enumerate(rows):
        ref = str(_need(path, i, r, "question_id"))
        a = r.get("answer")
        if isinstance(a, str) and a.strip():
            bf.texts.append(BenchText("ActivityNet-QA", "", ref, "", "answer", a))
    return bf


# ---------------------------------------------------------------- recognition

def _recognise(path: str, kind: str, content: Any) -> Callable[[], BenchmarkFile] | str:
    """A reader bound to the content, or the reason the file is not recognised."""
    low = path.lower()
    if kind == "lines":
        return lambda: _read_charades_txt(path, content)
    if kind == "csv" and all(len(r) == 1 for r in content):  # a bare id list, no header
        cells = [r[0].strip() for r in content if r[0].strip()]
        if cells and all(_PT_ID.match(c) for c in cells[1:]):
            if "perception" in low or "mc_question" in low:
                return lambda: _read_perception_ids(path, content)
            return "csv of video_NNNN ids, but the path does not say which dataset (Perception Test? CLEVRER?)"
    if kind == "json" and isinstance(content, dict) and _single_record(content):
        kind, content = "jsonl", [content]  # a one-line JSONL file
    rows = _dict_rows(kind, content)
    if rows:
        if _has(rows, "video", "question", "candidates", "answer"):
            if "time_reference" in rows[0]:
                return lambda: _read_lvbench_clean(path, rows)
            if "duration" in rows[0] and "question_type" in rows[0]:
                return lambda: _read_mlvu(path, rows)
            return lambda: _read_mvbench(path, rows)
        if _has(rows, "question", "options", "answer") and ("videoID" in rows[0] or "url" in rows[0]):
            return lambda: _read_videomme(path, rows)
        if _has(rows, "video_id", "question", "candidates", "correct_choice"):
            return lambda: _read_longvideobench(path, rows)
        if _has(rows, "video", "caption", "timestamp"):
            return lambda: _read_charades_json(path, rows)
        if _has(rows, "key", "qa"):
            return lambda: _read_lvbench_meta(path, rows)
        if _has(rows, "q_uid", "question") and any(k.startswith("option") for k in rows[0]):
            return lambda: _read_egoschema_questions(path, rows)
        if _has(rows, "video_name", "question", "options"):
            return lambda: _read_perception_rows(path, rows)
        if _has(rows, "video", "question", "a0", "a1"):
            return lambda: _read_nextqa(path, rows)
        if _has(rows, "video_name", "question", "question_id"):
            return lambda: _read_anetqa_q(path, rows)
        if _has(rows, "answer", "question_id") and "question" not in rows[0]:
            return lambda: _read_anetqa_a(path, rows)
        return f"records with keys {sorted(rows[0])[:12]} match no known benchmark format"
    if kind == "json" and isinstance(content, dict) and content:
        if isinstance(content.get("videos"), list) and content["videos"] and isinstance(content["videos"][0], dict) \
                and "video_uid" in content["videos"][0]:
            return lambda: _read_ego4d_splits(path, content)
        vals = list(content.values())[:20]
        if all(isinstance(v, dict) and "video_uid" in v and "starting_sec" in v for v in vals):
            return lambda: _read_egoschema_windows(path, content)
        if all(isinstance(v, dict) and "mc_question" in v for v in vals):
            return lambda: _read_perception_original(path, content)
        if all(isinstance(v, str) and _VIDOR.match(v) for v in vals):
            return lambda: _read_nextqa_map(path, content)
        return f"json object with keys like {list(content)[:5]} matches no known benchmark format"
    if kind == "csv":
        return "csv matches no known benchmark format"
    return f"unrecognised content ({kind})"


def read_benchmark_file(path: str | Path) -> BenchmarkFile | str:
    """A recognised file's items, or a string saying why the file was not recognised."""
    p = Path(path)
    try:
        kind, content = _load(p)
    except OSError as e:
        raise BenchmarkFormatError(str(p), "file", "-", f"cannot read: {e}") from e
    except Exception as e:  # a corrupt parquet file, for instance
        return f"cannot parse: {type(e).__name__}: {e}"
    r = _recognise(str(p), kind, content)
    return r if isinstance(r, str) else r()


def _walk(paths: list[str | Path]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--benchmarks {p}: no such file or directory")
    return out


def scan_benchmarks(paths: list[str | Path]) -> BenchmarkSet:
    files, unknown = [], []
    for f in _walk(paths):
        r = read_benchmark_file(f)
        if isinstance(r, str):
            unknown.append((str(f), r))
        else:
            files.append(r)
    return BenchmarkSet(files, unknown)
