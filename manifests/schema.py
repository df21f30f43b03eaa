"""Parquet schemas: the contract between ingest, encode, train, audit and NIAH.

Layout of a job's output directory (local path or s3://bucket/prefix):

    shards/shard-<unit:06d>-<part:03d>.tar   WebDataset: <key>.json + <key>.mp4 (ingest) or <key>.tokens.npy (encode)
    manifests/part-<unit:06d>.parquet        one row per written sample          (MANIFEST_SCHEMA / TOKEN_MANIFEST_SCHEMA)
    failures/part-<unit:06d>.parquet         one row per input that gave no sample (FAILURE_SCHEMA)
    index.json                               wids descriptor {"wids_version": 1, "shardlist": [{url, nsamples}]}
    summary.json                             counts, config, versions

A unit is committed when its manifest part exists: shards first, failures next, manifest last.
"""
from __future__ import annotations

import pyarrow as pa

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),  # shard path relative to the job's output directory
        ("unit", pa.int64()),
        ("source", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("start", pa.float64()),  # seconds in the source video (span actually sampled)
        ("end", pa.float64()),
        ("duration", pa.float64()),  # seconds, as the timestamp message reports
        ("fps", pa.float64()),
        ("num_frames", pa.int32()),
        ("frame_indices", pa.list_(pa.int64())),
        ("frame_times", pa.list_(pa.float64())),
        ("width", pa.int32()),  # of the source video
        ("height", pa.int32()),
        ("resolution", pa.int32()),  # of the stored frames (square)
        ("profile", pa.string()),
        ("text", pa.string()),  # all source text of the sample, for audits (n-grams) and search
        ("num_turns", pa.int32()),
        ("bytes", pa.int64()),  # size of <key>.mp4
        ("sha256", pa.string()),  # of <key>.mp4: exact-duplicate detection
        ("frame_hashes", pa.list_(pa.uint64())),  # 64-bit dHash per stored frame: near-duplicate detection
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("unit", pa.int64()),
        ("source", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("file", pa.string()),
        ("field", pa.string()),
    ]
)

# Encode output: carries the ingest manifest's identity columns plus what the encoder did.
TOKEN_MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("unit", pa.int64()),
        ("source", pa.string()),
        ("video_id", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("num_frames", pa.int32()),
        ("num_clips", pa.int32()),
        ("tokens_per_frame", pa.int32()),
        ("dim", pa.int32()),
        ("encoder", pa.string()),
        ("resolution", pa.int32()),
        ("dtype", pa.string()),
        ("bytes", pa.int64()),
        ("text", pa.string()),
        ("media_type", pa.string()),  # video | image (num_clips = tiles) | text (no tokens); null in older outputs: video
    ]
)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from dict rows, filling absent columns with nulls; unknown keys are an error."""
    names = set(schema.names)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise KeyError(f"columns not in schema: {sorted(extra)}")
    cols = {n: [r.get(n) for r in rows] for n in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)
