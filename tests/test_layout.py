"""The house rules (README "The data flow"): one `longvid` namespace, layers that never import upward, test and demo
generators that production jobs never import."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (README: jobs -> pipelines -> operators -> manifests; model stands alone)
ALLOWED = {
    "jobs": {"pipelines", "operators", "manifests", "model"},
    "pipelines": {"operators", "manifests", "model"},
    "operators": {"manifests"},
    "manifests": set(),
    "model": set(),
}
SHARED = {"longvid.model.constants"}  # the shared numbers (no imports of their own): every layer may read them
# generators of synthetic corpora (tests, benchmarks, the demo): who may import them
GENERATORS = {"longvid.pipelines.faulty", "longvid.pipelines.synth_video", "longvid.pipelines.demo_corpus"}
MAY_IMPORT_GENERATORS = {"jobs/demo.py", "pipelines/demo_corpus.py", "pipelines/faulty.py", "pipelines/synth_video.py"}


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


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_upward_or_outside_the_namespace(layer):
    bad = []
    for path in _modules(layer):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in ALLOWED:  # a bare `import operators...`: outside the longvid namespace
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} (use longvid.{mod})")
            elif top == "longvid" and mod.count(".") >= 1 and not any(mod.startswith(m) for m in SHARED):
                target = mod.split(".")[1]
                if target in ALLOWED and target != layer and target not in ALLOWED[layer]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_shared_constants_have_one_home():
    """FRAMES_PER_CLIP, TOKENS_PER_FRAME, IGNORE_INDEX and the checkpoint prefixes are assigned in model/constants.py
    only (everyone else imports them)."""
    names = {"FRAMES_PER_CLIP", "LOCAL_NUM_FRAMES", "CLIP_FRAMES", "TOKENS_PER_FRAME", "TOKENS_PER_CLIP",
             "IGNORE_INDEX", "LLAVA_VISION_PREFIX", "LLAVA_PROJECTOR_PREFIX"}
    bad = []
    for layer in ALLOWED:
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
    bad = []
    for layer in ALLOWED:
        for path in _modules(layer):
            rel = str(path.relative_to(ROOT))
            if rel in MAY_IMPORT_GENERATORS:
                continue
            bad += [f"{rel}:{line}: {mod}" for line, mod in _imports(path) if mod in GENERATORS]
    assert not bad, "\n".join(bad)


def test_everything_installs_under_one_namespace():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = cfg["packages"]
    assert packages and all(p == "longvid" or p.startswith("longvid.") for p in packages)
    # every folder of a layer with modules is a listed package (nothing left out of a wheel)
    for layer in [*ALLOWED, "synthetic"]:
        for init in (ROOT / layer).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            assert f"longvid.{sub}" in packages, f"{sub} is not installed as longvid.{sub}"
    assert cfg["package-dir"] == {f"longvid.{layer}": layer for layer in [*ALLOWED, "synthetic"]}


def test_a_users_own_modules_named_like_our_folders_do_not_shadow_longvid(tmp_path):
    """`model.py` or `jobs/` in the user's working directory: `python -m longvid` still runs ours."""
    for name in ALLOWED:
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user module was imported')\n")
    r = subprocess.run([sys.executable, "-m", "longvid", "--version"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip().startswith("longvid "), r.stderr
    r = subprocess.run([sys.executable, "-c", "import longvid.operators.decode, longvid.model.config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
