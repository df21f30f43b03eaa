"""Fuzz of the config loader: every job's settings class, YAML job files and recipes, fed hostile values (inf, nan,
huge and negative numbers, wrong types, nested structures, unknown keys, NUL and lone surrogates, aliases and tags).
The promise: a ConfigError naming the file and a field, never another exception; or a config whose every field
holds what its declaration allows. A few hostile job files through `python -m longvid` end in exit 2 with one
stderr line and no traceback."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longvid.jobs.cli import build_parser, subparsers
from longvid.jobs.config import MAX_YAML_BYTES, ConfigError, load_config, read_yaml
from longvid.jobs.demo import DemoConfig
from longvid.jobs.train import parse_recipe
from longvid.operators.audit.config import AuditConfig
from longvid.operators.settings import INT_MAX, MAX_STR, check_fields, field_types, label
from longvid.pipelines.encode_config import EncodeConfig
from longvid.pipelines.ingest_config import IngestConfig, MixtureConfig
from longvid.pipelines.loader import LoaderConfig
from longvid.pipelines.niah_config import NiahBuildConfig, NiahEvalConfig
from longvid.pipelines.plan_config import PlanConfig
from longvid.pipelines.train_config import DataEntry, StageConfig, TrainConfig

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

SPECIAL = [float("inf"), float("-inf"), float("nan"), -0.0, 1e308, 5e-324, 10**400, -(10**30), 2**63, -1, 0,
           "", " ", "1e400", "nan", "-inf", "١٢", "a\x00b", "\ud800", "x" * (MAX_STR + 1), "true", "no", "1,2,,3",
           "s3://", "../../etc/passwd", "fp16", "float32", "tiny", "random:0", [], {}, [[[]]], {"a": {"b": []}}]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**62, max_value=2**80),
                    st.floats(), st.text(max_size=12), st.sampled_from(SPECIAL),
                    st.builds(lambda: 10**5000))  # more digits than str() converts (repr fails too)
HOSTILE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                       max_leaves=10)
UNKNOWN_KEYS = st.sampled_from(["bogus", "Source", "shard-size", "__class__", "stages2", "x" * 50])


@pytest.fixture(scope="module")
def niah_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("niah-set")
    (d / "set.json").write_text("{}")
    return str(d)


def _bases(niah_set: str) -> dict[type, dict]:
    """A valid mapping per settings class; the fuzz replaces one key of it."""
    return {
        IngestConfig: {"source": "webvid", "metadata": ["m.csv"], "videos": "v", "out": "o"},
        MixtureConfig: {"mixture": "mix.yaml", "out": "o"},
        EncodeConfig: {"shards": "in", "out": "out", "model": "tiny"},
        PlanConfig: {},
        NiahBuildConfig: {"haystack": "h", "needles": "n", "images": "i", "out": "o", "model": "tiny"},
        NiahEvalConfig: {"set": niah_set, "checkpoint": "random:0"},
        AuditConfig: {},
        DataEntry: {"shards": ["x/*.tar"]},
        StageConfig: {"name": "s1", "data": [DataEntry(["x/*.tar"])], "steps": 1},
        LoaderConfig: {"sources": [], "batch_size": 1},
        DemoConfig: {},
    }


def _load(cls: type, values: dict):
    return load_config(cls, values, source="job.yaml")


def _assert_sound(cfg) -> None:
    """A config that loaded holds only what its declarations allow."""
    check_fields(cfg)
    types = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if types[f.name] is float:
            assert isinstance(v, float) and math.isfinite(v), (f.name, v)
        if types[f.name] is int:
            assert isinstance(v, int) and not isinstance(v, bool) and abs(v) <= INT_MAX, (f.name, v)
        if isinstance(v, str):
            assert "\x00" not in v and len(v) <= MAX_STR, f.name
        for bound, ok in (("ge", lambda x, b: x >= b), ("gt", lambda x, b: x > b), ("le", lambda x, b: x <= b)):
            if bound in f.metadata and isinstance(v, (int, float)):
                assert ok(v, f.metadata[bound]), (f.name, v)


def _assert_names_a_field(e: ConfigError, cls: type, key: str) -> None:
    msg = str(e)
    assert msg.startswith("job.yaml: "), msg
    first = msg[len("job.yaml: "):].split(":", 1)[0]
    named = {f.name for f in dataclasses.fields(cls)} | {key}
    assert label(key) in msg or any(first.split("[")[0].split("/")[0].split(".")[0] == n for n in named), msg
    assert "\n" not in msg and len(msg) < 1000, msg


@pytest.mark.parametrize("cls", list(_bases("")), ids=lambda c: c.__name__)
@FUZZ
@given(data=st.data())
def test_hostile_value_in_any_field_is_a_config_error_naming_it(cls, niah_set, data):
    base = _bases(niah_set)[cls]
    key = data.draw(st.one_of(st.sampled_from([f.name for f in dataclasses.fields(cls)]), UNKNOWN_KEYS), label="key")
    value = data.draw(HOSTILE, label="value")
    try:
        cfg = _load(cls, {**base, key: value})
    except ConfigError as e:
        _assert_names_a_field(e, cls, key)
    else:
        _assert_sound(cfg)


@FUZZ
@given(source_option=st.sampled_from([("ego4d", "window_sec"), ("ego4d", "min_window_sec"),
                                      ("howto100m", "max_asr_span_sec"), ("webvid", "dedupe")]), value=HOSTILE)
def test_hostile_source_option_names_the_option(source_option, value):
    """Source options are the adapter's (operators/sources check_options); a bad one is a ConfigError naming it."""
    source, option = source_option
    base = {"source": source, "metadata": ["m.csv"], "videos": "v", "out": "o"}
    try:
        cfg = load_config(IngestConfig, {**base, "source_options": {option: value}}, source="job.yaml")
    except ConfigError as e:
        assert str(e).startswith(f"job.yaml: source_options.{option}: "), str(e)
    else:
        v = cfg.source_options[option]
        assert isinstance(v, bool) if option == "dedupe" else v is None or (  # None: the adapter's default
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0), v


@pytest.mark.parametrize("cls", [IngestConfig, MixtureConfig, EncodeConfig, PlanConfig, NiahBuildConfig, StageConfig],
                         ids=lambda c: c.__name__)
def test_each_classic_mistake_names_its_field(cls, niah_set):
    base = _bases(niah_set)[cls]
    numeric = [f.name for f in dataclasses.fields(cls) if field_types(cls)[f.name] in (int, float)]
    assert numeric
    for name in numeric:
        for bad in (float("inf"), float("nan"), "ten", True, [1], {"a": 1}, 10**400, "1e400", None):
            with pytest.raises(ConfigError) as e:
                _load(cls, {**base, name: bad})
            assert f": {name}" in str(e.value) or str(e.value).startswith(f"job.yaml: {name}"), str(e.value)


# ------------------------------------------------------------------------------------------------ YAML job files

def _dump(d: dict) -> str:
    try:
        return yaml.safe_dump(d, allow_unicode=True)
    except ValueError:  # an int of more digits than str() converts: PyYAML cannot write it either
        return "frames: 1\n"


YAML_TRICKS = st.sampled_from([
    "a: &x [1, 2]\nb: *x\n",
    "frames: !!float 1e3\n",
    "frames: !!python/object/apply:os.system ['true']\n",
    "frames: 1\nframes: 2\n",
    "x: " + "[" * 40 + "]" * 40 + "\n",
    "frames: " + "9" * 5000 + "\n",
    "d: 2024-02-30\n",
    "? [a]\n: 1\n",
    "1: 2\n",
    "- just\n- a list\n",
    "%TAG ! tag:example.com,2000:\n---\nframes: !x 1\n",
    "frames: 1\n...\n---\nframes: 2\n",
    "\ufeffframes: 3\n",
    "frames: '1'\nmfu: '.5'\n",
    "<<: {frames: 5}\n",
])


@FUZZ
@given(text=st.one_of(YAML_TRICKS, st.text(max_size=200),
                      st.builds(_dump,
                                st.dictionaries(st.sampled_from(["frames", "mfu", "gpu", "model", "json", "bogus"]),
                                                HOSTILE, max_size=4))))
def test_any_job_file_is_a_mapping_or_a_config_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("yaml") / "job.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        values = read_yaml(p)
    except ConfigError as e:
        assert str(e).startswith(f"{p}: ") and "\n" not in str(e), str(e)
        return
    assert isinstance(values, dict)
    try:
        cfg = load_config(PlanConfig, values, source=str(p))
    except ConfigError as e:
        assert str(e).startswith(f"{p}: ")
    else:
        _assert_sound(cfg)


def test_alias_bomb_tags_and_size_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 strings if expanded
    bomb.write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        read_yaml(bomb)
    tag = tmp_path / "tag.yaml"
    tag.write_text("frames: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="tags"):
        read_yaml(tag)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(big)


# ------------------------------------------------------------------------------------------------ recipes

RECIPE = {"name": "mini", "out": "run", "model": "tiny", "num_workers": 0,
          "stages": [{"name": "s1", "input": "tokens", "encoder": "frozen", "train": ["projector"], "max_frames": 4,
                      "lr": 1e-3, "steps": 4, "batch_size": 2, "data": [{"shards": ["tokens/*/shards/*.tar"]}]}]}


@FUZZ
@given(where=st.sampled_from(["top", "stage", "entry", "stages", "data"]),
       key=st.one_of(st.sampled_from(["lr", "steps", "max_frames", "train", "shards", "weight", "sampling", "name",
                                      "num_workers", "seed", "exclude", "data", "stages", "out", "mix"]), UNKNOWN_KEYS),
       value=HOSTILE)
def test_hostile_recipe_is_a_config_error_or_a_recipe(where, key, value):
    raw = json.loads(json.dumps(RECIPE))
    if where == "top":
        raw[key] = value
    elif where == "stage":
        raw["stages"][0][key] = value
    elif where == "entry":
        raw["stages"][0]["data"][0][key] = value
    elif where == "stages":
        raw["stages"] = value
    else:
        raw["stages"][0]["data"] = value
    try:
        cfg = parse_recipe(raw, source="recipe.yaml")
    except ConfigError as e:
        assert str(e).startswith("recipe.yaml: ") and "\n" not in str(e), str(e)
    else:
        assert isinstance(cfg, TrainConfig)
        for c in (cfg, *cfg.stages, *(e for s in cfg.stages for e in s.data)):
            _assert_sound(c)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("name,text,extra", [
    ("bomb", "a: &a [1, 2, 3]\nb: [*a, *a, *a]\n", []),
    ("inf", "source: webvid\nmetadata: [m.csv]\nvideos: v\nout: o\nshard_size_mb: .inf\n", []),
    ("recipe", json.dumps({**RECIPE, "stages": [{**RECIPE["stages"][0], "lr": float("nan")}]}), []),
])
def test_cli_hostile_job_file_exits_2_with_one_line(tmp_path, name, text, extra):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text.replace("NaN", ".nan"))
    command = {"bomb": "plan", "inf": "ingest", "recipe": "train"}[name]
    r = subprocess.run([sys.executable, "-m", "longvid", command, "--config", str(p), *extra], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and str(p) in lines[0], r.stderr
    assert {"bomb": "aliases", "inf": "shard_size_mb", "recipe": "lr"}[name] in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()


def _value_flags(cls: type, *, but: tuple[str, ...] = ()) -> list[str]:
    """The flags of `longvid ingest` made from the fields of `cls` that take a value (read from the parser)."""
    ingest = next(p for p in subparsers(build_parser()) if p.prog.split()[-1] == "ingest")
    names = {f.name for f in dataclasses.fields(cls)} - set(but)
    return sorted(a.option_strings[0] for a in ingest._actions if a.dest in names and a.nargs != 0)


# every value flag of a raw-source ingest but the three the run below relies on to stop before any work
INGEST_FLAGS = _value_flags(IngestConfig, but=("metadata", "videos", "out"))
# every value flag of a mixture ingest: --mixture, --roots, --annotations and the processing settings
MIXTURE_FLAGS = _value_flags(MixtureConfig, but=("out",))
FLAG_VALUES = st.one_of(st.text(max_size=20),
                        st.sampled_from([str(x) for x in SPECIAL if not isinstance(x, (list, dict))]))


def _one_line_exit_2(argv: list[str], capsys) -> str:
    from longvid.jobs.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: a value its type= or choices refuse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_fuzzed_flags_are_every_ingest_flag():
    assert {"--crf", "--hwaccel", "--source-option", "--resize", "--profile"} <= set(INGEST_FLAGS)
    assert {"--mixture", "--roots", "--annotations", "--profile", "--limit", "--decode-mode"} <= set(MIXTURE_FLAGS)


@FUZZ
@given(flag=st.sampled_from(INGEST_FLAGS), value=FLAG_VALUES)
def test_any_flag_value_exits_2_with_one_line_before_any_work(tmp_path_factory, capsys, flag, value):
    """The video root is missing, so whatever the flag's value the run ends before any work: a bad value is named
    by its setting, a good one lets the pre-flight name --videos."""
    d = tmp_path_factory.mktemp("flags")
    (d / "meta.csv").write_text("videoid,name,page_dir,duration\n")
    argv = ["ingest", "--source", "webvid", "--metadata", str(d / "meta.csv"), "--videos", str(d / "missing"),
            "--out", str(d / "out"), f"{flag}={value}"]
    err = _one_line_exit_2(argv, capsys)
    assert flag[2:].replace("-", "_") in err or flag in err or "videos:" in err, err
    assert not (d / "out").exists()


@FUZZ
@given(flag=st.sampled_from(MIXTURE_FLAGS), value=FLAG_VALUES)
def test_any_mixture_flag_value_exits_2_with_one_line_before_any_work(tmp_path_factory, capsys, flag, value):
    """`ingest --mixture`: the mixture file is missing (or is the fuzzed value), so the run ends before any work: a
    bad value is named by its setting, a good one lets the pre-flight (or the mixture's reader) name --mixture."""
    d = tmp_path_factory.mktemp("mixflags")
    argv = ["ingest", "--mixture", str(d / "missing.yaml"), "--out", str(d / "out"), f"{flag}={value}"]
    err = _one_line_exit_2(argv, capsys)
    assert flag[2:].replace("-", "_") in err or flag in err or "mixture" in err, err
    assert not (d / "out").exists()


@pytest.mark.parametrize("flag", _value_flags(IngestConfig, but=tuple(MixtureConfig.__dataclass_fields__)))
def test_a_raw_ingest_flag_with_mixture_is_named(tmp_path, capsys, flag):
    value = {"--source-option": "window_sec=30"}.get(flag, "webvid")
    err = _one_line_exit_2(["ingest", "--mixture", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"),
                            flag, value], capsys)
    assert f"{flag[2:].replace('-', '_')}" in err and "not used with --mixture" in err, err
