"""The ``iris`` argument parser: every command, flag and help text of the command line.

It exists apart from the commands because it is the command line's contract (DESIGN 1.4): one
place to read, and to keep unchanged, what a user may type.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iris import __version__
from iris.compiled import build
from iris.core.dead_letters import REASONS

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


class _Version(argparse.Action):
    """``--version``: the version, and whether iris runs compiled (``iris.compiled.build``),
    looked up only when asked, not at every command's start (a walk of the package: ~2 ms)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"iris {__version__} ({build()})")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iris",
        description="Publish segment-qualification events from a Redis stream to partner "
                    "endpoints, batched in AAM's standard payload, with OAuth 2.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and the build, "
                        "then exit")
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

    repartition = sub.add_parser(
        "repartition", help="move events no worker reads into the partitions they belong in",
        description="Move the entries of inbound streams that no worker with this config reads "
                    "(stream.key itself when stream.partitions > 1; partition streams beyond "
                    "stream.partitions, left when it changed) into their partitions, "
                    "crc32(uuid) mod stream.partitions, and delete them where they were. A "
                    "worker warns about such streams. Outbound streams of removed partitions "
                    "are not moved: set stream.partitions back to drain them.")
    _add_config(repartition)
    repartition.add_argument("--dry-run", action="store_true",
                             help="count what would be moved; change nothing")

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
