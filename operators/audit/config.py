"""The audit's settings (AuditConfig), declared once: the keys of `longvid audit --config FILE`, its flags, their help
and checks. A module of its own, apart from core.py (which imports pyarrow), so that `longvid audit --help` imports
nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass

from longvid.operators.errors import ConfigError
from longvid.operators.settings import Settings, rule, setting


@dataclass
class AuditConfig(Settings):
    """The settings of one audit (run_audit)."""

    ngram: int = setting(13, ge=1, help="n of text n-grams (13)")
    min_question_tokens: int = setting(8, ge=1, help="a benchmark text shorter than n but at least this long is "
                                                     "matched whole (8)")
    max_template_videos: int = setting(5, ge=1, help="a sequence in more benchmark videos than this is a template, "
                                                     "ignored (5)")
    phash_threshold: int = setting(4, ge=0, le=31, help="Hamming bits (of 64) for a benchmark-frame match (4)")
    phash_min_frames: int = setting(2, ge=1, help="sample frames that must match one benchmark video, capped at the "
                                                  "sample's count (2)")
    phash_min_bits: int = setting(8, ge=0, le=32, help="a frame hash with fewer set (or unset) bits is a flat frame, "
                                                       "ignored (8)")
    benchmark_fps: float = setting(1.0, gt=0, help="frames per second hashed from --benchmark-videos (1)")
    benchmark_max_frames: int = setting(2048, ge=1, help="frames hashed per benchmark video at most (2048)")
    dup_threshold: int = setting(2, ge=0, le=31, help="Hamming bits for corpus near-duplicates (2)")
    dup_frames_per_sample: int = setting(8, ge=1, help="frames per sample indexed for near-duplicates (8)")
    dup_min_frames: int = setting(2, ge=1, help="frames of two samples that must match for a near-duplicate (2)")
    dup_memory_mb: float = setting(256.0, gt=0, help="memory budget of the duplicate finder; the rest spills to "
                                                     "TMPDIR (256)")
    batch_size: int = setting(16384, ge=1, help="manifest rows per batch (16384)")
    drop_near_duplicates: bool = setting(False, help="also drop video-id-span and frame-hash duplicates (exact "
                                                     "sha256 duplicates always are)")
    report_max_samples: int = setting(40, ge=0, help="contact sheets in report.html (40)")
    namespaces: dict[str, str] = setting(default_factory=dict, flags=("--namespace",), metavar="SOURCE=NAMESPACE",
                                         adds=True, help="id namespace of a manifest source (e.g. star=charades); "
                                                         "repeatable; default per source")

    @rule
    def question_fits_ngram(self) -> None:
        if self.min_question_tokens > self.ngram:
            raise ConfigError("min_question_tokens: must be in 1..ngram")
