"""The settings of `longvid ingest` (IngestConfig) and of `longvid ingest --mixture` (MixtureConfig), declared once:
the job files' keys, the flags, their help and checks; and what they decide: the unit schedule and the fingerprint a
re-run into the same folder must match.

A module of its own, apart from pipelines/ingest.py and mixture.py (which import pyarrow and the decoder), so that
`longvid ingest --help` imports nothing heavy: the lists and defaults that live in the decoder's modules are read
when a config is made or checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from longvid.operators.errors import ConfigError
from longvid.operators.frame_rule import PROFILES, SPAN_RULE
from longvid.operators.settings import Settings, Shared, label, like, rule, setting
from longvid.operators.sources import available, get_adapter

if TYPE_CHECKING:
    from longvid.operators.mixture import ResolvedDataset
    from longvid.operators.process import ProcessOptions

# Typical stored bytes per frame at the default coding (4:4:4 crf 15: 15-18 KB at 224, 48-67 KB at 448 on real
# footage, BENCHMARKS.md "Stored frame fidelity"), used to choose records per unit so that a unit fills about one
# shard. A guess only sets the unit size, never correctness.
BYTES_PER_FRAME = {224: 18_000, 448: 60_000}

# The default unit schedule (bench/ingest_scale.py, BENCHMARKS.md "Ingest concurrency"): RAMP_REPEAT units of
# RAMP_FIRST rows, then RAMP_REPEAT of twice that, ... up to the shard-filling size. It depends on the row position
# only (never on the cluster or on the corpus length), so a resumed job cuts the same units on any cluster, and a
# corpus of a few hundred rows still makes tens of units. Changing these changes the job fingerprint.
RAMP_FIRST = 8
RAMP_REPEAT = 8
# Decoder threads per record (IngestConfig.decoder_threads): 1, because every CPU already runs a unit.
DECODER_THREADS = 1
# What the mixture ingest writes per record kind; part of every dataset folder's fingerprint: change it whenever the
# sample json or members of a kind change (operators/annotation.py).
ANNOTATION_SAMPLES = "mixture-v1"


def _hwaccels() -> tuple[str, ...]:
    from longvid.operators.decode import HWACCELS

    return HWACCELS


def _resize_methods() -> tuple[str, ...]:
    from longvid.operators.frames import RESIZE_METHODS

    return RESIZE_METHODS


def _default_crf() -> int:
    from longvid.operators.mp4 import DEFAULT_CRF

    return DEFAULT_CRF


@dataclass(frozen=True)
class UnitSchedule:
    """Rows per unit: unit N has min(cap, first * 2 ** (N // repeat)) rows; repeat=0 means `first` rows always."""

    first: int
    repeat: int
    cap: int

    def size(self, n: int) -> int:
        if not self.repeat:
            return self.first
        return min(self.cap, self.first << min(n // self.repeat, 62))

    def bounds(self, n: int) -> tuple[int, int]:
        """Row range [start, end) of unit n (for tests and reports; O(n))."""
        start = sum(self.size(i) for i in range(n))
        return start, start + self.size(n)

    def describe(self) -> str:
        if not self.repeat:
            return f"fixed {self.first} rows per unit"
        return f"{self.repeat} units of {self.first} rows, doubling every {self.repeat} units up to {self.cap}"


@dataclass
class IngestConfig(Settings):
    """The settings of one ingest job."""

    source: str = setting(choices=available, help=f"source dataset: {', '.join(available())}")
    metadata: list[str] = setting(required=True, help="metadata file (local or s3://); repeat for several")
    videos: str = setting(required=True, help="folder or s3://bucket/prefix holding the videos in the source's own "
                                              "layout")
    out: str = setting(required=True, help="output folder or s3://bucket/prefix")
    profile: str = setting("long", choices=PROFILES, help="frame bounds and resolution (default: long)")
    shard_size_mb: float = setting(1024.0, gt=0, le=2**20, help="target tar size in MB (default 1024)")
    records_per_unit: int = setting(0, ge=0, help="input rows per work unit (default 0: the ramp schedule, from 8 rows "
                                                  "up to the rows that fill about one shard)")
    limit: int = setting(0, ge=0, help="only the first N input rows (default 0: all)")
    backend: str = setting("pyav", choices=("pyav", "decord"), help="video decoder (default pyav)")
    decode_mode: str = setting("auto", choices=("auto", "keyframe"),
                               help="keyframe: snap each frame to its nearest keyframe, much faster but not the rule's "
                                    "frames (the true times and the snap error are recorded; refused with --mixture; "
                                    "README \"Decode knobs\")")
    hwaccel: str = setting("none", choices=_hwaccels,
                           help="GPU decoding (NVDEC), chosen on each node: none (default, software); auto: NVDEC "
                                "where the node has a CUDA device and frames need not be exact (--decode-mode "
                                "keyframe), else software; cuda: NVDEC always (a record decoded where there is no "
                                "device fails)")
    deblock: str = setting("all", choices=("all", "targets"),
                           help="targets: run the loop (deblocking) filter only on the chosen frames, not on the "
                                "frames decoded because they reference them; less decode CPU, but not the rule's "
                                "exact pixels (recorded in each sample's json; refused with --mixture; README \"Decode "
                                "knobs\")")
    crf: int = setting(default_factory=_default_crf, ge=0, le=51,
                       help="H.264 crf of the stored mp4, lower is closer to the source and larger (default: the "
                            "coding BENCHMARKS.md \"Stored frame fidelity\" measured)")
    resize: str = setting("torch", choices=_resize_methods,
                          help="frame resize: torch (default; antialiased bicubic, 1-2/255 off the exact resize on "
                               "~0.1% of values, much faster at 1080p) or pil (exactly the UMT preprocessor's PIL "
                               "bicubic)")
    long_time_msg: bool = setting(False, help="use the timestamp message that lists every frame time")
    decode_timeout_s: float = setting(600.0, gt=0, le=7 * 86400,
                                      help="per-video limit before the decoder is killed (600)")
    decoder_memory_mb: int = setting(4096, ge=0, le=2**30,
                                     help="address-space cap of each decoder process in MB (default 4096; 0: none)")
    max_in_flight: int = setting(0, ge=0, help="work units queued or running at once (default 0: 2x CPUs)")
    decoder_threads: int = setting(DECODER_THREADS, ge=0, le=1024,
                                   help=f"FFmpeg threads per decoder (default {DECODER_THREADS}: every CPU already "
                                        "runs a unit; 0: FFmpeg decides)")
    num_cpus: int = like(Shared, "num_cpus")
    ray_address: str = like(Shared, "ray_address")
    s3_endpoint_url: str = like(Shared, "s3_endpoint_url")
    s3_profile: str = like(Shared, "s3_profile")
    s3_region: str = like(Shared, "s3_region")
    source_options: dict[str, Any] = setting(default_factory=dict, flags=("--source-option",), metavar="NAME=VALUE",
                                             adds=True, help="an option of the source's adapter (README; VALUE read "
                                                             "as YAML), checked by the adapter; repeatable")
    quiet: bool = like(Shared, "quiet")

    @rule
    def decode_knobs_need_pyav(self) -> None:
        for name in ("decode_mode", "hwaccel", "deblock"):
            if getattr(self, name) != IngestConfig.__dataclass_fields__[name].default and self.backend != "pyav":
                raise ConfigError(f"{name}: {getattr(self, name)} needs --backend pyav (got {self.backend})")

    @rule
    def source_options_known(self) -> None:
        try:  # the adapter knows its options: ConfigError naming source_options.<name>
            get_adapter(self.source).check_options(dict(self.source_options))
        except ValueError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("source_options") else f"source_options: {msg}") from None

    def unit_size(self) -> int:
        """The largest unit: --records-per-unit, else the rows that fill about one shard (8..4096)."""
        if self.records_per_unit:
            return self.records_per_unit
        p = PROFILES[self.profile]
        per_sample = p.hi * BYTES_PER_FRAME.get(p.resolution, 18_000)
        return int(min(4096, max(8, self.shard_size_mb * 2**20 // per_sample)))

    def unit_schedule(self) -> UnitSchedule:
        """--records-per-unit N: N rows per unit. Default: the ramp from RAMP_FIRST rows up to unit_size()."""
        if self.records_per_unit:
            return UnitSchedule(self.records_per_unit, 0, self.records_per_unit)
        cap = self.unit_size()
        return UnitSchedule(min(RAMP_FIRST, cap), RAMP_REPEAT, cap)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change what is written: a re-run into the same --out must match them."""
        from longvid.operators.mp4 import coding_id

        keys = ("source", "metadata", "profile", "shard_size_mb", "limit", "backend", "decode_mode", "crf",
                "long_time_msg", "source_options")
        d = {k: getattr(self, k) for k in keys}
        if self.hwaccel != "none":  # jobs from before the setting decoded in software: their fingerprint stays valid
            d["hwaccel"] = self.hwaccel
        if self.deblock != "all":  # jobs from before the setting filtered every picture: their fingerprint stays valid
            d["deblock"] = self.deblock
        if self.resize != "pil":  # jobs from before the setting resized with PIL: their fingerprint stays valid
            d["resize"] = self.resize
        d["videos"] = self.videos
        d["span_rule"] = SPAN_RULE  # spans by the reference's seconds rule: a folder written before (no key) is refused
        d["mp4_coding"] = coding_id()  # a folder written with another coding (before: yuv420p, no key) is refused
        sched = self.unit_schedule()
        d["records_per_unit"] = sched.first if not sched.repeat else 0  # a fixed size reads as it always did
        if sched.repeat:
            d["unit_schedule"] = {"first": sched.first, "repeat": sched.repeat, "cap": sched.cap}
        return d


# The mixture ingest makes the paper's data: exact frames only. These settings are accepted there with the values
# that keep the frames exact (they change nothing: it always decodes exactly, in software), refused otherwise.
EXACT_FRAMES = {"decode_mode": ("auto",), "hwaccel": ("none", "auto"), "deblock": ("all",)}


@dataclass
class MixtureConfig(Settings):
    """The settings of one mixture ingest; the processing settings are the raw ingest's (IngestConfig)."""

    mixture: str = setting(required=True, help="a released annotation mixture (YAML `datasets:` list, local or s3://) "
                                               "instead of --source, --metadata and --videos: every dataset becomes "
                                               "DIR/<json stem>/")
    out: str = setting(required=True, help="output folder or s3://bucket/prefix (with --mixture: DIR, one folder per "
                                           "dataset below it)")
    roots: str = setting("", help="with --mixture: YAML mapping each data_root string of the mixture to a local "
                                  "folder or s3:// prefix (relative folders: to this file)")
    annotations: str = setting("", help="with --mixture: the folder json_path is relative to (default: the "
                                        "mixture's folder)")
    profile: str = like(IngestConfig, "profile")
    shard_size_mb: float = like(IngestConfig, "shard_size_mb")
    records_per_unit: int = like(IngestConfig, "records_per_unit")
    # 0: every selected record; N: the first N selected records of each dataset
    limit: int = like(IngestConfig, "limit")
    backend: str = like(IngestConfig, "backend")
    decode_mode: str = like(IngestConfig, "decode_mode")  # accepted as EXACT_FRAMES allows
    hwaccel: str = like(IngestConfig, "hwaccel")
    deblock: str = like(IngestConfig, "deblock")
    crf: int = like(IngestConfig, "crf")
    resize: str = like(IngestConfig, "resize")
    long_time_msg: bool = like(IngestConfig, "long_time_msg")
    decode_timeout_s: float = like(IngestConfig, "decode_timeout_s")
    decoder_memory_mb: int = like(IngestConfig, "decoder_memory_mb")
    max_in_flight: int = like(IngestConfig, "max_in_flight")
    decoder_threads: int = like(IngestConfig, "decoder_threads")
    num_cpus: int = like(Shared, "num_cpus")
    ray_address: str = like(Shared, "ray_address")
    s3_endpoint_url: str = like(Shared, "s3_endpoint_url")
    s3_profile: str = like(Shared, "s3_profile")
    s3_region: str = like(Shared, "s3_region")
    quiet: bool = like(Shared, "quiet")

    @rule
    def exact_frames(self) -> None:
        for k, exact in EXACT_FRAMES.items():
            v = getattr(self, k)
            if v not in exact:
                raise ConfigError(f"{k}: only {' or '.join(exact)} with --mixture, got {label(v)}: the mixture ingest "
                                  "makes the paper's data, which needs exact frames (keyframe snapping, skipped "
                                  "deblocking and GPU decoding are for a raw-source ingest)")

    # units are cut as the raw ingest cuts them (same rows per unit for the same profile and shard size)
    unit_size = IngestConfig.unit_size
    unit_schedule = IngestConfig.unit_schedule

    def fingerprint(self, resolved: ResolvedDataset) -> dict[str, Any]:
        """What a dataset folder's job.json records: the raw ingest's processing settings (profile, coding, span
        rule, unit schedule, ...) and the dataset (annotation file, strategy, roots, media type, record count)."""
        like_raw = IngestConfig(source="", metadata=[], videos="", out=self.out, **{
            k: getattr(self, k) for k in ("profile", "shard_size_mb", "records_per_unit", "limit", "backend", "crf",
                                          "resize", "long_time_msg")})
        fp = {k: v for k, v in like_raw.fingerprint().items()
              if k not in ("source", "metadata", "videos", "source_options", "decode_mode")}
        ds = resolved.dataset
        fp["samples"] = ANNOTATION_SAMPLES
        fp["dataset"] = {
            "name": ds.name,
            "json_path": ds.json_path,
            "annotation": resolved.annotation,
            "sampling_strategy": str(ds.strategy),
            "data_root": ds.data_root,
            "media_root": ds.media_root or "",
            "video_read_type": ds.video_read_type,
            "media_type": resolved.media_type,
            "records": resolved.total,
        }
        return fp

    def process_options(self) -> ProcessOptions:
        from longvid.operators.process import ProcessOptions

        return ProcessOptions(videos_root="", profile=self.profile, backend=self.backend, crf=self.crf,
                              long_time_msg=self.long_time_msg, resize=self.resize,
                              decoder_threads=self.decoder_threads or None)
