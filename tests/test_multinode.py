"""Jobs on a Ray cluster of three nodes on this machine (tests/multinode.py, fixture `multinode_cluster`): a head
and two worker nodes, each its own `ray start --block` with 1 CPU, its own temp dir and ports and a custom resource
naming it; token auth on.

- `longvid ingest --ray-address` on the cluster writes the same bytes as a one-node run (embedded Ray), and its
  units really ran on more than one node (the State API's task attempts, by node id);
- a worker node whose processes are killed (SIGKILL, by pid) while it runs a unit: Ray re-runs the unit elsewhere
  and the job completes with the same bytes;
- `longvid train` with two Ray Train workers on the cluster gives the same losses and weights as on one node, and
  the workers ran on two nodes;
- a local --out, or local --videos, that one node does not see is refused before any work (exit 2 naming the
  path, suggesting s3:// or a shared mount). How the node is made not to see it: worker node w2 runs in its own mount namespace
  (`unshare -m --propagation private`, root only) with an empty tmpfs mounted over one folder, so its processes
  see another, empty folder at that path, as a node without the shared mount would. Every other path is the
  same folder for all three nodes. Without root (no unshare -m) that test is skipped, saying so.

- `longvid encode --ray-address` of that ingest output on the cluster writes the same token shards, manifests and
  failures as on one node, and units were committed by actors on more than one node; a worker node killed while it
  runs the encoder actor or a decode task: the job completes with the same bytes;
- `longvid audit` and `longvid niah build` with --ray-address give the outputs of a run without Ray, their reads
  (benchmark video hashes, flagged shards' contact sheets, haystack shard frames) ran as Ray tasks.

Tiny corpus (8 videos x 2 clips + 2 bad rows = 18 inputs, units of 2 rows), profile short; the tiny random-weight
encoder (fp32, one clip per forward pass: the tokens do not depend on the batches); a 4-step tiny-model train on 12
synthetic token samples. The tests share one cluster and run in file order: the two node-kill tests come last, the
encode one (w2 is gone after it), then the ingest one (w1). Not marked slow on purpose: the file runs in the normal
suite (about 2 minutes on 2 idle cores before the encode, audit and NIAH tests; with them 3 min 39 s at a load
average of 9-11, of which train 86 s and the encode, audit and NIAH tests with their one-node references ~57 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from longvid.synthetic.faulty_corpus import make_corpus
from tests.multinode import LocalCluster, can_private_mount

REPO = Path(__file__).resolve().parents[1]
RECORDS_PER_UNIT = 2
PRIVATE = can_private_mount()
# written per run, not part of the job's output bytes: timings and settings (summary.json), the logs, the lock file
RUN_FILES = ("summary.json", ".longvid-owner.json")
RUN_FOLDERS = ("logs",)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mn-corpus")
    return make_corpus(root, n_videos=8, clips_per_video=2, bad_per_kind=1, kinds=("missing", "corrupt_middle"),
                       seed=11)


def ingest_cmd(corpus, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longvid", "ingest", "--source", "miradata", "--metadata", str(corpus.metadata),
            "--videos", str(corpus.videos), "--out", str(out), "--profile", "short", "--records-per-unit",
            str(RECORDS_PER_UNIT), "--shard-size-mb", "4", *extra]


def run(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = env or {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return subprocess.run(cmd, cwd=REPO, env={**env, "RAY_DEDUP_LOGS": "0"}, capture_output=True, text=True,
                          timeout=timeout)


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file of a job's output folder but the per-run ones (summary, logs, owner lock file)."""
    got = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and rel.parts[0] not in RUN_FOLDERS and str(rel) not in RUN_FILES:
            got[str(rel)] = p.read_bytes()
    return got


@pytest.fixture(scope="module")
def reference_out(corpus, tmp_path_factory) -> Path:
    """The same job on one node: an embedded Ray of 2 CPUs. Its folder is the encode tests' input."""
    out = tmp_path_factory.mktemp("mn-ref") / "out"
    r = run(ingest_cmd(corpus, out, "--num-cpus", "2"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(reference_out):
    files = output_bytes(reference_out)
    assert any(k.startswith("shards/") and k.endswith(".tar") for k in files)
    assert any(k.startswith("manifests/") for k in files) and any(k.startswith("failures/") for k in files)
    return files


def assert_same(out: Path, reference: dict[str, bytes]) -> None:
    got = output_bytes(out)
    assert sorted(got) == sorted(reference), (sorted(set(got) ^ set(reference)))
    assert [k for k in got if got[k] != reference[k]] == [], "files differ from the one-node run"


def unit_nodes(cluster: LocalCluster, names: dict[str, str], before: set[str],
               task: str = "run_unit") -> dict[str, list[str]]:
    """Our node name -> states of the `task` attempts it ran in the Ray jobs started since `before` (the job ids
    then), from the State API (node id of every attempt). Ingest's units are run_unit tasks; encode's are the
    actor tasks UnitEncoder.encode_unit (an actor task runs, and commits its unit, on the actor's node)."""
    by_id = {v: k for k, v in names.items()}
    out: dict[str, list[str]] = {}
    for t in cluster.tasks(task):
        if t.get("job_id") not in before:
            out.setdefault(by_id.get(t.get("node_id"), t.get("node_id") or "?"), []).append(t["state"])
    return out


def job_ids(cluster: LocalCluster, task: str = "run_unit") -> set[str]:
    return {t.get("job_id") for t in cluster.tasks(task)}


ENCODE_UNIT = "UnitEncoder.encode_unit"
# the tiny random-weight encoder, fp32, every clip computed alone (batch_clips 1): the tokens do not depend on which
# clips share a forward pass, so any number of actors on any nodes writes the same bytes
ENCODE_FLAGS = ("--model", "tiny", "--batch-clips", "1", "--dtype", "fp32")


def encode_cmd(shards: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longvid", "encode", "--shards", str(shards), "--out", str(out), *ENCODE_FLAGS,
            *extra]


@pytest.fixture(scope="module")
def encode_reference(reference_out, tmp_path_factory):
    """`longvid encode` of the one-node ingest output, on one node (an embedded Ray of 2 CPUs: one actor)."""
    out = tmp_path_factory.mktemp("mn-enc-ref") / "tokens"
    r = run(encode_cmd(reference_out, out, "--num-cpus", "2"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    files = output_bytes(out)
    assert any(k.startswith("shards/") and k.endswith(".tar") for k in files) and "index.json" in files
    assert len([k for k in files if k.startswith("manifests/")]) >= 4
    return files


# ----------------------------------------------------------------------------------------------------- tests


def test_ingest_on_three_nodes_equals_one_node(multinode_cluster, corpus, reference, tmp_path):
    names = multinode_cluster.node_ids()
    assert set(names) == {"head", "w1", "w2"}
    out = tmp_path / "out"
    before = job_ids(multinode_cluster)
    r = run(ingest_cmd(corpus, out, "--ray-address", multinode_cluster.gcs), env=multinode_cluster.client_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "seen alike by all 3 nodes" in r.stdout + r.stderr  # the shared-storage check ran, and passed
    assert_same(out, reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".longvid-tmp-shared-check-")]
    ran = unit_nodes(multinode_cluster, names, before)
    finished = {n for n, states in ran.items() if "FINISHED" in states}
    assert len(finished) >= 2, f"every unit ran on one node: {ran}"
    assert finished <= {"head", "w1", "w2"}


TRAIN_RECIPE = {
    "name": "mn", "model": "tiny", "tokenizer": "test", "num_workers": 2, "checkpoint_every": 2, "seed": 0,
    "quiet": True, "export": False,
    "stages": [{"name": "s1", "input": "tokens", "encoder": "frozen", "train": ["projector", "llm"],
                "max_frames": 16, "max_len": 1024, "lr": 1e-3, "steps": 4, "batch_size": 2, "shuffle_buffer": 4,
                "mix": "samples", "template": "plain", "group_by": "none",
                "data": [{"shards": ["tokens/*/shards/*.tar"]}]}],
}
STEP_FIELDS = ("step", "loss", "grad_norm", "lr", "samples", "tokens", "visual_tokens_per_sample")


def train_cmd(recipe: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longvid", "train", "--config", str(recipe), "--data-root", str(data), "--out",
            str(out), *extra]


def train_result(out: Path) -> tuple[bytes, list[dict]]:
    rows = [json.loads(x) for x in (out / "stages/s1/metrics.jsonl").read_text().splitlines() if x.strip()]
    return (out / "stages/s1/model.safetensors").read_bytes(), [{k: r.get(k) for k in STEP_FIELDS} for r in rows]


def test_train_on_three_nodes_equals_one_node(multinode_cluster, tmp_path_factory):
    """Two Ray Train workers (1 CPU each) on the cluster, against the same recipe on an embedded Ray of 2 CPUs:
    the same losses and byte-identical weights; the workers ran on two nodes."""
    from longvid.synthetic.shards import write_synthetic_token_shards

    data = tmp_path_factory.mktemp("mn-train")
    write_synthetic_token_shards(str(data / "tokens/webvid"), 12, source="webvid", frames=(4, 16), duration=(4, 12),
                                 per_shard=4)
    recipe = data / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TRAIN_RECIPE, sort_keys=False))
    ref = run(train_cmd(recipe, data, data / "ref", "--num-cpus", "2"))
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
    before = {a.get("job_id") for a in multinode_cluster.actors("RayTrainWorker")}
    r = run(train_cmd(recipe, data, data / "cluster", "--ray-address", multinode_cluster.gcs),
            env=multinode_cluster.client_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "out, data seen alike by all 3 nodes" in r.stdout + r.stderr
    weights, steps = train_result(data / "cluster")
    ref_weights, ref_steps = train_result(data / "ref")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["samples"] == 4 for s in steps)
    assert steps == ref_steps
    assert weights == ref_weights, "the weights differ from the one-node run"
    by_id = {v: k for k, v in multinode_cluster.node_ids().items()}
    nodes = [by_id.get(a.get("node_id"), "?") for a in multinode_cluster.actors("RayTrainWorker")
             if a.get("job_id") not in before]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes  # 1 CPU per node: one worker per node


def test_encode_on_three_nodes_equals_one_node(multinode_cluster, reference_out, encode_reference, tmp_path):
    """`longvid encode --ray-address` on the cluster (3 CPUs: two encoder actors of 1 CPU, so on two nodes, and
    one CPU for the decode tasks) writes the bytes of the one-node run, and units were committed on more than one
    node (the actor tasks that commit them, by node id, from the State API)."""
    names = multinode_cluster.node_ids()
    out = tmp_path / "tokens"
    before = job_ids(multinode_cluster, ENCODE_UNIT)
    r = run(encode_cmd(reference_out, out, "--ray-address", multinode_cluster.gcs), env=multinode_cluster.client_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "seen alike by all 3 nodes" in r.stdout + r.stderr  # out and shards: the shared-storage check passed
    assert_same(out, encode_reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["actors"] == 2, summary
    ran = unit_nodes(multinode_cluster, names, before, ENCODE_UNIT)
    committed = {n for n, states in ran.items() if "FINISHED" in states}
    assert len(committed) >= 2, f"every unit was committed on one node: {ran}"
    assert sum(states.count("FINISHED") for states in ran.values()) == summary["units_run"]


def test_audit_and_niah_build_read_on_the_cluster(multinode_cluster, corpus, reference_out, tmp_path):
    """`longvid audit` and `longvid niah build` of the one-node ingest output with --ray-address: the same outputs as
    without Ray, and their reads ran as Ray tasks on the cluster (State API, by the name of the function each task
    runs: a benchmark video's frame hashes, a flagged shard's contact sheets, a haystack shard's frames)."""
    from longvid.pipelines.niah_build import make_demo_needles

    videos = tmp_path / "bench-videos"
    videos.mkdir()
    src = sorted(Path(corpus.videos).rglob("*.mp4"))[0]  # a benchmark video that is one of the corpus's sources
    (videos / src.name).write_bytes(src.read_bytes())
    spec, images = make_demo_needles(tmp_path / "needles", items=1)

    def audit_cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "longvid", "audit", "--manifests", str(reference_out), "--benchmarks",
                str(REPO / "tests" / "fixtures" / "benchmarks"), "--benchmark-videos", str(videos), "--out", str(out),
                *extra]

    def niah_cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "longvid", "niah", "build", "--haystack", str(reference_out), "--needles",
                str(spec), "--images", str(images), "--out", str(out), "--frames", "10", "--depths", "0.5", "--model",
                "tiny", "--dtype", "fp32", "--threads", "1", "--quiet", *extra]

    on = ("--ray-address", multinode_cluster.gcs)
    for cmd, env in ((audit_cmd(tmp_path / "audit-local"), None), (niah_cmd(tmp_path / "niah-local"), None),
                     (audit_cmd(tmp_path / "audit-mn", *on), multinode_cluster.client_env()),
                     (niah_cmd(tmp_path / "niah-mn", *on), multinode_cluster.client_env())):
        r = run(cmd, env=env)
        assert r.returncode == 0, (cmd, (r.stdout + r.stderr)[-3000:])
    for name in ("leakage.parquet", "duplicates.parquet", "drop_list.txt"):
        assert (tmp_path / "audit-mn" / name).read_bytes() == (tmp_path / "audit-local" / name).read_bytes(), name
    for name in ("haystack/tokens.npy", "haystack/frames.parquet", "needles/tokens.npy", "index.parquet"):
        assert (tmp_path / "niah-mn" / name).read_bytes() == (tmp_path / "niah-local" / name).read_bytes(), name
    summary = json.loads((tmp_path / "audit-mn" / "summary.json").read_text())
    assert "remote_reads" not in json.loads((tmp_path / "audit-local" / "summary.json").read_text())
    flagged = summary["drop_list"]["leakage"]
    hay = json.loads((tmp_path / "niah-mn" / "set.json").read_text())["haystack"]
    assert hay["remote_reads"]["tasks"] >= 1 and hay["remote_reads"]["driver_received_bytes"] < 13 * 224 * 224 * 3
    ran = {n: [t["state"] for t in multinode_cluster.tasks(n)] for n in ("hash_video_file", "shard_frames",
                                                                        "shard_sheets")}
    assert ran["hash_video_file"] == ["FINISHED"] and "FINISHED" in ran["shard_frames"], ran
    # one task per benchmark video, one per shard holding a flagged sample (the source video is flagged by its
    # frames here, in two shards; the check does not depend on it)
    assert ("FINISHED" in ran["shard_sheets"]) == bool(flagged), ran
    assert summary["remote_reads"]["tasks"] == 1 + ran["shard_sheets"].count("FINISHED"), (summary, ran)


@pytest.mark.skipif(not PRIVATE, reason="needs `unshare -m` (root) to give one node a private view of a folder")
def test_local_out_not_seen_by_every_node_is_refused_before_any_work(multinode_cluster, corpus):
    out = multinode_cluster.hidden / "out"
    t0 = time.monotonic()
    r = run(ingest_cmd(corpus, out, "--ray-address", multinode_cluster.gcs), env=multinode_cluster.client_env())
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    w2 = multinode_cluster.node_ids()["w2"]
    assert err.startswith(f"longvid ingest: configuration error: out: {out} is not the same folder on every node"), err
    assert f"node {w2[:12]}" in err and "does not see the marker file" in err
    assert "s3://" in err and "mounted at the same path on every node" in err
    for other in ("head", "w1"):
        assert multinode_cluster.node_ids()[other][:12] not in err
    # nothing was ingested; the marker files are gone (the folder itself holds only what the driver made first)
    assert not (out / "manifests").exists() and not (out / "shards").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".longvid-tmp-shared-check-")]
    assert time.monotonic() - t0 < 120


@pytest.mark.skipif(not PRIVATE, reason="needs `unshare -m` (root) to give one node a private view of a folder")
def test_local_videos_not_seen_by_every_node_are_refused_before_any_work(multinode_cluster, corpus, tmp_path):
    """--videos a symlink inside the folder w2 sees privately: the driver and the head and w1 see the videos, w2 an
    empty folder without it. The job stops before any unit runs (units on w2 would fail as 'missing')."""
    videos = multinode_cluster.hidden / "videos"
    if not videos.is_symlink():
        videos.symlink_to(corpus.videos, target_is_directory=True)
    out = tmp_path / "out"
    cmd = ingest_cmd(corpus, out, "--ray-address", multinode_cluster.gcs)
    cmd[cmd.index("--videos") + 1] = str(videos)
    r = run(cmd, env=multinode_cluster.client_env())
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    w2 = multinode_cluster.node_ids()["w2"]
    assert err.startswith(f"longvid ingest: configuration error: videos: {videos} is not the same path on every "
                          "node"), err
    assert f"node {w2[:12]}" in err and f"sees {videos} as missing: No such file or directory" in err, err
    assert "the driver as folder of" in err and "s3://" in err
    assert not (out / "manifests").exists() and not (out / "shards").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".longvid-tmp-shared-check-")]


def run_and_kill_node(cluster: LocalCluster, cmd: list[str], log: Path, victim: str, prefixes: tuple[bytes, ...],
                      until: Callable[[], bool] = lambda: True,
                      progress: Callable[[], int] = lambda: 0) -> tuple[int, bytes, int]:
    """Run a job on the cluster (output to `log`) and SIGKILL every process of node `victim` as soon as one of its
    processes runs a command starting with one of `prefixes` while `until()` holds. Returns (the job's exit code,
    the command caught, `progress()` at the kill); fails when nothing was caught."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**cluster.client_env(), "RAY_DEDUP_LOGS": "0"}, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    killed: list[int] = []
    hit, at_kill = b"", 0
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 240 and not killed:
            at_kill = progress()
            if until():
                for pid in cluster.nodes[victim].pids():
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if cmdline.startswith(prefixes):
                        hit = cmdline.split(b"\0")[0]
                        killed = cluster.kill(victim)
                        break
            time.sleep(0.05)
        assert killed, f"nothing caught running on {victim}:\n" + log.read_text()[-3000:]
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return rc, hit, at_kill


def _declared_dead(cluster, name: str, timeout: float = 60.0) -> bool:
    """Ray declares a node dead after its health checks fail for a while (seconds; longer on a loaded box), which a
    short job can outrun: wait for it."""
    t0 = time.monotonic()
    while name in cluster.node_ids():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.5)
    return True


def test_worker_node_killed_mid_encode_still_completes_identically(multinode_cluster, reference_out,
                                                                   encode_reference, tmp_path):
    """Worker node w2's processes are killed (SIGKILL, by pid) while it runs the encoder actor or a decode task of
    a unit, before every unit is committed: the units it held fail (a lost actor is restarted by Ray on another
    node, a lost decode task fails its unit), the driver gives them again and the output equals the one-node run's.
    One actor (--actors 1): on the two nodes left, one CPU holds it and one decodes (two actors of 1 CPU would
    leave no CPU to decode). w2, not w1: the ingest kill test after this one needs w1."""
    out = tmp_path / "tokens"
    names = multinode_cluster.node_ids()
    assert {"w1", "w2"} <= set(names)
    victim = multinode_cluster.nodes["w2"]
    units = len([k for k in encode_reference if k.startswith("manifests/")])
    log = tmp_path / "log.txt"
    before = job_ids(multinode_cluster, ENCODE_UNIT)

    def committed() -> int:
        return len(list((out / "manifests").glob("*.parquet"))) if (out / "manifests").is_dir() else 0

    rc, hit, committed_then = run_and_kill_node(
        multinode_cluster, encode_cmd(reference_out, out, "--ray-address", multinode_cluster.gcs, "--actors", "1"),
        log, "w2", (b"ray::UnitEncoder", b"ray::decode_shard"), until=lambda: committed() < units, progress=committed)
    assert rc == 0, log.read_text()[-3000:]
    assert committed_then < units
    assert victim.pids() == set()
    assert _declared_dead(multinode_cluster, "w2"), "w2 still alive for Ray 60 s after its processes were killed"
    assert_same(out, encode_reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["units_uncommitted"] == [], summary
    lost = {**unit_nodes(multinode_cluster, names, before, ENCODE_UNIT),
            **{f"decode on {k}": v for k, v in unit_nodes(multinode_cluster, names, before, "decode_shard").items()}}
    if hit.startswith(b"ray::UnitEncoder"):  # the actor died with w2: its unit attempts there failed
        assert any("FAILED" in v for k, v in lost.items() if k.endswith("w2")), \
            f"killed {hit!r} on w2 but no attempt there is recorded as failed: {lost}"
    else:  # a decode task died with w2: the unit it fed failed on its actor's node (w2's own task events may be
        # lost with the node) and was given again
        assert any("FAILED" in v for v in lost.values()), f"killed {hit!r} on w2 but no attempt failed: {lost}"


def test_worker_node_killed_mid_ingest_still_completes_identically(multinode_cluster, corpus, reference, tmp_path):
    out = tmp_path / "out"
    names = multinode_cluster.node_ids()
    victim = multinode_cluster.nodes["w1"]
    log = tmp_path / "log.txt"
    before = job_ids(multinode_cluster)
    # a task worker of w1 is "ray::run_unit" while it executes a unit: kill the whole node then
    rc, _, _ = run_and_kill_node(multinode_cluster, ingest_cmd(corpus, out, "--ray-address", multinode_cluster.gcs),
                                 log, "w1", (b"ray::run_unit",))
    assert rc == 0, log.read_text()[-3000:]
    assert victim.pids() == set()
    assert _declared_dead(multinode_cluster, "w1"), "w1 still alive for Ray 60 s after its processes were killed"
    assert_same(out, reference)
    ran = unit_nodes(multinode_cluster, names, before)
    assert "FAILED" in ran.get("w1", []), f"the killed node's unit attempt is not recorded as failed: {ran}"


def test_path_signature_tells_folders_and_files_apart(tmp_path):
    """What each node reports about an input path (no cluster needed)."""
    from longvid.pipelines.ray_session import OWNER_FILE, SHARED_PREFIX, path_signature

    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.mp4").write_bytes(b"1" * 10)
    sig = path_signature(str(a))
    assert sig.startswith("folder of 2 entries")
    (a / (SHARED_PREFIX + "123")).write_text("t")  # temporary files and the owner file do not count
    (a / OWNER_FILE).write_text("{}")
    assert path_signature(str(a)) == sig
    (a / "x.mp4").write_bytes(b"1" * 11)
    assert path_signature(str(a)) != sig
    assert path_signature(str(tmp_path / "nope")).startswith("missing: No such file")
    f = a / "meta.csv"
    f.write_text("a,b\n")
    assert path_signature(str(f)).startswith("file of 4 bytes")
    assert path_signature(str(f)) != path_signature(str(a))
