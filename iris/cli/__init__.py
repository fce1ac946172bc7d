"""The ``iris`` command line (``iris.cli:main``, and ``python -m iris``)."""

from __future__ import annotations

import gc


def main(argv: list[str] | None = None) -> None:
    """Run the ``iris`` command. Its start-up imports some 600 modules, and the cyclic garbage
    collector would rescan their objects again and again meanwhile (measured: 40 ms of CPU, a
    tenth of the start-up): it is off until the command is under way (``iris run`` turns it
    back on tuned, ``runtime.worker.tune_gc``; every other command at once)."""
    gc.disable()
    from iris.cli.main import main as run

    run(argv)


__all__ = ["main"]
