"""Train: the short-to-long curriculum on Ray Train, streaming token shards. This module is the driver.

    recipe  pipelines/train_config.py: TrainConfig (model, tokenizer, out, stages in order), StageConfig, DataEntry;
            stage_schedule: every stage's data (globs -> per-shard sample ranges, durations; the shards' ingest frame
            bounds against the stage's), accumulation and optimizer step counts
    driver  run_train(cfg, hooks=...): schedule the stages, check `out`, then one TorchTrainer run (DDP over gloo on CPU / NCCL on
            GPU, or FSDP) with FailureConfig, or the same loop in this process (num_workers: 0); follows the
            steps (StepProgress); summary.json, the run's loss plot and the export of the final weights
    worker  pipelines/train_recipe.py train_worker(): for each stage from the last checkpoint on, a StageRecipe:
              setup_model      the model (pipelines/train_model.py) from the previous stage's final weights;
                               what the stage does not train frozen; DDP / FSDP
              setup_optimizer  AdamW with a learning rate per part; warmup + cosine as HF Trainer counts them
              setup_data       StageLoader streams this worker's own shards (pipelines/loader.py) in the
                               stage's template (plain / qwen_2) and labels, batches grouped as the stage says
              train_step       `accum` micro-steps (global_batch_size / (workers x batch_size)), each a forward
                               (projected tokens spliced at <image>; the encoder first on frame stages) and a
                               backward of the loss scaled per loss_average, gradients synchronised on the last;
                               clip, step; metrics.jsonl and TensorBoard events (rank 0); hooks' on_step_end
              save_checkpoint  every `checkpoint_every` steps: trainable weights, optimizer, scheduler, step, and
                               every rank's loader position (pipelines/train_checkpoint.py), reported to Ray Train
                               (restored after a worker failure or with --resume)
              save_final       the full model to out/stages/<stage>/model.safetensors, done.json, loss.png

Output layout (`out`, a local or shared path every worker can reach):
    run.json                           the recipe fingerprint (a --resume must match it)
    stages/<stage>/metrics.jsonl       one line per step: loss, lr, tokens/s, samples/s, visual tokens/sample, ...
    stages/<stage>/loss.png            loss per step and its moving average
    stages/<stage>/model.safetensors   weights at the end of the stage (the next stage starts from them)
    stages/<stage>/done.json           stage summary
    tensorboard/<stage>/               the metrics' scalars as TensorBoard events (`tensorboard --logdir OUT/tensorboard`)
    ray/<name>/ckpt-<stage>-<step>/    Ray Train checkpoints (trainable.safetensors, optim.pt, state.json, loader-rank*.json)
    loss.png                           every stage's loss, one line per stage
    summary.json                       per stage: steps, first/last loss, samples, tokens, skipped samples
    export/                            the final weights for other trainers (llm/ in the Hugging Face layout)

With token shards the encoder is frozen by construction (its output is what the shards hold): a stage that
trains the encoder must read frame shards (`input: frames`), and then runs the encoder in the loop.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from longvid.operators import storage
from longvid.operators.errors import ConfigError
from longvid.pipelines.progress import Progress
from longvid.pipelines.out_claim import claim_out, release_out
from longvid.pipelines.ray_session import ensure_ray
from longvid.pipelines.train_checkpoint import LocalSession, list_checkpoints
from longvid.pipelines.train_config import TrainConfig, stage_schedule, stage_dir
from longvid.pipelines.loader import read_exclude
from longvid.pipelines.train_sources import DataError
from longvid.pipelines.train_report import plot_run_loss

if TYPE_CHECKING:
    from longvid.pipelines.train_recipe import TrainHook

log = logging.getLogger("longvid.train")


# ======================================================================================================== driver


def _check_out(cfg: TrainConfig) -> None:
    run_json = os.path.join(cfg.out, "run.json")
    fp = storage.json_record(cfg.fingerprint())  # as run.json stores it (redacted)
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
    storage.write_json(run_json, {"job": "train", "fingerprint": fp}, indent=2, sort_keys=True)


class StepProgress:
    """The driver's view of training progress: rank 0 writes one metrics.jsonl line per step into each stage's
    folder; a thread follows those files (a resumed or restarted stage truncates its file back to its checkpoint,
    and the count follows). Every step is a line in DIR/logs/train.log; the console gets a tqdm bar on a terminal,
    else the first step of a stage, every tenth of it and its last. Steps done by an earlier run are not timed."""

    def __init__(self, cfg: TrainConfig, schedule: list[dict[str, Any]], log_fn, interval_s: float = 0.5):
        self.paths = [os.path.join(stage_dir(cfg, st), "metrics.jsonl") for st in cfg.stages]
        self.totals = [int(p["steps"]) for p in schedule]
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


def run_train(cfg: TrainConfig, log_fn=print, hooks: Sequence["TrainHook"] = ()) -> dict[str, Any]:
    """Run a recipe end to end (Ray Train, or in-process with num_workers=0). Returns the summary dict.

    `hooks`: TrainHook objects every worker's StageRecipe calls (pipelines/train_recipe.py), shipped to the
    workers with the payload. If Ray is already initialised (e.g. by `longvid demo`) it is used as is and left
    running.
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
    schedule = stage_schedule(cfg, world)
    claim_out(cfg.out, "train", log_fn)  # a run still going on there: exit 2
    try:
        return _run_claimed(cfg, schedule, log_fn, hooks)
    finally:
        release_out(cfg.out)


def _run_claimed(cfg: TrainConfig, schedule: list[dict[str, Any]], log_fn,
                 hooks: Sequence["TrainHook"]) -> dict[str, Any]:
    from longvid.pipelines.train_model import export_final

    world = max(1, cfg.num_workers)
    _check_out(cfg)
    run_dir = os.path.join(cfg.out, "ray", cfg.name)
    done = list_checkpoints(run_dir)
    payload = {"cfg": cfg.to_dict(), "schedule": schedule, "resume_dir": done[-1] if (cfg.resume and done) else None,
               "hooks": list(hooks)}
    t0 = time.time()
    if not cfg.quiet:
        for p in schedule:
            log_fn(f"[train] stage {p['stage']}: {p['samples']} samples in {len(p['sources'])} sources, "
                   f"{p['steps']} steps")
    steps = StepProgress(cfg, schedule, log_fn).start()
    try:
        if cfg.num_workers == 0:
            os.makedirs(run_dir, exist_ok=True)
            from longvid.pipelines.train_recipe import train_worker

            train_worker(payload, LocalSession(run_dir, cfg.keep_checkpoints, payload["resume_dir"]))
        else:
            _fit_ray(cfg, payload)
    finally:
        steps.close()
    summary = {"job": "train", "name": cfg.name, "out": cfg.out, "workers": world, "elapsed_s": round(time.time() - t0, 2),
               "stages": {}}
    for st in cfg.stages:
        dj = os.path.join(stage_dir(cfg, st), "done.json")
        if os.path.isfile(dj):
            summary["stages"][st.name] = json.loads(Path(dj).read_text())
    last = summary["stages"].get(cfg.stages[-1].name)
    summary["checkpoint"] = last["model"] if last else None  # the final weights (vlm.* [+ encoder.*] names)
    try:  # a plot never fails a run
        summary["plot"] = plot_run_loss([(st.name, os.path.join(stage_dir(cfg, st), "metrics.jsonl"))
                                         for st in cfg.stages], os.path.join(cfg.out, "loss.png"),
                                        title=f"{cfg.name}: loss per stage")
    except Exception as e:
        log.warning("loss plot failed: %s", e)
    summary["tensorboard"] = os.path.join(cfg.out, "tensorboard")
    if last and cfg.export:
        summary["export"] = export_final(cfg, last["model"])
    storage.write_json(os.path.join(cfg.out, "summary.json"), summary, indent=2)
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

    from longvid.operators import storage
    from longvid.pipelines.train_recipe import train_worker

    # the dashboard serves the State API, which Ray Train queries; on several nodes, every node must see the
    # shards' folders and out as the driver does
    data = sorted({os.path.dirname(url) for stage in payload["schedule"] for src in stage["sources"]
                   for url, _, _ in src["pieces"] if not storage.is_s3(url)})
    started = ensure_ray(cfg.ray_address, cfg.num_cpus, dashboard=True, out=cfg.out, job="train",
                         inputs={"data": data})
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
