"""Train: where a recipe runs (a Ray Train worker or this process) and its checkpoints.

A session gives the recipe its rank, world size and device, the checkpoint to resume from, and takes the
checkpoints it writes (Ray Train's `report`, or a copy into the same folder layout when training in-process).

A checkpoint folder `ckpt-<stage index>-<step>[-done]/` holds
    state.json                 stage index and name, step, steps, done, world size, seed (rank 0)
    trainable.safetensors      the weights the stage trains, full tensors under plain names (rank 0; not in -done)
    optim.pt, sched.pt         optimizer (full state dict, parameter names) and LR scheduler (rank 0; not in -done)
    loader-rank<r>.json        every rank's loader position (not in -done: the stage's data is spent)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

CKPT_PREFIX = "ckpt-"


class Session:
    """What the training loop needs from its runner: rank/world/device, the checkpoint to resume from, and where
    checkpoints go."""

    rank = 0
    world = 1
    device = None
    in_process = False

    def checkpoint_dir(self) -> str | None:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], ckpt_dir: str, name: str) -> None:
        raise NotImplementedError


class RaySession(Session):
    """A Ray Train worker: Ray Train restores the last reported checkpoint after a worker failure."""

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


class LocalSession(Session):
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


def checkpoint_name(stage_index: int, step: int, done: bool) -> str:
    return f"{CKPT_PREFIX}{stage_index:02d}-{step:08d}" + ("-done" if done else "")


def read_state(ckpt: str | None) -> dict[str, Any] | None:
    """A checkpoint's state.json (None without a checkpoint)."""
    if not ckpt:
        return None
    with open(os.path.join(ckpt, "state.json")) as f:
        return json.load(f)


class Restore:
    """A checkpoint a stage continues from (one that is not `-done`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = read_state(path) or {}
        self.step = int(self.state["step"])

    def weights(self) -> dict:
        from safetensors.torch import load_file

        return load_file(os.path.join(self.path, "trainable.safetensors"))

    def optimizer(self) -> dict:
        import torch

        return torch.load(os.path.join(self.path, "optim.pt"), map_location="cpu", weights_only=True)

    def scheduler(self) -> dict:
        import torch

        return torch.load(os.path.join(self.path, "sched.pt"), weights_only=True)

    def loader(self, rank: int, world: int) -> dict | None:
        """This rank's loader position; None when the checkpoint was written by another number of workers."""
        p = os.path.join(self.path, f"loader-rank{rank}.json")
        if self.state.get("world") != world or not os.path.isfile(p):
            return None
        with open(p) as f:
            return json.load(f)


def write_checkpoint(sess: Session, name: str, state: dict[str, Any], loader_state: dict | None,
                     weights: dict | None = None, optim_sd: dict | None = None, sched_sd: dict | None = None) -> None:
    """Every rank writes its loader position; rank 0 adds the weights, optimizer, scheduler and state; the folder is
    handed to the session (Ray Train keeps the last `keep_checkpoints`)."""
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="longvid-ckpt-") as d:
        if loader_state is not None:
            with open(os.path.join(d, f"loader-rank{sess.rank}.json"), "w") as f:
                json.dump({k: v for k, v in loader_state.items() if k != "counters_now"}, f)
        if sess.rank == 0:
            if weights is not None:
                save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(d, "trainable.safetensors"))
                torch.save(optim_sd, os.path.join(d, "optim.pt"))
                torch.save(sched_sd, os.path.join(d, "sched.pt"))
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(state, f)
        sess.report({"stage": state["stage"], "step": state["step"], "done": state["done"]}, d, name)


def sd_options():
    """Full (unsharded) state dicts; offloaded to CPU (rank 0 only) when training on GPUs. On CPU no offload:
    FSDP's offload path crashes there (torch 2.13, gloo) and there is nothing to move anyway."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=torch.cuda.is_available())


def full_state_dicts(wrapped, optim):
    """Full model and optimizer state dicts keyed by parameter names (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(wrapped, optim, options=sd_options())


def optimizer_state(wrapped, optim) -> dict:
    """The optimizer's full state dict keyed by parameter names (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optim, options=sd_options())


def load_optimizer_state(wrapped, optim, optim_sd) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optim, optim_sd, options=sd_options())


def dedupe(sd: dict) -> dict:
    """A state dict without the second name of a shared (tied) tensor."""
    seen, out = set(), {}
    for k, v in sd.items():
        ptr = (v.data_ptr(), tuple(v.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        out[k] = v
    return out
