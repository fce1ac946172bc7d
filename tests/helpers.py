"""Helpers more than one test module needs, written once: a clock that moves only when a test
says, conditions for ``wait_for`` that await a count, an HTTP Basic header as RFC 6749 has it,
a port that refuses connections, and the stream chores (add events, count what is pending,
read what waits in an outbound stream, run the ``iris`` command line).

Fixtures live in conftest.py; these are plain functions and classes, imported by name."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import redis.asyncio as aioredis

from iris_demo.localredis import hold_port

ROOT = Path(__file__).resolve().parent.parent
GROUP = "iris"  # the default consumer group, which the tests' configs keep
Pair = tuple[str, str]  # (uuid, segment) of one event


class FakeClock:
    """Epoch seconds that move only by ``advance``: hours of pauses and backoffs in no time.

    It starts at the real time, in whole seconds, so expiries handed to Redis (PEXPIREAT) lie in
    the future and sums of whole steps stay exact."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.now += seconds


# --------------------------------------------------------------------------- wait_for conditions

async def equals(awaitable: Awaitable[object], value: object) -> bool:
    return await awaitable == value


async def at_least(awaitable: Awaitable[float], value: float) -> bool:
    return await awaitable >= value


# --------------------------------------------------------------------------- HTTP

@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (ECONNREFUSED) while the block runs: bound and
    never listening, so the kernel gives it to nobody asking for a free one meanwhile. A port
    merely found free can be given to a test running in parallel, which then answers in place
    of "nothing" (civitai/cli#593, equinor/ert#12651). A server may still be started on it
    inside the block (servers reuse the address, as the hold does)."""
    with hold_port() as sock:
        yield int(sock.getsockname()[1])


def assert_port_held(port: int) -> None:
    """Something holds 127.0.0.1:``port`` (a bind without address reuse fails): the kernel
    gives it to nobody asking for a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError as taken:
            assert taken.errno == errno.EADDRINUSE, taken
            return
    raise AssertionError(f"127.0.0.1:{port} is free")


def basic_auth(client_id: str, secret: str, *, encode: bool = True) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret (unless ``encode`` is off, as a careless
    client does), then HTTP Basic."""
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# --------------------------------------------------------------------------- streams

def event(uuid: str, segment: str = "s1") -> dict[str, str]:
    """The fields of one inbound event."""
    return {"uuid": uuid, "segment": segment, "dpuuid": f"dp-{uuid}"}


async def xadd_all(client: aioredis.Redis, key: str, entries: Iterable[dict[str, str]],
                   chunk: int = 5000) -> list[str]:
    """XADD in pipelined chunks; the entry ids, in order. The loop runs between chunks, so the
    servers a test runs in its own process can answer meanwhile."""
    ids: list[str] = []
    entries = list(entries)
    for start in range(0, len(entries), chunk):
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries[start:start + chunk]:
                pipe.xadd(key, fields)
            ids.extend(await pipe.execute())
        await asyncio.sleep(0)
    return ids


async def produce_pairs(client: aioredis.Redis, key: str, pairs: Iterable[Pair]) -> dict[str, Pair]:
    """One event per (uuid, segment), in order; entry id → pair."""
    pairs = list(pairs)
    ids = await xadd_all(client, key, [event(uuid, segment) for uuid, segment in pairs])
    return dict(zip(ids, pairs, strict=True))


async def group_pending(client: aioredis.Redis, keys: Iterable[str], group: str = GROUP) -> int:
    """Entries the group holds pending on ``keys`` (a key that does not exist holds none)."""
    total = 0
    for key in keys:
        if await client.exists(key):
            total += int((await client.xpending(key, group))["pending"])
    return total


async def outbound_pairs(client: aioredis.Redis, out_key: str) -> set[Pair]:
    """(uuid, segment) of every event inside a batch still waiting in an outbound stream."""
    return {(fields["uuid"], fields["segment"])
            for _id, entry in await client.xrange(out_key)
            for _source, fields in orjson.loads(entry["events"])}


# --------------------------------------------------------------------------- the command line

async def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """An ``iris`` command as a child process: (exit code, stdout, stderr). Awaited without
    blocking the loop, where the servers it talks to may be running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iris", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def all_delivered(client: aioredis.Redis, delivered: set[Pair], expected: set[Pair],
                        keys: Iterable[str]) -> bool:
    """Every ``expected`` event is among the ``delivered`` ones, and nothing is pending on
    ``keys`` (deliveries are acknowledged just after the partner's 2xx)."""
    return delivered >= expected and await group_pending(client, keys) == 0


# --------------------------------------------------------------------------- processes

def process_alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def run_bench(*args: str, timeout: float) -> tuple[int, str, str]:
    """``benchmarks/run.py ARGS`` as a child process: (exit code, stdout, stderr); killed if
    it outlives ``timeout`` seconds. Its iris workers run from this checkout as it is
    (``--from-source``): compiled only where the suite runs on the compiled tree
    (``make test-compiled``), never built here."""
    proc = subprocess.Popen([sys.executable, "benchmarks/run.py", "--from-source", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr
