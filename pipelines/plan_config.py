"""The settings of `longvid plan` (PlanConfig), declared once: the job file's keys, the flags, their help and checks;
and the GPUs the plan knows (GPUS). A module of its own, apart from pipelines/plan.py (which builds the model
configurations with torch), so that `longvid plan --help` imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass

from longvid.model.constants import MODEL_PRESETS
from longvid.operators.errors import ConfigError
from longvid.operators.settings import Settings, rule, setting

# Peak dense (no sparsity) bf16 tensor-core TFLOPs from the vendors' data sheets (SXM parts where both exist).
GPUS: dict[str, float] = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0, "L40S": 362.0, "L4": 121.0,
                          "A10": 125.0}
DEFAULT_MFU = 0.4
CLUSTER_VIEW = "cluster view"  # the --help section of the cluster view's settings


@dataclass
class PlanConfig(Settings):
    """The settings of `longvid plan`."""

    manifests: str = setting("", help="an ingest or encode job dir (or a folder of them, or s3://...); default: the "
                                      "inference table only")
    frames: int = setting(10000, ge=1, le=10**8, help="frames per video for the inference table (10000)")
    resolution: int = setting(0, choices=(0, 224, 448), help="frame side (default 0: the manifests', 224 when they "
                                                             "have none or several)")
    gpu: str = setting("H100", choices=GPUS, help="GPU for the hours (default H100)")
    model: str = setting("", choices=("", *MODEL_PRESETS), help="one model preset (default: both released models)")
    mfu: float = setting(DEFAULT_MFU, gt=0, le=1,
                         help=f"assumed model FLOPs utilisation, in (0, 1] (default {DEFAULT_MFU})")
    text_tokens: int = setting(0, ge=0, le=10**8, help="text tokens added to the prompt (0)")
    json: str = setting("", help="also write every number to this JSON file")
    # the cluster view (nodes > 0; needs manifests): predicted wall time of ingest and encode of the corpus
    nodes: int = setting(0, ge=0, le=10**6, group=CLUSTER_VIEW,
                         help="cluster view: number of nodes (0: no cluster view); needs --manifests")
    cpus: int = setting(32, ge=1, le=10**5, group=CLUSTER_VIEW, help="cluster view: CPUs per node (default 32)")
    gpus: int = setting(8, ge=0, le=1024, group=CLUSTER_VIEW,
                        help="cluster view: GPUs per node (default 8; 0: encode on the CPUs)")
    network_gbps: float = setting(25.0, gt=0, le=10**5, group=CLUSTER_VIEW,
                                  help="cluster view: network of each node, Gbit/s each way (default 25)")
    source_mbps: float = setting(5.0, gt=0, le=10**5, group=CLUSTER_VIEW,
                                 help="cluster view: bitrate of the source videos in Mbit/s (default 5, an estimate: "
                                      "the manifests do not record it)")
    gpu_fps: float = setting(0.0, ge=0, le=10**7, group=CLUSTER_VIEW,
                             help="cluster view: HiCo frames/s of one GPU, if measured (default: an estimate from "
                                  "the FLOPs at 150 TFLOP/s sustained, ~1,200 at 224 px)")

    @rule
    def cluster_view_needs_manifests(self) -> None:
        if self.nodes and not self.manifests:
            raise ConfigError("nodes: the cluster view plans a corpus: give --manifests (an ingest or encode job "
                              "dir)")
