"""Where the benchmark writes: progress on stderr, the table on stdout (stderr with --json)."""

from __future__ import annotations

import sys

_quiet = False  # --json: progress and table go to stderr, stdout carries only the JSON


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def say(text: str = "") -> None:
    print(text, file=sys.stderr if _quiet else sys.stdout, flush=True)


def table_head(head: str) -> None:
    """A table's column heads, and a rule under them as wide."""
    say(head)
    say("-" * len(head))


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)
