"""What the benchmark reads from the processes it measures: HTTP answers, iris's /metrics, and
Redis's own command counters (``INFO commandstats``)."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from typing import Any

METRIC_LINE = re.compile(r"^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")
TOP_COMMANDS = 6


def http_json(url: str, method: str = "GET", timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def http_status(url: str, timeout: float = 0.5) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def scrape_metrics(text: str) -> dict[str, Any]:
    """The few iris metrics that tell whether a run was clean."""
    codes: dict[str, float] = {}
    dead = retries = delivered = consumed = 0.0
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "iris_requests_total":
            code = re.search(r'code="([^"]*)"', labels)
            key = code.group(1) if code else "?"
            codes[key] = codes.get(key, 0) + value
        elif name == "iris_events_dead_lettered_total":
            dead += value
        elif name == "iris_retries_total":
            retries += value
        elif name == "iris_events_delivered_total":
            delivered += value
        elif name == "iris_events_consumed_total":
            consumed += value
    return {"requests_by_code": {k: int(v) for k, v in codes.items()},
            "dead_lettered": int(dead), "retries": int(retries),
            "delivered": int(delivered), "consumed": int(consumed)}



# --------------------------------------------------------------------------- Redis counters


def command_calls(client: Any) -> dict[str, int]:
    """Calls per command since the server started, from ``INFO commandstats``.

    Redis counts every command it executes: the ones inside MULTI/EXEC, and the ones a Lua
    script runs with ``redis.call``, each under its own name (``xgroup|create`` for
    subcommands). The INFO that reads them is counted in the next reading, not in this one.
    """
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two readings, most called first, without the first reading's INFO."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - 1  # our own INFO, the one that took ``before``
    return dict(sorted(((k, v) for k, v in delta.items() if v > 0), key=lambda kv: -kv[1]))


def commands_summary(delta: dict[str, int], events: int) -> dict[str, Any]:
    """Total, per event and the most called commands of one phase."""
    total = sum(delta.values())
    return {"total": total, "per_event": round(total / events, 4) if events else None,
            "top": [[name, calls] for name, calls in list(delta.items())[:TOP_COMMANDS]],
            "by_command": delta}
