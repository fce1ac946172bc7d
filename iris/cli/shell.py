"""What every command shares: the config loaded with its secrets registered for redaction, and
a coroutine run on an event loop whose SIGTERM and SIGINT ask for a graceful stop.

It exists apart from the commands so that each of them (``send`` in its own module, the others
in ``commands``) reads its config and reaches Redis one way.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from iris.config.model import Config, RedisSettings, RedisView, load_config, load_redis_view
from iris.config.redaction import url_passwords
from iris.core.logs import register_secret
from iris.errors import IrisError

if TYPE_CHECKING:  # imported when a command runs: ``iris --help`` stays light
    from iris.runtime.wiring import SharedTokens
    from iris.store.client import RedisClient
    from iris.store.streams import Streams

T = TypeVar("T")
# ``on_stop(callback)``: call ``callback`` at each SIGTERM or SIGINT (the second also cuts the
# command short)
OnStop = Callable[[Callable[[], None]], None]


def load(args: argparse.Namespace) -> Config:
    """The whole config: for the commands that talk to partners or show every key."""
    from iris.store.client import check_url_options

    config = load_config(args.config)
    check_url_options(config)  # what connecting would refuse, refused before anything starts
    _register_secrets(config.model_dump())
    for password in url_passwords(config):
        register_secret(password)
    return config


def load_redis(args: argparse.Namespace) -> RedisView:
    """Only the Redis part: for the commands that touch nothing but Redis."""
    from iris.store.client import check_url_options

    view = load_redis_view(args.config)
    check_url_options(view)
    for password in url_passwords(view):
        register_secret(password)
    return view


def _register_secrets(value: Any) -> None:
    """Every secret of the config, however deep (auth, signing keys, token store key)."""
    if hasattr(value, "get_secret_value"):
        register_secret(value.get_secret_value())
    elif isinstance(value, dict):
        for item in value.values():
            _register_secrets(item)
    elif isinstance(value, list):
        for item in value:
            _register_secrets(item)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when the optional extra is installed (faster), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(factory: Callable[[OnStop], Coroutine[Any, Any, T]]) -> T | None:
    """Run a coroutine with SIGTERM/SIGINT wired to a graceful stop; a second signal forces it
    (and then the result is None)."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        stop_requested = False
        stop_callbacks: list[Callable[[], None]] = []

        def on_signal() -> None:
            nonlocal stop_requested
            if stop_requested and task is not None:
                task.cancel()  # second signal: do not wait for the drain
            stop_requested = True
            for callback in stop_callbacks:
                callback()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await factory(stop_callbacks.append)

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:  # what asyncio.run does
            return runner.run(main())
    except asyncio.CancelledError:
        return None


def completed(result: T | None) -> T:
    """The result of ``with_streams``, unless a second signal cut the command short."""
    if result is None:
        raise IrisError("interrupted before it completed")
    return result


def with_redis(settings: RedisSettings, work: Callable[[RedisClient], Awaitable[T]]) -> T | None:
    """Run ``work(redis)`` against the configured Redis, then close the connection."""
    from iris.store.client import connect

    async def run(_: OnStop) -> T:
        redis = connect(settings)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    return run_async(run)


def with_partitions(settings: RedisSettings,
                    work: Callable[[list[Streams]], Awaitable[T]]) -> T | None:
    """Run ``work(partitions)`` against the configured Redis: one ``Streams`` per partition
    of the stream (one without partitions)."""
    from iris.store.streams import partitions

    return with_redis(settings, lambda redis: work(partitions(redis, settings)))


def with_tokens(config: Config, work: Callable[[SharedTokens], Awaitable[T]]) -> T | None:
    """Run ``work(shared)`` with the configured Redis as the token store."""
    from iris.runtime.wiring import SharedTokens

    return with_redis(config, lambda redis: work(SharedTokens.from_config(config, redis)))


def unknown_destination(wanted: str, known: list[str]) -> str:
    """Why a destination id the config does not have is refused, naming those it has."""
    return f"no destination with id {wanted!r} in the config (it has {', '.join(known)})"
