"""Log lines: JSON when asked, with delivery context, and never a registered secret."""

from __future__ import annotations

import subprocess
import sys

import orjson

SCRIPT = """
import logging
from iris.core.logs import register_secret, setup_logging
setup_logging("DEBUG", "{fmt}")
register_secret("tok-0123456789abcdef")
log = logging.getLogger("iris.test")
log.warning("sent %s", "Bearer tok-0123456789abcdef",
            extra={{"destination": "423", "batch_id": "423-1-0", "attempt": 2, "status": "503"}})
try:
    raise RuntimeError("token tok-0123456789abcdef refused")
except RuntimeError:
    log.exception("failed")
"""


def run(fmt: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(fmt=fmt)], capture_output=True,
                            text=True, timeout=30, check=True)
    return result.stderr.splitlines()


def test_json_lines_carry_context_and_no_secret():
    lines = run("json")
    records = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) == 2
    first, second = records
    assert first["level"] == "warning" and first["message"] == "sent Bearer [REDACTED]"
    assert {k: first[k] for k in ("destination", "batch_id", "attempt", "status")} == {
        "destination": "423", "batch_id": "423-1-0", "attempt": 2, "status": "503"}
    assert second["level"] == "error" and "RuntimeError" in second["error"]
    assert all("tok-0123456789abcdef" not in line for line in lines)


def test_text_lines_are_redacted_too():
    lines = run("text")
    assert lines and all("tok-0123456789abcdef" not in line for line in lines)
    assert "[REDACTED]" in "\n".join(lines)
