"""Every redis-py error, turned into the one type iris's loops handle: ``RedisUnavailable``.

This is where a Redis error reply gets its outcome. Nothing Redis can answer is a bug of iris's
to crash on: a reply says Redis cannot be used *now* (OOM: maxmemory reached; READONLY: a
failover left us on a replica; LOADING, BUSY, MISCONF, TRYAGAIN, CLUSTERDOWN, MASTERDOWN), or
that this user may not run a command (NOPERM, which names it), or that our consumer group
vanished (NOGROUP). Every one backs off and retries with a reason ``/readyz`` shows; an unknown
reply does too, named as Redis wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from redis import exceptions as rx

from iris.errors import GroupMissing, RedisUnavailable

# reply code -> what it means for iris (the reason starts with this; Redis's own text follows)
MEANINGS = {
    "OOM": "redis refuses writes",
    "MISCONF": "redis refuses writes",
    "NOREPLICAS": "redis refuses writes",  # min-replicas-to-write: its replicas lag or are gone
    "READONLY": "redis is a read-only replica",
    "LOADING": "redis is loading its data",
    "BUSY": "redis is busy running a script",
    "NOPERM": "the redis user lacks a permission",
    "TRYAGAIN": "redis cluster is resharding",
    "CLUSTERDOWN": "redis cluster is down",
    "MASTERDOWN": "redis lost its primary",
    "NOSCRIPT": "redis lost iris's Lua scripts (a replica promoted, or SCRIPT FLUSH)",
    "MOVED": "redis redirected a command to another cluster node (redis.cluster must be true "
             "for a Redis Cluster; on one, a slot is moving)",
}
_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (rx.OutOfMemoryError, "OOM"),
    (rx.ReadOnlyError, "READONLY"),
    (rx.NoPermissionError, "NOPERM"),
    (rx.BusyLoadingError, "LOADING"),
    (rx.TryAgainError, "TRYAGAIN"),
    (rx.MasterDownError, "MASTERDOWN"),
    (rx.ClusterDownError, "CLUSTERDOWN"),
    (rx.AskError, "MOVED"),
    (rx.NoScriptError, "NOSCRIPT"),  # and MovedError: redirections the plain client cannot follow
)
# Replies about Redis as a whole (its state, or no answer): every command fails alike. Any other
# reply is about one command (a key of another type, a key the ACL denies).
REDIS_WIDE = frozenset({"OOM", "MISCONF", "NOREPLICAS", "READONLY", "LOADING", "BUSY", "TRYAGAIN",
                        "CLUSTERDOWN", "MASTERDOWN", "connection", "timeout"})
TEXT_CHARS = 160
SCRIPT_DENIED = "user executing the script can't run this command"
# A blocking read cut short (UNBLOCKED) says why in its text: the server became a replica, or
# the stream (Redis 7.0) or its consumer group (7.2 and later) was deleted meanwhile, which is
# a vanished group; CLIENT UNBLOCK by an operator is neither, and stays UNBLOCKED.
UNBLOCKED = (("instance state changed", "READONLY"), ("no longer exists", "NOGROUP"))
# what asyncio's and uvloop's transports, and redis-py 8.1 (its writer gone), raise for a write
# on a connection that the cluster client closed meanwhile (during a failover or a reshard)
CLOSED_UNDER = ("the handler is closed", "Transport is closed",
                "'NoneType' object has no attribute 'writelines'")


def reply_code(exc: rx.ResponseError) -> str:
    """The error code of a reply: redis-py keeps it as a class for some, in the text for others
    (``MISCONF ...``, ``BUSY ...``, ``NOGROUP ...``). A command an ACL denies inside a script
    comes back as a plain error: it is a NOPERM all the same."""
    for cls, code in _CLASSES:
        if isinstance(exc, cls):
            return code
    text = str(exc)
    if SCRIPT_DENIED in text:
        return "NOPERM"
    first = text.split(" ", 1)[0]
    if first == "UNBLOCKED":
        return next((code for cause, code in UNBLOCKED if cause in text), first)
    return first if first.isupper() and first.isalpha() else "ERR"


def reply_text(exc: BaseException) -> str:
    """Redis's own words, on one line: without the command redis-py quotes for an error inside
    a pipeline (it may hold event data), and without redis-py's tuple wrapping."""
    text = str(exc)
    head, sep, tail = text.partition(" of pipeline caused error: ")
    if sep and head.startswith("Command # "):
        text = tail.removeprefix("(").removesuffix(",)").strip("'\"")
    text = text.split(" script: ", 1)[0]  # which script and line: noise for an operator
    return " ".join(text.split())[:TEXT_CHARS]


def translate(exc: BaseException) -> RedisUnavailable | None:
    """The ``RedisUnavailable`` for a redis-py (or socket) error; None for anything else."""
    if isinstance(exc, rx.RedisClusterException):
        return _cluster_client(exc)
    if isinstance(exc, rx.ClusterError) and not isinstance(exc, rx.ResponseError):
        return RedisUnavailable(f"redis cluster is resharding or failing over: "
                                f"{reply_text(exc)}", "TRYAGAIN")  # redirected too often
    if isinstance(exc, rx.BusyLoadingError | rx.ResponseError):
        code = reply_code(exc)
        text = reply_text(exc)
        if code == "NOGROUP":
            return GroupMissing(f"consumer group missing: {text}")
        detail = text if text.startswith(code) else f"{code} {text}".strip()
        if SCRIPT_DENIED in text:
            detail = ("NOPERM for a command inside one of iris's Lua scripts (a restart names "
                      "the commands the user lacks)")
        meaning = MEANINGS.get(code)
        if meaning is None:
            return RedisUnavailable(f"redis refused a command: {detail}", "other")
        return RedisUnavailable(f"{meaning}: {detail}", code)
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return RedisUnavailable(f"redis did not answer in time ({type(exc).__name__})", "timeout")
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return RedisUnavailable(f"redis refused the credentials of redis.url (user or password): "
                                f"{reply_text(exc)}")  # reachable: not a network problem
    if isinstance(exc, rx.ConnectionError | rx.InvalidResponse | OSError):
        text = reply_text(exc)
        return RedisUnavailable(f"redis unreachable: {type(exc).__name__}: {text}")
    return None


def _cluster_client(exc: rx.RedisClusterException) -> RedisUnavailable | None:
    """What redis-py's cluster client raises itself, before or instead of a reply: no node
    reachable, a seed that is no cluster node, a slot no node serves. Anything else (keys of
    several slots in one transaction) is a bug of iris's, and raised as it is."""
    text = reply_text(exc)
    if "Cluster mode is not enabled" in text:  # CLUSTER SLOTS refused, for either reason
        return RedisUnavailable(
            f"redis refused CLUSTER SLOTS: either it is not a Redis Cluster node and "
            f"redis.cluster should be false, or the redis user lacks +cluster|slots: {text}",
            "other")
    if isinstance(exc, rx.SlotNotCoveredError) or "slots are not covered" in text or (
            "could not agree" in text):
        return RedisUnavailable(f"{MEANINGS['CLUSTERDOWN']}: {text}", "CLUSTERDOWN")
    if "cannot be connected" in text or "reachable node" in text:
        return RedisUnavailable(f"redis unreachable: {text}")
    return None


@contextmanager
def redis_errors() -> Iterator[None]:
    """Raise ``RedisUnavailable`` for whatever redis-py raises inside the block."""
    try:
        yield
    except (rx.RedisError, rx.RedisClusterException, OSError, TimeoutError) as exc:
        translated = translate(exc)
        if translated is None:
            raise
        raise translated from None
    except (RuntimeError, AttributeError) as exc:  # a connection closed under a command
        if not any(text in str(exc) for text in CLOSED_UNDER):
            raise
        raise RedisUnavailable("redis unreachable: the connection was closed under a command "
                               "(the cluster client renewed its connections)") from None


class Reporter(Protocol):
    """Where a loop reports how its Redis commands fare (readiness, one WARNING per outage)."""

    def ok(self) -> None: ...

    def noted(self, exc: RedisUnavailable) -> None: ...
