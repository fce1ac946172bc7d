"""iris compiled with mypyc, as the container image ships it (``IRIS_MYPYC=1``, ``setup.py``).

``make bench`` runs its iris workers from such a build, and ``make test-compiled`` runs the
test suite on one. A build is a ``pip install --target`` of a clean copy of the package's
files (setuptools reuses a ``build/`` folder it finds, and ships the files a module deleted
since left there: pypa/setuptools#1871), made with the development environment's mypy and
setuptools (``--no-build-isolation``: mypy type-checks the modules it compiles against the
installed aiohttp, redis-py, pydantic...). It takes a minute or two on 2 cores, so it is kept
in ``.build/mypyc-<digest>``, the digest being that of everything that goes into it: iris's
sources, ``setup.py``, ``pyproject.toml``, Python's version and every installed distribution's.
A changed source gets a new build; the three newest are kept.

``python -m benchmarks.compiled`` builds (or finds) it and prints its folder;
``--tree DIR`` also lays out DIR as a copy of this checkout with the compiled modules beside
their sources, where the test suite (and every ``python -m iris`` it starts) imports them.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from benchmarks import iris_api

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ".build"  # under the checkout
DONE = ".complete"  # written last: a build interrupted halfway is not taken for one
KEEP = 3  # builds kept
TREE_MARK = ".compiled-tree"  # in a tree lay_out_tree made: it may replace it
PACKAGE_FILES = ("iris", "iris_demo", "setup.py", "pyproject.toml", "README.md")
NOT_BUILT = ("__pycache__", "*.pyc", "*.so")  # a stray compiled module shadows its source
NOT_COPIED = (".git", ".venv", "venv", ".build", "build", "dist", "htmlcov", "__pycache__",
              ".mypy_cache", ".pytest_cache", ".ruff_cache", "*.egg-info", "results.json",
              *NOT_BUILT)


class BuildFailed(RuntimeError):
    """mypyc could not compile iris (no C compiler, no mypy, a type error): the message says
    what pip printed."""


def digest(root: Path = ROOT) -> str:
    """What a build is made of: the package's sources, the build files, Python, and every
    installed distribution's version (mypy compiles, and type-checks against aiohttp,
    redis-py, pydantic...: a new version may change the build or refuse it)."""
    h = hashlib.sha256()
    installed = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                        if d.metadata["Name"] != "iris-publisher"})  # not iris's own metadata
    h.update("\n".join([sys.version, *installed, ""]).encode())
    files = sorted([*root.glob("iris/**/*.py"), *root.glob("iris_demo/**/*.py"),
                    root / "setup.py", root / "pyproject.toml"])
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(root: Path = ROOT, say: Callable[[str], None] = print) -> Path:
    """The folder of the compiled build of ``root`` (built now if there is none yet).

    One build at a time (a lock in ``.build``): a second caller waits, then finds it. The three
    newest builds are kept (a bench still running may be using an older one). Raises
    ``BuildFailed`` with pip's last lines when the build fails."""
    builds = root / BUILDS
    target = builds / f"mypyc-{digest(root)}"
    if (target / DONE).exists():
        return target
    builds.mkdir(parents=True, exist_ok=True)
    with open(builds / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / DONE).exists():  # built by whoever held the lock
            return target
        say(f"compiling iris's hot path with mypyc (IRIS_MYPYC=1, a minute or two; kept in "
            f"{target.relative_to(root)})")
        shutil.rmtree(target, ignore_errors=True)  # an interrupted one
        with tempfile.TemporaryDirectory(prefix="iris-mypyc-") as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
                 "--no-deps", "--target", str(target), str(clean_copy(root, Path(tmp) / "src"))],
                env={**os.environ, "IRIS_MYPYC": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                capture_output=True, text=True, check=False)
        if done.returncode != 0 or not compiled_modules(target):
            shutil.rmtree(target, ignore_errors=True)
            lines = (done.stderr or done.stdout).strip().splitlines()[-12:]
            raise BuildFailed("pip could not build iris with IRIS_MYPYC=1 (it needs mypy, "
                              "setuptools >= 77 and a C compiler):\n  " + "\n  ".join(lines))
        (target / DONE).write_text("")
        older = sorted((b for b in builds.glob("mypyc-*") if b != target),
                       key=lambda b: b.stat().st_mtime, reverse=True)
        for old in older[KEEP - 1:]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def clean_copy(root: Path, dest: Path) -> Path:
    """``dest``: the package's files of ``root`` and nothing else (no ``build/`` folder, no
    bytecode, no compiled module), for pip to build from."""
    dest.mkdir(parents=True)
    for name in PACKAGE_FILES:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns(*NOT_BUILT))
        else:
            shutil.copy2(root / name, dest / name)
    return dest


def extension_modules(build_dir: Path) -> list[Path]:
    """The extension modules of a build, relative to it: iris's compiled modules and mypyc's
    shared library (at the top, beside ``iris/``)."""
    found = [*build_dir.glob("*.so"), *(build_dir / "iris").rglob("*.so")]
    return sorted(p.relative_to(build_dir) for p in found)


def compiled_modules(build_dir: Path) -> list[str]:
    """The dotted names of iris's compiled modules in a build (``iris.core.events``, ...)."""
    return iris_api.compiled_modules(build_dir / "iris")


def check_tree(tree: Path, root: Path = ROOT) -> Path:
    """``tree``, resolved, if ``lay_out_tree`` may (re)place it there: missing, empty, or laid
    out by it before. Raises ``ValueError`` otherwise (it would be deleted), or when it is
    inside the checkout but outside ``.build`` (it would copy itself)."""
    tree, root = tree.resolve(), root.resolve()
    if tree.exists() and any(tree.iterdir()) and not (tree / TREE_MARK).exists():
        raise ValueError(f"{tree} holds files this tool did not lay out, and laying a tree "
                         "there would delete them: give a new or empty folder")
    if tree.is_relative_to(root) and not tree.is_relative_to(root / BUILDS):
        raise ValueError(f"{tree} is inside the checkout: give a folder under {BUILDS}/ or "
                         "outside it")
    return tree


def lay_out_tree(build_dir: Path, tree: Path, root: Path = ROOT) -> None:
    """``tree``: a copy of ``root`` with the compiled modules of ``build_dir`` beside their
    sources (Python imports an extension module before a ``.py`` of the same name).

    Raises ``ValueError`` for a ``tree`` this did not lay out (it would be deleted) or inside
    the checkout but outside ``.build`` (it would copy itself)."""
    tree, root = check_tree(tree, root), root.resolve()
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(root, tree, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    for module in extension_modules(build_dir):
        shutil.copy2(build_dir / module, tree / module)
    (tree / ".venv").symlink_to(root / ".venv")  # README's paths (.venv/bin/iris) hold there
    (tree / TREE_MARK).write_text(f"{build_dir}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compiled",
        description="Build iris with mypyc (IRIS_MYPYC=1), as the container image does; print "
                    "the build's folder.")
    p.add_argument("--tree", type=Path, default=None, metavar="DIR",
                   help="also make DIR a copy of this checkout with the compiled modules "
                        "beside their sources (make test-compiled runs the suite there)")
    args = p.parse_args(argv)
    try:
        if args.tree is not None:
            check_tree(args.tree)  # before a build of minutes, not after
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        built = build(say=lambda text: print(text, file=sys.stderr, flush=True))
    except BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.tree is not None:
        try:
            lay_out_tree(built, args.tree)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(compiled_modules(built))} compiled modules laid out in {args.tree}",
              file=sys.stderr)
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
