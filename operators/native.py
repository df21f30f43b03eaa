"""Where the loader's C kernels come from (operators/_native.c: NaN/inf scan, tar header checksum).

`pip install` builds them next to their source (operators/_native.*.so) when a C compiler is there. A Ray job
submitted with `--working-dir .` runs the uploaded copy of the repo first on the path, and Ray leaves
.gitignore'd files (the built module among them) out of the upload: the kernels are then taken from the longvid
installed on the node (site-packages, or the checkout of an editable install) when it has them. Without any,
callers use their numpy / Python fallback: the same results, slower.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from types import ModuleType

NAME = "longvid.operators._native"


def _installed_dirs() -> list[str]:
    """operators/ folders of installed copies of longvid other than this one: sys.path entries (regular
    installs), and the project folder of an editable install (its direct_url.json)."""
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [os.path.join(os.path.abspath(e or "."), "longvid", "operators") for e in sys.path]
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            text = distribution("longvid").read_text("direct_url.json")
        except PackageNotFoundError:
            text = None
        if text:
            url = json.loads(text).get("url", "")
            if url.startswith("file://"):
                dirs.append(os.path.join(url[len("file://"):], "operators"))
    except (ImportError, ValueError, OSError):
        pass
    out: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and os.path.abspath(d) != here and d not in out:
            out.append(d)
    return out


def load() -> ModuleType | None:
    """The kernels module, or None when no built copy can be loaded."""
    try:
        from longvid.operators import _native

        return _native
    except ImportError:
        pass
    for d in _installed_dirs():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(d, "_native" + suffix)
            if not os.path.isfile(path):
                continue
            try:
                spec = importlib.util.spec_from_file_location(NAME, path)
                if spec is None or spec.loader is None:
                    continue
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            except (ImportError, OSError):  # another Python or platform's build: try the next
                continue
            if all(hasattr(mod, f) for f in ("nonfinite", "tar_checksum")):
                sys.modules.setdefault(NAME, mod)
                return mod
    return None
