"""report.html renders offline in headless Chromium: sections, charts, contact sheets, no network."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from longvid.operators.audit.benchmarks import scan_benchmarks
from longvid.operators.audit.core import AuditConfig, run_audit
from longvid.operators.frames import dhash64
from longvid.operators.audit.videos import frames_at_rate
from longvid.manifests.readers import find_jobs
from tests.operators.test_audit import clean_rows, planted_rows
from tests.operators.test_audit_util import FIXTURES, make_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from longvid.synthetic.videos import make_video

    d = tmp_path_factory.mktemp("report")
    make_video(d / "videos" / "fFjv93ACGo8.mp4", seconds=6, fps=10, width=96, height=96, seed=5)
    hashes = [(t, dhash64(img)) for t, img in frames_at_rate(d / "videos" / "fFjv93ACGo8.mp4", 1.0)]
    job = make_job(d / "job", planted_rows(hashes) + clean_rows(20),
                   failures=[{"key": "w", "source": "webvid", "stage": "probe", "reason": "no video stream"}])
    run_audit(find_jobs(str(job)), scan_benchmarks([FIXTURES]), d / "out", AuditConfig(), benchmark_videos=d / "videos")
    return d / "out" / "report.html"


def test_report_renders_offline(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for heading in ("Leakage by benchmark and method", "Methods", "Corpus by source", "Failures by reason",
                    "Duplicates in the corpus", "Flagged samples"):
        assert heading in html
    assert len(re.findall(r"<svg", html)) >= 10  # per-source histograms and the per-benchmark chart
    sheets = re.findall(r"<img alt=\"frames of ([^\"]+)\" src=\"data:image/jpeg;base64,", html)
    assert set(sheets) == {"howto100m_youtu-be-A_full", "charades_RPY8D_full", "ego4d_in_window", "webvid_caption_copy",
                           "miradata_near_frames", "perception_test_video_12", "ego4d_val_video"}
    assert "benchmark frame" in html  # the matched benchmark frame beside the sample's frames
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)

    png = tmp_path / "report.png"
    shot = chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2400", report.as_uri())
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (2400, 1280)
    assert (img < 128).any(axis=2).mean() > 0.01  # text and pictures were painted, not a blank page
    shutil.copy(png, report.parent / "report.png")
