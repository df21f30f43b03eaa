"""Plan: what a corpus and its inference cost, from the manifests alone (no video is opened).

    manifests (ingest or encode job dirs) ──pyarrow, streamed──▶ samples, frames, clips, hours
    + encoder sizes (model.config) ──▶ tokens per frame dense vs HiCo, token storage, encoder FLOPs, GPU-hours
    + LLM sizes (Qwen2-7B, Qwen2.5-1.5B) ──▶ prefill FLOPs and KV cache at N frames: dense, HiCo, HiCo + dropout

FLOP convention: 2 FLOPs per multiply-add of every matrix product (weights and attention), elementwise work
counted only where it is the point (the merging's averages); LayerNorm/RMSNorm, softmax, GELU/SiLU, RoPE and
biases are left out (each well under 1% here).

Encoder (UMT ViT, per clip of F = 4 frames, N = F x L tokens, L = (S / 16)^2, width D, MLP width M = 4D):
    patch embed   2 N (3 * 16 * 16) D
    per block     qkv 2 N D 3D + out proj 2 N D^2 + scores 2 N^2 D + weighted values 2 N^2 D + MLP 2 * 2 N D M
    blocks        x used_depth (23 of 24 for UMT-L: select layer -2)
    merging       per round on n tokens: similarity 2 ceil(n/2) floor(n/2) (D / heads) + 3 n D (chunk mean,
                  size-weighted sum, division); rounds 784 -> 392 -> 196 -> 98 -> 64 at 224
The dense alternative runs the same ViT without merging: the FLOPs differ only by the merging term.

LLM prefill (per decoder layer on T tokens; h hidden, q heads x head_dim, kv heads x head_dim, I MLP width):
    q, o          2 * 2 T h (heads * head_dim)
    k, v          2 * 2 T h (kv_heads * head_dim)
    MLP (SwiGLU)  3 * 2 T h I
    attention     causal: half of the T x T scores and of the weighted sum: 2 * 2 T^2 (heads * head_dim) / 2
    + the LM head for the last position only: 2 h V
KV cache: per layer 2 (K, V) x kv_heads x head_dim x 2 bytes (bf16) per token the layer holds.
Visual dropout (inference only, model.dropout.DropoutConfig; released: layers (4, 18), ratios (1, 0.75, 0.25)):
layers 1-4 see all N visual tokens, layers 5-18 int(0.75 N), layers 19-28 int(0.25 N); later layers hold fewer
tokens in the KV cache too. The attention-scoring pass that picks the tokens is not counted (< 0.1%).

GPU-hours = FLOPs / (peak dense bf16 TFLOPs x MFU) with an assumed MFU (printed; --mfu to change it).

Cluster view (--nodes N, with --cpus, --gpus, --network-gbps per node): the wall time of ingest and of encode of the
corpus on that cluster, each stage's time at its rate, the largest being the bottleneck (the stages overlap):
    ingest  CPU decode   video-hours / (38 video-h per core-hour, measured) + frames x 1 ms (the mp4 coding since)
            network/S3   source bytes in (video-hours x --source-mbps, an estimate: manifests do not record it) and
                         stored mp4 bytes out (per frame, measured), over every node's link
            driver       units x 5 ms (an estimate; a unit's arguments and result are a few KiB)
    encode  GPU encode   frames / (per-GPU frames/s: --gpu-fps if measured, else 150 TFLOP/s sustained / FLOPs per
                         frame, an estimate: ~1,200 at 224 px; no GPU here) -- on CPUs (--gpus 0) ~0.5 frames/s per
                         core at 224, measured
            CPU prep     frames / (decode + resize of stored frames, per core, measured)
            network/S3   stored mp4 bytes in, token bytes out (measured per frame), over every node's link
            driver       units x (5 ms + 150 B over its link): the encoder actors commit their units, the driver
                         schedules them and receives ~150 bytes of counts per unit, no token (issue 15; BENCHMARKS.md
                         'Encode at scale': ~1e-5 of the token bytes on its units of 6 samples)
Every rate says whether it was measured here (BENCHMARKS.md) or is an estimate (CLUSTER_RATES).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from longvid.model.config import PRESETS, QWEN2_7B, QWEN25_1_5B, get_config
from longvid.model.dropout import DropoutConfig
from longvid.model.tome import merge_schedule
from longvid.model.umt import UMTConfig
from longvid.operators.errors import ConfigError
from longvid.pipelines.plan_config import GPUS, PlanConfig

LLMS: dict[str, tuple[str, dict[str, Any]]] = {  # model preset -> (LLM name, Qwen2 config numbers)
    "videochat-flash-7b": ("Qwen2-7B", QWEN2_7B),
    "videochat-flash-2b": ("Qwen2.5-1.5B", QWEN25_1_5B),
}
from longvid.model.constants import TOKENS_PER_FRAME  # noqa: E402 - HiCo
STORE_BYTES = 2  # fp16 tokens
KV_BYTES = 2  # bf16 cache


# ------------------------------------------------------------------------------------------------- encoder


def encoder_flops_per_clip(umt: UMTConfig, tokens_per_frame: int = TOKENS_PER_FRAME) -> dict[str, int]:
    """FLOPs of one 4-frame clip through the UMT ViT and the HiCo merging, by part (see module docstring)."""
    n, d = umt.tokens_per_clip, umt.width
    m = int(d * umt.mlp_ratio)
    patch = 2 * n * (3 * umt.patch_size * umt.patch_size * umt.tubelet) * d
    proj = umt.used_depth * (2 * n * d * 3 * d + 2 * n * d * d)
    attn = umt.used_depth * (2 * n * n * d * 2)
    mlp = umt.used_depth * (2 * 2 * n * d * m)
    chunk = d // umt.heads
    merge = 0
    cur = n
    for r in merge_schedule(n, tokens_per_frame * umt.num_frames):
        a, b = (cur + 1) // 2, cur // 2
        merge += 2 * a * b * chunk + 3 * cur * d
        cur -= r
    vit = patch + proj + attn + mlp
    return {"patch_embed": patch, "qkv_proj": proj, "attention": attn, "mlp": mlp, "vit": vit, "merge": merge,
            "total": vit + merge}


# ------------------------------------------------------------------------------------------------- LLM


def visual_per_layer(n_visual: int, layers: int, dropout: DropoutConfig | None) -> list[int]:
    """Visual tokens each decoder layer (0-based) processes: all of them, or fewer after each dropout point."""
    if dropout is None:
        return [n_visual] * layers
    kept = dropout.kept_counts(n_visual)
    out = []
    for i in range(layers):
        stage = sum(1 for p in dropout.layers if i >= p)  # after layer p (1-based) ran, i.e. from index p on
        out.append(kept[stage])
    return out


def llm_prefill(llm: dict[str, Any], n_visual: int, text_tokens: int = 0,
                dropout: DropoutConfig | None = None) -> dict[str, float]:
    """Prefill FLOPs and KV-cache bytes of a Qwen2-style LLM on `n_visual` visual + `text_tokens` text tokens."""
    h, inter, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    nh, nkv = llm["num_attention_heads"], llm["num_key_value_heads"]
    hd = llm.get("head_dim") or h // nh
    q_dim, kv_dim = nh * hd, nkv * hd
    per_token = 2 * 2 * h * q_dim + 2 * 2 * h * kv_dim + 3 * 2 * h * inter
    linear = attn = kv_tokens = 0
    for v in visual_per_layer(n_visual, layers, dropout):
        t = v + text_tokens
        linear += per_token * t
        attn += 2 * t * t * q_dim  # causal: (2 products x 2 T^2 q_dim) / 2
        kv_tokens += t
    head = 2 * h * llm["vocab_size"]
    return {"linear": float(linear), "attention": float(attn), "lm_head": float(head),
            "total": float(linear + attn + head), "kv_bytes": float(kv_tokens * 2 * kv_dim * KV_BYTES),
            "tokens_in": n_visual + text_tokens}


# ------------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    samples: int = 0
    frames: int = 0
    clips: int = 0
    seconds: float = 0.0
    resolutions: dict[int, int] = dataclasses.field(default_factory=dict)  # resolution -> samples
    jobs: int = 0


def scan_manifests(uri: str) -> Corpus:
    """Stream the manifests under `uri` (a job dir, its manifests/ folder, one part, or a folder of jobs)."""
    import pyarrow.compute as pc

    from longvid.manifests.readers import ManifestError, find_jobs, iter_batches

    try:
        jobs = find_jobs(uri)
    except FileNotFoundError as e:
        raise ConfigError(f"manifests: {e}") from None
    c = Corpus(jobs=len(jobs))
    try:
        for _, b in iter_batches(jobs, ["num_frames", "duration", "resolution"]):
            nf = b.column("num_frames").fill_null(0).cast("int64")
            c.samples += b.num_rows
            c.frames += int(pc.sum(nf).as_py() or 0)
            c.clips += int(pc.sum(pc.divide(pc.add(nf, 3), 4)).as_py() or 0)  # ceil(num_frames / 4)
            c.seconds += float(pc.sum(b.column("duration")).as_py() or 0.0)
            vc = pc.value_counts(b.column("resolution"))
            for item in vc.to_pylist():
                if item["values"] is not None:
                    c.resolutions[int(item["values"])] = c.resolutions.get(int(item["values"]), 0) + item["counts"]
    except ManifestError as e:
        raise ConfigError(f"manifests: {e}") from None
    return c


# ------------------------------------------------------------------------------------------------- the plan


def gpu_hours(flops: float, gpu: str, mfu: float) -> float:
    return flops / (GPUS[gpu] * 1e12 * mfu) / 3600


# ------------------------------------------------------------------------------------------------- cluster view


@dataclass(frozen=True)
class Rate:
    """One figure of the cluster view, and whether it was measured on this project's box or is an estimate."""

    value: float
    unit: str
    measured: bool
    where: str  # BENCHMARKS.md section, or how it is estimated


# What the encode driver receives per unit: the actors commit their units (issue 15), the driver gets a unit's counts.
# The design before (every token of every sample through the driver, which wrote every shard) was a share of 1 of
# the token bytes; BENCHMARKS.md 'Encode at scale' measures 1.0-1.4 KiB for 8 units now (1.2e-05 per token byte).
ENCODE_DRIVER_BYTES_PER_UNIT = 150.0

# per resolution where it matters; every figure names its source (BENCHMARKS.md sections)
CLUSTER_RATES: dict[str, Any] = {
    "ingest_video_h_per_core_h": Rate(
        38.0, "video-hours per core-hour", True,
        "BENCHMARKS.md summary, 'whole ingest path, one core' (15-79 by video; old mp4 coding)"),
    "ingest_coding_s_per_frame": Rate(
        0.001, "CPU s per stored frame", True, "BENCHMARKS.md summary: the mp4 coding since costs ~1 ms more per "
                                               "frame at 224 (not measured at 448)"),
    "ingest_driver_s_per_unit": Rate(
        0.005, "driver s per unit", False, "a unit's item list and stats are a few KiB (BENCHMARKS.md 'Ingest "
                                          "concurrency': 5.2 KiB per unit, nothing in the object store)"),
    "ingest_rows_per_unit": Rate(116.0, "rows per unit", False, "the shard-filling unit of the long profile at 1 GiB "
                                                               "shards (README 'Concurrency')"),
    "stored_bytes_per_frame": {
        224: Rate(19_400, "B per stored frame", True, "BENCHMARKS.md 'Stored frame fidelity': 70 MB per "
                                                     "video-hour at 1 frame/s"),
        448: Rate(58_300, "B per stored frame", True, "BENCHMARKS.md 'Stored frame fidelity': 210 MB per "
                                                     "video-hour at 1 frame/s")},
    "encode_driver_bytes_per_unit": Rate(
        ENCODE_DRIVER_BYTES_PER_UNIT, "B per unit the encode driver receives", True,
        "BENCHMARKS.md 'Encode at scale': 1.0-1.4 KiB for 8 units, 1.2e-05 per token byte (the actors commit "
        "their units)"),
    "token_bytes_per_frame": Rate(32_840, "B per frame", True, "BENCHMARKS.md 'Encode': shard B/frame (16 x 1024 "
                                                              "fp16 + tar/npy/json)"),
    "gpu_sustained_tflops": Rate(150.0, "TFLOP/s sustained per GPU", False,
                                 "BENCHMARKS.md 'Encode': ~1,200 frames/s at 224, 220 at 448 from the FLOP count; no "
                                 "GPU here; --gpu-fps for a measured rate"),
    "cpu_encode_fps_per_core": {
        224: Rate(0.5, "HiCo frames/s per core", True, "BENCHMARKS.md 'Encode': ~1.0 frame/s on the idle 2-core "
                                                      "box"),
        448: Rate(0.093, "HiCo frames/s per core", False, "the 224 rate / 5.4 (the FLOP ratio, BENCHMARKS.md "
                                                         "'Encode')")},
    "encode_prep_fps_per_core": {
        224: Rate(90.0, "frames/s per core", True, "BENCHMARKS.md 'Encode': preprocess fps, one thread, at a load "
                                                  "average of 37: a floor"),
        448: Rate(38.0, "frames/s per core", True, "BENCHMARKS.md 'Encode': preprocess fps, one thread, at a load "
                                                  "average of 12-30: a floor")},
    "source_bitrate": Rate(5.0, "Mbit/s of the source videos", False, "--source-mbps: the manifests do not record "
                                                                     "the sources' sizes"),
}


def _stage(name: str, hours: float, needs: str, capacity: str) -> dict[str, Any]:
    return {"stage": name, "hours": hours, "needs": needs, "capacity": capacity}


def _bound(stages: list[dict[str, Any]]) -> dict[str, Any]:
    worst = max(stages, key=lambda st: st["hours"])
    return {"hours": worst["hours"], "bottleneck": worst["stage"], "stages": stages}


def cluster_view(cfg: PlanConfig, corpus: Corpus, res: int, flops_per_frame: float) -> dict[str, Any]:
    """Predicted wall time of ingest and encode of `corpus` on a cluster of cfg.nodes nodes, each of cfg.cpus CPUs,
    cfg.gpus GPUs and a cfg.network_gbps link: each stage's hours at its rate (CLUSTER_RATES), the largest one the
    bottleneck (the stages of a job overlap, so the wall time is about the slowest stage's)."""
    r = CLUSTER_RATES
    key = 448 if res >= 448 else 224
    cores, gpus = cfg.nodes * cfg.cpus, cfg.nodes * cfg.gpus
    link = cfg.network_gbps * 1e9 / 8  # bytes/s of one node, each way
    vh, frames = corpus.seconds / 3600, corpus.frames
    stored_bpf = r["stored_bytes_per_frame"][key].value
    token_bpf = r["token_bytes_per_frame"].value

    decode_core_h = vh / r["ingest_video_h_per_core_h"].value + frames * r["ingest_coding_s_per_frame"].value / 3600
    src_bytes = corpus.seconds * cfg.source_mbps * 1e6 / 8
    out_bytes = frames * stored_bpf
    units = math.ceil(corpus.samples / r["ingest_rows_per_unit"].value) if corpus.samples else 0
    ingest = _bound([
        _stage("CPU decode", decode_core_h / cores, f"{decode_core_h:.3g} core-h", f"{cores} cores"),
        _stage("network/S3", max(src_bytes, out_bytes) / (link * cfg.nodes) / 3600,
               f"{_bytes(src_bytes)} in, {_bytes(out_bytes)} out", f"{cfg.nodes} x {cfg.network_gbps:g} Gbit/s"),
        _stage("driver", units * r["ingest_driver_s_per_unit"].value / 3600, f"{units} units", "1 driver"),
    ])

    if cfg.gpu_fps:
        gpu_rate = Rate(cfg.gpu_fps, "frames/s per GPU", True, "--gpu-fps")
    else:
        gpu_rate = Rate(r["gpu_sustained_tflops"].value * 1e12 / flops_per_frame, "frames/s per GPU", False,
                        f"{r['gpu_sustained_tflops'].value:g} TFLOP/s sustained / {_si(flops_per_frame, 'FLOP')} "
                        "per frame; no GPU here")
    if gpus:
        enc = _stage("GPU encode", frames / (gpu_rate.value * gpus) / 3600, f"{_si(frames)} frames",
                     f"{gpus} GPUs x {gpu_rate.value:.0f} frames/s")
    else:
        cpu_fps = r["cpu_encode_fps_per_core"][key].value
        enc = _stage("CPU encode", frames / (cpu_fps * cores) / 3600, f"{_si(frames)} frames",
                     f"{cores} cores x {cpu_fps:g} frames/s (no GPUs)")
    prep = r["encode_prep_fps_per_core"][key].value
    tok_bytes = frames * token_bpf
    driver_bytes = units * r["encode_driver_bytes_per_unit"].value  # an encode unit is an ingest unit
    encode = _bound([
        enc,
        _stage("CPU prep", frames / (prep * cores) / 3600, f"{_si(frames)} frames", f"{cores} cores x {prep:g} "
                                                                                    "frames/s"),
        _stage("network/S3", max(out_bytes, tok_bytes) / (link * cfg.nodes) / 3600,
               f"{_bytes(out_bytes)} in, {_bytes(tok_bytes)} out", f"{cfg.nodes} x {cfg.network_gbps:g} Gbit/s"),
        _stage("driver", (units * r["ingest_driver_s_per_unit"].value + driver_bytes / link) / 3600,
               f"{units} units, {_bytes(driver_bytes)} in", f"1 driver, 1 link of {cfg.network_gbps:g} Gbit/s"),
    ])
    rates = {k: (v[key] if isinstance(v, dict) else v) for k, v in r.items()}
    rates["source_bitrate"] = dataclasses.replace(rates["source_bitrate"], value=cfg.source_mbps)
    rates["gpu_frames_per_s"] = gpu_rate
    return {"nodes": cfg.nodes, "cpus_per_node": cfg.cpus, "gpus_per_node": cfg.gpus,
            "network_gbps": cfg.network_gbps, "resolution": key, "video_hours": vh, "frames": frames,
            "ingest": ingest, "encode": encode,
            "driver_token_share": driver_bytes / tok_bytes if tok_bytes else 0.0,
            "rates": {k: dataclasses.asdict(v) for k, v in rates.items()}}


def compute_plan(cfg: PlanConfig, corpus: Corpus | None = None) -> dict[str, Any]:
    """Every number of the plan as a dict (the printed tables are made from it)."""
    res = cfg.resolution
    if not res:
        res = next(iter(corpus.resolutions)) if corpus and len(corpus.resolutions) == 1 else 224
    enc_model = cfg.model if cfg.model else "videochat-flash-7b"
    umt = get_config(enc_model, img_size=res).umt
    dense_tpf = umt.tokens_per_frame
    enc = encoder_flops_per_clip(umt)
    dense_clip = enc["vit"]
    out: dict[str, Any] = {
        "resolution": res, "gpu": cfg.gpu, "peak_tflops": GPUS[cfg.gpu], "mfu": cfg.mfu, "dim": umt.width,
        "encoder": {"model": enc_model, "flops_per_clip": enc, "flops_per_frame": enc["total"] / umt.num_frames},
        "tokens_per_frame": {"dense": dense_tpf, "hico": TOKENS_PER_FRAME},
    }
    if corpus is not None:
        bpt = umt.width * STORE_BYTES
        out["corpus"] = {
            "samples": corpus.samples, "frames": corpus.frames, "clips": corpus.clips,
            "video_hours": corpus.seconds / 3600, "resolutions": corpus.resolutions, "jobs": corpus.jobs,
            "tokens": {"dense": corpus.frames * dense_tpf, "hico": corpus.frames * TOKENS_PER_FRAME},
            "storage_bytes": {"dense": corpus.frames * dense_tpf * bpt, "hico": corpus.frames * TOKENS_PER_FRAME * bpt},
            "encoder_flops": {"dense": corpus.clips * dense_clip, "hico": corpus.clips * enc["total"]},
            "gpu_hours": {g: gpu_hours(corpus.clips * enc["total"], g, cfg.mfu) for g in GPUS},
        }
    n = cfg.frames
    clips = math.ceil(n / umt.num_frames)
    infer: dict[str, Any] = {"frames": n, "text_tokens": cfg.text_tokens,
                             "encoder_flops": clips * enc["total"],
                             "encoder_seconds": clips * enc["total"] / (GPUS[cfg.gpu] * 1e12 * cfg.mfu), "llms": {}}
    presets = [cfg.model] if cfg.model else list(LLMS)
    for p in presets:
        name, llm = LLMS.get(p, (p, PRESETS[p].llm))
        rows = {}
        for mode, tpf, drop in (("dense", dense_tpf, None), ("hico", TOKENS_PER_FRAME, None),
                                ("hico+dropout", TOKENS_PER_FRAME, DropoutConfig())):
            r = llm_prefill(llm, n * tpf, cfg.text_tokens, drop)
            r["seconds"] = r["total"] / (GPUS[cfg.gpu] * 1e12 * cfg.mfu)
            rows[mode] = r
        infer["llms"][name] = rows
    out["inference"] = infer
    if cfg.nodes and corpus is not None:
        out["cluster"] = cluster_view(cfg, corpus, res, enc["total"] / umt.num_frames)
    return out


# ------------------------------------------------------------------------------------------------- printing


def _si(x: float, unit: str = "") -> str:
    for p, s in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _bytes(x: float) -> str:
    for p, s in ((2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= p:
            return f"{x / p:.3g} {s}"
    return f"{x:.0f} B"


def _table(header: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(header), line(["-" * x for x in w]), *map(line, rows)])


def format_plan(p: dict[str, Any]) -> str:
    res, gpu, mfu = p["resolution"], p["gpu"], p["mfu"]
    e = p["encoder"]["flops_per_clip"]
    parts = [f"Encoder {p['encoder']['model']} at {res} px: {_si(e['total'], 'FLOP')} per 4-frame clip "
             f"(patch embed {_si(e['patch_embed'])}, qkv+proj {_si(e['qkv_proj'])}, attention {_si(e['attention'])}, "
             f"MLP {_si(e['mlp'])}, merging {_si(e['merge'])}); tokens per frame: dense "
             f"{p['tokens_per_frame']['dense']}, HiCo {p['tokens_per_frame']['hico']}",
             f"GPU {gpu}: {p['peak_tflops']:g} TFLOPs peak dense bf16 at an assumed MFU of {mfu:g}"]
    c = p.get("corpus")
    if c:
        parts.append(f"\nCorpus: {c['samples']} samples in {c['jobs']} job(s), {c['video_hours']:.2f} video-hours, "
                     f"{c['frames']} frames, {c['clips']} clips; frame resolutions {c['resolutions'] or '-'}")
        rows = [[k, f"{p['tokens_per_frame'][k]}", _si(c["tokens"][k]), _bytes(c["storage_bytes"][k]),
                 _si(c["encoder_flops"][k], "FLOP"), f"{gpu_hours(c['encoder_flops'][k], gpu, mfu):.3g}"]
                for k in ("dense", "hico")]
        parts.append(_table(["tokens", "per frame", "total tokens", f"storage (fp16, D={p['dim']})",
                             "encoder FLOPs", f"{gpu} GPU-hours"], rows))
        parts.append("GPU-hours to encode (HiCo) by GPU at MFU %g: " % mfu
                     + ", ".join(f"{g} {h:.3g}" for g, h in c["gpu_hours"].items()))
    inf = p["inference"]
    parts.append(f"\nInference at {inf['frames']} frames (+{inf['text_tokens']} text tokens): encoder "
                 f"{_si(inf['encoder_flops'], 'FLOP')} = {inf['encoder_seconds']:.3g} s on one {gpu}; LLM prefill:")
    rows = []
    for name, modes in inf["llms"].items():
        for mode, r in modes.items():
            rows.append([name, mode, _si(r["tokens_in"]), _si(r["total"], "FLOP"), f"{r['seconds']:.3g}",
                         _bytes(r["kv_bytes"])])
    parts.append(_table(["LLM", "tokens", "tokens in", "prefill FLOPs", f"{gpu} s", "KV cache (bf16)"], rows))
    parts.append("dropout: released setting, layers (4, 18), ratios (1, 0.75, 0.25); FLOPs: 2 per multiply-add, "
                 "causal attention counted as half the T x T products, norms/activations not counted")
    if p.get("cluster"):
        parts.append(format_cluster(p["cluster"]))
    return "\n".join(parts)


def _hours(h: float) -> str:
    if h >= 48:
        return f"{h / 24:.3g} days"
    if h >= 1:
        return f"{h:.3g} h"
    return f"{h * 60:.3g} min" if h * 60 >= 1 else f"{h * 3600:.2g} s"


def format_cluster(c: dict[str, Any]) -> str:
    n = c["nodes"]
    parts = [f"\nCluster: {n} node(s) x {c['cpus_per_node']} CPUs, {c['gpus_per_node']} GPUs, "
             f"{c['network_gbps']:g} Gbit/s each ({n * c['cpus_per_node']} CPUs, {n * c['gpus_per_node']} GPUs); "
             f"corpus {_num(c['video_hours'])} video-hours, {_si(c['frames'])} frames at {c['resolution']} px"]
    for job in ("ingest", "encode"):
        j = c[job]
        parts.append(f"{job}: ~{_hours(j['hours'])}, bound by {j['bottleneck']}")
        parts.append(_table(["stage", "needs", "capacity", "wall"],
                            [[st["stage"], st["needs"], st["capacity"], _hours(st["hours"])] for st in j["stages"]]))
    if c["driver_token_share"]:
        parts.append(f"encode driver: the encoder actors commit their units; the driver schedules them and receives "
                     f"~{_num(c['rates']['encode_driver_bytes_per_unit']['value'])} bytes per unit "
                     f"({c['driver_token_share']:.2g} of the token bytes), no token (issue 15)")
    rates = c["rates"]
    for measured in (True, False):
        rows = [f"  {k}: {_num(v['value'])} {v['unit']}; {v['where']}" for k, v in rates.items()
                if v["measured"] == measured]
        parts.append(("Measured here (BENCHMARKS.md, 2-core CPU box):" if measured else
                      "Estimates (not measured here):") + ("\n" + "\n".join(rows) if rows else " none"))
    return "\n".join(parts)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def run_plan(cfg: PlanConfig, log=print) -> dict[str, Any]:
    cfg.validate()
    corpus = scan_manifests(cfg.manifests) if cfg.manifests else None
    plan = compute_plan(cfg, corpus)
    log(format_plan(plan))
    if cfg.json:
        from longvid.operators import storage

        storage.write_text(cfg.json, json.dumps(plan, indent=2, default=str))
    return plan
