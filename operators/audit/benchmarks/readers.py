"""The benchmark readers, one per format (one record at a time), under one per-record guard (`_each`): a record
that cannot be used becomes a `BenchmarkProblem` and the reader goes on."""
from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import ids
from .loading import _CHARADES_LINE, _Doc, _Unusable, _json_why
from .records import BenchmarkFile, BenchmarkFormatError, BenchText, BenchVideo, _shown, _valid_text
from .values import _OPTION_LABEL, _kind, _need, _need_id, _opt, _option, _options, _seconds, _text, _text_items

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

_PT_ID = re.compile(r"^video_[0-9]+$")
_VIDOR = re.compile(r"^[0-9]{4}/[0-9]+$")


def _check_items(part: BenchmarkFile) -> None:
    """Every text of the record's items is valid Unicode, every time finite (a backstop for all readers)."""
    for item in (*part.videos, *part.texts):
        for f in fields(item):
            v = getattr(item, f.name)
            if isinstance(v, str) and not _valid_text(v):
                raise BenchmarkFormatError(f.name, "not valid Unicode text (a lone surrogate or an undecodable byte)")
            if isinstance(v, float) and not math.isfinite(v):
                raise BenchmarkFormatError(f.name, f"not a finite number ({v})")


def _each(bf: BenchmarkFile, records: Iterator[tuple[Any, str, Any]], read: Callable[[BenchmarkFile, Any, Any], None],
          objects: bool = True) -> BenchmarkFile:
    """Run `read(part, i, record)` on every record; keep the items of a record only if all of it could be used,
    else record a problem naming the record and the field, and go on."""
    for i, where, rec in records:
        bf.records += 1
        part = BenchmarkFile(bf.path, bf.format, bf.benchmark)
        try:
            if isinstance(rec, _Unusable):
                raise BenchmarkFormatError(rec.field, rec.why)
            if objects and not isinstance(rec, dict):
                raise BenchmarkFormatError("-", f"expected an object, got {_kind(rec)}")
            for k, v in rec.items() if isinstance(rec, dict) else ():
                if isinstance(v, _Unusable):
                    raise BenchmarkFormatError(str(k), v.why)
            read(part, i, rec)
            _check_items(part)
        except BenchmarkFormatError as e:
            bf.problem(where, e.field, e.why)
        except Exception as e:  # whatever else a hostile record provokes (OverflowError, RecursionError, ...)
            bf.problem(where, "-", _json_why(e))
        else:
            bf.videos += part.videos
            bf.texts += part.texts
    return bf


def _listed(doc: _Doc, rows: list) -> Iterator[tuple[int, str, Any]]:
    return ((i, doc.where(i), r) for i, r in enumerate(rows))


def _keyed(obj: dict, label: str) -> Iterator[tuple[str, str, Any]]:
    return ((k, f"{label} {k}", v) for k, v in obj.items())


# ---------------------------------------------------------------- readers (one per format: one record at a time)

def _read_mvbench(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    stem = Path(path).stem
    hinted = stem in MVBENCH_TASKS or "mvbench" in path.lower()
    bench = "MVBench" if hinted else f"MVBench-format:{Path(path).parent.name}"
    ns = MVBENCH_TASKS.get(stem)
    if ns is None:  # unknown task: Charades ids are unmistakable, anything else stays in a namespace of its own
        vids = [r["video"] for r in rows if isinstance(r, dict) and isinstance(r.get("video"), str)]
        ns = ids.CHARADES if vids and all(ids.charades_id(v) for v in vids) else f"mvbench.{stem}"

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        raw = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        q = _need(r, "question")
        opts = _options(r, "candidates")
        vid = ids.normalise(ns, raw)
        if vid:
            part.videos.append(BenchVideo(bench, stem, ns, vid, raw, ref))
        part.texts += _text_items(bench, stem, ref, raw, q, opts, r.get("answer"))

    return _each(BenchmarkFile(path, "mvbench-json", bench), _listed(doc, rows), read)


def _read_mlvu(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    stem = Path(path).stem

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        vid = ids.generic_id(v)
        if vid:
            part.videos.append(BenchVideo("MLVU", stem, "mlvu", vid, v, ref))
        part.texts += _text_items("MLVU", stem, ref, v, _need(r, "question"), _options(r, "candidates"), r.get("answer"))

    return _each(BenchmarkFile(path, "mlvu-json", "MLVU"), _listed(doc, rows), read)


def _read_lvbench_clean(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    # ids here are renamed (00000000): they only match LVBench's own namespace; the text still matches.
    stem = Path(path).stem

    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video")
        ref = f"{part.name}#{i}"
        part.videos.append(BenchVideo("LVBench", stem, "lvbench", v, v, ref))
        part.texts += _text_items("LVBench", stem, ref, v, _need(r, "question"), _options(r, "candidates"), r.get("answer"))

    return _each(BenchmarkFile(path, "lvbench-clean-json", "LVBench"), _listed(doc, rows), read)


def _read_lvbench_meta(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        key = _need_id(r, "key")
        qa = r.get("qa")
        if not isinstance(qa, list):
            raise BenchmarkFormatError("qa", f"expected a list of questions, got {_kind(qa)}")
        task = _opt(r, "type")
        yt = ids.youtube_id(key)
        ref = f"{part.name}#{i}"
        if yt:
            part.videos.append(BenchVideo("LVBench", task, ids.YOUTUBE, yt, key, ref))
        for j, q in enumerate(qa):
            if not isinstance(q, dict):
                raise BenchmarkFormatError(f"qa[{j}]", f"expected an object, got {_kind(q)}")
            lines = _text(q.get("question"), f"qa[{j}].question").split("\n")  # question text, then "(A) ..." option lines
            opts = [_OPTION_LABEL.sub("", ln) for ln in lines[1:] if ln.strip()]
            part.texts += _text_items("LVBench", task, _opt(q, "uid") or f"{ref}.{j}", key, lines[0], opts)

    return _each(BenchmarkFile(path, "lvbench-meta-jsonl", "LVBench"), _listed(doc, rows), read)


def _read_videomme(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        raw = _opt(r, "videoID") or _opt(r, "url")
        if not raw:
            raise BenchmarkFormatError("videoID", "missing (and no url)")
        url = _opt(r, "url")
        yt = ids.youtube_id(raw) or ids.youtube_id(url) or ids.normalise(ids.YOUTUBE, raw)
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        task = _opt(r, "duration")
        if yt:
            part.videos.append(BenchVideo("Video-MME", task, ids.YOUTUBE, yt, url or raw, ref))
        part.texts += _text_items("Video-MME", task, ref, raw, _need(r, "question"), _options(r, "options"), r.get("answer"))

    return _each(BenchmarkFile(path, "videomme-parquet", "Video-MME"), _listed(doc, rows), read)


def _read_longvideobench(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_id")
        ref = _opt(r, "id") or f"{part.name}#{i}"
        task = _opt(r, "question_category")
        yt = ids.youtube_id(v)
        if yt:
            part.videos.append(BenchVideo("LongVideoBench", task, ids.YOUTUBE, yt, v, ref))
        else:  # `@user-<n>` ids (TikTok)
            part.videos.append(BenchVideo("LongVideoBench", task, "tiktok", v, v, ref))
        opts = _options(r, "candidates")
        part.texts += _text_items("LongVideoBench", task, ref, v, _need(r, "question"), opts)

    return _each(BenchmarkFile(path, "longvideobench-json", "LongVideoBench"), _listed(doc, rows), read)


def _charades_items(part: BenchmarkFile, i: int, raw: str, caption: str) -> None:
    cid = ids.charades_id(raw)
    if cid is None:
        raise BenchmarkFormatError("video", f"not a Charades id: {_shown(raw, 40)!r}")
    ref = f"{part.name}#{i}"
    # The benchmark shows the whole video: any span of it leaks (the timestamp is the queried moment).
    part.videos.append(BenchVideo("Charades-STA", "test", ids.CHARADES, cid, raw, ref))
    part.texts.append(BenchText("Charades-STA", "test", ref, raw, "query", caption))


def _read_charades_json(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        ts = r.get("timestamp")
        if not isinstance(ts, list) or len(ts) != 2:
            raise BenchmarkFormatError("timestamp", f"expected [start, end], got {_kind(ts)}"
                                       + (f" of {len(ts)}" if isinstance(ts, list) else ""))
        for j in (0, 1):  # the queried moment: not used for matching (any span of the video leaks), but a number
            _seconds(ts[j], f"timestamp[{j}]")
        _charades_items(part, i, _need_id(r, "video"), _need(r, "caption"))

    return _each(BenchmarkFile(path, "charades-sta-json", "Charades-STA"), _listed(doc, rows), read)


def _read_charades_txt(path: str, doc: _Doc) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, ln: str) -> None:
        m = _CHARADES_LINE.match(ln)
        if m is None:
            raise BenchmarkFormatError("-", "not a Charades-STA line ('<id> <start> <end>##<query>')")
        for j, fld in ((2, "start"), (3, "end")):
            _seconds(m.group(j), fld)
        _charades_items(part, i, m.group(1), _text(m.group(4).strip(), "query"))

    return _each(BenchmarkFile(path, "charades-sta-txt", "Charades-STA"), _listed(doc, doc.value), read, objects=False)


def _read_egoschema_windows(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, q_uid: str, w: dict) -> None:
        raw = _need_id(w, "video_uid")
        uid = ids.ego4d_uid(raw)
        if uid is None:
            raise BenchmarkFormatError("video_uid", f"not an Ego4D uid: {_shown(raw, 40)!r}")
        s, e = _seconds(w.get("starting_sec"), "starting_sec"), _seconds(w.get("ending_sec"), "ending_sec")
        if e < s:
            raise BenchmarkFormatError("ending_sec", f"before starting_sec ({e} < {s})")
        part.videos.append(BenchVideo("EgoSchema", "", ids.EGO4D, uid, raw, q_uid, s, e))

    return _each(BenchmarkFile(path, "egoschema-uid-to-ego4d", "EgoSchema"), _keyed(obj, "q_uid"), read)


def _read_egoschema_questions(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        q_uid = _need_id(r, "q_uid")
        opts = [o for k in sorted(r) if k.startswith("option") and r[k] for o in [_option(r[k], k)] if o is not None]
        part.texts += _text_items("EgoSchema", "", q_uid, q_uid, _need(r, "question"), opts)

    return _each(BenchmarkFile(path, "egoschema-questions", "EgoSchema"), _listed(doc, rows), read)


def _read_ego4d_splits(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, v: dict) -> None:
        raw = _need_id(v, "video_uid")
        splits = [f"{k}={v[k]}" for k in ("split_em", "split_av", "split_fho") if v.get(k) in ("val", "test")]
        uid = ids.ego4d_uid(raw)
        if uid is None:
            raise BenchmarkFormatError("video_uid", f"not an Ego4D uid: {_shown(raw, 40)!r}")
        if splits:
            part.videos.append(BenchVideo("Ego4D-val/test", ",".join(splits), ids.EGO4D, uid, raw, f"videos[{i}]"))

    videos = obj["videos"]
    return _each(BenchmarkFile(path, "ego4d-json", "Ego4D-val/test"), ((i, f"videos[{i}]", v) for i, v in enumerate(videos)), read)


def _read_perception_rows(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_name")
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        area = _opt(r, "area")
        vid = ids.generic_id(v)
        if vid:
            part.videos.append(BenchVideo("PerceptionTest", area, "perception_test", vid, v, ref))
        part.texts += _text_items("PerceptionTest", area, ref, v, _opt(r, "question"), _options(r, "options"))

    return _each(BenchmarkFile(path, "perception-test-rows", "PerceptionTest"), _listed(doc, rows), read)


def _read_perception_original(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, vkey: str, rec: dict) -> None:
        meta = {} if rec.get("metadata") is None else rec["metadata"]
        if not isinstance(meta, dict):
            raise BenchmarkFormatError("metadata", f"expected an object, got {_kind(meta)}")
        v = _opt(meta, "video_id") or vkey
        part.videos.append(BenchVideo("PerceptionTest", "", "perception_test", v, v, v))
        mcq = rec.get("mc_question")
        if not isinstance(mcq, list):
            raise BenchmarkFormatError("mc_question", "missing" if mcq is None else f"expected a list of questions, got {_kind(mcq)}")
        for j, q in enumerate(mcq):
            if not isinstance(q, dict):
                raise BenchmarkFormatError(f"mc_question[{j}]", f"expected an object, got {_kind(q)}")
            opts = _options(q, "options") if q.get("options") is not None else []
            part.texts += _text_items("PerceptionTest", _opt(q, "area"), f"{v}#{_opt(q, 'id') or j}", v,
                                      _text(q.get("question"), f"mc_question[{j}].question"), opts)

    return _each(BenchmarkFile(path, "perception-test-json", "PerceptionTest"), _keyed(obj, "video"), read)


def _read_perception_ids(path: str, doc: _Doc) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: list) -> None:
        c = _text(r[0], "id").strip() if len(r) == 1 else ""
        if not _PT_ID.match(c):
            raise BenchmarkFormatError("-", "expected one video_NNNN id")
        part.videos.append(BenchVideo("PerceptionTest", "mc", "perception_test", c, c, f"{part.name}#{i}"))

    return _each(BenchmarkFile(path, "perception-test-id-list", "PerceptionTest"), _listed(doc, doc.value), read, objects=False)


def _read_nextqa(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video").strip()
        qid = _opt(r, "qid")
        ref = f"{v}_{qid}" if qid else f"{part.name}#{i}"
        task = _opt(r, "type")
        part.videos.append(BenchVideo("NExT-QA", task, "vidor", ids.vidor_id(v) or v, v, ref))
        opts = [o for k in ("a0", "a1", "a2", "a3", "a4") if r.get(k) for o in [_option(r[k], k)] if o is not None]
        ans = r.get("answer")
        part.texts += _text_items("NExT-QA", task, ref, v, _need(r, "question"), opts,
                                  ans if isinstance(ans, str) and not ans.isdigit() else None)

    return _each(BenchmarkFile(path, "nextqa-csv", "NExT-QA"), _listed(doc, rows), read)


def _read_nextqa_map(path: str, obj: dict) -> BenchmarkFile:
    def read(part: BenchmarkFile, k: str, v: Any) -> None:
        v = _text(v, "value")
        if not _VIDOR.match(v):
            raise BenchmarkFormatError("value", f"not a VidOR path ('NNNN/NNNNNNNNNN'): {_shown(v, 40)!r}")
        part.videos.append(BenchVideo("NExT-QA", "", "vidor", ids.vidor_id(v) or v, v, k))

    return _each(BenchmarkFile(path, "nextqa-vidor-map", "NExT-QA"), _keyed(obj, "video"), read, objects=False)


def _read_anetqa_q(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        v = _need_id(r, "video_name")
        ref = _opt(r, "question_id") or f"{part.name}#{i}"
        yt = ids.youtube_id(v) or ids.youtube_id("v_" + v)
        if yt:
            part.videos.append(BenchVideo("ActivityNet-QA", "", ids.YOUTUBE, yt, v, ref))
        part.texts += _text_items("ActivityNet-QA", "", ref, v, _need(r, "question"))

    return _each(BenchmarkFile(path, "activitynet-qa-questions", "ActivityNet-QA"), _listed(doc, rows), read)


def _read_anetqa_a(path: str, doc: _Doc, rows: list) -> BenchmarkFile:
    def read(part: BenchmarkFile, i: int, r: dict) -> None:
        ref = _opt(r, "question_id")
        if not ref:
            raise BenchmarkFormatError("question_id", "missing")
        a = r.get("answer")
        if isinstance(a, str) and a.strip():
            part.texts.append(BenchText("ActivityNet-QA", "", ref, "", "answer", a))

    return _each(BenchmarkFile(path, "activitynet-qa-answers", "ActivityNet-QA"), _listed(doc, rows), read)

