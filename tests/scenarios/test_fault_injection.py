"""Fault injection: `longvid ingest` over 267 generated inputs of which 27 (10%) are bad in nine ways.

Zero lost, zero duplicated: every input key ends as exactly one manifest row or one failure row; every failure has
the stage its kind must be reported at (synthetic.faulty_corpus.BAD_KINDS), a reason, and names the culprit file/field.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from longvid.synthetic.faulty_corpus import BAD_KINDS, make_corpus
from longvid.operators.sources.miradata import raw_video_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = make_corpus(tmp_path_factory.mktemp("faulty"), n_videos=80, clips_per_video=3, bad_per_kind=3, seed=11)
    assert c.rows == 267 and len(c.bad) == 27 and len(c.keys) == c.rows
    return c


def test_generated_corpus_is_what_it_claims(corpus):
    assert Counter(kind for kind, _ in corpus.bad.values()) == {k: 3 for k in BAD_KINDS}
    assert 0.08 <= len(corpus.bad) / corpus.rows <= 0.12
    files = {kind: [] for kind in BAD_KINDS}
    for vid, kind in corpus.bad_video_ids.items():
        files[kind].append(corpus.videos / raw_video_path(int(vid)))
    assert all(p.stat().st_size == 0 for p in files["zero_byte"])
    assert all(not p.exists() for p in files["missing"])
    assert all(p.read_bytes().startswith(b"<html>") for p in files["not_video"])
    good = {p.read_bytes() for p in (corpus.videos / "000000001").glob("*.mp4")}
    assert len(good) == 4  # four distinct clips, hard-linked under 80 ids
    assert all(0 < p.stat().st_size < min(map(len, good)) for p in files["truncated"])
    for kind in ("corrupt_moov", "corrupt_middle"):  # the size of a good file, other bytes
        assert all(p.stat().st_size in set(map(len, good)) and p.read_bytes() not in good for p in files[kind])


@pytest.mark.slow
def test_ingest_loses_and_duplicates_nothing(corpus, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "longvid", "ingest", "--source", "miradata", "--metadata",
                        str(corpus.metadata), "--videos", str(corpus.videos), "--out", str(out), "--profile", "short",
                        "--records-per-unit", "30", "--num-cpus", "2", "--shard-size-mb", "2",
                        "--decode-timeout-s", "120"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    man = pd.read_parquet(out / "manifests")
    fail = pd.read_parquet(out / "failures")

    # zero duplicated, zero lost
    keys = list(man.key) + list(fail.key)
    assert len(keys) == len(set(keys)) == corpus.rows
    assert set(man.key) == corpus.good_keys
    assert set(fail.key) == set(corpus.bad)

    # every bad input at its exact stage, with a reason and the culprit named
    got = dict(zip(fail.key, fail.stage))
    wrong = {corpus.bad[k][0]: (got[k], corpus.bad[k][1]) for k in corpus.bad if got[k] != corpus.bad[k][1]}
    assert wrong == {}, f"kind: (got, expected) {wrong}"
    assert (fail.reason.str.len() > 5).all() and (fail.field.str.len() > 0).all()
    for row in fail.itertuples():
        kind = corpus.bad[row.key][0]
        if kind == "bad_timestamp":
            assert row.file.startswith(str(corpus.metadata) + ":") and row.field == "timestamp", row
        else:
            assert row.file.endswith(f"{row.video_id}.mp4"), row
    counts = Counter(fail.stage)
    expected = Counter(stage for _, stage in corpus.bad.values())
    assert counts == expected

    # the shards hold exactly the manifest's samples, and the summary adds up
    members = Counter()
    for shard in sorted(set(man.shard)):
        with tarfile.open(out / shard) as t:
            members.update(n.rsplit(".", 1)[0] for n in t.getnames())
    assert members == Counter({k: 2 for k in man.key})  # <key>.json + <key>.mp4, once each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == corpus.rows and summary["samples"] == len(corpus.good_keys)
    assert summary["failures_by_stage"] == dict(sorted(expected.items()))
    index = json.loads((out / "index.json").read_text())
    assert sum(s["nsamples"] for s in index["shardlist"]) == len(man)
    print(f"fault injection: {corpus.rows} inputs in {elapsed:.1f} s, {dict(counts)}")
