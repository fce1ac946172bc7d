"""XREADGROUP's reply, parsed for iris in compiled code (``setup.py``'s ``HOT_PATH``).

redis-py parses each entry of a read with interpreted code: a call of ``pairs_to_dict`` per
entry, a twentieth of a worker's CPU at 1,000-user batches (py-spy, ``make bench``). This parser
gives the same entries, ``(id, {field: value})``, keyed by stream. ``store.streams`` installs it
on the client it is given; every other command keeps redis-py's parser. The replies are
decoded text (iris's clients decode, ``store.client``). redis-py's own streaming-lag metric
(off in iris) expects its parser's shape and would record nothing with this one.
"""

from __future__ import annotations

from typing import Any

Fields = dict[str, str]  # as ``store.streams.Entry``'s, which imports this module


def parse_xreadgroup(response: Any, **options: Any) -> dict[str, list[tuple[str, Fields]]]:
    """``{stream: [(entry id, fields), ...]}`` from a RESP3 reply (a map of streams) or a
    RESP2 one (a list of ``[stream, entries]``); ``{}`` when the read timed out (nil).

    An entry deleted from the stream but still pending comes with no fields: ``{}``, as
    redis-py gives it. ``options`` are redis-py's parse options; iris passes none of those
    XREADGROUP knows (``CLAIM`` is never sent), so they change nothing here.
    """
    if not response:
        return {}
    pairs = response.items() if isinstance(response, dict) else response
    return {stream: _entries(entries) for stream, entries in pairs}


def _entries(entries: list[Any] | None) -> list[tuple[str, Fields]]:
    """One stream's ``[[id, [field, value, ...]], ...]`` as ``[(id, {field: value}), ...]``;
    ``[id, nil]`` (deleted while pending) gives ``(id, {})``; a field without a value is
    dropped, as redis-py drops it."""
    taken: list[tuple[str, Fields]] = []
    for entry in entries or ():
        words: list[str] | None = entry[1]
        fields: Fields = {}
        if words is not None:
            for index in range(0, len(words) - 1, 2):
                fields[words[index]] = words[index + 1]
        taken.append((entry[0], fields))
    return taken
