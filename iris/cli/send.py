"""``iris send``: events from the command line or a JSONL file, validated, then added to the
inbound stream.

It exists apart from the other commands because it is the only one that reads events: JSON whose
numbers keep the text the producer wrote, each event checked as a worker would parse it before
any is sent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from iris.cli.shell import completed, load_redis, unknown_destination, with_partitions
from iris.config.base import read_utf8
from iris.config.model import RedisView
from iris.core.events import parse_event
from iris.core.partitions import by_partition, inbound_keys
from iris.errors import EventError, IrisError, RedisUnavailable

if TYPE_CHECKING:
    from iris.store.streams import Streams


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
            raise IrisError(f"{label}: {unknown_destination(wanted, known)}")


def cmd_send(args: argparse.Namespace) -> int:
    view = load_redis(args)
    events = _events_from_args(args)
    _check_destinations(events, view)
    fields = [event for _, event in events]
    ids = completed(with_partitions(view, lambda parts: _add(parts, fields)))
    keys = inbound_keys(view.stream.key, view.stream.partitions, view.redis.cluster)
    where = keys[0] if len(keys) == 1 else f"{view.stream.key} ({len(keys)} partitions)"
    print(f"sent {len(ids)} event(s) to {where}" + (f": {ids[0]}" if len(ids) == 1 else ""))
    return 0


async def _add(partitions: list[Streams], events: list[dict[str, str]]) -> list[str]:
    """Add each event to its partition's stream (``core.partitions``); the ids, in order."""
    if len(partitions) == 1:
        return await partitions[0].add_many(events)
    ids = [""] * len(events)
    written: list[str] = []
    for partition, indexes in by_partition(events, len(partitions)).items():
        streams = partitions[partition]
        try:
            added = await streams.add_many([events[i] for i in indexes])
        except RedisUnavailable as exc:
            if not written:
                raise
            count = sum(1 for entry_id in ids if entry_id)
            raise IrisError(f"{exc}; {count} of {len(events)} event(s) were written before it, "
                            f"to {', '.join(written)}: sending them all again would send "
                            f"those twice") from None
        written.append(streams.inbound)
        for index, entry_id in zip(indexes, added, strict=True):
            ids[index] = f"{streams.inbound} {entry_id}"
    return ids
