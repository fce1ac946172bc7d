"""The ``iris`` command line. The only place that calls ``sys.exit``.

``run``, ``check-config`` and ``auth`` load the whole config; ``status``, ``dlq`` and ``send``
only its Redis part (``RedisView``), so an operator's machine needs no partner secret. The parser
is in ``parser``, ``send`` in ``send``, the other commands in ``commands``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable

from iris.cli.commands import (
    cmd_auth,
    cmd_check_config,
    cmd_demo,
    cmd_dlq,
    cmd_repartition,
    cmd_run,
    cmd_status,
)
from iris.cli.parser import build_parser
from iris.cli.send import cmd_send
from iris.config.validation import ConfigErrors
from iris.core.logs import setup_logging
from iris.errors import ConfigError, IrisError

EXIT_CONFIG = 2
EXIT_ERROR = 1

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "send": cmd_send,
    "status": cmd_status,
    "dlq": cmd_dlq,
    "repartition": cmd_repartition,
    "auth": cmd_auth,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # run turns the collector on once started (tune_gc)
        gc.enable()
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
