"""iris compiled with mypyc, as the container image ships it (``IRIS_MYPYC=1``, ``setup.py``).

``make bench`` runs its iris workers from such a build, and ``make test-compiled`` runs the
test suite on one. A build is a ``pip install --target`` of this checkout, made with the
development environment's mypy and setuptools (``--no-build-isolation``: mypy type-checks the
modules it compiles against the installed aiohttp, redis-py, pydantic...). It takes a minute
or two on 2 cores, so it is kept in ``.build/mypyc-<digest>``, the digest being that of
everything that goes into it: iris's sources, ``setup.py``, ``pyproject.toml``, the Python and
mypy versions. A changed source gets a new build; older ones are removed.

``python -m benchmarks.compiled`` builds (or finds) it and prints its folder;
``--tree DIR`` also lays out DIR as a copy of this checkout with the compiled modules beside
their sources, where the test suite (and every ``python -m iris`` it starts) imports them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ".build"  # under the checkout
DONE = ".complete"  # written last: a build interrupted halfway is not taken for one
NOT_COPIED = (".git", ".venv", ".build", "build", "__pycache__", ".mypy_cache", ".pytest_cache",
              ".ruff_cache", "*.egg-info", "results.json")


class BuildFailed(RuntimeError):
    """mypyc could not compile iris (no C compiler, no mypy, a type error): the message says
    what pip printed."""


def digest(root: Path = ROOT) -> str:
    """What a build is made of: the package's sources, the build files, Python and mypy."""
    h = hashlib.sha256()
    h.update(f"{sys.version}\n{_mypy_version()}\n".encode())
    files = sorted([*root.glob("iris/**/*.py"), *root.glob("iris_demo/**/*.py"),
                    root / "setup.py", root / "pyproject.toml"])
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _mypy_version() -> str:
    try:
        return metadata.version("mypy")
    except metadata.PackageNotFoundError:
        return "none"


def build(root: Path = ROOT, say: Callable[[str], None] = print) -> Path:
    """The folder of the compiled build of ``root`` (built now if there is none yet).

    Raises ``BuildFailed`` with pip's last lines when the build fails."""
    builds = root / BUILDS
    target = builds / f"mypyc-{digest(root)}"
    if (target / DONE).exists():
        return target
    say(f"compiling iris's hot path with mypyc (IRIS_MYPYC=1, a minute or two; kept in "
        f"{target.relative_to(root)})")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
         "--no-compile", "--target", str(partial), str(root)],
        env={**os.environ, "IRIS_MYPYC": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, check=False)
    if done.returncode != 0 or not list(partial.glob("iris/core/*.so")):
        shutil.rmtree(partial, ignore_errors=True)
        lines = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise BuildFailed("pip could not build iris with IRIS_MYPYC=1 (it needs mypy, "
                          "setuptools >= 77 and a C compiler):\n  " + "\n  ".join(lines))
    for old in builds.glob("mypyc-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.rename(target)
    (target / DONE).write_text("")
    return target


def extension_modules(build_dir: Path) -> list[Path]:
    """The compiled modules of a build, relative to it (mypyc's shared library included)."""
    found = (p.relative_to(build_dir) for p in build_dir.rglob("*.so"))
    return sorted(p for p in found if p.parts[0] == "iris" or len(p.parts) == 1)


def lay_out_tree(build_dir: Path, tree: Path, root: Path = ROOT) -> None:
    """``tree``: a copy of ``root`` with the compiled modules of ``build_dir`` beside their
    sources (Python imports an extension module before a ``.py`` of the same name)."""
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(root, tree, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    for module in extension_modules(build_dir):
        shutil.copy2(build_dir / module, tree / module)
    (tree / ".venv").symlink_to(root / ".venv")  # README's paths (.venv/bin/iris) hold there


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build iris with mypyc (IRIS_MYPYC=1), as the "
                                            "container image does; print the build's folder.")
    p.add_argument("--tree", type=Path, default=None, metavar="DIR",
                   help="also make DIR a copy of this checkout with the compiled modules "
                        "beside their sources (make test-compiled runs the suite there)")
    args = p.parse_args(argv)
    try:
        built = build(say=lambda text: print(text, file=sys.stderr, flush=True))
    except BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.tree is not None:
        lay_out_tree(built, args.tree.resolve())
        print(f"{len(extension_modules(built))} compiled modules laid out in {args.tree}",
              file=sys.stderr)
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
