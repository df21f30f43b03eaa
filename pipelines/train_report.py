"""Train: what a run reports. Rank 0 writes each step's record to the stage's metrics.jsonl (the record of the run:
the summary, the driver's progress and the plots read it) and the same scalars as TensorBoard events; at the end
of a stage, its summary and loss plot, and at the end of the run a plot of every stage.

    stages/<stage>/metrics.jsonl    one JSON line per optimizer step (MetricsFile)
    tensorboard/<stage>/            TensorBoard events of the same scalars (TensorBoardLog): `tensorboard --logdir
                                    OUT/tensorboard` shows one run per stage
    stages/<stage>/loss.png         the stage's loss per step and its moving average (plot_stage_loss)
    loss.png                        every stage's loss over the run's steps, one line per stage (plot_run_loss)

Resume: a stage continued from its step-S checkpoint recomputes steps S+1..; metrics.jsonl is cut back to step S and
the new TensorBoard event file starts with a purge marker at S+1, so TensorBoard (and EventAccumulator) hides what
the interrupted attempt wrote past S: one value per step, equal to metrics.jsonl's.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger("longvid.train")

# a record's fields that are not scalars of a step (the step is TensorBoard's x axis, time its wall time)
_NOT_SCALARS = ("stage", "step", "steps", "time")


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (or keys-rank*.jsonl) file; [] when it does not exist."""
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for ln in f:
                ln = ln.strip()
                if ln:
                    out.append(json.loads(ln))
    return out


def truncate_metrics(path: str, step: int) -> None:
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


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """A metrics record's scalars under TensorBoard tags: numbers as they are, a mapping of numbers as one tag per
    key (`lr/projector`, `rank0_skipped/excluded`)."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        if k in _NOT_SCALARS:
            continue
        if isinstance(v, dict):
            out.update({f"{k}/{sub}": float(x) for sub, x in v.items() if isinstance(x, (int, float))})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


class MetricsFile:
    """metrics.jsonl of a stage: cut back to `start_step` when opened, one line appended per step."""

    def __init__(self, path: str, start_step: int) -> None:
        self.path = path
        truncate_metrics(path, start_step)

    def log(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLog:
    """A stage's scalars as TensorBoard events (torch.utils.tensorboard.SummaryWriter) in `logdir`. The writer is
    opened with purge_step = start_step + 1 (see the module docstring) and flushed after every step, so a worker
    killed at any point loses no step it reported."""

    def __init__(self, logdir: str, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir, purge_step=start_step + 1)

    def log(self, rec: dict[str, Any]) -> None:
        for tag, v in scalars(rec).items():
            self.writer.add_scalar(tag, v, global_step=rec["step"], walltime=rec.get("time"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(logdir: str, start_step: int) -> TensorBoardLog | None:
    """A TensorBoardLog, or None (one warning) when the tensorboard package is missing: metrics.jsonl is the record,
    TensorBoard a view of it."""
    try:
        return TensorBoardLog(logdir, start_step)
    except ImportError as e:
        log.warning("TensorBoard events not written (%s); metrics.jsonl has every step", e)
        return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def moving_average(ys: list[float], k: int) -> list[float]:
    """The mean of each value and the k before it (fewer at the start)."""
    return [sum(ys[max(0, i - k):i + 1]) / len(ys[max(0, i - k):i + 1]) for i in range(len(ys))]


def plot_stage_loss(metrics_path: str, png: str, title: str = "") -> str:
    """One stage's loss per optimizer step (thin line) and its moving average over ~1/20 of the steps, with axes
    labels, a legend and a title; 800 x 450 px."""
    plt = _pyplot()
    rows = read_metrics(metrics_path)
    xs = [r["step"] for r in rows]
    ys = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if xs:
            ax.plot(xs, ys, color="#a0b4e0", linewidth=1, marker="o" if len(xs) == 1 else None, label="loss")
            k = max(1, len(ys) // 20)
            if len(xs) > 1:
                ax.plot(xs, moving_average(ys, k), color="#1f3c9c", linewidth=2,
                        label=f"moving average ({k + 1} steps)")
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
        _save_loss_axes(fig, ax, png, "optimizer step", title or "loss")
    finally:
        plt.close(fig)
    return png


def plot_run_loss(stages: list[tuple[str, str]], png: str, title: str = "") -> str:
    """Every stage's loss over the run, one line per stage (x: optimizer steps counted over the run, each stage
    after the one before), with a legend naming the stages; 960 x 480 px. `stages`: [(name, metrics.jsonl)]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.6, 4.8), dpi=100)
    try:
        offset = 0
        for name, path in stages:
            rows = read_metrics(path)
            if not rows:
                continue
            xs = [offset + r["step"] for r in rows]
            ax.plot(xs, [r["loss"] for r in rows], linewidth=1.5, marker="o" if len(xs) == 1 else None, label=name)
            offset += max(int(rows[-1].get("steps", rows[-1]["step"])), rows[-1]["step"])
        if offset:
            ax.legend(title="stage", loc="upper right")
        else:
            ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
        _save_loss_axes(fig, ax, png, "optimizer step (over the run)", title or "loss per stage")
    finally:
        plt.close(fig)
    return png


def _save_loss_axes(fig, ax, png: str, xlabel: str, title: str) -> None:
    """The loss plots' labels, title and grid, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (mean over label tokens)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
