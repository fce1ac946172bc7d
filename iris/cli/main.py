"""The ``iris`` command line. The only place that calls ``sys.exit``.

``run``, ``check-config`` and ``auth`` load the whole config; ``status``, ``dlq`` and ``send``
only its Redis part (``RedisView``), so an operator's machine needs no partner secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from iris import __version__
from iris.config.base import read_utf8
from iris.config.model import (
    Config,
    ConfigErrors,
    RedisSettings,
    RedisView,
    load_config,
    load_redis_view,
    redacted,
    url_passwords,
)
from iris.core.dead_letters import REASONS
from iris.core.events import parse_event
from iris.core.logs import register_secret, setup_logging
from iris.errors import ConfigError, EventError, IrisError

EXIT_CONFIG = 2
EXIT_ERROR = 1


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="YAML configuration (see config/iris.example.yaml)")
    _add_log_flags(parser)


def _add_log_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The global flags: on the top parser with their defaults, and on every command with none
    (``SUPPRESS``), so that they may follow the command without resetting what came before."""
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default="INFO" if top else argparse.SUPPRESS, help="default: INFO")
    parser.add_argument("--log-format", choices=["text", "json"],
                        default="text" if top else argparse.SUPPRESS,
                        help="text lines (default) or one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iris",
        description="Publish segment-qualification events from a Redis stream to partner "
                    "endpoints, batched in AAM's standard payload, with OAuth 2.",
    )
    parser.add_argument("--version", action="version", version=f"iris {__version__}")
    _add_log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the worker (SIGTERM/SIGINT drain and exit 0)",
                         description="Run the worker daemon until SIGTERM or SIGINT.")
    _add_config(run)

    check = sub.add_parser(
        "check-config", help="validate a config and print it, secrets as fingerprints",
        description="Validate FILE as run would (including CA and key files) and print the "
                    "resolved configuration, each secret as a short fingerprint and its "
                    "length (never the secret). Exit 2 if it is invalid.")
    _add_config(check)

    send = sub.add_parser(
        "send", help="add events to the inbound stream",
        description="Add one event (--uuid/--segment ...) or a JSONL file of events "
                    "(--file; UTF-8, one JSON object of event fields per line) to the inbound "
                    "stream. JSON numbers are kept exactly as written. Every event is validated "
                    "first; nothing is sent if one is invalid.")
    _add_config(send)
    send.add_argument("--file", type=Path, help="JSONL file of events")
    send.add_argument("--uuid", help="the user's AAM_UUID")
    send.add_argument("--segment", help="Segment_ID")
    send.add_argument("--status", choices=["0", "1"], default=None,
                      help="1 entered (default), 0 left")
    send.add_argument("--dpuuid", help="the partner's id for the user (DataPartner_UUID)")
    send.add_argument("--dpuuids", help='JSON object {"<User_DPID>": "<DataPartner_UUID>"}')
    send.add_argument("--destination", help="send only to this destination id")
    send.add_argument("--regions", help="comma-separated AAM region ids")
    send.add_argument("--ts", help="event time: epoch seconds or ISO-8601 (default: now)")

    status = sub.add_parser(
        "status", help="stream length, lag, pending, consumers and dead letters",
        description="Show, for the inbound stream and every destination's outbound stream: "
                    "length, the group's pending and lag, each consumer's pending and idle "
                    "time; and the dead-letter count per destination and reason.")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    dlq = sub.add_parser("dlq", help="list or replay dead-lettered events",
                         description="Inspect or re-inject the dead-letter stream (<key>:dlq).")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for action, text in (
        ("list", "print matching dead letters as JSON lines, oldest first"),
        ("replay", "re-inject the matching events present when it starts into the inbound "
                   "stream (aimed at the destination that failed them), each once, and remove "
                   "them from the dead-letter stream"),
    ):
        cmd = dlq_sub.add_parser(action, help=text, description=text[:1].upper() + text[1:] + ".")
        _add_config(cmd)
        cmd.add_argument("--destination", metavar="ID", help="only this destination id")
        cmd.add_argument("--reason", choices=list(REASONS), help="only this reason")
        cmd.add_argument("--limit", type=int, metavar="N", help="at most N entries")
        if action == "replay":
            cmd.add_argument("--dry-run", action="store_true",
                             help="count what would be replayed; change nothing")

    auth = sub.add_parser("auth", help="check a destination's credentials, or log in once",
                          description="Check or set up how iris authenticates to destinations.")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    test = auth_sub.add_parser(
        "test", help="get a token and say where it came from (never the token itself)",
        description="For each destination (or --destination), get a token the way a worker "
                    "would: from the shared token store, or from the token endpoint. Print its "
                    "type, its expiry and where it came from; never the token. Exit 1 if any "
                    "destination fails. A success lifts a pause caused by a refusal.")
    _add_config(test)
    test.add_argument("--destination", metavar="ID", help="only this destination id")
    test.add_argument("--fresh", action="store_true",
                      help="ask the token endpoint even if the store holds a valid token")
    login = auth_sub.add_parser(
        "login", help="authorise an oauth2_authorization_code destination once",
        description="Print the authorisation URL for a person to open, listen on the "
                    "destination's redirect_uri, check the state, exchange the code (with PKCE "
                    "S256 when configured) and store the refresh token in Redis, where every "
                    "worker uses it.")
    _add_config(login)
    login.add_argument("--destination", metavar="ID", required=True, help="the destination id")
    login.add_argument("--timeout", type=float, default=300.0,
                       help="seconds to wait for the redirect (default 300)")

    demo = sub.add_parser(
        "demo", help="run everything locally: Redis, an HTTPS mock partner, the worker",
        description="Start a private redis-server, an HTTPS mock partner with an OAuth 2 token "
                    "endpoint, and the worker; feed sample events and show what the partner "
                    "receives. Ctrl-C stops everything.")
    _add_log_flags(demo)
    demo.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop by itself after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--write-config", type=Path, default=None, metavar="DIR",
                      help="write the config the demo runs to DIR/iris.yaml (with its CA and "
                           "secret files beside it), to try other commands against the demo "
                           "and to start one's own config from")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code = COMMANDS[args.command](args)
    except ConfigErrors as exc:
        for line in exc.lines():
            print(f"iris: config error: {line}", file=sys.stderr)
        code = EXIT_CONFIG
    except ConfigError as exc:
        print(f"iris: config error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except IrisError as exc:
        print(f"iris: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except Exception:  # not foreseen: one record in the configured log format, not a raw trace
        logging.getLogger("iris").critical("iris %s failed unexpectedly", args.command,
                                           exc_info=True)
        code = EXIT_ERROR
    sys.exit(code)


def _load(args: argparse.Namespace) -> Config:
    """The whole config: for the commands that talk to partners or show every key."""
    config = load_config(args.config)
    _register_secrets(config.model_dump())
    for password in url_passwords(config):
        register_secret(password)
    return config


def _load_redis(args: argparse.Namespace) -> RedisView:
    """Only the Redis part: for the commands that touch nothing but Redis."""
    view = load_redis_view(args.config)
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


def run_async(factory: Callable[[Callable[[], None]], Awaitable[Any]]) -> Any:
    """Run a coroutine with SIGTERM/SIGINT wired to a graceful stop; a second signal forces it."""
    try:
        import uvloop  # optional extra: faster event loop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def main() -> Any:
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
        return runner(main())
    except asyncio.CancelledError:
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from iris.runtime.worker import Worker, tune_gc

    config = _load(args)
    worker = Worker(config)
    tune_gc()

    async def serve(on_stop: Callable[[Callable[[], None]], None]) -> None:
        on_stop(worker.request_stop)
        await worker.run()

    run_async(serve)
    return worker.exit_code


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"# {args.config}: valid", file=sys.stderr)
    print(yaml.safe_dump(redacted(config), sort_keys=False), end="")
    return 0


def _event_fields(raw: dict[str, Any], where: str) -> dict[str, str]:
    """Stream fields of one event: text exactly as given. Numbers already arrive as the text
    the producer wrote (see ``_json_object``); objects and lists (``dpuuids``) as JSON."""
    fields = {}
    for key, value in raw.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, dict | list):
            value = orjson.dumps(value).decode()
        fields[str(key)] = str(value)
    try:
        parse_event("0-0", fields)
    except EventError as exc:
        raise IrisError(f"{where}: {exc}") from None
    return fields


class _RepeatedField(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a field given twice is refused (JSON parsers keep either one)."""
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _RepeatedField(name)
        obj[name] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line. Numbers are kept as the text that was written, at any depth: a 38-digit
    uuid, ``1e3`` or ``14356.0`` is an id, and any conversion through int or float changes it."""
    try:
        raw = json.loads(line, parse_int=str, parse_float=str, parse_constant=_no_constant,
                         object_pairs_hook=_unique)
    except _RepeatedField as exc:
        raise IrisError(f"{where}: field {exc.name!r} is given twice") from None
    except ValueError:
        raise IrisError(f"{where}: not valid JSON") from None
    if not isinstance(raw, dict):
        raise IrisError(f"{where}: each line must be a JSON object")
    return raw


def _jsonl_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file (a BOM is allowed), split on \\n only: U+2028, U+0085 and
    the other separators ``str.splitlines`` knows are valid inside a JSON string."""
    try:
        return read_utf8(path).split("\n")
    except ValueError as exc:
        raise IrisError(str(exc)) from None


def _events_from_args(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """Each event with where it came from (``FILE:LINE``, or ``event``)."""
    if args.file is not None:
        events = []
        for number, line in enumerate(_jsonl_lines(args.file), 1):
            if not line.strip(" \t\r"):
                continue
            where = f"{args.file}:{number}"
            events.append((where, _event_fields(_json_object(line, where), where)))
        return events
    if not args.uuid or not args.segment:
        raise IrisError("send needs --uuid and --segment (or --file)")
    names = ("uuid", "segment", "status", "dpuuid", "dpuuids", "destination", "regions", "ts")
    return [("event", _event_fields({n: getattr(args, n) for n in names}, "event"))]


def _check_destinations(events: list[tuple[str, dict[str, str]]], view: RedisView) -> None:
    """An event aimed at a destination the config does not have would only be skipped."""
    known = [d.id for d in view.destinations]
    for where, fields in events:
        wanted = fields.get("destination", "").strip()
        if wanted and wanted not in known:
            label = "--destination" if where == "event" else where
            raise IrisError(f"{label}: {_unknown_destination(wanted, known)}")


def _unknown_destination(wanted: str, known: list[str]) -> str:
    return f"no destination with id {wanted!r} in the config (it has {', '.join(known)})"


def cmd_send(args: argparse.Namespace) -> int:
    view = _load_redis(args)
    events = _events_from_args(args)
    _check_destinations(events, view)
    fields = [event for _, event in events]
    ids = _with_streams(view, lambda streams: streams.add_many(fields))
    print(f"sent {len(ids)} event(s) to {view.stream.key}" + (f": {ids[0]}" if len(ids) == 1
                                                                else ""))
    return 0


def _with_streams(config: RedisSettings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(streams)`` against the configured Redis, then close the connection."""
    from iris.store.streams import Streams, connect

    async def run(_: Callable[[Callable[[], None]], None]) -> Any:
        redis = connect(config)
        try:
            return await work(Streams(redis, config))
        finally:
            await redis.aclose()

    return run_async(run)


def cmd_status(args: argparse.Namespace) -> int:
    from iris.cli import admin

    config = _load_redis(args)
    report = _with_streams(config, lambda streams: admin.status(streams, config))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json
          else admin.format_status(report))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from iris.cli import admin

    config = _load_redis(args)
    filters = {"destination": args.destination, "reason": args.reason, "limit": args.limit}
    if args.dlq_command == "replay":
        def progress(count: int) -> None:
            print(f"replayed {count} event(s) so far", file=sys.stderr)

        count = _with_streams(config, lambda streams: admin.replay(
            streams, **filters, dry_run=args.dry_run, progress=progress))
        verb = "would replay" if args.dry_run else "replayed"
        print(f"{verb} {count} event(s) into {config.stream.key}")
        return 0

    async def listing(streams: Any) -> int:
        count = 0
        async for entry_id, fields in admin.dead_letters(streams, **filters):
            print(orjson.dumps({"id": entry_id, **admin.printable(fields)}).decode())
            count += 1
        return count

    count = _with_streams(config, listing)
    print(f"{count} dead letter(s)", file=sys.stderr)
    return 0


def _destinations(config: Config, wanted: str | None) -> list[Any]:
    chosen = [d for d in config.destinations if wanted is None or d.id == wanted]
    if not chosen:
        raise IrisError(_unknown_destination(str(wanted), [d.id for d in config.destinations]))
    return chosen


def _with_tokens(config: Config, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(shared)`` with the configured Redis as the token store."""
    from iris.runtime.wiring import SharedTokens
    from iris.store.streams import connect

    async def run(_: Callable[[Callable[[], None]], None]) -> Any:
        redis = connect(config)
        try:
            return await work(SharedTokens.from_config(config, redis))
        finally:
            await redis.aclose()

    return run_async(run)


def cmd_auth(args: argparse.Namespace) -> int:
    from iris.cli.auth_test import login_command, test_command

    config = _load(args)
    dests = _destinations(config, args.destination)
    if args.auth_command == "login":
        return _with_tokens(config, lambda shared: login_command(dests[0], shared, args.timeout))
    return _with_tokens(config, lambda shared: test_command(dests, shared, fresh=args.fresh))


def cmd_demo(args: argparse.Namespace) -> int:
    from iris_demo.runner import run_demo

    async def demo(on_stop: Callable[[Callable[[], None]], None]) -> None:
        await run_demo(rate=args.rate, duration=args.duration, on_stop=on_stop,
                       config_dir=args.write_config)

    run_async(demo)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "send": cmd_send,
    "status": cmd_status,
    "dlq": cmd_dlq,
    "auth": cmd_auth,
    "demo": cmd_demo,
}
