"""The ``iris`` commands other than ``send``: each takes the parsed arguments and returns the
exit status.

It exists apart from ``main`` so that the dispatch and its error handling read on one page, and
apart from the parser so that what a command does is not buried in its help texts. Each command
imports what it runs when it runs, so that ``iris --help`` and ``iris status`` stay light.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

import orjson
import yaml

from iris.cli.shell import (
    OnStop,
    completed,
    load,
    load_redis,
    run_async,
    unknown_destination,
    with_partitions,
    with_tokens,
)
from iris.config.model import Config, Destination
from iris.config.redaction import redacted
from iris.errors import IrisError

if TYPE_CHECKING:
    from iris.store.streams import Streams

log = logging.getLogger("iris.runtime.worker")  # with the worker's own start and stop lines


def cmd_run(args: argparse.Namespace) -> int:
    from iris.runtime.worker import Worker, tune_gc

    config = load(args)
    worker = Worker(config)
    tune_gc()
    signals = 0

    def on_signal() -> None:
        """SIGTERM/SIGINT: say what happens now (an operator otherwise sees nothing until
        ``stopped``, up to ``shutdown_timeout`` later)."""
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping: deliveries in flight get up to %g s (shutdown_timeout); a "
                     "second signal stops at once", config.shutdown_timeout)
        else:
            log.warning("stopping at once (second signal): batches in flight stay pending, "
                        "to be delivered again with the same idempotency keys")
        worker.request_stop()

    async def serve(on_stop: OnStop) -> None:
        on_stop(on_signal)
        await worker.run()

    run_async(serve)
    return worker.exit_code


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args)
    print(f"# {args.config}: valid", file=sys.stderr)
    print(yaml.safe_dump(redacted(config), sort_keys=False), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from iris.cli import admin
    from iris.store.keys import stray_inbound

    config = load_redis(args)
    ids = [d.id for d in config.destinations]
    strays = stray_inbound(config)
    report = completed(with_partitions(config, lambda parts: admin.status(parts, ids, strays)))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json
          else admin.format_status(report))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from iris.cli import admin

    config = load_redis(args)
    destination, reason, limit = args.destination, args.reason, args.limit
    if args.dlq_command == "replay":
        def progress(count: int) -> None:
            print(f"replayed {count} event(s) so far", file=sys.stderr)

        count = completed(with_partitions(config, lambda parts: admin.replay(
            parts, destination=destination, reason=reason, limit=limit,
            dry_run=args.dry_run, progress=progress)))
        verb = "would replay" if args.dry_run else "replayed"
        print(f"{verb} {count} event(s) into {config.stream.key}"
              + (f" ({config.stream.partitions} partitions)" if config.stream.partitions > 1
                 else ""))
        return 0

    async def listing(partitions: list[Streams]) -> int:
        count = 0
        async for streams, (entry_id, fields) in admin.every_dead_letter(
                partitions, destination=destination, reason=reason, limit=limit):
            where = {"stream": streams.dead_letters} if len(partitions) > 1 else {}
            print(orjson.dumps({"id": entry_id, **where, **admin.printable(fields)}).decode())
            count += 1
        return count

    count = completed(with_partitions(config, listing))
    print(f"{count} dead letter(s)", file=sys.stderr)
    return 0


def cmd_repartition(args: argparse.Namespace) -> int:
    from iris.cli import admin
    from iris.store.keys import stray_inbound

    config = load_redis(args)
    strays = stray_inbound(config)
    moved = completed(with_partitions(config, lambda parts: admin.repartition(
        parts, strays, dry_run=args.dry_run)))
    verb = "would move" if args.dry_run else "moved"
    for key, targets in moved.items():
        where = ", ".join(f"{n} to {target}" for target, n in sorted(targets.items()))
        print(f"{verb} {targets.total()} event(s) from {key}: {where}")
    print(f"{verb} {sum(t.total() for t in moved.values())} event(s) in all")
    return 0


def _destinations(config: Config, wanted: str | None) -> list[Destination]:
    chosen = [d for d in config.destinations if wanted is None or d.id == wanted]
    if not chosen:
        raise IrisError(unknown_destination(str(wanted), [d.id for d in config.destinations]))
    return chosen


def cmd_auth(args: argparse.Namespace) -> int:
    from iris.cli.auth_commands import login_command, test_command

    config = load(args)
    dests = _destinations(config, args.destination)
    if args.auth_command == "login":
        code = with_tokens(config, lambda shared: login_command(dests[0], shared, args.timeout))
    else:
        code = with_tokens(config, lambda shared: test_command(dests, shared, fresh=args.fresh))
    return 0 if code is None else code  # None: stopped by a second signal


def cmd_demo(args: argparse.Namespace) -> int:
    from iris_demo.runner import run_demo

    async def demo(on_stop: OnStop) -> None:
        await run_demo(rate=args.rate, duration=args.duration, on_stop=on_stop,
                       config_dir=args.write_config)

    run_async(demo)
    return 0
