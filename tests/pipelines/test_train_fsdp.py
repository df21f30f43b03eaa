"""FSDP on 2 Ray Train CPU workers (gloo): the tiny two-stage recipe with `strategy: fsdp` trains through both
stages, a worker killed mid-stage is restarted from the last (full, unsharded) checkpoint, and the saved weights
have the same names and shapes as an unwrapped run's."""
from __future__ import annotations

import math

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from longvid.jobs.train import load_recipe
from longvid.pipelines.train import run_train
from longvid.pipelines.train_report import read_metrics
from tests.faults import KillWorkerOnce
from tests.pipelines.test_train import MINI, _keys_seen, _recipe, data  # noqa: F401  (data: the shared shard fixture)


@pytest.mark.slow
def test_fsdp_two_workers_recovers_and_saves_full_weights(tmp_path, data):  # noqa: F811
    body = dict(MINI, strategy="fsdp", max_failures=2, torch_threads=1)
    recipe = _recipe(tmp_path, body)
    cfg = load_recipe(recipe, out=str(tmp_path / "fsdp"), data_root=str(data["root"]), num_workers=2, num_cpus=2)
    cfg.exclude = ["drop_list.txt"]
    # worker 1 dies once at step 5; Ray Train restarts both from the step-3 checkpoint
    summary = run_train(cfg, hooks=[KillWorkerOnce("s2", 5, rank=1)])
    out = tmp_path / "fsdp"
    assert summary["workers"] == 2 and list(summary["stages"]) == ["s1", "s2"]
    assert (out / ".fault-s2-5-1").exists()
    for st in cfg.stages:
        rows = read_metrics(str(out / "stages" / st.name / "metrics.jsonl"))
        assert [r["step"] for r in rows] == list(range(1, st.steps + 1))
        assert all(r["samples"] == (st.global_batch_size or 2 * st.batch_size) and math.isfinite(r["loss"])
                   for r in rows)  # s2: 2 micro-steps under FSDP no_sync
        seen = set(_keys_seen(out, st.name))
        assert seen and not seen & data["drop"] and not seen & data["corrupt"]
        # TensorBoard (rank 0) after the restart: each step once, the losses of metrics.jsonl
        ea = EventAccumulator(str(out / "tensorboard" / st.name))
        ea.Reload()
        assert [e.step for e in ea.Scalars("loss")] == [r["step"] for r in rows]
        assert [e.value for e in ea.Scalars("loss")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    # the same weights layout as an unwrapped (in-process) run: full tensors under plain names, no FSDP prefixes
    ref = load_recipe(recipe, out=str(tmp_path / "plain"), data_root=str(data["root"]), num_workers=0)
    run_train(ref)
    for stage in ("s1", "s2"):
        a = load_file(str(out / "stages" / stage / "model.safetensors"))
        b = load_file(str(tmp_path / "plain" / "stages" / stage / "model.safetensors"))
        assert set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)
        assert not any("_fsdp" in k or k.startswith("module.") for k in a)
    # stage 2 trained the LLM (FSDP-wrapped decoder layers included) starting from stage 1's weights
    s1 = load_file(str(out / "stages/s1/model.safetensors"))
    s2 = load_file(str(out / "stages/s2/model.safetensors"))
    assert not (s1["vlm.llm.model.layers.0.mlp.up_proj.weight"] == s2["vlm.llm.model.layers.0.mlp.up_proj.weight"]).all()
    assert (s1["vlm.llm.model.layers.0.mlp.up_proj.weight"] != 0).any()
