"""Training a mixture as `ingest --mixture` + `encode` write it: video, image and text-only samples of one
mixture reach the batches, each dataset found by its json stem without renaming, the sampling strategy applied
once (at ingest), image tiles spliced per <image> in order, text-only samples without visual tokens and refused by
the plain template with a counted reason. Token folders are written directly (operators/write.py): no Ray."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longvid.jobs.train import parse_recipe
from longvid.manifests.schema import TOKEN_MANIFEST_SCHEMA
from longvid.model.tokenizer import build_test_tokenizer, chat_encoder
from longvid.operators.errors import ConfigError
from longvid.operators.write import UnitWriter, sample_members
from longvid.pipelines.outputs import finalize
from longvid.pipelines.train import run_train
from longvid.pipelines.train_config import stage_schedule
from longvid.pipelines.train_report import read_metrics
from longvid.operators.shards import Group
from longvid.operators.train_sample import ParseOptions, SampleError, parse_train_sample
from longvid.pipelines.loader import collate
from longvid.synthetic.shards import synthetic_sample_info

DIM = 64  # the tiny model's encoder width


def _tokens(n: int, fill: float) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((n, 64, DIM), fill, np.float16), allow_pickle=False)
    return buf.getvalue()


def _video(key: str, label: int) -> tuple[dict, dict]:
    info = synthetic_sample_info(key, "vid", 8, 8.0, label)
    info.update({"media_type": "video", "num_clips": 2, "encoder": "synthetic", "resolution": 224,
                 "tokens_per_frame": 16})
    return info, {"tokens.npy": _tokens(2, 0.5)}


def _image(key: str, tiles: list[int], grids: list | None = None) -> tuple[dict, dict]:
    """An encoded image sample as encode writes it; `grids` [cols, rows] per image (default: one row of n - 1 tiles,
    None for a single tile)."""
    human = "".join("<image>\n" for _ in tiles) + "What is shown?"
    grids = grids if grids is not None else [[n - 1, 1] if n > 1 else None for n in tiles]
    info = {"key": key, "id": key, "source": "img", "media_type": "image", "image_mode": "anyres_nopad",
            "image": [f"pics/{key}_{j}.jpg" for j in range(len(tiles))], "duration": 0.0,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": "A cat on a mat."}],
            "num_tiles": sum(tiles), "tiles_per_image": tiles, "num_clips": sum(tiles), "tile_order": "base_then_rows",
            "image_grids": grids}
    # tile t of the sample holds the value t + 1 everywhere: the splice order can be read back
    arr = np.concatenate([np.full((1, 64, DIM), t + 1, np.float16) for t in range(sum(tiles))])
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return info, {"tokens.npy": buf.getvalue()}


def _text(key: str) -> tuple[dict, dict]:
    info = {"key": key, "id": key, "source": "txt", "media_type": "text", "duration": 0.0,
            "conversations": [{"from": "human", "value": "Name a fruit."}, {"from": "gpt", "value": "An apple."}]}
    return info, {}


def _dataset(root: Path, name: str, strategy: str | None, samples: list[tuple[dict, dict]]) -> list[str]:
    """DIR/<name>/ as ingest --mixture leaves it (job.json recording the strategy, when given) and its encode
    output tok/<name>/ (job.json naming the ingest folder; shards, manifests, index.json)."""
    ingest = root / "ingested" / name
    ingest.mkdir(parents=True)
    if strategy is not None:
        fp = {"dataset": {"name": name, "sampling_strategy": strategy}}
        (ingest / "job.json").write_text(json.dumps({"job": "ingest", "fingerprint": fp}))
    out = root / "tok" / name
    w = UnitWriter(str(out), 0, shard_size_bytes=1 << 40, manifest_schema=TOKEN_MANIFEST_SCHEMA)
    for info, payload in samples:
        w.add(info["key"], sample_members(info, payload), {
            "key": info["key"], "source": info["source"], "video_id": info["key"], "start": 0.0, "end": 0.0,
            "duration": float(info.get("duration") or 0.0), "num_frames": 0, "num_clips": info.get("num_clips", 0),
            "tokens_per_frame": 16, "dim": DIM, "encoder": "synthetic", "resolution": 224, "dtype": "float16",
            "bytes": len(payload.get("tokens.npy", b"")), "text": ""})
    w.commit()
    finalize(str(out), job="encode", config={"test": True}, elapsed=1.0, cpus=1)
    (out / "job.json").write_text(json.dumps({"job": "encode", "fingerprint": {"shards": str(ingest)}}))
    return [info["key"] for info, _ in samples]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-mixture")
    keys = {
        # first:2 ingested -> 2 samples; first2:2 (records 2-3) -> 2: applied again it would select none
        "vid": _dataset(root, "vid", "first2:2", [_video("vid_a", 1), _video("vid_b", 2)]),
        # first:50% of 4 records -> 2 samples: applied again, 1
        "img": _dataset(root, "img", "first:50%", [_image("img_a", [2, 1]), _image("img_b", [3])]),
        # end:50% of 4 -> 2: applied again, 1 (end:N itself gives the same N either way)
        "txt": _dataset(root, "txt", "end:50%", [_text("txt_a"), _text("txt_b")]),
        "two": _dataset(root, "two", "first:2", [_text("two_a"), _video("two_b", 3)]),
    }
    # no job.json says the strategy (an ingest folder moved away): the samples' json names their mixture dataset
    # and annotation line, so they came from ingest --mixture, strategy applied
    lost = [_text("lost_a"), _text("lost_b")]
    for j, (info, _) in enumerate(lost):
        info.update({"dataset": "lost", "annotation": f"annotations/lost.json:{j + 1}"})
    keys["lost"] = _dataset(root, "lost", None, lost)
    (root / "annotations").mkdir()
    datasets = [{"json_path": "annotations/video/vid.json", "sampling_strategy": "first2:2"},
                {"json_path": "annotations/image/img.json", "sampling_strategy": "first:50%"},
                {"json_path": "annotations/text/txt.jsonl", "sampling_strategy": "end:50%"},
                {"json_path": "annotations/two.json", "sampling_strategy": "first:2"}]
    (root / "mix.yaml").write_text(yaml.safe_dump({"datasets": datasets}))
    (root / "plain.yaml").write_text(yaml.safe_dump({"datasets": [datasets[0], datasets[1], datasets[3]]}))
    return {"root": root, "keys": keys}


def _cfg(root: Path, out: Path, stage: dict):
    body = {"name": "mixture", "model": "tiny", "tokenizer": "test", "num_workers": 0, "seed": 0, "quiet": True,
            "record_keys": True, "checkpoint_every": 100,
            "stages": [{"name": "s", "input": "tokens", "encoder": "frozen", "train": ["projector", "llm"],
                        "max_frames": 16, "max_len": 1024, "lr": 1e-3, "batch_size": 2, "shuffle_buffer": 4,
                        "mix": "samples", "template": "qwen_2", "group_by": "modality_length",
                        "data": [{"mixture": "mix.yaml", "shards": ["tok/{name}/shards/*.tar"]}], **stage}]}
    return parse_recipe(body, {"out": str(out), "data_root": str(root)})


def _seen(out: Path, stage: str = "s") -> list[str]:
    return [k for f in (out / "stages" / stage).glob("keys-rank*.jsonl") for row in read_metrics(str(f))
            for k in row["keys"]]


def test_mixture_is_planned_by_json_stem_with_the_strategy_applied_once(mix, tmp_path):
    plan = stage_schedule(_cfg(mix["root"], tmp_path / "o", {"steps": 1}), 1)[0]
    counts = {s["name"]: sum(b - a for _, a, b in s["pieces"]) for s in plan["sources"]}
    assert counts == {"vid": 2, "img": 2, "txt": 2, "two": 2}  # every ingested sample, not the strategy again
    assert plan["samples"] == 8
    lost = mix["root"] / "lost.yaml"
    lost.write_text(yaml.safe_dump({"datasets": [{"json_path": "a/lost.json", "sampling_strategy": "first:50%"}]}))
    cfg = _cfg(mix["root"], tmp_path / "o", {"steps": 1})
    cfg.stages[0].data[0].mixture = "lost.yaml"
    assert stage_schedule(cfg, 1)[0]["samples"] == 2  # not 1 of 2
    # a plain data entry (no mixture) applies its `sampling` as written
    cfg.stages[0].data[0].mixture = ""
    cfg.stages[0].data[0].shards = ["tok/lost/shards/*.tar"]
    cfg.stages[0].data[0].sampling = "first:50%"
    assert stage_schedule(cfg, 1)[0]["samples"] == 1
    # video seconds cannot weigh image or text datasets
    with pytest.raises(ConfigError, match=r"mix: duration weighs sources by video seconds, but mixture dataset img "
                                          r"holds image samples; use mix: concat"):
        stage_schedule(_cfg(mix["root"], tmp_path / "o", {"steps": 1, "mix": "duration"}), 1)
    # a folder ingested with another strategy than the mixture's is refused, naming both
    other = mix["root"] / "other.yaml"
    other.write_text(yaml.safe_dump({"datasets": [{"json_path": "a/two.json", "sampling_strategy": "first:3"}]}))
    cfg = _cfg(mix["root"], tmp_path / "o", {"steps": 1})
    cfg.stages[0].data[0].mixture = "other.yaml"
    with pytest.raises(ConfigError, match=r"data\[0\]: two: the shards were ingested with sampling_strategy first:2, "
                                          r"the mixture says first:3"):
        stage_schedule(cfg, 1)
    # a strategy the shared parser refuses is a config error naming the mixture and the field
    other.write_text(yaml.safe_dump({"datasets": [{"json_path": "a/two.json", "sampling_strategy": "random:3"}]}))
    with pytest.raises(ConfigError, match=r"mixture: .*other.yaml: datasets\[0\] \(two\): sampling_strategy: "
                                          r".*random sampling is refused"):
        stage_schedule(cfg, 1)


def test_video_image_and_text_samples_of_one_mixture_train(mix, tmp_path):
    out = tmp_path / "o"
    run_train(_cfg(mix["root"], out, {"steps": 8}), log_fn=lambda *a: None)
    seen = _seen(out)
    assert len(seen) == 16
    assert set(seen) == {k for n, ks in mix["keys"].items() if n != "lost" for k in ks}  # all three kinds
    rows = read_metrics(str(out / "stages/s/metrics.jsonl"))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert not any(r.get("rank0_skipped") for r in rows)  # nothing refused in a qwen_2 stage


def test_plain_stage_skips_text_only_samples_with_a_counted_reason(mix, tmp_path):
    out = tmp_path / "o"
    plain = {"steps": 3, "template": "plain", "group_by": "none", "train": ["projector"]}
    cfg = _cfg(mix["root"], out, plain)
    cfg.stages[0].data[0].mixture = "plain.yaml"
    run_train(cfg, log_fn=lambda *a: None)
    seen = set(_seen(out))
    assert {"vid_a", "img_b", "two_b"} <= seen and not seen & {"two_a", "img_a"}
    skipped = read_metrics(str(out / "stages/s/metrics.jsonl"))[-1]["rank0_skipped"]
    # text-only and multi-image samples: the reference's preprocess_plain needs exactly one <image>
    assert set(skipped) - {"skipped"} == {"text-only in plain", "multi-image in plain"}  # the only skips
    # a dataset of text only has no sample a plain stage can use: the stage stops, naming it
    with pytest.raises(Exception, match="txt: no usable sample"):
        run_train(_cfg(mix["root"], tmp_path / "o2", plain), log_fn=lambda *a: None)


def _group(info: dict, payload: dict) -> Group:
    m = {"json": bytearray(json.dumps(info).encode())}
    m.update({k: bytearray(v) for k, v in payload.items()})
    return Group(info["key"], m, 0, 0)


def test_text_only_has_no_visual_tokens_and_images_splice_in_order():
    from longvid.model.config import get_config
    from longvid.model.llm import VideoLLM

    tok = build_test_tokenizer()
    chat = chat_encoder(tok)
    opts = ParseOptions(dim=DIM, image_token_id=3, label_mode="qwen_2")
    t = parse_train_sample(_group(*_text("t")), chat, opts)
    assert (t.n_visual, t.visual.shape, t.splits, t.modality) == (0, (0, DIM), (), "text")
    assert t.length == len(t.input_ids) and 3 not in t.input_ids.tolist()
    assert (t.labels != -100).any()
    with pytest.raises(SampleError, match="text-only in plain"):
        parse_train_sample(_group(*_text("t")), chat, ParseOptions(dim=DIM, image_token_id=3, label_mode="plain"))
    bad = _text("t")
    bad[0]["conversations"][0]["value"] = "<image>\nName a fruit."
    with pytest.raises(SampleError, match="image placeholder"):
        parse_train_sample(_group(*bad), chat, opts)

    im = parse_train_sample(_group(*_image("i", [2, 1])), chat, opts)
    assert im.splits == (128, 64) and im.n_visual == 192 and im.num_frames == 0
    assert im.length == len(im.input_ids) - 2 + 192
    # never cut by a stage's frame bounds (tiles are not clips)
    assert parse_train_sample(_group(*_image("i", [2, 1])), chat, ParseOptions(
        dim=DIM, image_token_id=3, label_mode="qwen_2", max_frames=4)).n_visual == 192
    with pytest.raises(SampleError, match="image in frames stage"):  # an ingest shard: jpg members, no mp4
        parse_train_sample(_group(_image("i", [1])[0], {"0.jpg": b"\xff\xd8"}), chat, ParseOptions(
            kind="frames", dim=DIM, image_token_id=3, label_mode="qwen_2"))
    frames_text = parse_train_sample(_group(*_text("t")), chat, ParseOptions(kind="frames", dim=DIM, image_token_id=3,
                                                                        label_mode="qwen_2"))
    assert frames_text.n_visual == 0 and frames_text.visual.shape == (0, DIM)  # text trains in a frames stage too
    with pytest.raises(SampleError, match="missing tokens.npy"):
        parse_train_sample(_group(_image("i", [1])[0], {}), chat, opts)
    wrong = _image("i", [2, 1])
    wrong[0]["tiles_per_image"] = [1, 1]
    with pytest.raises(SampleError, match="tile count mismatch"):
        parse_train_sample(_group(*wrong), chat, opts)
    for grids in ([[1, 1], None], [[2, 2]], "2x1", [["2", 1]], [[True, 2]]):  # a grid that is not the tiles'
        wrong = _image("i", [3], grids=grids)
        with pytest.raises(SampleError, match="image_grids"):
            parse_train_sample(_group(*wrong), chat, opts)
    wrong = _image("i", [3])
    wrong[0]["tile_order"] = "columns_first"
    with pytest.raises(SampleError, match="tile_order"):
        parse_train_sample(_group(*wrong), chat, opts)
    wrong = _image("i", [2, 1])
    wrong[0]["conversations"][0]["value"] = "<image>\nWhat is shown?"
    with pytest.raises(SampleError, match="image placeholder"):
        parse_train_sample(_group(*wrong), chat, opts)

    # one batch of a two-image sample and a text-only one through the model's splice: image j's tiles (base tile
    # first, then the grid's, as stored) replace the j-th <image>, no newline token between or after them
    b = collate([im, t], pad_id=0)
    torch.manual_seed(0)
    m = VideoLLM(get_config("tiny")).eval()
    parts = [list(b.visual[0].float().split(list(im.splits))), b.visual[1]]
    with torch.no_grad():
        s = m.splice(b.input_ids, parts, b.attention_mask, b.labels)
        proj = m.projector(b.visual[0].float())
    ids = im.input_ids.tolist()
    p0 = ids.index(3)
    p1 = ids.index(3, p0 + 1)
    row = s.inputs_embeds[0]
    assert torch.allclose(row[p0:p0 + 128], proj[:128])  # image 0: tiles 1, 2
    assert torch.allclose(row[p1 + 127:p1 + 127 + 64], proj[128:])  # image 1: tile 3, after the text between
    assert int(s.attention_mask[0].sum()) == im.length and int(s.attention_mask[1].sum()) == t.length
    assert s.visual_spans == [(p0, 192), (0, 0)]
    with torch.no_grad():  # and the loss is finite with both rows
        assert torch.isfinite(m(b.input_ids, parts, attention_mask=b.attention_mask, labels=b.labels).loss)
