"""longvid plan: the arithmetic against hand-computed values, the streamed corpus scan, the printed table."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from longvid.jobs.cli import main as cli_main
from longvid.manifests.schema import MANIFEST_SCHEMA, TOKEN_MANIFEST_SCHEMA, rows_to_table
from longvid.model.config import QWEN2_7B, QWEN25_1_5B
from longvid.model.dropout import DropoutConfig
from longvid.model.umt import UMTConfig
from longvid.pipelines.plan import (Corpus, PlanConfig, compute_plan, encoder_flops_per_clip, gpu_hours, llm_prefill,
                            scan_manifests, visual_per_layer)

# UMT-L at 224, by hand: N = 4 x 14 x 14 = 784 tokens, D = 1024, MLP 4096, 23 blocks
PATCH_224 = 2 * 784 * (3 * 16 * 16) * 1024  # 1,233,125,376
BLOCKS_224 = 23 * (24 * 784 * 1024**2 + 4 * 784**2 * 1024)  # 511,695,650,816
# merging 784 -> 392 -> 196 -> 98 -> 64: similarity on 64-d chunk means + 3 n D elementwise per round
MERGE_224 = 2 * 64 * (392 * 392 + 196 * 196 + 98 * 98 + 49 * 49) + 3 * 1024 * (784 + 392 + 196 + 98)  # 30,638,720


def test_encoder_flops_umt_l_224_by_hand():
    f = encoder_flops_per_clip(UMTConfig.umt_l(224))
    assert f["patch_embed"] == PATCH_224 == 1_233_125_376
    assert f["qkv_proj"] + f["attention"] + f["mlp"] == BLOCKS_224 == 511_695_650_816
    assert f["attention"] == 23 * 4 * 784**2 * 1024
    assert f["merge"] == MERGE_224 == 30_638_720
    assert f["total"] == 512_959_414_912  # about 128 GFLOPs per frame
    assert f["vit"] == f["total"] - f["merge"]


def test_encoder_flops_umt_l_448_by_hand():
    f = encoder_flops_per_clip(UMTConfig.umt_l(448))  # N = 3136 tokens: attention grows 16x, the rest 4x
    assert f["patch_embed"] == 4_932_501_504
    assert f["qkv_proj"] + f["attention"] + f["mlp"] == 2_741_648_752_640
    # 3136 -> 1568 -> 784 -> 392 -> 196 -> 98 -> 64
    assert f["merge"] == 128 * (1568**2 + 784**2 + 392**2 + 196**2 + 98**2 + 49**2) + 3072 * 6174 == 438_469_248


def test_qwen2_7b_prefill_and_kv_at_10000_frames_by_hand():
    t = 10000 * 16  # HiCo tokens
    per_token_layer = 4 * 3584 * 3584 + 4 * 3584 * 512 + 6 * 3584 * 18944
    assert per_token_layer == 466_092_032
    r = llm_prefill(QWEN2_7B, t)
    assert r["linear"] == 28 * t * per_token_layer
    assert r["attention"] == 28 * 2 * t * t * 3584  # causal half of 2 x 2 T^2 (28 heads x 128)
    assert r["lm_head"] == 2 * 3584 * 152064
    assert r["total"] == pytest.approx(7.2265e15, rel=1e-4)
    assert r["kv_bytes"] == t * 28 * 2 * 4 * 128 * 2 == 9_175_040_000  # 57,344 bytes per token
    dense = llm_prefill(QWEN2_7B, 10000 * 196)
    assert dense["kv_bytes"] == 10000 * 196 * 57344
    assert dense["total"] / r["total"] > 100  # attention is quadratic in the 12.25x longer sequence


def test_visual_dropout_released_setting_by_hand():
    assert visual_per_layer(160000, 28, DropoutConfig()) == [160000] * 4 + [120000] * 14 + [40000] * 10
    r = llm_prefill(QWEN2_7B, 160000, dropout=DropoutConfig())
    token_layers = 4 * 160000 + 14 * 120000 + 10 * 40000
    assert r["kv_bytes"] == token_layers * 2 * 512 * 2
    assert r["linear"] == token_layers * 466_092_032
    assert r["attention"] == 2 * 3584 * (4 * 160000**2 + 14 * 120000**2 + 10 * 40000**2)
    # text tokens are never dropped
    r2 = llm_prefill(QWEN2_7B, 1000, text_tokens=100, dropout=DropoutConfig())
    assert visual_per_layer(1000, 28, DropoutConfig())[27] == 250
    assert r2["kv_bytes"] == (4 * 1100 + 14 * 850 + 10 * 350) * 2048


def test_qwen25_1_5b_kv_and_linear_by_hand():
    r = llm_prefill(QWEN25_1_5B, 1000)
    # h 1536, 12 heads x 128, 2 KV heads x 128, MLP 8960, 28 layers, vocab 151936
    assert r["linear"] == 28 * 1000 * (4 * 1536 * 1536 + 4 * 1536 * 256 + 6 * 1536 * 8960)
    assert r["kv_bytes"] == 1000 * 28 * 2 * 2 * 128 * 2
    assert r["lm_head"] == 2 * 1536 * 151936


def test_gpu_hours():
    assert gpu_hours(989e12 * 0.4 * 3600, "H100", 0.4) == pytest.approx(1.0)
    assert gpu_hours(312e12 * 3600, "A100", 1.0) == pytest.approx(1.0)


def _job(d, frames, durations, resolution=224, token=False):
    (d / "manifests").mkdir(parents=True)
    rows = [{"key": f"k{i}", "num_frames": n, "duration": s, "resolution": resolution}
            for i, (n, s) in enumerate(zip(frames, durations))]
    pq.write_table(rows_to_table(rows, TOKEN_MANIFEST_SCHEMA if token else MANIFEST_SCHEMA),
                   d / "manifests" / "part-000000.parquet")


def test_scan_manifests_streams_every_job(tmp_path):
    _job(tmp_path / "a", [8, 6, 64], [8.0, 5.5, 70.0])
    _job(tmp_path / "b", [4], [2.0], token=True)  # an encode job's manifests read the same way
    c = scan_manifests(str(tmp_path))
    assert (c.samples, c.frames, c.clips, c.jobs) == (4, 82, 2 + 2 + 16 + 1, 2)
    assert c.seconds == pytest.approx(85.5) and c.resolutions == {224: 4}
    one = scan_manifests(str(tmp_path / "a"))
    assert (one.samples, one.clips) == (3, 20)


def test_compute_plan_corpus_numbers(tmp_path):
    corpus = Corpus(samples=3, frames=78, clips=20, seconds=83.5, resolutions={224: 3}, jobs=1)
    p = compute_plan(PlanConfig(gpu="A100", mfu=0.5, frames=1000), corpus)
    c = p["corpus"]
    assert p["resolution"] == 224 and p["tokens_per_frame"] == {"dense": 196, "hico": 16}
    assert c["storage_bytes"] == {"dense": 78 * 196 * 2048, "hico": 78 * 16 * 2048}
    assert c["encoder_flops"]["hico"] == 20 * 512_959_414_912
    assert c["encoder_flops"]["dense"] == 20 * (512_959_414_912 - MERGE_224)
    assert c["gpu_hours"]["A100"] == pytest.approx(20 * 512_959_414_912 / (312e12 * 0.5) / 3600)
    inf = p["inference"]
    assert inf["encoder_flops"] == 250 * 512_959_414_912
    assert set(inf["llms"]) == {"Qwen2-7B", "Qwen2.5-1.5B"}
    assert inf["llms"]["Qwen2-7B"]["hico"]["tokens_in"] == 16000
    assert inf["llms"]["Qwen2-7B"]["dense"]["tokens_in"] == 196000
    p448 = compute_plan(PlanConfig(resolution=448, model="videochat-flash-2b"), corpus)
    assert p448["tokens_per_frame"]["dense"] == 784 and list(p448["inference"]["llms"]) == ["Qwen2.5-1.5B"]
    assert p448["inference"]["llms"]["Qwen2.5-1.5B"]["dense"]["tokens_in"] == 10000 * 784


def test_cli_prints_tables_and_writes_json(tmp_path, capsys):
    _job(tmp_path / "job", [8, 64], [8.0, 70.0])
    out = tmp_path / "plan.json"
    assert cli_main(["plan", "--manifests", str(tmp_path / "job"), "--gpu", "A100", "--frames", "10000",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for s in ("dense", "hico+dropout", "Qwen2-7B", "Qwen2.5-1.5B", "A100", "MFU", "KV cache", "72 frames", "513 GFLOP"):
        assert s in text, s
    assert "8.54 GiB" in text  # 160,000 HiCo tokens x 57,344 B
    data = json.loads(out.read_text())
    assert data["corpus"]["frames"] == 72 and data["gpu"] == "A100"


def test_cli_errors_name_the_field(tmp_path, capsys):
    assert cli_main(["plan", "--manifests", str(tmp_path / "missing")]) == 2
    assert "manifests" in capsys.readouterr().err
    cfg = tmp_path / "p.yaml"
    cfg.write_text("gpu: TPUv5\n")
    assert cli_main(["plan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "gpu" in err and "p.yaml" in err
    assert cli_main(["plan", "--frames", "0"]) == 2
    assert "frames" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- cluster view

HOUR_CORPUS = Corpus(samples=1000, frames=512_000, clips=128_000, seconds=1000 * 3600.0, resolutions={224: 1000},
                     jobs=1)
FLOPS_PER_FRAME_224 = 512_959_414_912 / 4


def stages(job: dict) -> dict[str, float]:
    return {st["stage"]: st["hours"] for st in job["stages"]}


def r_driver_unit(c: dict) -> dict:
    r = c["rates"]["encode_driver_bytes_per_unit"]
    return {"value": r["value"], "measured": r["measured"]}


def test_cluster_view_by_hand():
    p = compute_plan(PlanConfig(manifests="x", nodes=4, cpus=32, gpus=8, network_gbps=25), HOUR_CORPUS)
    c = p["cluster"]
    link = 25e9 / 8
    ing = stages(c["ingest"])
    assert ing["CPU decode"] == pytest.approx((1000 / 38 + 512_000 * 0.001 / 3600) / 128)
    assert ing["network/S3"] == pytest.approx(max(1000 * 3600 * 5e6 / 8, 512_000 * 19_400) / (4 * link) / 3600)
    assert ing["driver"] == pytest.approx(9 * 0.005 / 3600)  # ceil(1000 / 116) units
    assert c["ingest"]["bottleneck"] == "CPU decode" and c["ingest"]["hours"] == ing["CPU decode"]
    enc = stages(c["encode"])
    gpu_fps = 150e12 / FLOPS_PER_FRAME_224
    assert round(gpu_fps) == 1170  # BENCHMARKS.md's "~1,200 frames/s at 224"
    assert enc["GPU encode"] == pytest.approx(512_000 / (gpu_fps * 32) / 3600)
    assert enc["CPU prep"] == pytest.approx(512_000 / (90 * 128) / 3600)
    assert enc["network/S3"] == pytest.approx(512_000 * 32_840 / (4 * link) / 3600)
    # the actors commit their units: the driver schedules 9 units and gets ~150 bytes of counts each, no token
    assert enc["driver"] == pytest.approx(9 * (0.005 + 150 / link) / 3600)
    assert c["driver_token_share"] == pytest.approx(9 * 150 / (512_000 * 32_840))
    assert r_driver_unit(c) == {"value": 150.0, "measured": True}
    assert c["encode"]["bottleneck"] == "CPU prep"
    r = c["rates"]
    assert r["gpu_frames_per_s"]["measured"] is False and r["gpu_sustained_tflops"]["measured"] is False
    assert r["ingest_video_h_per_core_h"]["measured"] is True and r["token_bytes_per_frame"]["measured"] is True
    assert r["source_bitrate"]["measured"] is False


def test_cluster_view_bottlenecks_move_with_the_shape():
    slow_net = compute_plan(PlanConfig(manifests="x", nodes=8, cpus=64, gpus=8, network_gbps=1), HOUR_CORPUS)
    assert slow_net["cluster"]["ingest"]["bottleneck"] == "network/S3"
    # on a 1 Gbit/s link the token bytes leaving every node bound the encode, not the driver (it carries no token)
    assert slow_net["cluster"]["encode"]["bottleneck"] == "network/S3"
    assert stages(slow_net["cluster"]["encode"])["driver"] < 0.01 * stages(slow_net["cluster"]["encode"])["network/S3"]
    few_gpus = compute_plan(PlanConfig(manifests="x", nodes=1, cpus=256, gpus=1), HOUR_CORPUS)["cluster"]
    assert few_gpus["encode"]["bottleneck"] == "GPU encode"
    cpu_only = compute_plan(PlanConfig(manifests="x", nodes=1, cpus=2, gpus=0), HOUR_CORPUS)["cluster"]
    assert cpu_only["encode"]["bottleneck"] == "CPU encode"
    assert stages(cpu_only["encode"])["CPU encode"] == pytest.approx(512_000 / (0.5 * 2) / 3600)
    measured = compute_plan(PlanConfig(manifests="x", nodes=1, cpus=256, gpus=1, gpu_fps=600), HOUR_CORPUS)
    gpu = measured["cluster"]["rates"]["gpu_frames_per_s"]
    assert gpu["value"] == 600 and gpu["measured"] is True
    assert stages(measured["cluster"]["encode"])["GPU encode"] == pytest.approx(512_000 / 600 / 3600)
    more_src = compute_plan(PlanConfig(manifests="x", nodes=8, cpus=64, gpus=8, network_gbps=1, source_mbps=10),
                            HOUR_CORPUS)["cluster"]
    assert stages(more_src["ingest"])["network/S3"] == pytest.approx(2 * stages(slow_net["cluster"]["ingest"])
                                                                      ["network/S3"])
    at448 = compute_plan(PlanConfig(manifests="x", resolution=448, nodes=1, gpus=1), HOUR_CORPUS)["cluster"]
    assert at448["resolution"] == 448 and round(at448["rates"]["gpu_frames_per_s"]["value"]) == 218  # "220 at 448"
    assert compute_plan(PlanConfig(), HOUR_CORPUS).get("cluster") is None  # nodes 0: no cluster view


def test_cli_cluster_view(tmp_path, capsys):
    _job(tmp_path / "job", [512] * 10, [3600.0] * 10)
    out = tmp_path / "plan.json"
    assert cli_main(["plan", "--manifests", str(tmp_path / "job"), "--nodes", "2", "--cpus", "16", "--gpus", "4",
                     "--network-gbps", "10", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for s in ("Cluster: 2 node(s) x 16 CPUs, 4 GPUs, 10 Gbit/s each (32 CPUs, 8 GPUs)", "ingest: ~", "encode: ~",
              "bound by", "CPU decode", "GPU encode", "network/S3", "driver", "Measured here", "Estimates",
              "1,170 frames/s per GPU", "Mbit/s of the source videos"):
        assert s in text, s
    measured, estimates = text.split("Measured here")[1].split("Estimates")
    assert "38 video-hours per core-hour" in measured and "gpu_frames_per_s" in estimates
    data = json.loads(out.read_text())
    assert data["cluster"]["nodes"] == 2 and data["cluster"]["encode"]["bottleneck"] in {
        "GPU encode", "CPU prep", "network/S3", "driver"}
    # the shape from a YAML job file; flags override it
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"manifests: {tmp_path / 'job'}\nnodes: 3\ncpus: 8\ngpus: 0\nnetwork_gbps: 100\n")
    assert cli_main(["plan", "--config", str(cfg), "--cpus", "4"]) == 0
    text = capsys.readouterr().out
    assert "3 node(s) x 4 CPUs, 0 GPUs, 100 Gbit/s" in text and "CPU encode" in text


def test_cli_cluster_view_errors(tmp_path, capsys):
    assert cli_main(["plan", "--nodes", "2"]) == 2  # no corpus to plan
    err = capsys.readouterr().err
    assert "nodes" in err and "--manifests" in err
    _job(tmp_path / "job", [8], [8.0])
    for flag, value in (("--network-gbps", "0"), ("--cpus", "0"), ("--gpus", "-1"), ("--source-mbps", "nan")):
        assert cli_main(["plan", "--manifests", str(tmp_path / "job"), "--nodes", "1", flag, value]) == 2
        assert flag[2:].replace("-", "_") in capsys.readouterr().err, flag
