"""Manifests, failures and shards on S3 (moto server on 127.0.0.1): the audit reads them like local ones."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from longvid.operators.audit.core import read_drop_list
from tests.operators.test_audit import planted_rows
from tests.operators.test_audit_util import FIXTURES, make_job

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


@pytest.fixture()
def s3(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket="corpus")
    yield url, client
    server.stop()
    from longvid.operators import storage

    storage.configure_s3()  # the next test gets the defaults back


def test_audit_reads_jobs_on_s3(s3, tmp_path):
    from longvid.operators import storage
    from longvid.pipelines.audit import audit

    url, client = s3
    job = make_job(tmp_path / "howto", planted_rows([(1.0, 0), (2.0, 0), (3.0, 0), (4.0, 0)])[:2],
                   failures=[{"key": "x", "source": "howto100m", "stage": "probe", "reason": "no video stream"}])
    for p in job.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), "corpus", f"jobs/howto/{p.relative_to(job).as_posix()}")
    res = audit(["s3://corpus/jobs"], [str(FIXTURES)], tmp_path / "out", s3=storage.S3Options(endpoint_url=url))
    assert res.rows == 2
    assert read_drop_list(tmp_path / "out" / "drop_list.txt") == {"howto100m_youtu-be-A_full", "charades_RPY8D_full"}
    assert res.summary["stats"]["sources"]["howto100m"]["failures"] == 1
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<img alt='frames of") == 2  # contact sheets decoded from the shard on S3
    with pytest.raises(FileNotFoundError, match="s3://corpus/nothing"):
        audit(["s3://corpus/nothing"], [str(FIXTURES)], tmp_path / "out2", s3={"endpoint_url": url})
