"""Build iris: pure Python by default; with ``IRIS_MYPYC=1``, its hot path compiled with mypyc.

Everything about the package is declared in ``pyproject.toml``; this file only adds the
optional compiled modules, as black and mypy ship theirs: the same code, type-checked by
``mypy --strict``, compiled to C extension modules by mypyc (a C compiler is needed at build
time; nothing is needed at run time). ``pip install .`` stays pure Python.

The compiled modules are those every event or every batch passes through: XREADGROUP's
replies, parse, route and batch (consume), the delivery of a batch over HTTP and its settling.
Compiled, the worker spends about a tenth less CPU per event at AAM's 10-user batches and a
fifth less at 1,000-user ones (docs/performance.md, "Compiled with mypyc"). A module whose
objects are held by weak references stays interpreted (mypyc's classes refuse them:
mypyc/mypyc#1102), as does one with a subclass of a class that has ``__slots__`` (redis-py's
cluster client).
"""

from __future__ import annotations

import os

from setuptools import setup

HOT_PATH = [
    "iris/core/events.py", "iris/core/routing.py", "iris/core/batching.py",
    "iris/core/payload.py", "iris/core/records.py", "iris/core/policy.py",
    "iris/core/retry.py", "iris/core/circuit.py", "iris/store/replies.py",
    "iris/runtime/consumer.py", "iris/runtime/outbound.py", "iris/runtime/publisher.py",
    "iris/runtime/destination.py", "iris/runtime/settler.py",
    "iris/http/sender.py", "iris/http/transport.py",
]


def compiled() -> list:
    """mypyc's extension modules when ``IRIS_MYPYC=1``, else none."""
    if os.environ.get("IRIS_MYPYC", "0") != "1":
        return []
    from mypyc.build import mypycify  # the build requires mypy (pyproject.toml)

    return mypycify(HOT_PATH, opt_level="3")


setup(ext_modules=compiled())
