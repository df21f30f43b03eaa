"""Train: the short-to-long curriculum on Ray Train, streaming token shards (read top to bottom).

    recipe (TrainConfig: model, tokenizer, out, stages in order)
    driver  run_train(cfg): plan every stage's data (globs -> per-shard sample ranges, durations; the shards'
            ingest frame bounds against the stage's), accumulation and step counts, check `out`,
            then one TorchTrainer run (DDP over gloo on CPU / NCCL on GPU, or FSDP) with FailureConfig
    worker  train_worker(): for each stage from the last checkpoint on:
              build the model (preset or local LLM) and load the previous stage's final weights
              freeze what the stage does not train; AdamW with a learning rate per part; warmup + cosine as
                     HF Trainer counts them, in optimizer steps
              StageLoader streams this worker's own shards (pipelines/loader.py) in the stage's template
                     (plain / qwen_2) and labels, batches grouped as the stage says (group_by)
              steps: `accum` micro-steps (global_batch_size / (workers x batch_size)), each a forward (projected
                     tokens spliced at <image>; the encoder runs first on frame stages) and a backward of the loss
                     scaled per loss_average, gradients synchronised on the last; clip, step; metrics.jsonl (rank 0)
              every `checkpoint_every` steps: trainable weights, optimizer, scheduler, step, and every rank's
                     loader position, reported to Ray Train (restored after a worker failure or with --resume)
              end of stage: the full model to out/stages/<stage>/model.safetensors and a loss plot (PNG)

Output layout (`out`, a local or shared path every worker can reach):
    run.json                           the recipe fingerprint (a --resume must match it)
    stages/<stage>/metrics.jsonl       one line per step: loss, lr, tokens/s, samples/s, visual tokens/sample, ...
    stages/<stage>/loss.png            loss per step
    stages/<stage>/model.safetensors   weights at the end of the stage (the next stage starts from them)
    stages/<stage>/done.json           stage summary
    ray/<name>/ckpt-<stage>-<step>/    Ray Train checkpoints (trainable.safetensors, optim.pt, state.json, loader-rank*.json)
    summary.json                       per stage: steps, first/last loss, samples, tokens, skipped samples

With token shards the encoder is frozen by construction (its output is what the shards hold): a stage that
trains the encoder must read frame shards (`input: frames`), and then runs the encoder in the loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from longvid.model.constants import ENCODER_PREFIX, IGNORE_INDEX, LLM_PREFIX, PROJECTOR_PREFIX, VLM_PREFIX
from longvid.operators.errors import ConfigError
from longvid.pipelines.progress import Progress
from longvid.pipelines.ray_session import claim_out, ensure_ray, release_out
from longvid.pipelines.train_config import PARTS, StageConfig, TrainConfig, plan_stages
from longvid.pipelines.loader import LoaderConfig, StageLoader, read_exclude
from longvid.pipelines.train_sources import DataError

log = logging.getLogger("longvid.train")

CKPT_PREFIX = "ckpt-"


# ======================================================================================================== model


def build_tokenizer(cfg: TrainConfig):
    from longvid.model.tokenizer import build_test_tokenizer, load_tokenizer

    if cfg.tokenizer == "test":
        return build_test_tokenizer()
    return load_tokenizer(cfg.resolve(cfg.tokenizer))


def needs_encoder(cfg: TrainConfig) -> bool:
    return any(s.input == "frames" for s in cfg.stages)


def _init_module(cfg: TrainConfig, tokenizer) -> Any:
    """The stage-0 model (model/build.py): preset (random, seeded) or local LLM, optional released checkpoint and
    encoder."""
    from longvid.model.build import build_encoder, build_vlm
    from longvid.model.checkpoint import load_vlm
    from longvid.model.config import get_config
    from longvid.model.tokenizer import image_token_id

    mcfg = get_config(cfg.model)
    tid = image_token_id(tokenizer)
    if not cfg.llm_path and tid >= mcfg.llm["vocab_size"]:
        raise ConfigError(f"tokenizer: image token id {tid} is outside the {cfg.model} vocabulary")
    vlm, _ = build_vlm(cfg.model, tid, llm_path=cfg.resolve(cfg.llm_path) if cfg.llm_path else None, seed=cfg.seed)
    encoder = None
    if needs_encoder(cfg):
        side = max([s.resolution for s in cfg.stages if s.input == "frames"] + [0]) or mcfg.umt.img_size
        weights = cfg.resolve(cfg.encoder_checkpoint) if cfg.encoder_checkpoint else None
        encoder, _ = build_encoder(cfg.model, img_size=side, weights=weights)
    if cfg.init_checkpoint:
        rep = load_vlm(vlm, cfg.resolve(cfg.init_checkpoint), encoder=encoder)
        log.info("init checkpoint: %s", rep.summary())
    return TrainModel(vlm, encoder)


def export_final(cfg: TrainConfig, model_path: str) -> str:
    """The run's final weights as a checkpoint other trainers load (model/checkpoint.py export_checkpoint):
    `out/export/llm/` in the Hugging Face layout and `out/export/vision.safetensors` under the released names.
    An export an earlier run of this recipe wrote is kept as it is (an export never overwrites)."""
    from longvid.model.checkpoint import export_checkpoint, load_vlm

    dest = os.path.join(cfg.out, "export")
    if os.path.isdir(dest) and os.listdir(dest):
        return dest
    tok = build_tokenizer(cfg)
    model = _init_module(cfg, tok)
    load_vlm(model.vlm, model_path, encoder=model.encoder, strict=True)
    return str(export_checkpoint(model.vlm, dest, encoder=model.encoder,
                                 tokenizer=None if cfg.tokenizer == "test" else tok))


@functools.lru_cache(maxsize=None)
def _module_classes():
    import torch.nn as nn

    class _TrainModel(nn.Module):
        """`vlm` (VideoLLM: projector + Qwen2) and, on recipes with frame stages, `encoder` (HiCoEncoder)."""

        def __init__(self, vlm, encoder=None):
            super().__init__()
            self.vlm = vlm
            self.encoder = encoder

        def visual_tokens(self, visual, kind: str, side: int):
            """Token stages: the stored tokens. Frame stages: frames -> UMT -> merged tokens [clips * 64, D]."""
            if kind == "tokens":
                return visual
            from longvid.model.umt import preprocess

            out = []
            for v in visual:
                if v.ndim == 2:  # a text-only sample: no frames, no tokens [0, D]
                    out.append(v.float())
                    continue
                x = preprocess(v, side).to(next(self.encoder.parameters()).device)  # [3, T, S, S]
                tok = self.encoder(x[None])  # [1, C, 64, D]
                out.append(tok.reshape(-1, tok.shape[-1]))
            return out

        def forward(self, input_ids, attention_mask, labels, visual, kind: str = "tokens", side: int = 224,
                    splits=None):
            vis = self.visual_tokens(visual, kind, side)
            if splits:  # a multi-image sample: one part per <image>, in order (VideoLLM.splice)
                vis = [v if sp is None or len(sp) < 2 else list(v.split(list(sp))) for v, sp in zip(vis, splits)]
            loss = self.vlm(input_ids, vis, attention_mask=attention_mask, labels=labels).loss
            if all(v.shape[0] == 0 for v in visual if v.ndim == 2) and all(v.ndim == 2 for v in visual):
                # text-only micro-batch: the visual parts take part with a zero gradient, as the reference's
                # cur_image_features[0:0], so DDP finds every trained parameter used
                parts = [self.vlm.projector] + ([self.encoder] if self.encoder is not None else [])
                loss = loss + 0.0 * sum(p.sum() for m in parts for p in m.parameters() if p.requires_grad)
            return loss

    return _TrainModel


def TrainModel(vlm, encoder=None):  # noqa: N802 - a class built lazily (torch imported inside workers)
    return _module_classes()(vlm, encoder)


def part_of(name: str) -> str:
    if name.startswith(VLM_PREFIX + PROJECTOR_PREFIX):
        return "projector"
    if name.startswith(VLM_PREFIX + LLM_PREFIX):
        return "llm"
    if name.startswith(ENCODER_PREFIX):
        return "encoder"
    raise ValueError(f"parameter {name} belongs to no part")


def set_trainable(model, parts: list[str]) -> dict[str, int]:
    counts = {p: 0 for p in PARTS}
    for n, p in model.named_parameters():
        part = part_of(n)
        p.requires_grad_(part in parts)
        if part in parts:
            counts[part] += p.numel()
    return counts


# ======================================================================================================== sessions


class FaultInjected(RuntimeError):
    """Raised in place of a worker crash by `fault_injection` when training runs in-process."""


class _Session:
    """What the training loop needs from its runner: rank/world/device, wrapping, checkpoints, reports."""

    rank = 0
    world = 1
    device = None
    in_process = False

    def checkpoint_dir(self) -> str | None:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], ckpt_dir: str, name: str) -> None:
        raise NotImplementedError


class _RaySession(_Session):
    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._ckpt = ray.train.get_checkpoint()

    def checkpoint_dir(self) -> str | None:
        return self._ckpt.path if self._ckpt is not None else None

    def report(self, metrics: dict[str, Any], ckpt_dir: str, name: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir), checkpoint_dir_name=name)


class _LocalSession(_Session):
    """num_workers = 0: the loop runs in this process; checkpoints go to the same folder layout Ray uses."""

    def __init__(self, storage_dir: str, keep: int, resume_dir: str | None) -> None:
        import torch

        self.device = torch.device("cpu")
        self.in_process = True
        self.dir = storage_dir
        self.keep = keep
        self._ckpt = resume_dir

    def checkpoint_dir(self) -> str | None:
        return self._ckpt

    def report(self, metrics: dict[str, Any], ckpt_dir: str, name: str) -> None:
        dest = os.path.join(self.dir, name)
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt_dir, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        self._ckpt = dest
        for old in list_checkpoints(self.dir)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run folder, oldest first (names sort by stage, then step)."""
    if not os.path.isdir(run_dir):
        return []
    out = []
    for n in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, n)
        if n.startswith(CKPT_PREFIX) and not n.endswith(".tmp") and os.path.isfile(os.path.join(p, "state.json")):
            out.append(p)
    return out


# ======================================================================================================== worker


def _wrap(model, cfg: TrainConfig, sess: _Session):
    import torch
    import torch.distributed as dist

    model.to(sess.device)
    if sess.world <= 1 or not dist.is_initialized():
        return model
    if cfg.strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

        from longvid.model.umt import Block

        dev = sess.device if sess.device.type == "cuda" else torch.device("cpu")
        return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({Qwen2DecoderLayer, Block}), use_orig_params=True,
                    device_id=dev)
    from torch.nn.parallel import DistributedDataParallel as DDP

    kw = {"device_ids": [sess.device]} if sess.device.type == "cuda" else {}
    return DDP(model, **kw)


def _clean_name(n: str) -> str:
    """A parameter name without DDP / FSDP wrapper prefixes."""
    n = n.replace("_fsdp_wrapped_module.", "")
    return n[len("module."):] if n.startswith("module.") else n


def _sd_options():
    """Full (unsharded) state dicts; offloaded to CPU (rank 0 only) when training on GPUs. On CPU no offload:
    FSDP's offload path crashes there (torch 2.13, gloo) and there is nothing to move anyway."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=torch.cuda.is_available())


def _state_dicts(wrapped, optim):
    """Full model and optimizer state dicts keyed by parameter names (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(wrapped, optim, options=_sd_options())


def _load_optim(wrapped, optim, optim_sd) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optim, optim_sd, options=_sd_options())


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """HF TrainingArguments.get_warmup_steps: ceil(warmup_ratio x total optimizer steps)."""
    return math.ceil(total * warmup_ratio)


def _lr_lambda(total: int, warmup_ratio: float, schedule: str):
    """The learning-rate factor after `step` optimizer steps, as HF's get_cosine_schedule_with_warmup (cosine) and
    get_constant_schedule_with_warmup (constant) give it: linear from 0 over the warmup steps (the first step runs
    at 0), then a half cosine from 1 down to 0 at `total` (never below 0)."""
    warm = warmup_steps(total, warmup_ratio)

    def f(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        if schedule == "constant":
            return 1.0
        prog = (step - warm) / max(1, total - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * prog)))

    return f


def _stage_dir(cfg: TrainConfig, st: StageConfig) -> str:
    return os.path.join(cfg.out, "stages", st.name)


def _read_state(ckpt: str | None) -> dict[str, Any] | None:
    if not ckpt:
        return None
    with open(os.path.join(ckpt, "state.json")) as f:
        return json.load(f)


def train_worker(payload: dict[str, Any], sess: _Session | None = None) -> dict[str, Any]:
    """The per-worker loop over all stages (Ray Train calls it with the payload as train_loop_config)."""
    import torch

    cfg = TrainConfig.from_dict(payload["cfg"])
    plans = payload["plans"]
    sess = sess or _RaySession()
    if sess.device.type == "cpu" and cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    logging.basicConfig(level=logging.INFO if not cfg.quiet else logging.WARNING)
    tokenizer = build_tokenizer(cfg)
    ckpt = sess.checkpoint_dir() or payload.get("resume_dir")
    state = _read_state(ckpt)
    first, restore = 0, None
    if state is not None:
        first = state["stage_index"] + (1 if state["done"] else 0)
        restore = None if state["done"] else ckpt
        if sess.rank == 0:
            log.info("resuming from %s: stage %s, step %d%s", ckpt, state["stage"], state["step"],
                     " (done)" if state["done"] else "")
    results = {}
    for si in range(first, len(cfg.stages)):
        results[cfg.stages[si].name] = _run_stage(cfg, si, plans[si], sess, tokenizer,
                                                  restore if si == first else None)
    return results


def _run_stage(cfg: TrainConfig, si: int, plan: dict[str, Any], sess: _Session, tokenizer,
               restore: str | None) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, load_model, save_file, save_model

    st = cfg.stages[si]
    rank, world = sess.rank, sess.world
    total = int(plan["steps"])
    accum = int(plan.get("accum", 1))
    every = st.checkpoint_every or cfg.checkpoint_every
    sdir = _stage_dir(cfg, st)
    os.makedirs(sdir, exist_ok=True)

    # ---- model: stage 0 from the init, later stages from the previous stage's final weights
    model = _init_module(cfg, tokenizer)
    if si > 0:
        prev = os.path.join(_stage_dir(cfg, cfg.stages[si - 1]), "model.safetensors")
        missing, unexpected = load_model(model, prev, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{prev}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    counts = set_trainable(model, st.train)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    start_step = 0
    rstate = None
    if restore:
        rstate = _read_state(restore)
        sd = load_file(os.path.join(restore, "trainable.safetensors"))
        if sorted(sd) != sorted(trainable):
            raise RuntimeError(f"{restore}: trainable weights do not match stage {st.name}'s trainable parts")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        start_step = int(rstate["step"])
    wrapped = _wrap(model, cfg, sess)
    groups: dict[str, list] = {}
    for n, p in wrapped.named_parameters():
        if p.requires_grad:
            groups.setdefault(part_of(_clean_name(n)), []).append(p)
    optim = torch.optim.AdamW([{"params": ps, "lr": st.part_lr(part), "name": part} for part, ps in groups.items()],
                              weight_decay=st.weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(total, st.warmup_ratio, st.schedule))
    loader_state = None
    if restore:
        osd = torch.load(os.path.join(restore, "optim.pt"), map_location="cpu", weights_only=True)
        _load_optim(wrapped, optim, osd)
        sched.load_state_dict(torch.load(os.path.join(restore, "sched.pt"), weights_only=True))
        lpath = os.path.join(restore, f"loader-rank{rank}.json")
        if rstate.get("world") == world and os.path.isfile(lpath):
            with open(lpath) as f:
                loader_state = json.load(f)
        elif rank == 0:
            log.warning("stage %s: checkpoint was written by %s workers, now %d: the data stream restarts",
                        st.name, rstate.get("world"), world)

    # ---- data
    from longvid.model.config import get_config

    mcfg = get_config(cfg.model)
    side = st.resolution or (model.encoder.cfg.img_size if model.encoder is not None else mcfg.umt.img_size)
    exclude = read_exclude([cfg.resolve(p) for p in list(cfg.exclude) + list(st.exclude)])
    lcfg = LoaderConfig(sources=plan["sources"], batch_size=st.batch_size, buffer=st.shuffle_buffer, mix=st.mix,
                        seed=cfg.seed + (1000003 * start_step if restore and loader_state is None else 0),
                        stage_index=si, kind=st.input, dim=mcfg.encoder_dim, min_frames=st.min_frames,
                        max_frames=st.max_frames, max_len=st.max_len, label_mode=st.chat_mode(),
                        group_by=st.group_by, accum=accum, prefetch=cfg.prefetch)
    loader = StageLoader(lcfg, rank, world, tokenizer, exclude, state=loader_state)
    if loader.shared_sources and rank == 0:
        log.warning("stage %s: fewer samples than workers in %s: workers share samples", st.name,
                    loader.shared_sources)

    # ---- metrics (rank 0)
    mpath = os.path.join(sdir, "metrics.jsonl")
    if rank == 0:
        _truncate_metrics(mpath, start_step)
    if cfg.record_keys:
        _truncate_metrics(os.path.join(sdir, f"keys-rank{rank}.jsonl"), start_step)
    fault = cfg.fault_injection.split(":") if cfg.fault_injection else None
    dev = sess.device
    it = iter(loader)
    wrapped.train()
    t_stage = time.time()
    t_last = time.time()
    last_loss = float("nan")
    if rank == 0:
        log.info("stage %s: %d steps (from %d), trains %s (%s params), %d samples in %d sources, %d workers",
                 st.name, total, start_step, st.train, {k: v for k, v in counts.items() if v}, plan["samples"],
                 len(plan["sources"]), world)
    for step in range(start_step + 1, total + 1):
        loss, stats, batch, keys = _accumulate(wrapped, it, accum, st, side, world, dev)
        params = [p for g in optim.param_groups for p in g["params"]]
        if st.grad_clip > 0:
            if hasattr(wrapped, "clip_grad_norm_"):
                gnorm = float(wrapped.clip_grad_norm_(st.grad_clip))
            else:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, st.grad_clip))
        else:
            gnorm = float("nan")
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        # ---- metrics: summed over workers
        if world > 1 and dist.is_initialized():
            stats = stats.to(dev)
            dist.all_reduce(stats)
            stats = stats.cpu()
        now = time.time()
        dt = max(now - t_last, 1e-9)
        t_last = now
        last_loss = float(stats[0]) / world
        if cfg.record_keys:
            with open(os.path.join(sdir, f"keys-rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "keys": keys}) + "\n")
        if rank == 0:
            counters = batch.state.get("counters_now", {})
            rec = {"stage": st.name, "step": step, "steps": total, "loss": round(last_loss, 6),
                   "lr": {g["name"]: g["lr"] for g in optim.param_groups}, "grad_norm": round(gnorm, 6),
                   "samples": int(stats[1]), "tokens": int(stats[2]),
                   "samples_per_s": round(float(stats[1]) / dt, 3), "tokens_per_s": round(float(stats[2]) / dt, 1),
                   "visual_tokens_per_sample": round(float(stats[3]) / max(1.0, float(stats[1])), 1),
                   "step_s": round(dt, 4), "rank0_skipped": {k: v for k, v in counters.items() if v},
                   "time": round(now, 3)}
            with open(mpath, "a") as f:
                f.write(json.dumps(rec) + "\n")
            # the driver's progress (StepProgress) reports steps from metrics.jsonl
            log.debug("[%s] step %d/%d loss %.4f | %.1f samples/s %.0f tokens/s", st.name, step, total,
                      last_loss, rec["samples_per_s"], rec["tokens_per_s"])
        if fault and fault[0] == st.name and int(fault[1]) == step and int(fault[2]) == rank:
            marker = os.path.join(cfg.out, f".fault-{st.name}-{step}-{rank}")
            if not os.path.exists(marker):
                Path(marker).write_text("killed once by fault_injection\n")
                log.warning("fault injection: worker %d exits at stage %s step %d", rank, st.name, step)
                if sess.in_process:
                    raise FaultInjected(f"fault injection at stage {st.name} step {step}")
                os._exit(1)
        if step == total:
            break
        if step % every == 0:
            _checkpoint(cfg, si, st, step, total, sess, wrapped, optim, sched, trainable, batch.state, done=False)
    if hasattr(it, "close"):
        it.close()
    loader.close()

    # ---- end of stage: full weights, plot, summary; then a "done" checkpoint
    msd = _state_dicts(wrapped, optim)[0] if cfg.strategy == "fsdp" and world > 1 else None
    if rank == 0:
        final = os.path.join(sdir, "model.safetensors")
        tmp = final + ".tmp"
        if cfg.strategy == "fsdp" and world > 1:
            save_file({k: v.detach().clone().contiguous() for k, v in _dedupe(msd).items()}, tmp)
        else:
            save_model(model, tmp)
        os.replace(tmp, final)
        summary = stage_summary(mpath)
        summary.update({"stage": st.name, "train": st.train, "input": st.input,
                        "encoder": "trained" if "encoder" in st.train else "frozen",
                        "model": final, "elapsed_s": round(time.time() - t_stage, 2), "workers": world,
                        "accumulation": accum, "global_batch": world * st.batch_size * accum,
                        "template": st.template, "labels": st.chat_mode(), "group_by": st.group_by})
        try:
            plot_loss(mpath, os.path.join(sdir, "loss.png"), title=f"{cfg.name} / {st.name}")
            summary["plot"] = os.path.join(sdir, "loss.png")
        except Exception as e:  # a plot never fails a stage
            log.warning("stage %s: loss plot failed: %s", st.name, e)
        Path(os.path.join(sdir, "done.json")).write_text(json.dumps(summary, indent=2))
    _checkpoint(cfg, si, st, total, total, sess, wrapped, optim, sched, trainable, None, done=True)
    return {"stage": st.name, "loss": last_loss}


def _accumulate(wrapped, it, accum: int, st: StageConfig, side: int, world: int, dev):
    """One optimizer step's forward and backward passes over `accum` micro-batches -> (this worker's share of the
    step loss, per-worker stats [loss share, samples, tokens, visual tokens] as float64, the last micro-batch (its
    loader state is the step's), every sample key).

    Gradients are synchronised once, on the last micro-step (DDP / FSDP `no_sync` before it). The loss is scaled so
    that the gradient the workers average is the step's (`loss_average`):
      micro_batch  loss_k / accum: the mean over micro-batches and workers of each micro-batch's mean over its label
                   tokens. This is what the reference gets: its model's forward takes no num_items_in_batch, so HF
                   Trainer divides each micro-batch's mean loss by the accumulation and DeepSpeed / DDP average
                   the gradients over the workers.
      tokens       loss_k x n_k x world / N: one mean over the N label tokens of the global batch (n_k: those of
                   micro-batch k, N summed over micro-batches and workers first, one all_reduce per step); the
                   micro-batches are read before the first forward pass.
    The label tokens counted are those the loss predicts: labels[:, 1:] != IGNORE_INDEX."""
    import torch
    import torch.distributed as dist

    def counted(b) -> int:
        return int((b.labels[:, 1:] != IGNORE_INDEX).sum())

    micro = [next(it) for _ in range(accum)] if st.loss_average == "tokens" else None
    denom = 1.0
    if micro is not None:
        n = torch.tensor([float(sum(counted(b) for b in micro))], dtype=torch.float64)
        if world > 1 and dist.is_initialized():
            n = n.to(dev)
            dist.all_reduce(n)
        denom = max(1.0, float(n.cpu()[0]))
    share = torch.zeros((), dtype=torch.float64, device=dev)  # on the device: no host sync per micro-step
    stats = torch.zeros(4, dtype=torch.float64)
    keys: list[str] = []
    batch = None
    for k in range(accum):
        batch = micro[k] if micro is not None else next(it)
        sync = k == accum - 1 or not hasattr(wrapped, "no_sync")
        with contextlib.nullcontext() if sync else wrapped.no_sync():
            visual = [v.to(dev) for v in batch.visual]
            loss = wrapped(batch.input_ids.to(dev), batch.attention_mask.to(dev), batch.labels.to(dev), visual,
                           st.input, side, batch.splits)
            scale = counted(batch) * world / denom if micro is not None else 1.0 / accum
            (loss * scale).backward()
        share += loss.detach().double() * scale
        stats += torch.tensor([0.0, len(batch), batch.n_tokens, batch.n_visual], dtype=torch.float64)
        keys += batch.keys
    stats[0] = float(share)
    return float(stats[0]), stats, batch, keys


def _dedupe(sd: dict) -> dict:
    seen, out = set(), {}
    for k, v in sd.items():
        ptr = (v.data_ptr(), tuple(v.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        out[k] = v
    return out


def _checkpoint(cfg: TrainConfig, si: int, st: StageConfig, step: int, total: int, sess: _Session, wrapped, optim,
                sched, trainable: list[str], loader_state: dict | None, done: bool) -> None:
    """Every rank writes its loader position; rank 0 adds the trainable weights, optimizer, scheduler, step."""
    import torch
    from safetensors.torch import save_file

    name = f"{CKPT_PREFIX}{si:02d}-{step:08d}" + ("-done" if done else "")
    state = {"stage_index": si, "stage": st.name, "step": step, "steps": total, "done": done, "world": sess.world,
             "seed": cfg.seed}
    weights = osd = None
    if not done:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        osd = get_optimizer_state_dict(wrapped, optim, options=_sd_options())
        keep = set(trainable)
        if cfg.strategy == "fsdp" and sess.world > 1:
            weights = {k: v.detach().clone() for k, v in _state_dicts(wrapped, optim)[0].items() if k in keep}
        else:
            weights = {_clean_name(n): p.detach().cpu() for n, p in wrapped.named_parameters()
                       if _clean_name(n) in keep}
    with tempfile.TemporaryDirectory(prefix="longvid-ckpt-") as d:
        if loader_state is not None:
            with open(os.path.join(d, f"loader-rank{sess.rank}.json"), "w") as f:
                json.dump({k: v for k, v in loader_state.items() if k != "counters_now"}, f)
        if sess.rank == 0:
            if not done:
                save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(d, "trainable.safetensors"))
                torch.save(osd, os.path.join(d, "optim.pt"))
                torch.save(sched.state_dict(), os.path.join(d, "sched.pt"))
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(state, f)
        sess.report({"stage": st.name, "step": step, "done": done}, d, name)


def _truncate_metrics(path: str, step: int) -> None:
    """On resume, drop metric lines past the checkpoint (they are recomputed)."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path) as f:
        for ln in f:
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError):
                continue
    with open(path, "w") as f:
        f.writelines(keep)


# ======================================================================================================== reporting


def read_metrics(path: str) -> list[dict[str, Any]]:
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for ln in f:
                ln = ln.strip()
                if ln:
                    out.append(json.loads(ln))
    return out


def stage_summary(path: str) -> dict[str, Any]:
    rows = read_metrics(path)
    if not rows:
        return {"steps": 0}
    k = max(1, min(5, len(rows) // 4))
    first = sum(r["loss"] for r in rows[:k]) / k
    last = sum(r["loss"] for r in rows[-k:]) / k
    return {"steps": rows[-1]["step"], "loss_first": round(first, 4), "loss_last": round(last, 4),
            "samples": sum(r["samples"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
            "samples_per_s": round(sum(r["samples_per_s"] for r in rows) / len(rows), 2),
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in rows) / len(rows), 1),
            "visual_tokens_per_sample": round(sum(r["visual_tokens_per_sample"] for r in rows) / len(rows), 1),
            "rank0_skipped": rows[-1].get("rank0_skipped", {})}


def plot_loss(metrics_path: str, png: str, title: str = "", width: int = 640, height: int = 360) -> None:
    """Loss per step as a PNG line chart (PIL only: axes, ticks, a smoothed line over the raw one)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = read_metrics(metrics_path)
    xs = [r["step"] for r in rows]
    ys = [r["loss"] for r in rows]
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, 20, 30, 40
    d.text((left, 8), title or "loss", fill="black", font=font)
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    if not xs:
        d.text((left + 10, top + 10), "no steps", fill="black", font=font)
        img.save(png)
        return
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, yy = px(x0, yv)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{yv:.3g}", fill="black", font=font)
        xv = x0 + (x1 - x0) * i / 4
        xx, _ = px(xv, y0)
        d.line([xx, height - bottom, xx, height - bottom + 4], fill="black")
        d.text((xx - 10, height - bottom + 6), f"{xv:.0f}", fill="black", font=font)
    d.text((width // 2 - 10, height - 14), "step", fill="black", font=font)
    pts = [px(x, y) for x, y in zip(xs, ys)]
    if len(pts) > 1:
        d.line(pts, fill=(170, 190, 230), width=1)
        k = max(1, len(ys) // 20)
        sm = [sum(ys[max(0, i - k):i + 1]) / len(ys[max(0, i - k):i + 1]) for i in range(len(ys))]
        d.line([px(x, y) for x, y in zip(xs, sm)], fill=(20, 60, 200), width=2)
    else:
        x, y = pts[0]
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(20, 60, 200))
    img.save(png)


# ======================================================================================================== driver


def _check_out(cfg: TrainConfig) -> None:
    run_json = os.path.join(cfg.out, "run.json")
    fp = cfg.fingerprint()
    if os.path.isfile(run_json):
        old = json.loads(Path(run_json).read_text()).get("fingerprint")
        if not cfg.resume:
            raise ConfigError(f"out: {cfg.out} already holds a training run; pass --resume to continue it or "
                              "use a new out folder")
        if old != fp:
            diff = sorted(k for k in set(old or {}) | set(fp) if (old or {}).get(k) != fp.get(k))
            raise ConfigError(f"out: {cfg.out} holds a run with other settings ({', '.join(diff)}); it cannot be "
                              "resumed with this recipe")
        return
    if os.path.isdir(os.path.join(cfg.out, "ray")) and not cfg.resume:
        raise ConfigError(f"out: {cfg.out} holds Ray Train checkpoints; pass --resume or use a new out folder")
    os.makedirs(cfg.out, exist_ok=True)
    Path(run_json).write_text(json.dumps({"job": "train", "fingerprint": fp}, indent=2, sort_keys=True))


class StepProgress:
    """The driver's view of training progress: rank 0 writes one metrics.jsonl line per step into each stage's
    folder; a thread follows those files (a resumed or restarted stage truncates its file back to its checkpoint,
    and the count follows). Every step is a line in DIR/logs/train.log; the console gets a tqdm bar on a terminal,
    else the first step of a stage, every tenth of it and its last. Steps done by an earlier run are not timed."""

    def __init__(self, cfg: TrainConfig, plans: list[dict[str, Any]], log_fn, interval_s: float = 0.5):
        self.paths = [os.path.join(_stage_dir(cfg, st), "metrics.jsonl") for st in cfg.stages]
        self.totals = [int(p["steps"]) for p in plans]
        self.seen = [(0, 0)] * len(self.paths)  # (bytes read, last step) per stage
        self.interval_s = interval_s
        self.prog = Progress("train", "steps", total=sum(self.totals), out=cfg.out, console=log_fn, quiet=cfg.quiet)
        self.prog.skip(self._scan(emit=False))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _scan(self, emit: bool = True) -> int:
        """Read what the stages' metrics files gained; returns the steps done over all stages."""
        for i, path in enumerate(self.paths):
            off, last = self.seen[i]
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size < off:  # truncated back to a checkpoint (resume, a restarted worker group)
                off, last = 0, 0
            if size == off:
                continue
            with open(path, "rb") as f:
                f.seek(off)
                data = f.read(size - off)
            end = data.rfind(b"\n") + 1  # complete lines only
            for ln in data[:end].splitlines():
                try:
                    rec = json.loads(ln)
                    step = int(rec["step"])
                except (ValueError, KeyError, TypeError):
                    continue
                if emit:
                    self.prog.set_n(sum(s for _, s in self.seen[:i]) + step + sum(s for _, s in self.seen[i + 1:]))
                    total = self.totals[i]
                    echo = step in (1, total) or step % max(1, total // 10) == 0
                    self.prog.emit(f"[train {rec.get('stage', '')}] step {step}/{total} loss {rec.get('loss', 0):.4f} | "
                                   f"{rec.get('samples_per_s', 0):.1f} samples/s {rec.get('tokens_per_s', 0):.0f} "
                                   f"tokens/s | {self.prog.meter()}", postfix=f"{rec.get('stage', '')} loss "
                                   f"{rec.get('loss', 0):.4f}", echo=echo)
                last = step
            self.seen[i] = (off + end, last)
        n = sum(s for _, s in self.seen)
        if emit:
            self.prog.set_n(n)
        return n

    def start(self) -> "StepProgress":
        def follow() -> None:
            while not self._stop.wait(self.interval_s):
                self._scan()

        self._thread = threading.Thread(target=follow, name="train-progress", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._scan()
        self.prog.close()


def run_train(cfg: TrainConfig, log_fn=print) -> dict[str, Any]:
    """Run a recipe end to end (Ray Train, or in-process with num_workers=0). Returns the summary dict.

    If Ray is already initialised (e.g. by `longvid demo`) it is used as is and left running.
    """
    cfg = dataclasses.replace(cfg, out=os.path.abspath(cfg.out),
                              data_root=os.path.abspath(cfg.data_root) if cfg.data_root else os.getcwd())
    cfg.validate()
    for st in cfg.stages:
        st.validate()
    try:  # every drop list read once here: a missing or malformed one stops the run before Ray starts
        read_exclude([cfg.resolve(p) for p in list(cfg.exclude) + [p for s in cfg.stages for p in s.exclude]])
    except DataError as e:
        raise ConfigError(str(e)) from None
    world = max(1, cfg.num_workers)
    plans = plan_stages(cfg, world)
    claim_out(cfg.out, "train", log_fn)  # a run still going on there: exit 2
    try:
        return _run_claimed(cfg, plans, log_fn)
    finally:
        release_out(cfg.out)


def _run_claimed(cfg: TrainConfig, plans: list[dict[str, Any]], log_fn) -> dict[str, Any]:
    world = max(1, cfg.num_workers)
    _check_out(cfg)
    run_dir = os.path.join(cfg.out, "ray", cfg.name)
    done = list_checkpoints(run_dir)
    payload = {"cfg": cfg.to_dict(), "plans": plans, "resume_dir": done[-1] if (cfg.resume and done) else None}
    t0 = time.time()
    if not cfg.quiet:
        for p in plans:
            log_fn(f"[train] stage {p['stage']}: {p['samples']} samples in {len(p['sources'])} sources, "
                   f"{p['steps']} steps")
    steps = StepProgress(cfg, plans, log_fn).start()
    try:
        if cfg.num_workers == 0:
            os.makedirs(run_dir, exist_ok=True)
            sess = _LocalSession(run_dir, cfg.keep_checkpoints, payload["resume_dir"])
            train_worker(payload, sess)
        else:
            _fit_ray(cfg, payload)
    finally:
        steps.close()
    summary = {"job": "train", "name": cfg.name, "out": cfg.out, "workers": world, "elapsed_s": round(time.time() - t0, 2),
               "stages": {}}
    for st in cfg.stages:
        dj = os.path.join(_stage_dir(cfg, st), "done.json")
        if os.path.isfile(dj):
            summary["stages"][st.name] = json.loads(Path(dj).read_text())
    last = summary["stages"].get(cfg.stages[-1].name)
    summary["checkpoint"] = last["model"] if last else None  # the final weights (vlm.* [+ encoder.*] names)
    if last and cfg.export:
        summary["export"] = export_final(cfg, last["model"])
    Path(os.path.join(cfg.out, "summary.json")).write_text(json.dumps(summary, indent=2))
    if not cfg.quiet:
        for name, s in summary["stages"].items():
            log_fn(f"[train] {name}: {s.get('steps')} steps, loss {s.get('loss_first')} -> {s.get('loss_last')}, "
                   f"{s.get('samples_per_s')} samples/s, {s.get('tokens_per_s')} tokens/s, "
                   f"{s.get('visual_tokens_per_sample')} visual tokens/sample; model {s.get('model')}")
        if summary.get("export"):
            log_fn(f"[train] exported for other trainers: {summary['export']} (llm/ loads with transformers' "
                   "from_pretrained; vision.safetensors has the encoder and projector under the released names)")
        log_fn(f"[train] done in {summary['elapsed_s']:.1f} s; summary {os.path.join(cfg.out, 'summary.json')}")
    return summary


def _fit_ray(cfg: TrainConfig, payload: dict[str, Any]) -> None:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # the dashboard serves the State API, which Ray Train queries
    started = ensure_ray(cfg.ray_address, cfg.num_cpus, dashboard=True, out=cfg.out, job="train")
    try:
        resources = {"CPU": cfg.cpus_per_worker}
        if cfg.use_gpu:
            resources["GPU"] = 1
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=payload,
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=cfg.name, storage_path=os.path.join(cfg.out, "ray"),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    finally:
        if started:
            ray.shutdown()
        release_out(cfg.out)
