"""Every Prometheus metric of DESIGN 1.6, in one place, with each destination's series pre-created.

Labels come only from small fixed sets: configured destination ids, status codes, reasons.
Each worker owns its registry, so several workers can live in one process (tests).
Request duration buckets reach past the longest configured ``timeout``: with the client's
default buckets (up to 10 s) every slower request, and so every quantile, would read 10.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from iris import __version__
from iris.core.dead_letters import REASONS
from iris.core.routing import SKIP_REASONS

TOKEN_OUTCOMES = ("success", "error")
# The ``reply`` label of iris_redis_errors_total: Redis's error codes, and what is not a reply.
REDIS_REPLIES = ("OOM", "READONLY", "LOADING", "BUSY", "MISCONF", "NOREPLICAS", "NOPERM",
                 "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOGROUP", "connection", "timeout",
                 "other")
BATCH_USER_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# prometheus_client's default buckets, without +Inf (5 ms … 10 s), then a ladder beyond them.
SHORT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                          7.5, 10.0)
LONG_DURATION_BUCKETS = (15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0,
                         600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0)
DEFAULT_TIMEOUT = 30.0  # a destination's default ``timeout``


def duration_buckets(longest_timeout: float) -> tuple[float, ...]:
    """Buckets for request durations: the defaults, then the ladder up to the first bucket
    above ``longest_timeout``, so that a request which ran into its timeout still lands in a
    finite bucket and every quantile below it can be read."""
    buckets = list(SHORT_DURATION_BUCKETS)
    for edge in LONG_DURATION_BUCKETS:
        if buckets[-1] > longest_timeout:
            break
        buckets.append(edge)
    if buckets[-1] <= longest_timeout:  # beyond an hour: one bucket just above it
        buckets.append(float(int(longest_timeout) + 1))
    return tuple(buckets)


class Metrics:
    def __init__(self, destinations: Iterable[str], streams: str | Iterable[str], group: str,
                 *, longest_timeout: float = DEFAULT_TIMEOUT) -> None:
        """``streams``: the inbound stream, or every partition's; ``longest_timeout``: the
        largest ``timeout`` of the configured destinations, in seconds."""
        self.registry = r = CollectorRegistry()
        self.consumed = Counter("iris_events_consumed", "Inbound entries read", registry=r)
        self.delivered = Counter(
            "iris_events_delivered", "Segment changes accepted by a partner (2xx)",
            ["destination"], registry=r)
        self.skipped = Counter(
            "iris_events_skipped", "Entries acknowledged without delivery", ["reason"], registry=r)
        self.dead_lettered = Counter(
            "iris_events_dead_lettered", "Events written to the dead-letter stream",
            ["destination", "reason"], registry=r)
        self.requests = Counter(
            "iris_requests", "Partner requests by outcome code", ["destination", "code"],
            registry=r)
        self.request_duration = Histogram(
            "iris_request_duration_seconds", "Partner request time", ["destination"],
            buckets=duration_buckets(longest_timeout), registry=r)
        self.batch_users = Histogram(
            "iris_batch_users", "Users per delivered batch", ["destination"],
            buckets=BATCH_USER_BUCKETS, registry=r)
        self.retries = Counter(
            "iris_retries", "Partner requests retried", ["destination"], registry=r)
        self.token_requests = Counter(
            "iris_token_requests", "Token endpoint requests", ["destination", "outcome"],
            registry=r)
        self.token_expiry = Gauge(
            "iris_token_expiry_timestamp_seconds", "When the cached token expires",
            ["destination"], registry=r)
        self.inflight = Gauge(
            "iris_inflight_requests", "Partner requests in flight", ["destination"], registry=r)
        self.last_success = Gauge(
            "iris_last_success_timestamp_seconds", "Last 2xx from the partner", ["destination"],
            registry=r)
        self.stream_pending = Gauge(
            "iris_stream_pending", "Entries delivered to the group but not acknowledged",
            ["stream", "group"], registry=r)
        self.stream_lag = Gauge(
            "iris_stream_lag", "Entries not yet delivered to the group (absent while Redis "
            "cannot count them)", ["stream", "group"], registry=r)
        self.stream_lag_total = Gauge(
            "iris_stream_lag_total", "Inbound entries not yet delivered to the group, every "
            "partition together (absent while Redis cannot count one of them)", ["group"],
            registry=r)
        self.stream_length = Gauge(
            "iris_stream_length", "Entries the stream holds (XLEN)", ["stream"], registry=r)
        self.stream_unread = Gauge(
            "iris_stream_unread", "Entries of an inbound stream that no worker reads: stream.key "
            "itself with partitions, or a partition beyond stream.partitions (iris repartition "
            "moves them)", ["stream"], registry=r)
        self.stream_trimmed = Counter(
            "iris_stream_trimmed", "Acknowledged entries trimmed from the inbound stream",
            ["stream"], registry=r)
        self.redis_usable = Gauge(
            "iris_redis_usable", "1 while every Redis operation of this worker succeeds, 0 "
            "while any of its loops backs off (refused writes, no connection, ...)", registry=r)
        self.redis_errors = Counter(
            "iris_redis_errors", "Redis error replies and connection faults, by reply",
            ["reply"], registry=r)
        self.circuit_open = Gauge(
            "iris_circuit_open", "1 while the destination's circuit breaker pauses its reads",
            ["destination"], registry=r)
        self.auth_paused = Gauge(
            "iris_auth_paused", "1 while the token endpoint's refusal pauses the destination",
            ["destination"], registry=r)
        self.build_info = Gauge("iris_build_info", "iris version", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes…
        PlatformCollector(registry=r)
        inbound = [streams] if isinstance(streams, str) else list(streams)
        self._precreate(list(destinations), inbound, group)

    def _precreate(self, destinations: list[str], streams: list[str], group: str) -> None:
        for reason in (*SKIP_REASONS, "trimmed"):
            self.skipped.labels(reason)
        for dest in destinations:
            for metric in (self.delivered, self.request_duration, self.batch_users, self.retries,
                           self.token_expiry, self.inflight, self.last_success,
                           self.circuit_open, self.auth_paused):
                metric.labels(dest)
            self.requests.labels(dest, "200")  # the other codes appear when they happen
            for reason in REASONS:
                self.dead_lettered.labels(dest, reason)
            for outcome in TOKEN_OUTCOMES:
                self.token_requests.labels(dest, outcome)
        self.dead_lettered.labels("", "invalid_event")
        for stream in streams:
            self.stream_pending.labels(stream, group)
            self.stream_lag.labels(stream, group)
            self.stream_length.labels(stream)
            self.stream_trimmed.labels(stream)
        self.stream_lag_total.labels(group)
        for reply in REDIS_REPLIES:
            self.redis_errors.labels(reply)

    def render(self) -> bytes:
        return generate_latest(self.registry)
