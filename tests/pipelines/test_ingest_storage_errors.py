"""Storage errors while reading a video: permanent ones are the record's failure, transient ones retry the unit."""
from __future__ import annotations

import pandas as pd
import pytest

from longvid.operators import storage as st
from longvid.operators.errors import RecordError, TransientError
from longvid.operators.process import ProcessOptions, process_record
from longvid.operators.records import SourceRecord, TextSpan
from longvid.pipelines.ingest import run_unit
from longvid.synthetic.videos import make_video
from tests.s3_server import configure_storage_for


@pytest.fixture
def video_on_s3(s3, fault_proxy, tmp_path):
    make_video(tmp_path / "v.mp4", seconds=6, fps=10, width=160, height=120)
    st.put_file(str(tmp_path / "v.mp4"), s3.uri("videos", "d", "v.mp4"))
    configure_storage_for(fault_proxy.endpoint, max_attempts=2, read_timeout=3.0)
    yield s3, fault_proxy
    st.configure_s3()


def test_access_denied_is_a_read_failure(video_on_s3):
    s3, proxy = video_on_s3
    proxy.set(probability=1.0, kinds=("403",), match=lambda m, t, h: m == "GET")
    rec = SourceRecord("webvid", "v", ("d/v.mp4",))
    with pytest.raises(RecordError) as e:
        process_record(rec, ProcessOptions(videos_root=s3.uri("videos"), profile="short"))
    assert e.value.stage == "read" and "AccessDenied" in e.value.reason and e.value.field == "uri"


def test_outage_is_transient_and_leaves_the_unit_uncommitted(video_on_s3, tmp_path):
    s3, proxy = video_on_s3
    proxy.set(probability=1.0, kinds=("503",), match=lambda m, t, h: m == "GET")
    rec = SourceRecord("webvid", "v", ("d/v.mp4",), texts=(TextSpan("a caption"),))  # a sample always has text
    opts = ProcessOptions(videos_root=s3.uri("videos"), profile="short")
    with pytest.raises(TransientError):
        process_record(rec, opts)
    out = tmp_path / "out"
    with pytest.raises(TransientError):
        run_unit(str(out), 0, [rec], opts, 2**20, 60.0, 4096, st.s3_options().to_dict())
    assert not (out / "manifests").exists() and not list((out / "shards").glob("*.tar"))
    # the outage ends: the same unit commits the sample
    proxy.set(probability=0.0)
    stats = run_unit(str(out), 0, [rec], opts, 2**20, 60.0, 4096, st.s3_options().to_dict())
    assert stats["samples"] == 1 and stats["failures"] == 0
    assert len(pd.read_parquet(out / "manifests")) == 1
