"""The `longvid` command as a user meets it: help and version, one line and exit 2 for every user mistake before any
work (bad paths, storage that cannot be used, bad values), --log-level, one dtype spelling, config files that exist,
and every setting declared once: its flag, help and job file key come from the same field."""
from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import logging
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from longvid import __version__
from longvid.jobs.cli import build_parser, main, setup_logging, subparsers
from longvid.jobs.config import ConfigError, add_config_flag, add_flags, flag_values, job_log, load_config
from longvid.jobs.demo import DemoConfig
from longvid.model.constants import MODEL_PRESETS
from longvid.operators.audit.config import AuditConfig
from longvid.operators.settings import Settings, field_types, ordered, setting
from longvid.pipelines.encode_config import EncodeConfig
from longvid.pipelines.ingest_config import IngestConfig, MixtureConfig
from longvid.pipelines.niah_config import NiahBuildConfig, NiahEvalConfig
from longvid.pipelines.plan_config import PlanConfig
from longvid.pipelines.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _all_parsers(p: argparse.ArgumentParser, path: str = "longvid"):
    yield path, p
    for name, sp in ((sp.prog.split()[-1], sp) for sp in subparsers(p)):
        yield from _all_parsers(sp, f"{path} {name}")


def test_every_flag_of_every_command_has_help():
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, p in _all_parsers(build_parser())
               for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())]
    assert not missing, missing
    assert {path for path, _ in _all_parsers(build_parser())} >= {
        "longvid", "longvid ingest", "longvid encode", "longvid train", "longvid audit", "longvid plan",
        "longvid niah", "longvid niah build", "longvid niah eval", "longvid demo"}


def test_help_imports_no_heavy_module():
    code = ("import sys; from longvid.jobs.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'pandas') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("argv", [[], ["ingest"], ["encode"], ["plan"], ["train"], ["audit"], ["niah"],
                                  ["niah", "build"], ["niah", "eval"], ["demo"]], ids=" ".join)
def test_help_of_every_command(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: longvid" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"longvid {__version__}"


def test_help_names_what_the_config_layer_accepts(capsys):
    """Help texts list model presets and GPUs without importing torch: they must stay the real ones."""
    from longvid.model.config import PRESETS
    from longvid.pipelines.plan_config import DEFAULT_MFU, GPUS

    assert MODEL_PRESETS == tuple(PRESETS)
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(g in text for g in GPUS) and f"default {DEFAULT_MFU}" in text


def test_config_files_named_in_code_and_docs_exist():
    """Every jobs/configs/*.yaml named in a docstring, help text or document is a shipped file."""
    named = set()
    for f in itertools.chain(ROOT.glob("*.md"), *(ROOT.glob(f"{d}/**/*.{e}") for d in
                             ("jobs", "pipelines", "operators", "manifests", "model", "bench") for e in ("py", "md"))):
        for m in re.finditer(r"jobs/configs/([\w.*{},-]+?\.yaml)", f.read_text(errors="replace")):
            named.add((m.group(1), f.relative_to(ROOT).as_posix()))
    assert len(named) >= 5
    for name, where in named:
        brace = re.search(r"\{([^}]*)\}", name)
        names = [name[:brace.start()] + alt + name[brace.end():] for alt in brace.group(1).split(",")] if brace \
            else [name]
        for n in names:
            assert glob.glob(str(ROOT / "jobs" / "configs" / n)), f"{where} names jobs/configs/{n}, which does not exist"


def test_one_dtype_spelling_with_torch_aliases(tmp_path):
    from longvid.pipelines.encode import EncodeConfig
    from longvid.pipelines.niah_build import NiahBuildConfig

    enc = {"shards": "in", "out": "out", "model": "tiny"}
    for given, kept in [("fp32", "fp32"), ("float32", "fp32"), ("bfloat16", "bf16"), ("fp16", "fp16")]:
        assert load_config(EncodeConfig, {**enc, "dtype": given}).dtype == kept
    niah = {"haystack": "h", "needles": "n", "images": "i", "out": str(tmp_path), "model": "tiny"}
    for given, kept in [("fp16", "float16"), ("fp32", "float32"), ("float16", "float16")]:
        assert load_config(NiahBuildConfig, {**niah, "dtype": given}).dtype == kept
    for cls, base in ((EncodeConfig, enc), (NiahBuildConfig, niah)):
        with pytest.raises(ConfigError, match="dtype: must be one of .*fp16.*; got 'float64'"):
            load_config(cls, {**base, "dtype": "float64"})


def test_log_level_anywhere_and_it_filters_progress(capsys):
    parser = build_parser()
    assert parser.parse_args(["--log-level", "ERROR", "plan"]).log_level == "error"
    assert parser.parse_args(["plan", "--log-level", "debug"]).log_level == "debug"
    assert parser.parse_args(["niah", "eval", "--log-level", "warning"]).log_level == "warning"
    assert parser.parse_args(["plan"]).log_level == "info"
    log = logging.getLogger("longvid")
    before = (log.level, list(log.handlers))
    undo = setup_logging("warning")
    job_log("ingest")("[ingest] unit 0: quiet please")
    undo()
    undo = setup_logging("info")
    job_log("ingest")("[ingest] unit 1: shown")
    undo()
    err = capsys.readouterr().err
    assert "unit 1: shown" in err and "quiet please" not in err
    assert (log.level, list(log.handlers)) == before  # main() leaves the process's logging as it found it


# ------------------------------------------------------------------------------ settings: declared once, next to the field

# command -> the settings classes whose fields are its flags and the keys of its job file (--config)
SETTINGS = {"longvid ingest": (IngestConfig, MixtureConfig), "longvid encode": (EncodeConfig,),
            "longvid plan": (PlanConfig,), "longvid train": (TrainConfig,), "longvid audit": (AuditConfig,),
            "longvid niah build": (NiahBuildConfig,), "longvid niah eval": (NiahEvalConfig,),
            "longvid demo": (DemoConfig,)}
RUN_FLAGS = {"longvid audit": {"manifests", "benchmarks", "out", "benchmark_videos", "strict_benchmarks",
                               "fail_on_leak", "s3_endpoint_url", "s3_profile", "s3_region",
                               "ray_address"}}  # what to audit, where, on which cluster
NO_JOB_FILE = {"longvid demo"}


def _known_keys(cls: type) -> set[str]:
    """The keys a job file of `cls` may hold, as load_config names them when it meets another."""
    with pytest.raises(ConfigError) as e:
        load_config(cls, {"no_such_setting": 1})
    return set(re.search(r"unknown field \(known: (.*)\)$", str(e.value)).group(1).split(", "))


def test_every_setting_is_a_flag_with_its_help_and_the_job_file_keys_are_the_flags():
    parsers = dict(_all_parsers(build_parser()))
    with_flags = {path for path, p in parsers.items()
                  if any(a.dest not in ("help", "version", "log_level") for a in p._actions if a.option_strings)}
    assert with_flags == set(SETTINGS)  # every command with flags has its settings below
    for path, classes in SETTINGS.items():
        flags = {a.dest: a for a in parsers[path]._actions if a.option_strings and a.dest not in ("help", "log_level")}
        fields = {f.name: (cls, f) for cls in reversed(classes) for f in dataclasses.fields(cls)}
        structures = set()
        for name, (cls, f) in fields.items():
            assert f.metadata.get("help"), f"{cls.__name__}.{name}: no help"
            if f.metadata.get("flags") == ():  # a structure only a job file holds: a list of settings
                item = typing.get_args(field_types(cls)[name])[0]
                assert issubclass(item, Settings), f"{cls.__name__}.{name} has no flag"
                structures.add(name)
                continue
            assert name in flags, f"{path}: {cls.__name__}.{name} has no flag"
        for name, a in flags.items():
            if name in fields:  # the flag's help is the field's, as declared
                assert a.help.replace("%%", "%") == fields[name][1].metadata["help"], (path, name)
        keys = set(fields) if path in NO_JOB_FILE else set().union(*map(_known_keys, classes))
        assert keys == set(fields)
        assert keys - structures == set(flags) - RUN_FLAGS.get(path, set()) - {"config"}, path
        assert ("config" in flags) == (path not in NO_JOB_FILE), path


@dataclasses.dataclass
class _Toy(Settings):
    name: str = setting("a", choices=("a", "b"), help="a name")
    late: str = setting("x", choices=lambda: ("x", "y"), help="choices known when a config is checked")
    count: int = setting(1, ge=0, help="a count")
    top: int = setting(10, help="the count's bound")
    ratio: float = setting(0.5, help="a ratio")
    loud: bool = setting(False, help="be loud")
    ray: bool = setting(True, flags=("--no-ray",), help="no Ray")
    export: bool = setting(True, help="no export")
    paths: list[str] = setting(default_factory=list, adds=True, help="paths, added to the file's")
    sizes: list[int] = setting(default_factory=lambda: [1, 2], comma=True, help="sizes")
    opts: dict[str, Any] = setting(default_factory=dict, flags=("--opt",), adds=True, help="options")

    count_le_top = ordered("count", "top")


def _toy(argv: list[str], file: dict | None = None) -> _Toy:
    p = argparse.ArgumentParser(prog="toy")
    add_config_flag(p)
    add_flags(p, _Toy)
    return load_config(_Toy, file or {}, flag_values(_Toy, p.parse_args(argv)), source="toy.yaml")


def test_flags_are_made_from_the_fields():
    assert _toy([]) == _Toy()  # no flag given: the defaults (or the file's values)
    assert _toy([], {"count": 2, "loud": "yes"}) == _Toy(count=2, loud=True)
    cfg = _toy(["--name", "b", "--count", "3", "--ratio", "2", "--loud", "--no-ray", "--no-export", "--paths", "x",
                "--paths", "y", "--sizes", "4,5", "--opt", "k=3", "--opt", "s=text", "--late", "y"],
               {"paths": ["f"], "opts": {"k": 1, "z": 2}, "count": 9})
    assert cfg == _Toy(name="b", late="y", count=3, ratio=2.0, loud=True, ray=False, export=False,
                       paths=["f", "x", "y"], sizes=[4, 5], opts={"k": 3, "z": 2, "s": "text"})
    for argv in (["--name", "c"], ["--count", "x"], ["--loud=1"]):  # argparse's usage errors, naming the flag
        with pytest.raises(SystemExit):
            _toy(argv)
    for argv, message in ((["--late", "z"], "late: must be one of x, y; got 'z'"),
                          (["--count", "-1"], "count: must be >= 0, got -1"),
                          (["--count", "11"], "count/top: need min <= max, got 11, 10"),
                          (["--opt", "novalue"], "--opt: expected KEY=VALUE, got 'novalue'")):
        with pytest.raises(ConfigError) as e:
            _toy(argv)
        assert str(e.value) == message  # a flag's value: the file is not named
    with pytest.raises(ConfigError, match=r"^toy.yaml: top: expected an integer"):
        _toy([], {"top": "ten"})


# ------------------------------------------------------------------------------------------------ user mistakes


@pytest.fixture
def user_files(tmp_path):
    (tmp_path / "meta.csv").write_text("videoid,name,page_dir,duration\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


def _ingest(d, **kw):
    args = {"--source": "webvid", "--metadata": str(d / "meta.csv"), "--videos": str(d / "videos"),
            "--out": str(d / "out"), **{f"--{k.replace('_', '-')}": str(v) for k, v in kw.items()}}
    return ["ingest", *itertools.chain(*args.items())]


MISTAKES = {  # what the user did -> (argv from the fixture folder, the setting the one line must name)
    "videos root does not exist": (lambda d: _ingest(d, videos=d / "nope"), "videos"),
    "videos root is a file": (lambda d: _ingest(d, videos=d / "a_file"), "videos"),
    "out is a file": (lambda d: _ingest(d, out=d / "a_file"), "out"),
    "out below a file": (lambda d: _ingest(d, out=d / "a_file" / "x"), "out"),
    "metadata file missing": (lambda d: _ingest(d, metadata=d / "nope.csv"), "metadata"),
    "infinite shard size": (lambda d: _ingest(d, shard_size_mb="inf"), "shard_size_mb"),
    "nan timeout": (lambda d: _ingest(d, decode_timeout_s="nan"), "decode_timeout_s"),
    "negative memory cap": (lambda d: _ingest(d, decoder_memory_mb=-1), "decoder_memory_mb"),
    "negative cpus": (lambda d: _ingest(d, num_cpus=-2), "num_cpus"),
    "unknown resize": (lambda d: _ingest(d, resize="lanczos"), "resize"),
    "bad s3 endpoint": (lambda d: _ingest(d, s3_endpoint_url="ftp://host"), "s3_endpoint_url"),
    "encode shards missing": (lambda d: ["encode", "--shards", str(d / "nope"), "--out", str(d / "o")], "shards"),
    "encode shards without parquet": (lambda d: ["encode", "--shards", str(d / "empty"), "--out", str(d / "o"),
                                                 "--model", "tiny"], "shards"),
    "encode checkpoint missing": (lambda d: ["encode", "--shards", str(d / "empty"), "--out", str(d / "o"),
                                             "--checkpoint", str(d / "nope.pt")], "checkpoint"),
    "encode unknown dtype": (lambda d: ["encode", "--shards", str(d / "empty"), "--out", str(d / "o"),
                                        "--dtype", "int8"], "dtype"),
    "train recipe missing": (lambda d: ["train", "--config", str(d / "nope.yaml")], "config"),
    "train out is a file": (lambda d: ["train", "--config", "tiny", "--out", str(d / "a_file")], "out"),
    "train llm path missing": (lambda d: ["train", "--config", "tiny", "--llm-path", str(d / "nope")], "llm_path"),
    "train drop list missing": (lambda d: ["train", "--config", "tiny", "--exclude", str(d / "nope.txt")],
                                "exclude"),
    "audit manifests missing": (lambda d: ["audit", "--manifests", str(d / "nope"), "--benchmarks", str(d / "empty"),
                                           "--out", str(d / "rep")], "manifests"),
    "audit out is a file": (lambda d: ["audit", "--manifests", str(d / "empty"), "--benchmarks", str(d / "empty"),
                                       "--out", str(d / "a_file")], "out"),
    "audit negative memory": (lambda d: ["audit", "--manifests", str(d / "empty"), "--benchmarks", str(d / "empty"),
                                         "--out", str(d / "rep"), "--dup-memory-mb", "-1"], "dup_memory_mb"),
    "plan manifests without parquet": (lambda d: ["plan", "--manifests", str(d / "empty")], "manifests"),
    "plan json is a folder": (lambda d: ["plan", "--json", str(d / "empty")], "json"),
    "plan infinite mfu": (lambda d: ["plan", "--mfu", "inf"], "mfu"),
    "niah haystack missing": (lambda d: ["niah", "build", "--haystack", str(d / "nope"), "--needles",
                                         str(d / "a_file"), "--images", str(d / "empty"), "--out", str(d / "n"),
                                         "--model", "tiny"], "haystack"),
    "niah nan depth": (lambda d: ["niah", "build", "--haystack", str(d / "a_file"), "--needles", str(d / "a_file"),
                                  "--images", str(d / "empty"), "--out", str(d / "n"), "--model", "tiny",
                                  "--depths", "0.5,nan"], "depths"),
    "niah eval without a set": (lambda d: ["niah", "eval", "--set", str(d / "empty"), "--checkpoint", "random:0"],
                                "set"),
}


@pytest.mark.parametrize("what", list(MISTAKES))
def test_user_mistake_is_one_line_and_exit_2_before_any_work(what, user_files, capsys):
    argv, setting = MISTAKES[what]
    before = sorted(p.relative_to(user_files) for p in user_files.rglob("*"))
    assert main(argv(user_files)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(rf"configuration error: (.*: )?{re.escape(setting)}\b", err), err
    assert sorted(p.relative_to(user_files) for p in user_files.rglob("*")) == before  # nothing made or removed
    assert (user_files / "a_file").read_text() == "mine\n"


def test_usage_mistake_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ingest", "--limit", "ten"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--limit" in err


# ------------------------------------------------------------------------------------------------ storage errors


def _s3_ingest(d, videos, **kw):
    return _ingest(d, videos=videos, **kw)


def test_s3_no_such_bucket(s3, user_files, capsys):
    assert main(_s3_ingest(user_files, "s3://no-such-bucket-longvid/videos")) == 2
    err = capsys.readouterr().err
    assert "videos: s3://no-such-bucket-longvid/videos" in err and len(err.strip().splitlines()) == 1


def test_s3_access_denied(s3, fault_proxy, user_files, capsys):
    fault_proxy.set(probability=1.0, kinds=("403",))
    assert main(_s3_ingest(user_files, s3.uri("videos"), s3_endpoint_url=fault_proxy.endpoint)) == 2
    err = capsys.readouterr().err
    assert "videos:" in err and "access denied" in err.lower() and len(err.strip().splitlines()) == 1


def test_s3_no_credentials(s3, user_files, capsys, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert main(_s3_ingest(user_files, s3.uri("videos"))) == 2
    err = capsys.readouterr().err
    assert "videos:" in err and "credentials" in err and len(err.strip().splitlines()) == 1


def test_s3_endpoint_unreachable(s3, user_files, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(_s3_ingest(user_files, s3.uri("videos"), s3_endpoint_url=f"http://127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err
    assert "videos:" in err and len(err.strip().splitlines()) == 1


def test_malformed_drop_list_exits_2_before_ray(tmp_path):
    """train reads every drop list in the driver: two words on a line is one line naming the file and line, exit 2."""
    dl = tmp_path / "drop.txt"
    dl.write_text("key1  # inline comments are fine\nkey2 key3\n")
    r = subprocess.run([sys.executable, "-m", "longvid", "train", "--config", str(ROOT / "jobs/configs/train-tiny.yaml"),
                        "--out", str(tmp_path / "run"), "--exclude", str(dl)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{dl}: line 2: one key per line" in r.stderr and len(r.stderr.strip().splitlines()) == 1
