"""Build of the optional native kernels (operators/_native.c); everything else is in pyproject.toml.

Without a C compiler the build goes on without them (optional=True) and the loader uses numpy: same results,
slower. -O3 because the scan loops must be vectorised (at -O2, gcc 12 leaves them scalar: 8x slower)."""
import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3"]
setup(ext_modules=[Extension("longvid.operators._native", ["operators/_native.c"], optional=True, extra_compile_args=args)])
