"""The ``iris`` command keeps the cyclic garbage collector off through its start-up's imports
(~40 ms of CPU saved) and never leaves it off: ``iris run`` turns it on tuned once started,
every other command at once."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import iris.cli
from iris.runtime.worker import tune_gc


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable()


def test_a_command_turns_the_collector_back_on(collector: None, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as ended:
        iris.cli.main(["check-config", "-c", str(tmp_path / "missing.yaml")])
    assert ended.value.code == 2
    assert gc.isenabled()


def test_the_worker_turns_it_on_tuned(collector: None) -> None:
    gc.disable()
    tune_gc()
    assert gc.isenabled()
    assert gc.get_threshold()[0] == 100_000
