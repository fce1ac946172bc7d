"""Every worker process a fault scenario starts must log only JSON lines with the required
fields, and never a secret, whatever the fault did to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SecretWatch
from tests.faults.harness import STARTED, log_problems


@pytest.fixture(autouse=True)
def worker_logs_are_clean_json(secret_watch: SecretWatch) -> Iterator[None]:
    STARTED.clear()
    yield
    problems = {}
    for worker in STARTED:
        worker.kill()
        found = log_problems(worker.log(), secret_watch.all())
        if found:
            problems[worker.log_path.name] = found[:5]
    STARTED.clear()
    assert not problems, f"worker logs: {problems}"
