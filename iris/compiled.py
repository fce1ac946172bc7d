"""Whether this iris runs compiled with mypyc or as pure Python.

``IRIS_MYPYC=1`` (``setup.py``) compiles the hot path to C extension modules, installed beside
their ``.py`` sources, which Python then imports instead. ``iris --version`` and the worker's
``started`` line say which one runs: a surprise either way is cheap to see.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).parent


def compiled_modules(package: Path = PACKAGE) -> list[str]:
    """The dotted names of the compiled extension modules in an ``iris`` package folder
    (this one by default; ``make bench`` asks about a build's), sorted."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    return sorted(".".join(("iris", *path.relative_to(package).parts[:-1],
                            path.name.split(".")[0]))
                  for path in package.rglob("*") if path.name.endswith(suffixes))


def build() -> str:
    """``"mypyc: N modules compiled"``, or ``"pure Python"``."""
    count = len(compiled_modules())
    return f"mypyc: {count} modules compiled" if count else "pure Python"
