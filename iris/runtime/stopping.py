"""Waiting for something unless a stop comes first: the one way every loop of iris waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless_stopped(waited: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """(True, its result) once ``waited`` is done; (False, None) if ``stop`` is set first (and
    ``waited`` is cancelled)."""
    task = asyncio.ensure_future(waited)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        return False, None
    return True, task.result()
