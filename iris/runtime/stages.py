"""The worker's parts, each with one lifecycle: ``start()``, then ``stop(deadline)``.

The worker starts its stages in order and stops the started ones in reverse, in one loop (as
uvicorn's ``Server`` does): the consumer stops reading and writes its open batches before the
publishers drain, the publishers drain before the partners' sessions close, and Redis is left
last but for the probes server. A stage that fails to stop is logged; the others still stop.
``deadline`` is a ``time.monotonic()`` instant: what is not finished by then stays pending in
Redis for the other workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before a loop that died of a bug runs again


class Stage(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self, deadline: float) -> None: ...


class Stages:
    """Started stages, stopped in reverse order."""

    def __init__(self) -> None:
        self._started: list[Stage] = []

    async def start(self, stage: Stage) -> None:
        await stage.start()
        self._started.append(stage)

    async def stop(self, deadline: float) -> None:
        while self._started:
            stage = self._started.pop()
            try:
                await stage.stop(deadline)
            except Exception:
                log.exception("stage %s did not stop cleanly", stage.name)


Stop = Callable[[float], Awaitable[None]]  # told the deadline


class Hook:
    """A stage that has nothing to start, only something to undo when the worker stops."""

    def __init__(self, name: str, stop: Stop) -> None:
        self.name = name
        self._stop = stop

    async def start(self) -> None:
        return None

    async def stop(self, deadline: float) -> None:
        await self._stop(deadline)


class Loops:
    """Background loops, each restarted after a bug (logged) until the stage stops; ``stop``
    first awaits ``before_cancel`` (loops told to finish their own work), then cancels them.
    """

    def __init__(self, name: str, loops: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        self.name = name
        self._loops = loops
        self.before_cancel: Stop | None = None
        self._stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self._supervised(name, loop), name=name)
                      for name, loop in self._loops]

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        try:
            if self.before_cancel is not None:
                await self.before_cancel(deadline)
        finally:
            await cancel_all(self.tasks)

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; if it dies of a bug, log it and start it again instead of dying too."""
        while not self._stopping:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s failed; restarting it in %.0f s", name, RESTART_DELAY)
                await asyncio.sleep(RESTART_DELAY)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until done: on Python 3.11 ``wait_for`` may swallow a cancel that races with its
    inner call finishing (fixed in 3.12), which would leave a reader blocked for block_ms."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
