"""Train: one stage of the curriculum on one worker, as a recipe class in the manner of torchtune's recipes.

    recipe = StageRecipe(cfg, stage_index, stage_info, session, tokenizer, restore, hooks)
    recipe.setup()          setup_model      the stage-0 model, or the previous stage's final weights; the trained
                                             parts (requires_grad), a restored checkpoint's weights; DDP / FSDP
                            setup_optimizer  AdamW with a learning rate per part; warmup + cosine (or constant) as
                                             HF Trainer counts them, in optimizer steps; restored state
                            setup_data       StageLoader over this worker's share of the stage's sources, from the
                                             checkpoint's loader position
                            setup_metrics    metrics.jsonl and TensorBoard events (rank 0)
    recipe.train()          train_step per optimizer step (accumulate micro-batches, clip, step); metrics; hooks'
                            on_step_end; save_checkpoint every `checkpoint_every` steps; save_final at the end
    recipe.cleanup()

Hooks (TrainHook) are how code outside the recipe acts at its fixed points without living in the loop: tests
install one that kills a worker at a given step (tests/faults.py). `run_train(cfg, hooks=[...])` ships them to
every worker (pickled with the rest of the worker payload: a hook's class must be importable there, or pickled by
value).

`train_worker` is what Ray Train runs on each worker (or run_train in-process): every stage from the last
checkpoint on, each by its own recipe.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

from longvid.operators import storage
from longvid.model.constants import IGNORE_INDEX
from longvid.pipelines.train_checkpoint import (
    RaySession,
    Restore,
    Session,
    checkpoint_name,
    dedupe,
    full_state_dicts,
    load_optimizer_state,
    optimizer_state,
    read_state,
    write_checkpoint,
)
from longvid.pipelines.train_config import StageConfig, TrainConfig, stage_dir
from longvid.pipelines.loader import LoaderConfig, StageLoader, read_exclude
from longvid.pipelines.train_model import build_model, build_tokenizer, clean_name, part_of, set_trainable, wrap
from longvid.pipelines.train_report import MetricsFile, open_tensorboard, plot_stage_loss, stage_summary

log = logging.getLogger("longvid.train")


class TrainHook:
    """Called by StageRecipe at fixed points of a stage, on every worker (a hook that acts on one worker checks
    `recipe.rank`). Every method does nothing here; a hook overrides those it needs. Any object with these four
    methods will do (tests/faults.py's KillWorkerOnce does not import this module, to stay light)."""

    def on_stage_start(self, recipe: "StageRecipe") -> None:
        """After setup, before the first step."""

    def on_step_end(self, recipe: "StageRecipe", step: int, metrics: dict[str, Any] | None) -> None:
        """After optimizer step `step` and its metrics (rank 0's record, None on other ranks), before the step's
        checkpoint."""

    def on_checkpoint(self, recipe: "StageRecipe", step: int, done: bool) -> None:
        """After a checkpoint was handed to the session."""

    def on_stage_end(self, recipe: "StageRecipe") -> None:
        """After the stage's final weights and its `done` checkpoint."""


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """HF TrainingArguments.get_warmup_steps: ceil(warmup_ratio x total optimizer steps)."""
    return math.ceil(total * warmup_ratio)


def lr_lambda(total: int, warmup_ratio: float, schedule: str):
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


def accumulate(wrapped, it, accum: int, st: StageConfig, side: int, world: int, dev):
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


class StageRecipe:
    """One stage on one worker: setup (model, optimizer, data, metrics), train (train_step, metrics, hooks,
    checkpoints), save_final, cleanup. `restore` is the stage's own checkpoint to continue from (None: step 0)."""

    def __init__(self, cfg: TrainConfig, stage_index: int, stage_info: dict[str, Any], session: Session, tokenizer,
                 restore: str | None = None, hooks: Sequence[TrainHook] = ()) -> None:
        self.cfg = cfg
        self.stage_index = stage_index
        self.stage: StageConfig = cfg.stages[stage_index]
        self.stage_info = stage_info
        self.session = session
        self.rank, self.world, self.device = session.rank, session.world, session.device
        self.tokenizer = tokenizer
        self.hooks = list(hooks)
        self.restore = Restore(restore) if restore else None
        self.total = int(stage_info["steps"])
        self.accum = int(stage_info.get("accum", 1))
        self.every = self.stage.checkpoint_every or cfg.checkpoint_every
        self.dir = stage_dir(cfg, self.stage)
        self.start_step = self.restore.step if self.restore else 0
        self.last_loss = float("nan")
        self.loggers: list = []
        self.loader = self._it = None

    # ------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self.setup_model()
        self.setup_optimizer()
        self.setup_data()
        self.setup_metrics()

    def setup_model(self) -> None:
        """Stage 0 from the init (model/build.py), later stages from the previous stage's final weights; the
        stage's parts trainable; a restored checkpoint's trained weights; wrapped for data parallelism."""
        from safetensors.torch import load_model

        cfg, st, si = self.cfg, self.stage, self.stage_index
        model = build_model(cfg, self.tokenizer)
        if si > 0:
            prev = os.path.join(stage_dir(cfg, cfg.stages[si - 1]), "model.safetensors")
            missing, unexpected = load_model(model, prev, strict=False)
            if missing or unexpected:
                raise RuntimeError(f"{prev}: does not fit the model (missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]})")
        self.param_counts = set_trainable(model, st.train)
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if self.restore:
            sd = self.restore.weights()
            if sorted(sd) != sorted(self.trainable):
                raise RuntimeError(f"{self.restore.path}: trainable weights do not match stage {st.name}'s "
                                   "trainable parts")
            model.load_state_dict(sd, strict=False)
        self.model = model
        self.wrapped = wrap(model, cfg.strategy, self.device, self.world)

    def setup_optimizer(self) -> None:
        """AdamW, one parameter group (and learning rate) per trained part; the warmup + cosine / constant factor
        per optimizer step (lr_lambda); both restored from the checkpoint."""
        st = self.stage
        groups: dict[str, list] = {}
        for n, p in self.wrapped.named_parameters():
            if p.requires_grad:
                groups.setdefault(part_of(clean_name(n)), []).append(p)
        self.optim = torch.optim.AdamW([{"params": ps, "lr": st.part_lr(part), "name": part}
                                        for part, ps in groups.items()],
                                       weight_decay=st.weight_decay, betas=(0.9, 0.999))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda(self.total, st.warmup_ratio,
                                                                             st.schedule))
        if self.restore:
            load_optimizer_state(self.wrapped, self.optim, self.restore.optimizer())
            self.sched.load_state_dict(self.restore.scheduler())

    def setup_data(self) -> None:
        """This worker's StageLoader, at the checkpoint's loader position. Restored by another number of workers,
        the stream restarts with a seed of its own."""
        from longvid.model.config import get_config

        cfg, st, stage_info = self.cfg, self.stage, self.stage_info
        loader_state = None
        if self.restore:
            loader_state = self.restore.loader(self.rank, self.world)
            if loader_state is None and self.rank == 0:
                log.warning("stage %s: checkpoint was written by %s workers, now %d: the data stream restarts",
                            st.name, self.restore.state.get("world"), self.world)
        mcfg = get_config(cfg.model)
        enc = self.model.encoder
        self.side = st.resolution or (enc.cfg.img_size if enc is not None else mcfg.umt.img_size)
        exclude = read_exclude([cfg.resolve(p) for p in list(cfg.exclude) + list(st.exclude)])
        restart = 1000003 * self.start_step if self.restore and loader_state is None else 0
        lcfg = LoaderConfig(sources=stage_info["sources"], batch_size=st.batch_size, buffer=st.shuffle_buffer, mix=st.mix,
                            seed=cfg.seed + restart, stage_index=self.stage_index, kind=st.input,
                            dim=mcfg.encoder_dim, min_frames=st.min_frames, max_frames=st.max_frames,
                            max_len=st.max_len, label_mode=st.chat_mode(), group_by=st.group_by, accum=self.accum,
                            prefetch=cfg.prefetch)
        self.loader = StageLoader(lcfg, self.rank, self.world, self.tokenizer, exclude, state=loader_state)
        if self.loader.shared_sources and self.rank == 0:
            log.warning("stage %s: fewer samples than workers in %s: workers share samples", st.name,
                        self.loader.shared_sources)

    def setup_metrics(self) -> None:
        """Rank 0: metrics.jsonl (cut back to the checkpoint's step) and TensorBoard events under
        out/tensorboard/<stage>/. Every rank with record_keys: its keys file, cut back the same way."""
        self.metrics_path = os.path.join(self.dir, "metrics.jsonl")
        self.keys_path = os.path.join(self.dir, f"keys-rank{self.rank}.jsonl") if self.cfg.record_keys else None
        if self.rank == 0:
            self.loggers.append(MetricsFile(self.metrics_path, self.start_step))
            tb = open_tensorboard(os.path.join(self.cfg.out, "tensorboard", self.stage.name), self.start_step)
            if tb is not None:
                self.loggers.append(tb)
        if self.keys_path:
            MetricsFile(self.keys_path, self.start_step)

    # ------------------------------------------------------------------------------------------------- steps
    def train_step(self, it):
        """One optimizer step: `accum` micro-batches forward and backward (accumulate), gradient clipping, the
        optimizer and scheduler steps; the step's stats summed over workers. -> (stats [loss x world, samples,
        tokens, visual tokens], grad norm, last micro-batch, sample keys)."""
        st = self.stage
        _, stats, batch, keys = accumulate(self.wrapped, it, self.accum, st, self.side, self.world, self.device)
        params = [p for g in self.optim.param_groups for p in g["params"]]
        if st.grad_clip > 0:
            if hasattr(self.wrapped, "clip_grad_norm_"):
                gnorm = float(self.wrapped.clip_grad_norm_(st.grad_clip))
            else:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, st.grad_clip))
        else:
            gnorm = float("nan")
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        if self.world > 1 and dist.is_initialized():  # metrics: summed over workers
            stats = stats.to(self.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        return stats, gnorm, batch, keys

    def log_step(self, step: int, stats, gnorm: float, batch, dt: float, now: float) -> dict[str, Any] | None:
        """Rank 0: the step's record to metrics.jsonl and TensorBoard (returned); None on other ranks."""
        if self.rank != 0:
            return None
        counters = batch.state.get("counters_now", {})
        rec = {"stage": self.stage.name, "step": step, "steps": self.total, "loss": round(self.last_loss, 6),
               "lr": {g["name"]: g["lr"] for g in self.optim.param_groups}, "grad_norm": round(gnorm, 6),
               "samples": int(stats[1]), "tokens": int(stats[2]),
               "samples_per_s": round(float(stats[1]) / dt, 3), "tokens_per_s": round(float(stats[2]) / dt, 1),
               "visual_tokens_per_sample": round(float(stats[3]) / max(1.0, float(stats[1])), 1),
               "step_s": round(dt, 4), "rank0_skipped": {k: v for k, v in counters.items() if v},
               "time": round(now, 3)}
        for lg in self.loggers:
            lg.log(rec)
        # the driver's progress (StepProgress) reports steps from metrics.jsonl
        log.debug("[%s] step %d/%d loss %.4f | %.1f samples/s %.0f tokens/s", self.stage.name, step, self.total,
                  self.last_loss, rec["samples_per_s"], rec["tokens_per_s"])
        return rec

    def train(self) -> dict[str, Any]:
        """Steps start_step + 1 .. total, then the stage's final weights and its `done` checkpoint."""
        st = self.stage
        for h in self.hooks:
            h.on_stage_start(self)
        it = self._it = iter(self.loader)
        self.wrapped.train()
        t_stage = time.time()
        t_last = time.time()
        if self.rank == 0:
            log.info("stage %s: %d steps (from %d), trains %s (%s params), %d samples in %d sources, %d workers",
                     st.name, self.total, self.start_step, st.train,
                     {k: v for k, v in self.param_counts.items() if v}, self.stage_info["samples"],
                     len(self.stage_info["sources"]), self.world)
        for step in range(self.start_step + 1, self.total + 1):
            stats, gnorm, batch, keys = self.train_step(it)
            now = time.time()
            dt = max(now - t_last, 1e-9)
            t_last = now
            self.last_loss = float(stats[0]) / self.world
            if self.keys_path:
                with open(self.keys_path, "a") as f:
                    f.write(json.dumps({"step": step, "keys": keys}) + "\n")
            rec = self.log_step(step, stats, gnorm, batch, dt, now)
            for h in self.hooks:
                h.on_step_end(self, step, rec)
            if step == self.total:
                break
            if step % self.every == 0:
                self.save_checkpoint(step, batch.state)
        self.cleanup()
        self.save_final(t_stage)
        self.save_checkpoint(self.total, None, done=True)
        for h in self.hooks:
            h.on_stage_end(self)
        return {"stage": st.name, "loss": self.last_loss}

    # ------------------------------------------------------------------------------------------------- saving
    def save_checkpoint(self, step: int, loader_state: dict | None, done: bool = False) -> None:
        """A checkpoint of this stage at `step` (train_checkpoint.py): every rank's loader position; rank 0 the
        trained weights, optimizer and scheduler (not in the stage's `done` checkpoint) and the state."""
        cfg, st = self.cfg, self.stage
        state = {"stage_index": self.stage_index, "stage": st.name, "step": step, "steps": self.total, "done": done,
                 "world": self.world, "seed": cfg.seed}
        weights = osd = None
        if not done:
            osd = optimizer_state(self.wrapped, self.optim)
            keep = set(self.trainable)
            if cfg.strategy == "fsdp" and self.world > 1:
                weights = {k: v.detach().clone() for k, v in full_state_dicts(self.wrapped, self.optim)[0].items()
                           if k in keep}
            else:
                weights = {clean_name(n): p.detach().cpu() for n, p in self.wrapped.named_parameters()
                           if clean_name(n) in keep}
        write_checkpoint(self.session, checkpoint_name(self.stage_index, step, done), state, loader_state, weights,
                         osd, None if done else self.sched.state_dict())
        for h in self.hooks:
            h.on_checkpoint(self, step, done)

    def save_final(self, t_stage: float) -> None:
        """End of stage: the full model to stages/<stage>/model.safetensors (the next stage starts from it), the
        loss plot and done.json (rank 0; under FSDP every rank takes part in gathering the weights)."""
        from safetensors.torch import save_file, save_model

        cfg, st = self.cfg, self.stage
        sharded = cfg.strategy == "fsdp" and self.world > 1
        msd = full_state_dicts(self.wrapped, self.optim)[0] if sharded else None
        for lg in self.loggers:
            lg.close()
        self.loggers = []
        if self.rank != 0:
            return
        final = os.path.join(self.dir, "model.safetensors")
        tmp = final + ".tmp"
        if sharded:
            save_file({k: v.detach().clone().contiguous() for k, v in dedupe(msd).items()}, tmp)
        else:
            save_model(self.model, tmp)
        os.replace(tmp, final)
        summary = stage_summary(self.metrics_path)
        summary.update({"stage": st.name, "train": st.train, "input": st.input,
                        "encoder": "trained" if "encoder" in st.train else "frozen",
                        "model": final, "elapsed_s": round(time.time() - t_stage, 2), "workers": self.world,
                        "accumulation": self.accum, "global_batch": self.world * st.batch_size * self.accum,
                        "template": st.template, "labels": st.chat_mode(), "group_by": st.group_by})
        try:
            summary["plot"] = plot_stage_loss(self.metrics_path, os.path.join(self.dir, "loss.png"),
                                              title=f"{cfg.name} / {st.name}: loss per step")
        except Exception as e:  # a plot never fails a stage
            log.warning("stage %s: loss plot failed: %s", st.name, e)
        summary["tensorboard"] = os.path.join(cfg.out, "tensorboard", st.name)
        storage.write_json(os.path.join(self.dir, "done.json"), summary, indent=2)

    def cleanup(self) -> None:
        """Close what a stage left open (after an error too): the loader's iterator, the loader, the metric
        writers (save_final has closed them on a stage that ended)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()
        if self.loader is not None:
            self.loader.close()
        for lg in self.loggers:
            lg.close()
        self.loggers = []


def train_worker(payload: dict[str, Any], sess: Session | None = None) -> dict[str, Any]:
    """The per-worker loop over all stages (Ray Train calls it with the payload as train_loop_config): each stage
    from the last checkpoint on is a StageRecipe with the payload's hooks."""
    cfg = TrainConfig.from_dict(payload["cfg"])
    schedule = payload["schedule"]
    hooks = payload.get("hooks") or ()
    sess = sess or RaySession()
    if sess.device.type == "cpu" and cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    logging.basicConfig(level=logging.INFO if not cfg.quiet else logging.WARNING)
    tokenizer = build_tokenizer(cfg)
    ckpt = sess.checkpoint_dir() or payload.get("resume_dir")
    state = read_state(ckpt)
    first, restore = 0, None
    if state is not None:
        first = state["stage_index"] + (1 if state["done"] else 0)
        restore = None if state["done"] else ckpt
        if sess.rank == 0:
            log.info("resuming from %s: stage %s, step %d%s", ckpt, state["stage"], state["step"],
                     " (done)" if state["done"] else "")
    results = {}
    for si in range(first, len(cfg.stages)):
        recipe = StageRecipe(cfg, si, schedule[si], sess, tokenizer, restore if si == first else None, hooks)
        try:
            recipe.setup()
            results[recipe.stage.name] = recipe.train()
        finally:
            recipe.cleanup()
    return results
