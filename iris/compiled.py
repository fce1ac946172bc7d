"""Whether this iris runs compiled with mypyc or as pure Python.

``IRIS_MYPYC=1`` (``setup.py``) compiles the hot path to C extension modules, installed beside
their ``.py`` sources, which Python then imports instead. ``iris --version`` and the worker's
``started`` line say which one runs: a surprise either way is cheap to see.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path


def compiled_modules() -> int:
    """How many of iris's modules are compiled extension modules (0: pure Python)."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    return sum(1 for path in Path(__file__).parent.rglob("*") if path.name.endswith(suffixes))


def build() -> str:
    """``"mypyc: N modules compiled"``, or ``"pure Python"``."""
    count = compiled_modules()
    return f"mypyc: {count} modules compiled" if count else "pure Python"
