"""LongVid: the training corpus of long-context video LLMs of the VideoChat-Flash family, built and fed as Ray jobs.

The project's top-level folders are this package's subpackages: `longvid.operators`, `longvid.pipelines`,
`longvid.model`, `longvid.manifests`, `longvid.jobs`, and `longvid.synthetic` (the test and demo generators). An installed wheel carries them inside `longvid/`
(pyproject.toml maps them there, so nothing else lands at the top level of site-packages); from a source tree, or a
Ray job's uploaded working dir, this package's search path also covers the repo root beside it."""
import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "operators", "__init__.py")) and _root not in __path__:
    __path__.append(_root)
