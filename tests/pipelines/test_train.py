"""Training: recipes and their errors, in-process resume equals an uninterrupted run, drop lists end to end,
and (slow) the tiny recipe on 2 Ray Train CPU workers through all stages with a killed worker."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from longvid.jobs.cli import main as longvid
from longvid.jobs.train import load_recipe, parse_recipe
from longvid.operators.errors import ConfigError
from longvid.pipelines.train import run_train
from longvid.pipelines.train_config import mixture_datasets
from longvid.synthetic.shards import write_synthetic_frame_shards, write_synthetic_token_shards
from longvid.pipelines.train_report import read_metrics
from tests.faults import KillWorkerOnce, WorkerKilled

SHARED = Path(__file__).resolve().parents[3] / "shared"

MINI = {
    "name": "mini", "model": "tiny", "tokenizer": "test", "num_workers": 0, "checkpoint_every": 3, "seed": 0,
    "quiet": True, "record_keys": True,
    "stages": [
        {"name": "s1", "input": "tokens", "encoder": "frozen", "train": ["projector"], "max_frames": 4,
         "max_len": 1024, "lr": 1e-3, "steps": 4, "batch_size": 2, "shuffle_buffer": 4, "mix": "samples",
         "template": "plain", "group_by": "none", "data": [{"shards": ["tokens/*/shards/*.tar"]}]},
        # global batch 8: 4 micro-steps in-process, 2 on two workers (test_train_fsdp)
        {"name": "s2", "input": "tokens", "encoder": "frozen", "train": ["projector", "llm"], "max_frames": 16,
         "max_len": 1024, "lr": 1e-3, "steps": 7, "batch_size": 2, "global_batch_size": 8, "shuffle_buffer": 6,
         "template": "qwen_2", "label_mode": "reference", "group_by": "modality_length",
         "data": [{"name": "short", "shards": ["tokens/webvid/shards/*.tar"]},
                  {"name": "long", "shards": ["tokens/ego4d/shards/*.tar"], "sampling": "first:75%"}]},
    ],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    corrupt = {"webvid_v000004_full": "nan", "webvid_v000009_full": "shape", "webvid_v000013_full": "missing_json"}
    wk = write_synthetic_token_shards(str(root / "tokens/webvid"), 18, source="webvid", frames=(4, 16),
                                      duration=(4, 12), per_shard=6, corrupt=corrupt)
    ek = write_synthetic_token_shards(str(root / "tokens/ego4d"), 8, source="ego4d", frames=(32, 64),
                                      duration=(60, 120), per_shard=4, seed=1)
    fk = write_synthetic_frame_shards(str(root / "ingest/webvid"), 6, source="webvid", per_shard=3)
    drop = [wk[1], wk[7], ek[2]]
    (root / "drop_list.txt").write_text("# audit drop list\n" + "\n".join(drop) + "\n")
    return {"root": root, "keys": wk + ek, "frame_keys": fk, "drop": set(drop), "corrupt": set(corrupt)}


def _recipe(tmp_path: Path, body: dict) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def _keys_seen(out: Path, stage: str) -> list[str]:
    seen = []
    for f in (out / "stages" / stage).glob("keys-rank*.jsonl"):
        for row in read_metrics(str(f)):
            seen += row["keys"]
    return seen


# ---------------------------------------------------------------------------------------------------- recipes


def test_shipped_recipes_follow_the_paper():
    names = ["stage1-connector", "stage2-short", "stage3-short-long", "stage4-highres"]
    for name, n in (("7b", 4), ("2b", 3)):  # 2B: the three released scripts (stages 1-3), all at 448
        cfg = load_recipe(name)
        assert [s.name for s in cfg.stages] == names[:n]
        s1, s2, s3 = cfg.stages[:3]
        assert (s1.train, s1.lr, s1.max_frames, s1.max_len) == (["projector"], 1e-3, 4, 8192)
        assert (s2.lr, s2.max_frames, s2.max_len) == (1e-5, 8, 32768) and "llm" in s2.train
        assert (s3.min_frames, s3.max_frames, s3.lr) == (64, 512, 1e-5)
        assert all(s.input == "tokens" and s.encoder == "frozen" for s in (s1, s2, s3))  # the stated deviation
        assert all(s.warmup_ratio == 0.03 and s.schedule == "cosine" and s.epochs == 1 and s.weight_decay == 0
                   for s in cfg.stages)
        # templates and labels, batches and grouping as the released scripts
        assert (s1.template, s1.chat_mode(), s1.group_by) == ("plain", "plain", "none")
        assert all((s.template, s.chat_mode(), s.group_by) == ("qwen_2", "qwen_2", "modality_length")
                   for s in cfg.stages[1:])
        assert [s.global_batch_size for s in cfg.stages] == [512, 256, 256, 256][:n]
        assert [s.batch_size for s in cfg.stages] == [16, 1, 1, 1][:n]
        assert [s.accumulation(8) for s in cfg.stages] == [4, 32, 32, 32][:n]  # 16 x 4 x 8; 1 x 8 x 32 GPUs
        assert [s.accumulation(32) for s in cfg.stages] == [1, 8, 8, 8][:n]
        assert all(s.frame_bounds == "error" for s in cfg.stages)
    s4 = load_recipe("7b").stages[3]
    assert s4.input == "frames" and set(s4.train) == {"encoder", "projector"} and s4.resolution == 448
    assert (s4.part_lr("encoder"), s4.part_lr("projector")) == (2e-6, 1e-5)
    assert load_recipe("7b").model == "videochat-flash-7b" and load_recipe("2b").model == "videochat-flash-2b"
    tiny = load_recipe("tiny")
    assert len(tiny.stages) == 4 and tiny.stages[-1].input == "frames" and tiny.model == "tiny"
    assert tiny.stages[0].chat_mode() == "plain" and all(s.chat_mode() == "qwen_2" for s in tiny.stages[1:])


def test_lr_schedule_is_hf_cosine_with_warmup():
    """Conformance: HF TrainingArguments.get_warmup_steps and get_cosine_schedule_with_warmup (num_cycles 0.5),
    transcribed here, and the installed transformers' own scheduler, against lr_lambda."""
    import math

    import torch
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from longvid.pipelines.train_recipe import lr_lambda, warmup_steps

    def ref(step, warm, total):  # the HF rule: linear from 0 during warmup, then half a cosine to 0
        if step < warm:
            return float(step) / float(max(1, warm))
        progress = float(step - warm) / float(max(1, total - warm))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    for total in (1, 2, 7, 33, 100, 677):
        for ratio in (0.0, 0.03, 0.1, 0.5):
            warm = math.ceil(total * ratio)
            assert warmup_steps(total, ratio) == warm
            f = lr_lambda(total, ratio, "cosine")
            opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            hf = get_cosine_schedule_with_warmup(opt, warm, total)
            for step in range(total + 1):
                assert f(step) == pytest.approx(ref(step, warm, total), abs=1e-12)
                assert f(step) == pytest.approx(hf.get_last_lr()[0], abs=1e-12)
                opt.step()
                hf.step()
            assert f(0) == (0.0 if warm else 1.0)  # the first optimizer step runs at lr 0 when warming up
            assert total == warm or f(total) == pytest.approx(0.0, abs=1e-12)
            opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            hc = get_constant_schedule_with_warmup(opt, warm)
            g = lr_lambda(total, ratio, "constant")
            for step in range(total + 1):
                assert g(step) == pytest.approx(hc.get_last_lr()[0], abs=1e-12)
                opt.step()
                hc.step()
    assert warmup_steps(4877, 0.03) == 147  # ceil(146.31): the reference counts up


@pytest.mark.skipif(not (SHARED / "data" / "training").is_dir(), reason="needs ../shared")
def test_released_mixtures_expand_with_their_sampling():
    m3 = mixture_datasets(str(SHARED / "data/training/stage3_short-long_mix_sft.yaml"))
    assert len(m3) == 104
    names = dict(m3)
    assert names["textcaps"] == "all" and names["tallyqa(cauldron,llava_format)_fix"] == "first:10%"
    m4 = mixture_datasets(str(SHARED / "data/training/stage4_highres_postsft.yaml"))
    assert sum(s == "first:25%" for _, s in m4) == 101
    from longvid.operators.mixture import parse_strategy

    for _, s in m3 + m4:
        assert str(parse_strategy(s)) == s  # every released strategy is understood, one spelling


def test_mixture_entries_plan_datasets_with_shards(tmp_path, data):
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump({"datasets": [
        {"json_path": "annotations/video/webvid.json", "sampling_strategy": "first:50%"},
        {"json_path": "annotations/video/ego4d.jsonl", "sampling_strategy": "end:2"},
        {"json_path": "annotations/image/not_encoded.json", "sampling_strategy": "all"}]}))
    body = json.loads(json.dumps(MINI))
    body["stages"] = [body["stages"][0]]
    body["stages"][0]["data"] = [{"mixture": str(mix), "shards": ["tokens/{name}/shards/*.tar"], "missing": "skip"}]
    body["stages"][0]["mix"] = "concat"
    cfg = parse_recipe(body, {"out": str(tmp_path / "o"), "data_root": str(data["root"])})
    from longvid.pipelines.train_config import stage_schedule

    cfg.data_root = str(data["root"])
    plan = stage_schedule(cfg, 1)[0]
    assert [(s["name"], sum(b - a for _, a, b in s["pieces"])) for s in plan["sources"]] == [("webvid", 9), ("ego4d", 2)]
    body["stages"][0]["data"][0]["missing"] = "error"
    cfg = parse_recipe(body, {"out": str(tmp_path / "o")})
    cfg.data_root = str(data["root"])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(s1\): data\[0\]: not_encoded: no shard matches"):
        stage_schedule(cfg, 1)


@pytest.mark.parametrize("change,match", [
    ({"train": ["encoder", "projector"]}, r"stages\[0\] \(s1\): train: the encoder cannot be trained from token"),
    ({"encoder": "trained"}, r"encoder: says 'trained'"),
    ({"epochs": 1}, "give exactly one"),
    ({"lr": "fast"}, r"stages\[0\] \(s1\): lr: expected a number"),
    ({"max_frames": 2}, "max_frames"),
    ({"speed": 3}, "speed: unknown field"),
    ({"mix": "random"}, "mix: must be"),
    ({"data": [{"shards": ["x/*.tar"], "sampling": "random:5"}]}, r"stages\[0\]\.data\[0\]: sampling"),
])
def test_recipe_errors_name_the_stage_and_field(tmp_path, change, match):
    body = json.loads(json.dumps(MINI))
    body["stages"][0].update(change)
    with pytest.raises(ConfigError, match=match):
        load_recipe(_recipe(tmp_path, body))


def test_run_errors(tmp_path, data):
    body = json.loads(json.dumps(MINI))
    body["stages"][1]["data"][1]["shards"] = ["tokens/absent/shards/*.tar"]
    cfg = load_recipe(_recipe(tmp_path, body), out=str(tmp_path / "o"), data_root=str(data["root"]))
    with pytest.raises(ConfigError, match=r"stages\[1\] \(s2\): data\[1\]: long: no shard matches"):
        run_train(cfg)
    cfg = load_recipe(_recipe(tmp_path, MINI), out=str(tmp_path / "o"), data_root=str(data["root"]))
    cfg.exclude = ["no_such_drop_list.txt"]
    with pytest.raises(ConfigError, match="no_such_drop_list.txt: cannot read the drop list"):
        run_train(cfg)


def test_global_batch_accumulation_and_epoch_steps(tmp_path, data, capsys):
    from longvid.pipelines.train_config import stage_schedule

    body = json.loads(json.dumps(MINI))
    body["stages"] = [body["stages"][1]]
    body["stages"][0].update({"steps": 0, "epochs": 1, "global_batch_size": 12, "batch_size": 2})
    recipe = _recipe(tmp_path, body)
    cfg = load_recipe(recipe, out=str(tmp_path / "o"), data_root=str(data["root"]))
    cfg.data_root = str(data["root"])
    # samples 18 + 6 (first:75% of 8), 1 worker: 24 // 2 = 12 micro-batches, // 6 accumulation = 2 steps
    plan = stage_schedule(cfg, 1)[0]
    assert (plan["samples"], plan["accum"], plan["global_batch"], plan["steps"]) == (24, 6, 12, 2)
    assert stage_schedule(cfg, 3)[0]["accum"] == 2 and stage_schedule(cfg, 6)[0]["steps"] == 2  # 24 // 12 // 1
    cfg.stages[0].epochs = 0.1
    assert stage_schedule(cfg, 1)[0]["steps"] == 1  # ceil(0.1 x 2)
    cfg.stages[0].epochs = 1
    with pytest.raises(ConfigError, match=r"stages\[0\] \(s2\): global_batch_size: 12 is not a multiple of workers x "
                                          r"batch_size = 4 x 2 = 8; worker counts that divide it: \[1, 2, 3, 6\]"):
        stage_schedule(cfg, 4)
    # the command: exit 2 with one line naming the setting, before any work
    code = longvid(["train", "--config", str(recipe), "--data-root", str(data["root"]), "--out", str(tmp_path / "o2"),
                   "--num-workers", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "global_batch_size" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o2").exists()
    body["stages"][0]["global_batch_size"] = 7
    with pytest.raises(ConfigError, match="global_batch_size: 7 is not a multiple of batch_size 2"):
        load_recipe(_recipe(tmp_path, body))


def test_shards_with_other_frame_bounds_stop_the_stage(tmp_path, data, capsys, caplog):
    from longvid.pipelines.train_config import stage_schedule

    root = tmp_path / "d"
    write_synthetic_token_shards(str(root / "tokens/short"), 4, dim=64, per_shard=2, profile="short")  # 1-8
    write_synthetic_token_shards(str(root / "tokens/long"), 4, dim=64, per_shard=2, profile="long", seed=3)
    body = json.loads(json.dumps(MINI))
    body["stages"] = [body["stages"][1]]
    body["stages"][0].update({"min_frames": 64, "max_frames": 512, "global_batch_size": 0,
                              "data": [{"name": "ok", "shards": ["tokens/long/shards/*.tar"]},
                                       {"name": "short", "shards": ["tokens/short/shards/*.tar"]}]})
    recipe = _recipe(tmp_path, body)
    cfg = load_recipe(recipe, out=str(tmp_path / "o"), data_root=str(root))
    cfg.data_root = str(root)
    with pytest.raises(ConfigError, match=r"stages\[0\] \(s2\): data\[1\]: short: shard .*tokens/short/shards/"
                                          r"shard-[\d-]+\.tar was ingested with frame bounds 1-8 \(profile short\), "
                                          r"this stage's are 64-512"):
        stage_schedule(cfg, 1)
    code = longvid(["train", "--config", str(recipe), "--data-root", str(root), "--out", str(tmp_path / "o2"),
                   "--num-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "frame bounds 1-8" in err[0] and not (tmp_path / "o2").exists()
    # frame_bounds: ignore trains on them, never silently
    cfg.stages[0].frame_bounds = "ignore"
    with caplog.at_level("DEBUG", logger="longvid.train"):
        plan = stage_schedule(cfg, 1)[0]
    assert [s["name"] for s in plan["sources"]] == ["ok", "short"]
    # one warning for the stage; the shard, its bounds and the stage's at debug level
    warned = [r.message for r in caplog.records if r.levelname == "WARNING" and "frame bounds" in r.message]
    assert len(warned) == 1 and "1 shard folder(s)" in warned[0] and "64-512" in warned[0] and "ignore" in warned[0]
    assert any("frame bounds 1-8 (profile short), this stage's are 64-512" in r.message and "ignore" in r.message
               and r.levelname == "DEBUG" for r in caplog.records)
    # shards that record no profile (older jobs, the fixtures) are not checked
    cfg = load_recipe(_recipe(tmp_path, MINI), out=str(tmp_path / "o3"), data_root=str(data["root"]))
    cfg.data_root = str(data["root"])
    assert len(stage_schedule(cfg, 1)) == 2


def test_loss_plots_and_tensorboard_scalars(tmp_path):
    """The plots decode at their sizes with and without steps (a missing or empty metrics file is "no steps", never
    an error); a metrics record's TensorBoard scalars are its numbers, a mapping as one tag per key."""
    from PIL import Image

    from longvid.pipelines.train_report import plot_run_loss, plot_stage_loss, scalars

    rec = {"stage": "s", "step": 3, "steps": 9, "loss": 2.5, "lr": {"projector": 1e-3, "llm": 1e-5}, "grad_norm": 0.7,
           "samples": 8, "rank0_skipped": {"excluded": 2}, "time": 1.0}
    assert scalars(rec) == {"loss": 2.5, "lr/projector": 1e-3, "lr/llm": 1e-5, "grad_norm": 0.7, "samples": 8.0,
                            "rank0_skipped/excluded": 2.0}
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({**rec, "step": i, "loss": 3 - i / 10}) + "\n" for i in range(1, 10)))
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rec) + "\n")
    for png, size in ((plot_stage_loss(str(m), str(tmp_path / "a.png"), "t"), (800, 450)),
                      (plot_stage_loss(str(one), str(tmp_path / "b.png")), (800, 450)),
                      (plot_stage_loss(str(tmp_path / "none.jsonl"), str(tmp_path / "c.png")), (800, 450)),
                      (plot_run_loss([("s1", str(m)), ("s2", str(one)), ("s3", str(tmp_path / "none.jsonl"))],
                                     str(tmp_path / "run.png")), (960, 480)),
                      (plot_run_loss([], str(tmp_path / "empty.png")), (960, 480))):
        with Image.open(png) as img:
            img.verify()
        assert Image.open(png).size == size


def test_accumulation_syncs_once_and_averages_as_the_reference():
    """accumulate over a stand-in model whose loss is the mean of per-token values times a weight: the gradient is
    the reference's (mean over micro-batches of each micro-batch's token mean) or the global token mean, and the
    wrapper's no_sync covers every micro-step but the last."""
    import contextlib

    import torch

    from longvid.pipelines.train_config import StageConfig
    from longvid.pipelines.train_recipe import accumulate
    from longvid.pipelines.loader import Batch

    class Plain(torch.nn.Module):  # one worker: the model is not wrapped
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.synced = []
            self._sync = True

        def forward(self, ids, mask, labels, visual, kind, side, splits=None):
            self.synced.append(self._sync)
            keep = labels[:, 1:] != -100
            return (self.w * labels[:, 1:].float())[keep].mean()

    class Wrapped(Plain):  # DDP / FSDP: gradients are synchronised unless inside no_sync
        @contextlib.contextmanager
        def no_sync(self):
            self._sync = False
            yield
            self._sync = True

    def batch(rows):  # labels: -100 then the token values
        width = max(len(r) for r in rows) + 1
        lab = torch.full((len(rows), width), -100)
        for i, r in enumerate(rows):
            lab[i, 1:1 + len(r)] = torch.tensor(r)
        return Batch(lab.clone(), torch.ones_like(lab), lab, [torch.zeros(1, 2)] * len(rows),
                     [f"k{i}" for i in range(len(rows))], 3 * len(rows), len(rows), {"n": len(rows)})

    micro = [batch([[1, 2, 3]]), batch([[10]]), batch([[4, 4], [6]])]
    for mode, want in (("micro_batch", (2 + 10 + 14 / 3) / 3), ("tokens", (6 + 10 + 14) / 7)):
        st = StageConfig(name="s", data=[], loss_average=mode)
        m = Wrapped()
        loss, stats, last, keys = accumulate(m, iter(micro), 3, st, 224, 1, torch.device("cpu"))
        assert m.synced == [False, False, True]
        assert m.w.grad.item() == pytest.approx(want) and loss == pytest.approx(want)
        assert stats.tolist() == pytest.approx([want, 4, 12, 4]) and last is micro[2]
        assert keys == ["k0", "k0", "k0", "k1"]
    m = Plain()
    accumulate(m, iter(micro[:1]), 1, StageConfig(name="s", data=[]), 224, 1, torch.device("cpu"))
    assert m.synced == [True]


# ---------------------------------------------------------------------------------------------------- in-process


def test_resume_gives_the_same_next_losses_and_drop_list_holds(tmp_path, data):
    recipe = _recipe(tmp_path, MINI)
    common = ["--config", str(recipe), "--data-root", str(data["root"]), "--exclude", "drop_list.txt",
              "--num-workers", "0"]
    # uninterrupted
    assert longvid(["train", *common, "--out", str(tmp_path / "a")]) == 0
    a = tmp_path / "a"
    # interrupted at s2 step 5 (checkpoint at 3), then --resume
    cfg = load_recipe(recipe, out=str(tmp_path / "b"), data_root=str(data["root"]), num_workers=0)
    cfg.exclude = ["drop_list.txt"]
    with pytest.raises(WorkerKilled):  # a hook the test installs kills the (only) worker after step 5
        run_train(cfg, hooks=[KillWorkerOnce("s2", 5, rank=0)])
    b = tmp_path / "b"
    assert [r["step"] for r in read_metrics(str(b / "stages/s2/metrics.jsonl"))] == [1, 2, 3, 4, 5]
    assert longvid(["train", *common, "--out", str(b)]) == 2  # an existing run is not overwritten without --resume
    assert longvid(["train", *common, "--out", str(b), "--resume"]) == 0
    ma = read_metrics(str(a / "stages/s2/metrics.jsonl"))
    mb = read_metrics(str(b / "stages/s2/metrics.jsonl"))
    assert [r["step"] for r in mb] == list(range(1, 8))
    assert [r["loss"] for r in mb] == [r["loss"] for r in ma]  # steps 4-7 recomputed after the restore: identical
    assert [r["lr"] for r in mb] == [r["lr"] for r in ma]
    for stage in ("s1", "s2"):
        wa = load_file(str(a / "stages" / stage / "model.safetensors"))
        wb = load_file(str(b / "stages" / stage / "model.safetensors"))
        assert all((wa[k] == wb[k]).all() for k in wa)
    # stage 2 started from stage 1's weights; stage 1 only trained the projector
    init = load_file(str(a / "stages/s1/model.safetensors"))
    s2 = load_file(str(a / "stages/s2/model.safetensors"))
    assert not (init["vlm.llm.model.norm.weight"] == s2["vlm.llm.model.norm.weight"]).all()
    # excluded and malformed keys never reached a batch; every other key did
    for out in (a, b):
        seen = set(_keys_seen(out, "s1")) | set(_keys_seen(out, "s2"))
        assert not seen & data["drop"] and not seen & data["corrupt"]
    summary = json.loads((a / "summary.json").read_text())
    assert set(summary["stages"]) == {"s1", "s2"}
    assert summary["checkpoint"] == str(a / "stages/s2/model.safetensors")
    # the final weights exported for other trainers: transformers loads llm/ as the trained LLM, the released names
    # hold the projector, and a re-run (b resumed above) keeps the export it finds
    from transformers import AutoModelForCausalLM

    export = Path(summary["export"])
    assert export == a / "export" and (b / "export" / "llm" / "config.json").is_file()
    llm = AutoModelForCausalLM.from_pretrained(export / "llm")
    assert (llm.model.norm.weight.detach() == s2["vlm.llm.model.norm.weight"]).all()
    vision = load_file(str(export / "vision.safetensors"))
    assert (vision["model.mm_projector.mlp.0.weight"] == s2["vlm.projector.mlp.0.weight"]).all()
    skipped = summary["stages"]["s1"]["rank0_skipped"]
    assert skipped.get("excluded") and skipped.get("skipped") == sum(
        skipped.get(r, 0) for r in ("non-finite tokens", "wrong shape", "missing json"))
    rows = read_metrics(str(a / "stages/s2/metrics.jsonl"))
    # s2: global batch 8 on one worker = 4 micro-batches of 2 per optimizer step, resumed exactly (above)
    assert summary["stages"]["s2"]["accumulation"] == 4 and all(r["samples"] == 8 for r in rows)
    assert summary["stages"]["s1"]["labels"] == "plain" and summary["stages"]["s2"]["labels"] == "qwen_2"
    assert all(r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 and r["visual_tokens_per_sample"] >= 64 for r in rows)
    assert all(r["visual_tokens_per_sample"] <= 4 * 64 for r in rows)  # 16 frames at most: 4 clips
    # the plots: each stage's loss (800 x 450) and the run's, one line per stage (960 x 480); they decode
    from PIL import Image

    assert summary["stages"]["s2"]["plot"] == str(a / "stages/s2/loss.png") and summary["plot"] == str(a / "loss.png")
    for png, size in ((a / "stages/s1/loss.png", (800, 450)), (a / "stages/s2/loss.png", (800, 450)),
                      (a / "loss.png", (960, 480)), (b / "loss.png", (960, 480))):
        with Image.open(png) as img:
            img.verify()
        assert Image.open(png).size == size
    # TensorBoard events beside metrics.jsonl (rank 0): every scalar of every step, once. In b, the resumed
    # writer's purge marker hides the steps 4-5 the interrupted attempt wrote (one event file each)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((b / "tensorboard/s2").glob("events.out.tfevents.*"))) == 2
    for out in (a, b):
        for stage in ("s1", "s2"):
            rows = read_metrics(str(out / "stages" / stage / "metrics.jsonl"))
            ea = EventAccumulator(str(out / "tensorboard" / stage))
            ea.Reload()
            assert {"loss", "grad_norm", "tokens_per_s", "samples_per_s", "lr/projector"} <= set(ea.Tags()["scalars"])
            for tag, want in (("loss", [r["loss"] for r in rows]), ("grad_norm", [r["grad_norm"] for r in rows]),
                              ("tokens_per_s", [r["tokens_per_s"] for r in rows]),
                              ("lr/projector", [r["lr"]["projector"] for r in rows])):
                ev = ea.Scalars(tag)
                assert [e.step for e in ev] == [r["step"] for r in rows], (out, stage, tag)
                assert [e.value for e in ev] == pytest.approx(want, rel=1e-6), (out, stage, tag)  # float32 there


# ---------------------------------------------------------------------------------------------------- Ray Train


@pytest.mark.slow
def test_tiny_recipe_on_two_ray_workers_with_a_killed_worker(tmp_path, data):
    cfg = load_recipe("tiny", out=str(tmp_path / "run"), data_root=str(data["root"]), num_workers=2, num_cpus=2)
    cfg.stages[1].data = [d for d in cfg.stages[1].data if not d.mixture]  # the demo's own mixture is not here
    cfg.exclude = ["drop_list.txt"]
    cfg.record_keys = True
    cfg.quiet = True
    # the test corpus has 2 token sources; the tiny recipe's stage 3 also lists demo sources that may be absent
    # worker 1 dies once at step 15; Ray Train restarts from the step-10 checkpoint
    summary = run_train(cfg, hooks=[KillWorkerOnce("stage2-short", 15, rank=1)])
    out = tmp_path / "run"
    names = [s.name for s in cfg.stages]
    assert list(summary["stages"]) == names and summary["workers"] == 2
    assert (out / ".fault-stage2-short-15-1").exists()
    for st in cfg.stages:
        rows = read_metrics(str(out / "stages" / st.name / "metrics.jsonl"))
        assert [r["step"] for r in rows] == list(range(1, st.steps + 1))
        assert all(r["samples"] == st.global_batch_size for r in rows)  # both workers x accumulation, every step
        assert (out / "stages" / st.name / "loss.png").is_file()
        assert (out / "stages" / st.name / "model.safetensors").is_file()
        seen = [set(_keys_seen(out, st.name))]
        assert not seen[0] & data["drop"] and not seen[0] & data["corrupt"]
    s = summary["stages"]
    for name in ("stage2-short", "stage3-short-long"):  # the LLM-training stages learn
        assert s[name]["loss_last"] < s[name]["loss_first"] - 0.2, (name, s[name])
    assert s["stage4-highres"]["loss_last"] < s["stage1-connector"]["loss_first"] - 1.0
    # the two workers read disjoint samples in a stage's first epoch
    r0 = [k for row in read_metrics(str(out / "stages/stage1-connector/keys-rank0.jsonl"))[:2] for k in row["keys"]]
    r1 = [k for row in read_metrics(str(out / "stages/stage1-connector/keys-rank1.jsonl"))[:2] for k in row["keys"]]
    assert r0 and r1 and not set(r0) & set(r1)
    assert set(_keys_seen(out, "stage4-highres")) <= set(data["frame_keys"])
