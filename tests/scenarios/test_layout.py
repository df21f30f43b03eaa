"""The house rules (README "The data flow"): one `longvid` namespace, layers that never import upward, test and demo
generators (synthetic/) that production jobs never import, the audit's methods used by the audit only."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# layer -> the layers it may import (README: jobs -> pipelines -> operators -> manifests; model stands alone)
ALLOWED = {
    "jobs": {"pipelines", "operators", "manifests", "model"},
    "pipelines": {"operators", "manifests", "model"},
    "operators": {"manifests"},
    "manifests": set(),
    "model": set(),
}
SHARED = {"longvid.model.constants"}  # the shared numbers (no imports of their own): every layer may read them
# The floor every data layer stands on, manifests included: the one storage stack (local disk and S3, parquet
# included, secrets redacted inside it) and the project's exceptions. They import nothing of the project but each
# other (test_the_floor_imports_nothing_but_the_floor). model stands alone and does not use them.
FLOOR = {"longvid.operators.storage", "longvid.operators.errors"}
# synthetic/: the test and demo generators (videos, corpora with planted faults, token shards). They may import every
# room; no production module imports them (the demo job is their one user outside tests and benchmarks).
GENERATORS = "synthetic"
ROOMS = {**ALLOWED, GENERATORS: set(ALLOWED)}
MAY_IMPORT_GENERATORS = {"jobs/demo.py"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module an import statement of `path` names (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the module's own package (longvid.<layer>...)
                package = ["longvid", *path.relative_to(ROOT).parent.parts]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def _modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def _on_the_floor(layer: str, line: int, mod: str, found: list[tuple[int, str]]) -> bool:
    """`mod` is a floor module (or a name in one), or the package of `from longvid.operators import storage`."""
    if layer == "model":
        return False
    if any(mod == m or mod.startswith(m + ".") for m in FLOOR):
        return True
    return any(n == line and m.rpartition(".")[0] == mod for n, m in found if m in FLOOR)


@pytest.mark.parametrize("layer", sorted(ROOMS))
def test_no_layer_imports_upward_or_outside_the_namespace(layer):
    bad = []
    for path in _modules(layer):
        found = _imports(path)
        for line, mod in found:
            top = mod.split(".")[0]
            if top in ROOMS:  # a bare `import operators...`: outside the longvid namespace
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} (use longvid.{mod})")
            elif _on_the_floor(layer, line, mod, found):
                continue
            elif top == "longvid" and mod.count(".") >= 1 and not any(mod.startswith(m) for m in SHARED):
                target = mod.split(".")[1]
                if target in ALLOWED and target != layer and target not in ROOMS[layer]:  # synthetic: below
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {mod}")
    assert not bad, "\n".join(bad)


def _floor_files(mod: str) -> list[Path]:
    """The files of a floor module: one .py, or every module of a package (operators/storage/)."""
    base = ROOT / mod.removeprefix("longvid.").replace(".", "/")
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


STACK = [p.relative_to(ROOT).as_posix() for p in _floor_files("longvid.operators.storage")]


def test_the_floor_imports_nothing_but_the_floor():
    """operators/storage/ and operators/errors.py import no project module but each other: every layer can
    stand on them without pulling in the operators above."""
    bad = []
    for path in (p for mod in FLOOR for p in _floor_files(mod)):
        for line, name in _imports(path):
            if name.startswith("longvid") and not any(name == m or name.startswith(m + ".") for m in FLOOR):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not bad, "\n".join(bad)


STORAGE_CLIENTS = ("boto3", "botocore", "pyarrow.fs", "fsspec", "s3fs")


def test_one_storage_stack():
    """Only operators/storage/ talks to storage libraries: every read and write of the project (parquet included,
    through its open_read / read_parquet / write_parquet) goes through its retries, atomic writes and redaction."""
    bad = []
    for layer in ALLOWED:
        for path in _modules(layer):
            if path.relative_to(ROOT).as_posix() in STACK:
                continue
            rel = path.relative_to(ROOT)
            bad += [f"{rel}:{line}: {mod}" for line, mod in _imports(path)
                    if any(mod == c or mod.startswith(c + ".") for c in STORAGE_CLIENTS)]
            for node in ast.walk(ast.parse(path.read_text())):  # `import pyarrow as pa` ... `pa.fs.S3FileSystem`
                if (isinstance(node, ast.Attribute) and node.attr == "fs" and isinstance(node.value, ast.Name)
                        and node.value.id in ("pa", "pyarrow")):
                    bad.append(f"{rel}:{node.lineno}: {node.value.id}.fs")
    assert not bad, "\n".join(bad)


# Secrets are redacted inside the storage stack and at the exits where text leaves the program, never at the call
# sites that compose a message or a record (README "The data flow"). module -> the exit it is.
REDACTING = {
    "operators/storage/": "the stack: StorageError messages, write_json (job.json, summary.json, set.json), "
                          "RedactFilter and get_logger (log records)",  # every module of the package
    "operators/write.py": "a unit's files: the sample's source address (json, manifest row), the failure rows",
    "pipelines/progress.py": "a job's lines: console, progress bar, DIR/logs/<job>.log",
    "jobs/cli.py": "the error line (ConfigError, StorageError) and the stderr handler of the longvid loggers",
    "pipelines/out_claim.py": "the claim record of an output folder",
    "pipelines/niah_build.py": "the NIAH set's frames.parquet (the haystack's source files)",
    "operators/audit/report.py": "the audit's report.html",
}
REDACTORS = {"redact", "redact_json", "RedactFilter", "get_logger"}


def _calls(path: Path, names: set[str]) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in names:
                out.append((node.lineno, name))
    return out


def test_secrets_are_redacted_in_the_stack_and_at_the_exits_only():
    """`redact(` (and redact_json) is called in operators/storage/ and the exits of REDACTING only; every exit
    named there does redact (the list cannot go stale)."""
    bad = []
    for layer in ROOMS:
        for path in _modules(layer):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in REDACTING and rel not in STACK:
                bad += [f"{rel}:{line}: {name}(...)" for line, name in _calls(path, {"redact", "redact_json"})]
    assert not bad, "redact at a call site (let the exit redact, see REDACTING):\n" + "\n".join(bad)
    for rel in REDACTING:
        files = STACK if rel == "operators/storage/" else [rel]
        assert any(_calls(ROOT / f, REDACTORS) for f in files), f"{rel} is listed as an exit but redacts nothing"


def test_the_shared_constants_have_one_home():
    """FRAMES_PER_CLIP, TOKENS_PER_FRAME, IGNORE_INDEX and the checkpoint prefixes are assigned in model/constants.py
    only (everyone else imports them)."""
    names = {"FRAMES_PER_CLIP", "LOCAL_NUM_FRAMES", "CLIP_FRAMES", "TOKENS_PER_FRAME", "TOKENS_PER_CLIP",
             "IGNORE_INDEX", "LLAVA_VISION_PREFIX", "LLAVA_PROJECTOR_PREFIX"}
    bad = []
    for layer in ROOMS:
        for path in _modules(layer):
            if path == ROOT / "model" / "constants.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {t.id}" for t in targets
                            if isinstance(t, ast.Name) and t.id in names]
    assert not bad, "\n".join(bad)


def test_production_code_never_imports_the_generators():
    """jobs (but the demo), pipelines, operators, model and manifests never import longvid.synthetic."""
    bad = []
    for layer in ALLOWED:
        for path in _modules(layer):
            rel = path.relative_to(ROOT).as_posix()
            if rel in MAY_IMPORT_GENERATORS:
                continue
            bad += [f"{rel}:{line}: {mod}" for line, mod in _imports(path)
                    if mod == f"longvid.{GENERATORS}" or mod.startswith(f"longvid.{GENERATORS}.")]
    assert not bad, "\n".join(bad)


def test_the_audit_methods_serve_the_audit_only():
    """operators/audit/ is the audit's: the other operators (frames.py's hash included) never import it."""
    bad = []
    for path in _modules("operators"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("operators/audit/"):
            continue
        bad += [f"{rel}:{line}: {mod}" for line, mod in _imports(path) if mod.startswith("longvid.operators.audit")]
    assert not bad, "\n".join(bad)


def test_everything_installs_under_one_namespace():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = cfg["packages"]
    assert packages and all(p == "longvid" or p.startswith("longvid.") for p in packages)
    # every folder of a layer with modules is a listed package (nothing left out of a wheel)
    for layer in ROOMS:
        for init in (ROOT / layer).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            assert f"longvid.{sub}" in packages, f"{sub} is not installed as longvid.{sub}"
    assert cfg["package-dir"] == {f"longvid.{layer}": layer for layer in ROOMS}


def test_a_users_own_modules_named_like_our_folders_do_not_shadow_longvid(tmp_path):
    """`model.py` or `jobs/` in the user's working directory: `python -m longvid` still runs ours."""
    for name in ROOMS:
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user module was imported')\n")
    r = subprocess.run([sys.executable, "-m", "longvid", "--version"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip().startswith("longvid "), r.stderr
    r = subprocess.run([sys.executable, "-c", "import longvid.operators.decode, longvid.model.config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# the one module of the shard format (read and write)
TAR_MODULES = {"operators/shards.py"}
NOT_YET_ON_SHARDS: set[str] = set()


def test_one_tar_parser():
    """No module of the layers imports tarfile or webdataset except operators/shards.py (issue #13: one home for the
    shard format; every reader uses its parser, every writer its header builder)."""
    bad = []
    for layer in ALLOWED:
        for path in _modules(layer):
            rel = str(path.relative_to(ROOT))
            if rel in TAR_MODULES or rel in NOT_YET_ON_SHARDS:
                continue
            bad += [f"{rel}:{line}: {mod}" for line, mod in _imports(path)
                    if mod.split(".")[0] in ("tarfile", "webdataset")]
    assert not bad, "\n".join(bad)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(["longvid", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _project_imports(path: Path) -> set[str]:
    """The project modules `path` imports, at module level or inside functions (a deferred import is still a
    dependency), but not under `if __name__ == "__main__":` (the module run as a script) or `if TYPE_CHECKING:`.
    jobs/cli.py also imports the job modules of its COMMANDS (by name, through importlib)."""
    def walk(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id in ("__name__", "TYPE_CHECKING")
                                                for n in ast.walk(node.test)):
                yield from walk(node.orelse)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            yield from walk(ast.iter_child_nodes(node))

    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in walk(tree.body):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([base] if base else []))
        out.update([base] + [f"{base}.{a.name}" for a in node.names])  # `from pkg import module` imports pkg.module
    if me == "longvid.jobs.cli":
        commands = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in n.targets))
        out.update(f"longvid.jobs.{c}" for c in commands)
    return {m for m in out if m.startswith("longvid.")}


def test_no_import_cycle_between_modules():
    """The modules' imports form no cycle (jobs/config.py used to import jobs/cli.py, which loads the jobs that
    import jobs/config.py): each module can be read, and imported, after the ones it uses."""
    modules = {_module_name(p): p for layer in ROOMS for p in _modules(layer)}
    graph = {m: sorted(n for n in _project_imports(p) if n in modules and n != m) for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)
