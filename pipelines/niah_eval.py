"""NIAH eval: score a checkpoint on a NIAH set (pipelines/niah_build.py) as the released evaluation does, on Ray.

    index.parquet rows ──chunks──▶ Ray actor pool (one actor per GPU, num_gpus=1; one CPU actor without GPUs)
        each actor: loads the VideoLLM once, memory-maps haystack/needle tokens, and per row splices the needle
        tokens into the haystack slice at the row's positions (operators.niah.splice_tokens), builds the prompt
            <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>{question}<|im_end|>\n
            <|im_start|>assistant\n
        (the question ends with "Best option: (") and answers it (`--scoring`, below; optionally with visual-token
        dropout)
    driver ──▶ results.parquet (one row per question), summary.json, heatmap.png

Scoring (`scoring`, recorded in summary.json and in every results.parquet row):
- "greedy" (default), the released scripts' rule (`single_eval_vision_niah.py` / `multi_eval_vision_niah.py`,
  `eval_forward`): the answer is decoded greedily over the whole vocabulary (argmax, no sampling), stopping at
  EOS (`<|im_end|>` / `<|endoftext|>`) or after `max_new_tokens`. The reference takes as many argmax tokens as the
  answer has tokens (one for an option letter), decodes them and counts the question correct when that text,
  lower-cased and with every "(" and ")" removed, equals the lower-cased decoded answer (`reference_match`): the
  texts "B", "b", "B)" and "(B" match the answer "B"; " B", "B." and an EOS token do not. What follows the first
  N tokens does not count ("B. A cat" is right when "B" is its own first token). `predicted` is the text of the
  first N generated tokens (N = the answer's tokens), `generated` the whole greedy continuation without the stop
  token. The
  reference feeds the answer tokens under teacher forcing; with a one-token answer (every released spec) the two
  are the same token, with longer answers they agree as long as the earlier tokens are right.
- "options": teacher-forced log-probabilities of the option letters only (`VideoLLM.score_options`), the best one
  is `predicted`, correct when it equals the answer letter; `scores` holds the log-probabilities. It can only
  score higher than "greedy" (a model that would answer another token still gets its best letter counted).

Single hop: accuracy per (length, depth), heat map depth x length. Multi hop, as the reference: per length the
caption score (question1), the QA score (question2) and "Score" = (caption correct + QA correct) / (2 x inputs),
with the both / only-caption / only-QA / both-wrong counts; heat map caption/QA/score x length.

Checkpoints: a VideoChat-Flash (LLaVA-style) safetensors checkpoint (file, folder or shards; projector + LLM, the
vision tower is not used here: the set holds encoder tokens), a `longvid train` stage model
(`stages/<stage>/model.safetensors`: `vlm.llm.*`, `vlm.projector.*`, `encoder.*` unused) or a bare
`VideoLLM.state_dict()` (`llm.*`, `projector.*`) as .safetensors / .pt, or an exported folder (`llm/` +
`vision.safetensors`, model/checkpoint.py `export_checkpoint`); `random:SEED` gives seeded untrained
weights (demos, pipeline tests). The set's tokens come from the encoder that built it (set.json `encoder`): score
a checkpoint on a set built with that checkpoint's own vision tower. The tokenizer is `--tokenizer PATH`, `test`
(the built-in test tokenizer, for the tiny preset) or, by default, the checkpoint folder when it holds one.
A set built from ingest shards is not the reference's haystack (set.json `haystack.reference_exact`); the summary
repeats that flag.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from longvid.operators import niah, storage
from longvid.operators.errors import ConfigError
from longvid.pipelines.niah_config import SCORING, NiahEvalConfig, parse_dropout
from longvid.pipelines.niah_results import aggregate, draw_heatmap, heatmap_grid
from longvid.pipelines.outputs import versions
from longvid.pipelines.ray_session import ensure_ray


# --------------------------------------------------------------------------------------------------------------
# The set
# --------------------------------------------------------------------------------------------------------------


class NiahSet:
    """A built NIAH set: metadata, items, index rows and memory-mapped tokens."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "set.json").read_text())
            self.items = {int(it["id"]): it for it in json.loads((self.folder / "items.json").read_text())}
            self.rows = storage.read_parquet(str(self.folder / "index.parquet")).to_pylist()
            self.haystack = np.load(self.folder / "haystack" / "tokens.npy", mmap_mode="r")
            self.needles = np.load(self.folder / "needles" / "tokens.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"set: {self.folder}: unreadable NIAH set: {e}") from None
        self.kind: niah.Kind = self.meta["kind"]
        self.tokens_per_frame = int(self.meta["tokens_per_frame"])

    def placement(self, row: dict[str, Any]) -> niah.Placement:
        return niah.Placement(row["kind"], int(row["length"]), row["depth"], tuple(int(p) for p in row["positions"]))

    def visual(self, row: dict[str, Any]) -> np.ndarray:
        """The spliced visual tokens of one index row: [num_tokens, D]."""
        needles = [np.asarray(self.needles[r]) for r in row["needle_rows"]]
        return niah.splice_tokens(self.haystack, needles, self.placement(row), self.tokens_per_frame)


def build_prompts(tokenizer, items: dict[int, dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """(item id, question name) -> prompt ids (one `<image>`), option letters, option token ids, the answer letter,
    its token ids and its decoded text (what the released eval compares with)."""
    from longvid.model.tokenizer import format_chat

    out = {}
    for iid, it in items.items():
        for qname, q in it["questions"].items():
            ids, _ = format_chat([{"from": "human", "value": "<image>" + q["text"]}], tokenizer,
                                 add_generation_prompt=True)
            opts = [list(tokenizer(letter, add_special_tokens=False)["input_ids"]) for letter in q["options"]]
            answer_ids = list(tokenizer(q["answer"], add_special_tokens=False)["input_ids"])
            out[(iid, qname)] = {"ids": ids, "letters": list(q["options"]), "options": opts, "answer": q["answer"],
                                 "answer_ids": answer_ids, "answer_text": tokenizer.decode(answer_ids)}
    return out


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end greedy decoding: the tokenizer's EOS, `<|im_end|>` and `<|endoftext|>` (those it has)."""
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(int(i) for i in ids if i is not None)


def reference_match(predicted: str, answer: str) -> bool:
    """The released NIAH eval's comparison: the predicted text lower-cased with every "(" and ")" removed equals
    the answer text lower-cased. Nothing else is normalised: no strip, no first character only."""
    return predicted.lower().replace("(", "").replace(")", "") == answer.lower()


def greedy_decode(model, prompt_ids, visual, *, max_new_tokens: int, stop_ids=(), dropout=None) -> list[int]:
    """Greedy decoding with a `VideoLLM`: the argmax over the whole vocabulary at each step, from the prompt (one
    image placeholder, `visual` [n, D] spliced there) until a token of `stop_ids` (kept as the last id) or
    `max_new_tokens` tokens. Without dropout the prompt is prefilled once and each token reuses the KV cache; with
    visual-token dropout (model/dropout.py) every step runs the dropout prefill over prompt + tokens so far, the
    last prompt token scoring the visual tokens as in `VideoLLM.score_options`."""
    import torch

    from longvid.model.dropout import prefill

    if max_new_tokens < 1:
        raise ValueError(f"greedy_decode: max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = {int(t) for t in stop_ids}
    dev = model.projector.mlp[0].weight.device
    prompt = torch.as_tensor(list(prompt_ids), device=dev)
    out_ids: list[int] = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        s = model.splice(prompt[None], [visual])
        emb = s.inputs_embeds
        p_len = emb.shape[1]
        start, n_vis = s.visual_spans[0]
        if dropout is None:
            out = model.llm(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
        else:
            out = prefill(model.llm, emb, dropout=dropout, visual_start=start, visual_len=n_vis,
                          query_index=p_len - 1, logits_to_keep=1)
        while True:
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            if nxt in stop or len(out_ids) >= max_new_tokens:
                return out_ids
            if dropout is None:
                pos = torch.tensor([[p_len + len(out_ids) - 1]], device=dev)
                out = model.llm(input_ids=torch.tensor([[nxt]], device=dev), cache=out.cache, position_ids=pos,
                                use_cache=True)
            else:
                tail = model.llm.get_input_embeddings()(torch.tensor([out_ids], device=dev)).to(emb.dtype)
                out = prefill(model.llm, torch.cat([emb, tail], dim=1), dropout=dropout, visual_start=start,
                              visual_len=n_vis, query_index=p_len - 1, logits_to_keep=1)


def score_rows(model, niah_set: NiahSet, prompts: dict, rows: list[dict[str, Any]], dropout=None,
               device: str = "cpu", *, scoring: str = "greedy", tokenizer=None, max_new_tokens: int = 16,
               generate=None) -> list[dict[str, Any]]:
    """Answer every question of the index rows: one result per question (see the module docstring for `scoring`).

    "options" calls `model.score_options`. "greedy" decodes with `generate(prompt_ids, visual, max_new_tokens=,
    stop_ids=, dropout=)` (default: `greedy_decode` with `model`) and needs `tokenizer` to decode the tokens."""
    import torch

    if scoring not in SCORING:
        raise ValueError(f"score_rows: scoring must be one of {', '.join(SCORING)}, got {scoring!r}")
    if scoring == "greedy":
        if tokenizer is None:
            raise ValueError("score_rows: greedy scoring needs the tokenizer")
        stops = stop_token_ids(tokenizer)
        generate = generate or functools.partial(greedy_decode, model)
    results = []
    for row in rows:
        t0 = time.time()
        vis_np = niah_set.visual(row)
        visual = torch.from_numpy(np.asarray(vis_np, dtype=np.float32)).to(device)
        item = niah_set.items[int(row["item_id"])]
        for qname in item["questions"]:
            pr = prompts[(int(row["item_id"]), qname)]
            scores, generated = None, None
            if scoring == "options":
                scores = model.score_options(pr["ids"], visual, pr["options"], dropout=dropout)
                scores = [float(x) for x in torch.as_tensor(scores).flatten().tolist()]
                pred = pr["letters"][int(np.argmax(scores))]
                correct = pred == pr["answer"]
            else:
                out_ids = [int(t) for t in generate(pr["ids"], visual, max_new_tokens=max_new_tokens,
                                                    stop_ids=stops, dropout=dropout)]
                pred = tokenizer.decode(out_ids[: len(pr["answer_ids"])])  # as many tokens as the answer has
                shown = out_ids[:-1] if out_ids and out_ids[-1] in stops else out_ids
                generated = tokenizer.decode(shown)
                correct = reference_match(pred, pr["answer_text"])
            results.append({
                "row": int(row["row"]), "item_id": int(row["item_id"]), "kind": row["kind"],
                "length": int(row["length"]), "depth": row["depth"], "question": qname, "scoring": scoring,
                "answer": pr["answer"], "predicted": pred, "correct": bool(correct), "generated": generated,
                "options": pr["letters"], "scores": scores, "visual_tokens": int(vis_np.shape[0]),
                "seconds": 0.0,
            })
        dt = time.time() - t0
        for r in results[-len(item["questions"]):]:
            r["seconds"] = round(dt / len(item["questions"]), 4)
    return results


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


def load_tokenizer_for(spec: str, checkpoint: str):
    from longvid.model.tokenizer import build_test_tokenizer, load_tokenizer

    if spec == "test":
        return build_test_tokenizer()
    if spec:
        try:
            return load_tokenizer(spec)
        except (OSError, ValueError) as e:
            raise ConfigError(f"tokenizer: {spec}: {e}") from None
    from longvid.model.checkpoint import tokenizer_dir

    p = tokenizer_dir(checkpoint)
    if p is not None:
        return load_tokenizer(p)
    raise ConfigError(f"tokenizer: {checkpoint} holds no tokenizer; give --tokenizer PATH (or 'test' for the tiny model)")


def load_model(preset: str, img_size: int, checkpoint: str, tokenizer, device: str = "cpu"):
    """A VideoLLM of `preset` with the checkpoint's projector + LLM (any layout model/checkpoint.py reads; a
    vision tower or encoder in it is not used: the set holds the tokens); returns (model, load summary).

    `checkpoint` "random:SEED" gives seeded random weights (demos and tests only). `img_size` is the set's encoder
    resolution (the VideoLLM does not depend on it).
    """
    import torch

    from longvid.model.build import build_vlm
    from longvid.model.checkpoint import CheckpointError, CheckpointMismatch
    from longvid.model.tokenizer import image_token_id

    rand = checkpoint.startswith("random:")
    seed = int(checkpoint.split(":", 1)[1] or 0) if rand else 0
    try:
        model, rep = build_vlm(preset, image_token_id(tokenizer), checkpoint=None if rand else checkpoint, seed=seed)
    except CheckpointMismatch as e:
        raise ConfigError(f"checkpoint: {checkpoint}: does not fit preset {preset}: {e}") from None
    except CheckpointError as e:
        raise ConfigError(f"checkpoint: {e}") from None
    if rep is None:
        summary = f"random weights (seed {seed})"
    elif rep.missing:
        raise ConfigError(f"checkpoint: {checkpoint}: weights missing for preset {preset}: {rep.summary()}")
    else:
        summary = rep.summary()
    model.eval()
    dev = torch.device(device)
    if dev.type == "cuda":
        model.to(dev, dtype=torch.bfloat16)
    else:
        model.to(dev)
    return model, summary


def write_random_checkpoint(path: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """A VideoChat-Flash-layout safetensors file with seeded random projector + LLM weights (demo, tests)."""
    import torch
    from safetensors.torch import save_file

    from longvid.model.checkpoint import released_state_dict
    from longvid.model.config import get_config
    from longvid.model.llm import VideoLLM

    torch.manual_seed(seed)
    sd = released_state_dict(VideoLLM(get_config(preset)))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(p))
    return p


class NiahScorer:
    """One Ray actor: the model and the set loaded once, then `score(rows)` per task."""

    def __init__(self, set_dir: str, preset: str, img_size: int, checkpoint: str, tokenizer: str, dropout,
                 device: str, threads: int = 0, scoring: str = "greedy", max_new_tokens: int = 16):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.set = NiahSet(set_dir)
        self.tok = load_tokenizer_for(tokenizer, checkpoint)
        self.model, self.load_summary = load_model(preset, img_size, checkpoint, self.tok, device)
        self.prompts = build_prompts(self.tok, self.set.items)
        self.dropout = dropout
        self.scoring, self.max_new_tokens = scoring, max_new_tokens

    def info(self) -> str:
        return self.load_summary

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return score_rows(self.model, self.set, self.prompts, rows, self.dropout, self.device, scoring=self.scoring,
                          tokenizer=self.tok, max_new_tokens=self.max_new_tokens)


# --------------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------------

SCORING_RULES = {
    "greedy": {"rule": "greedy decoding over the whole vocabulary (stop at EOS or max_new_tokens); correct when the "
                       "text of the first N tokens (N = the answer's tokens), lower-cased with '(' and ')' removed, "
                       "equals the lower-cased answer (the released NIAH eval scripts)"},
    "options": {"rule": "teacher-forced log-probability of each option letter; the argmax letter is the prediction, "
                        "correct when it equals the answer letter (not the released rule: it can only score higher)"},
}

RESULT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("item_id", pa.int64()), ("kind", pa.string()), ("length", pa.int64()),
    ("depth", pa.float64()), ("question", pa.string()), ("scoring", pa.string()), ("answer", pa.string()),
    ("predicted", pa.string()), ("correct", pa.bool_()),
    ("generated", pa.string()),  # greedy: the whole decoded continuation (null with options scoring)
    ("options", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),  # options: log-probability of each option letter (null with greedy)
    ("visual_tokens", pa.int64()), ("seconds", pa.float64()),
])


def _score_on_ray(cfg: NiahEvalConfig, preset: str, img_size: int, dropout, rows: list[dict], log) -> tuple[list, dict]:
    import ray
    from ray.util import ActorPool

    started = ensure_ray(cfg.ray_address, cfg.num_cpus)
    actors = []
    try:
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        if gpus and cfg.device in ("auto", "cuda"):
            n = cfg.num_actors or gpus
            opts, device, threads = {"num_gpus": 1, "num_cpus": 1}, "cuda", 0
        else:
            n = cfg.num_actors or 1
            opts, device, threads = {"num_cpus": 1}, "cpu", cfg.threads
        n = max(1, min(n, len(rows)))
        actor_cls = ray.remote(**opts)(NiahScorer)
        actors = [actor_cls.remote(str(Path(cfg.set).resolve()), preset, img_size, cfg.checkpoint, cfg.tokenizer,
                                   dropout, device, threads, cfg.scoring, cfg.max_new_tokens) for _ in range(n)]
        load_summary = ray.get(actors[0].info.remote())
        chunks = [rows[i : i + cfg.rows_per_task] for i in range(0, len(rows), cfg.rows_per_task)]
        pool = ActorPool(actors)
        results: list[dict] = []
        t0 = time.time()
        for k, part in enumerate(pool.map_unordered(lambda a, c: a.score.remote(c), chunks)):
            results += part
            if not cfg.quiet:
                el = time.time() - t0
                log(f"[niah eval] {k + 1}/{len(chunks)} tasks, {len(results)} questions, "
                    f"{sum(r['correct'] for r in results)} correct, {el:.1f} s")
        return results, {"actors": n, "device": device, "gpus": gpus, "cpus": cpus, "load": load_summary}
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


def _score_here(cfg: NiahEvalConfig, preset: str, img_size: int, dropout, rows: list[dict]) -> tuple[list, dict]:
    import torch

    device = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    before = torch.get_num_threads()
    try:
        scorer = NiahScorer(str(Path(cfg.set).resolve()), preset, img_size, cfg.checkpoint, cfg.tokenizer, dropout,
                            device, cfg.threads, cfg.scoring, cfg.max_new_tokens)
        return scorer.score(rows), {"actors": 0, "device": device, "load": scorer.info()}
    finally:
        torch.set_num_threads(before)


def run_niah_eval(cfg: NiahEvalConfig, log=print) -> dict[str, Any]:
    """Score `cfg.checkpoint` on the set; write results.parquet, summary.json, heatmap.png. Returns the summary."""
    cfg.validate()
    t0 = time.time()
    nset = NiahSet(cfg.set)
    meta = nset.meta
    enc = meta["encoder"]
    preset = cfg.model or enc["preset"]
    from longvid.model.config import get_config

    try:
        mcfg = get_config(preset, img_size=enc.get("img_size"))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if mcfg.encoder_dim != int(meta["dim"]):
        raise ConfigError(f"model: preset {preset} takes {mcfg.encoder_dim}-wide encoder tokens but the set "
                          f"{cfg.set} holds {meta['dim']}-wide tokens (encoder {enc['preset']})")
    dropout = parse_dropout(cfg.visual_dropout, int(mcfg.llm["num_hidden_layers"]))
    load_tokenizer_for(cfg.tokenizer, cfg.checkpoint)  # fail here, not inside an actor
    rows = nset.rows[: cfg.limit] if cfg.limit else nset.rows
    if not rows:
        raise ConfigError(f"set: {cfg.set}: index.parquet has no rows")
    if cfg.use_ray:
        results, run_info = _score_on_ray(cfg, preset, int(enc.get("img_size") or 0), dropout, rows, log)
    else:
        results, run_info = _score_here(cfg, preset, int(enc.get("img_size") or 0), dropout, rows)
    results.sort(key=lambda r: (r["row"], r["question"]))
    out = Path(cfg.out or Path(cfg.set) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    storage.write_parquet(str(out / "results.parquet"), pa.Table.from_pylist(results, schema=RESULT_SCHEMA))
    agg = aggregate(results, nset.kind)
    grid, rlab, clab = heatmap_grid(agg, nset.kind)
    name = Path(cfg.checkpoint).name if not cfg.checkpoint.startswith("random:") else cfg.checkpoint
    title = f"{'Single' if nset.kind == 'single' else 'Multi'}-hop NIAH accuracy: {name} ({preset}, {cfg.scoring})"
    heat = draw_heatmap(grid, rlab, clab, out / "heatmap.png", title,
                        y_title="Depth" if nset.kind == "single" else "")
    summary = {
        "job": "niah-eval",
        "kind": nset.kind,
        "set": str(Path(cfg.set).resolve()),
        "checkpoint": cfg.checkpoint,
        "model": preset,
        "visual_dropout": dataclasses.asdict(dropout) if dropout else None,
        "scoring": {"mode": cfg.scoring, **SCORING_RULES[cfg.scoring],
                    **({"max_new_tokens": cfg.max_new_tokens} if cfg.scoring == "greedy" else {})},
        "haystack_reference_exact": bool(meta.get("haystack", {}).get("reference_exact", False)),
        "inputs": len(rows),
        "questions": len(results),
        "correct": sum(bool(r["correct"]) for r in results),
        **agg,
        "heatmap": str(heat.resolve()),
        "results": str((out / "results.parquet").resolve()),
        "run": run_info,
        "elapsed_s": round(time.time() - t0, 3),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
    }
    storage.write_json(str(out / "summary.json"), summary, indent=2, default=str)
    if not cfg.quiet:
        if nset.kind == "single":
            log(f"[niah eval] single hop: accuracy {summary['overall']:.3f} over {len(results)} questions "
                f"({cfg.scoring} scoring)")
        else:
            log(f"[niah eval] multi hop: score {summary['overall']:.3f} (caption {summary['caption']:.3f}, "
                f"QA {summary['qa']:.3f}) over {len(rows)} inputs ({cfg.scoring} scoring)")
        log(f"[niah eval] heat map: {heat.resolve()}; results: {out / 'results.parquet'}")
    return summary


def run_niah_demo(out: str | Path, haystack: str, checkpoint: str = "random:0", tokenizer: str = "test",
                  frames: tuple[int, ...] = (16, 32), depths: tuple[float, ...] = (0.0, 0.5, 1.0), items: int = 3,
                  multi_hop: bool = False, use_ray: bool = True, threads: int = 0, scoring: str = "greedy",
                  log=print) -> dict[str, Any]:
    """A tiny NIAH round for `longvid demo`: generated needles (pipelines.niah_build.make_demo_needles), a set
    built on `haystack` (e.g. a demo ingest folder) with the tiny encoder, scored with `checkpoint` (a tiny
    `longvid train` stage model, or seeded random weights). Returns {"build", "eval", "heatmap"}."""
    from longvid.pipelines.niah_build import NiahBuildConfig, make_demo_needles, run_niah_build

    root = Path(out)
    spec, images = make_demo_needles(root / "needles", items=items, multi_hop=multi_hop)
    build = run_niah_build(NiahBuildConfig(haystack=str(haystack), needles=str(spec), images=str(images),
                                           out=str(root / "set"), frames=list(frames), depths=list(depths),
                                           multi_hop=multi_hop, model="tiny", threads=threads, quiet=True), log=log)
    ev = run_niah_eval(NiahEvalConfig(set=str(root / "set"), checkpoint=checkpoint, tokenizer=tokenizer,
                                      out=str(root / "eval"), use_ray=use_ray, threads=threads, scoring=scoring,
                                      quiet=True), log=log)
    log(f"[niah] {build['kind']}-hop set of {build['inputs']} inputs ({build['items']} items x lengths {build['lengths']}"
        + (f" x depths {build['depths']}" if build["depths"] else "") + f"): accuracy {ev['overall']:.2f} "
        f"with {scoring} scoring (meaningless for an untrained model); heat map: {ev['heatmap']}")
    return {"build": build, "eval": ev, "heatmap": ev["heatmap"]}
