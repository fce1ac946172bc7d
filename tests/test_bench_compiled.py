"""``benchmarks/compiled.py``: the mypyc build ``make bench`` and ``make test-compiled`` run.

Compiling takes a minute or two, so these tests build nothing that succeeds: CI's
``make test-compiled`` builds for real, lays the tree out and runs this whole suite on it.
Here: what a build is keyed on, how the tree is laid out, what a failed build says, and the
bench's choice between the build and the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import compiled
from benchmarks.run import parse_args


def _checkout(root: Path) -> Path:
    """A checkout of a few files, shaped as this one."""
    for name in ("iris/__init__.py", "iris/core/__init__.py", "iris/core/events.py",
                 "iris_demo/__init__.py", "tests/test_x.py", "setup.py", "pyproject.toml",
                 "README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    return root


def test_a_build_is_keyed_on_every_source_and_build_file(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "co")
    first = compiled.digest(root)
    assert compiled.digest(root) == first
    (root / "tests" / "test_x.py").write_text("# tests are not part of the build\n")
    assert compiled.digest(root) == first
    seen = {first}
    for name in ("iris/core/events.py", "iris_demo/__init__.py", "setup.py", "pyproject.toml"):
        (root / name).write_text((root / name).read_text() + "x = 1\n")
        seen.add(compiled.digest(root))
    (root / "iris" / "core" / "new.py").write_text("")
    seen.add(compiled.digest(root))
    assert len(seen) == 6  # each change made a new build


def test_the_tree_is_the_checkout_with_the_compiled_modules_beside_their_sources(
        tmp_path: Path) -> None:
    root = _checkout(tmp_path / "co")
    (root / ".venv").mkdir()
    for skipped in (".git/HEAD", ".build/mypyc-old/x", "iris/__pycache__/events.pyc",
                    "benchmarks/results.json"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("")
    build = tmp_path / "build"
    for module in ("iris/core/events.cpython-311-x86_64-linux-gnu.so",
                   "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so",
                   "bin/not-a-module.so", "iris_demo/stray.so"):
        (build / module).parent.mkdir(parents=True, exist_ok=True)
        (build / module).write_bytes(b"\x7fELF")
    assert [str(p) for p in compiled.extension_modules(build)] == [
        "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so",
        "iris/core/events.cpython-311-x86_64-linux-gnu.so"]
    assert compiled.compiled_modules(build) == ["iris.core.events"]

    tree = root / compiled.BUILDS / "tree"
    compiled.lay_out_tree(build, tree, root)
    (tree / "stale").write_text("")  # an earlier tree is replaced, not merged
    compiled.lay_out_tree(build, tree, root)
    assert (tree / "iris/core/events.cpython-311-x86_64-linux-gnu.so").read_bytes() == b"\x7fELF"
    assert (tree / "iris/core/events.py").read_text() == "# iris/core/events.py\n"
    assert (tree / "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so").exists()
    assert (tree / "tests/test_x.py").exists()
    assert (tree / ".venv").resolve() == (root / ".venv").resolve()
    for absent in ("stale", ".git", ".build", "iris/__pycache__", "benchmarks/results.json",
                   "iris_demo/stray.so", "bin"):
        assert not (tree / absent).exists(), absent
    assert [p for p in root.rglob("*.so") if not p.is_relative_to(tree)] == []  # mypy#12482


def test_a_tree_is_never_laid_over_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """``--tree`` deletes what it replaces: only a tree it laid out, and never one inside the
    checkout outside ``.build`` (it would copy itself into itself)."""
    root = _checkout(tmp_path / "co")
    build = tmp_path / "build"
    (build / "iris").mkdir(parents=True)
    mine = tmp_path / "mine"
    (mine / "keep.txt").parent.mkdir()
    (mine / "keep.txt").write_text("precious")
    for tree, says in ((mine, "did not lay out.*give a new or empty folder"),
                       (root, "did not lay out"),
                       (root / "sub" / "tree", "is inside the checkout")):
        with pytest.raises(ValueError, match=says):
            compiled.lay_out_tree(build, tree, root)
    assert (mine / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    compiled.lay_out_tree(build, empty, root)  # an empty folder is taken
    assert (empty / "iris/core/events.py").exists()
    assert (root / "iris/core/events.py").exists() and not (root / "sub").exists()


def test_pip_builds_from_a_clean_copy_not_from_leftovers_in_the_checkout(tmp_path: Path) -> None:
    """setuptools ships what an earlier build left in ``build/lib``, a module deleted since
    included (pypa/setuptools#1871); and a compiled module beside its source shadows it
    (python/mypy#12482). pip is given a copy of the package's files only."""
    root = _checkout(tmp_path / "co")
    for leftover in ("build/lib/iris/ghost.py", "iris/core/events.cpython-311-x86_64-linux-gnu.so",
                     "iris/__pycache__/events.cpython-311.pyc", "iris_demo/old.pyc",
                     "tests/test_x.py", ".build/mypyc-old/iris/core/events.py"):
        (root / leftover).parent.mkdir(parents=True, exist_ok=True)
        (root / leftover).write_text("")
    copy = compiled.clean_copy(root, tmp_path / "src")
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
        "README.md", "iris/__init__.py", "iris/core/__init__.py", "iris/core/events.py",
        "iris_demo/__init__.py", "pyproject.toml", "setup.py"]


def test_a_failed_build_says_what_pip_said_and_leaves_nothing_behind(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "co")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "broken"\nversion = "0"\n')
    (root / "setup.py").write_text("raise SystemExit('no C compiler here, say')\n")
    said: list[str] = []
    with pytest.raises(compiled.BuildFailed) as failed:
        compiled.build(root, say=said.append)
    assert "IRIS_MYPYC=1" in str(failed.value)
    assert "no C compiler here, say" in str(failed.value)
    assert said and "mypyc" in said[0]
    assert list((root / compiled.BUILDS).glob("mypyc-*")) == []  # no partial build is kept


def test_a_finished_build_is_found_again_without_pip(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "co")
    done = root / compiled.BUILDS / f"mypyc-{compiled.digest(root)}"
    done.mkdir(parents=True)
    (done / compiled.DONE).write_text("")
    said: list[str] = []
    assert compiled.build(root, say=said.append) == done
    assert said == []


def test_the_bench_runs_the_compiled_build_unless_told_otherwise() -> None:
    assert parse_args([]).from_source is False
    assert parse_args(["--from-source"]).from_source is True
    assert parse_args(["--profile", "/tmp/p"]).from_source is True  # cProfile sees into .py only
