"""A small asyncio TCP fault proxy for the fault-injection tests (toxiproxy is not available).

It sits on 127.0.0.1 between iris and Redis (or iris and an HTTP partner), forwards bytes both
ways, and injects faults on command: TCP resets, refused connections, a stalled network, latency,
and "reset the connection when this command goes by".

Every task it starts is named ``faultproxy:<port>:...`` (see :data:`TASK_PREFIX`), owned by the
proxy and cancelled by :meth:`FaultProxy.stop`, so a test can check that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from iris_demo.localredis import hold_port

TASK_PREFIX = "faultproxy:"
READ_SIZE = 64 * 1024
UPSTREAM = "upstream"  # client -> server
DOWNSTREAM = "downstream"  # server -> client
_DIRECTIONS = (UPSTREAM, DOWNSTREAM)
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _arm_rst(writer: asyncio.StreamWriter | None) -> None:
    """Make the next close of this transport's socket send a TCP RST (peer: ECONNRESET)."""
    if writer is None:
        return
    sock = writer.transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed, or the fd is gone: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class _Connection:
    """One client connection and (once connected) its upstream peer, plus the tasks serving it."""

    def __init__(
        self, number: int, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.client_reader = client_reader
        self.client = client
        self.server_reader: asyncio.StreamReader | None = None
        self.server: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.tails: dict[str, bytes] = {UPSTREAM: b"", DOWNSTREAM: b""}
        self.pumps_done = 0
        self.closed = False

    def _writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.server) if w is not None]

    def close(self, *, rst: bool) -> None:
        """Close both sides (with RST if asked) and cancel the tasks, except the calling one.

        abort() rather than close(): a fault must not wait for buffered data to drain.
        """
        if self.closed:
            return
        self.closed = True
        for writer in self._writers():
            if rst:
                _arm_rst(writer)
            writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    def close_gracefully(self) -> None:
        """Both directions reached EOF: close normally (FIN), letting buffered bytes go out."""
        if self.closed:
            return
        self.closed = True
        for writer in self._writers():
            writer.close()


class FaultProxy:
    """TCP proxy on 127.0.0.1 that forwards to ``target_host:target_port`` and injects faults.

    The fault controls are plain methods so a test can flip them at any moment; each takes
    effect immediately, for live connections as well as new ones.
    """

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._port = listen_port
        self._server: asyncio.Server | None = None
        # While the listener is closed: the port, bound but not listening (see close_listener).
        self._held: socket.socket | None = None
        self._conns: dict[int, _Connection] = {}
        # Every task of every connection, including reset ones not yet unwound, for stop().
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._accepted = 0
        self._stopped = False
        # Set means "bytes flow"; pumps wait on it, so pause() costs no CPU (no busy loop).
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._delay = 0.0
        self._reset_pattern: bytes | None = None
        self._reset_direction = UPSTREAM
        self._reset_once = True
        self.resets_triggered = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; with listen_port=0 the kernel picks the port (see ``port``)."""
        if self._server is not None:
            return
        self._stopped = False
        await self._listen()

    async def _listen(self) -> None:
        held, self._held = self._held, None
        if held is not None:  # reopen_listener(): listen on the very socket that held the port
            self._server = await asyncio.start_server(self._on_accept, sock=held)
            return
        # reuse_address: close_listener() must bind the port again while connections live.
        self._server = await asyncio.start_server(
            self._on_accept, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _hold_port(self) -> None:
        """Keep the port bound, not listening (see ``hold_port``): connects get ECONNREFUSED,
        and the kernel gives the port to nobody asking for a free one meanwhile. Without it
        another test's server, started on a port the kernel picked, could answer in the
        proxy's place (seen: a partner's backlog dead-lettered as HTTP 404 by someone else's
        aiohttp server)."""
        sock = hold_port(self._port)
        sock.setblocking(False)
        self._held = sock

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for all proxy tasks to end."""
        self._stopped = True
        self._close_server()
        held, self._held = self._held, None
        if held is not None:
            held.close()
        for conn in list(self._conns.values()):
            conn.close(rst=False)
        self._conns.clear()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _close_server(self) -> None:
        # Server.close() closes the listening socket at once. Not awaiting wait_closed(): on
        # Python >= 3.12 it also waits for the accepted connections, which we keep open.
        server, self._server = self._server, None
        if server is not None:
            server.close()

    # -- properties -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (valid after start(); stays the same across reopen_listener())."""
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def connections(self) -> int:
        """Client connections currently open (accepted and not yet closed)."""
        return len(self._conns)

    @property
    def accepted(self) -> int:
        """Client connections accepted since the proxy was created (refused ones included)."""
        return self._accepted

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- fault controls -------------------------------------------------------------------------

    def reset_all(self) -> None:
        """Abort every live connection with a TCP RST on both sides (peers: ECONNRESET)."""
        for conn in list(self._conns.values()):
            self._drop(conn, rst=True)

    def refuse(self, on: bool = True) -> None:
        """While on, accept new connections and reset them at once.

        A live listener cannot refuse a TCP handshake (the kernel completes it), so this is
        the nearest thing; for a real ECONNREFUSED use close_listener().
        """
        self._refusing = on

    async def close_listener(self) -> None:
        """Stop listening on the port: new connects get ECONNREFUSED. Live connections stay,
        and the port stays the proxy's (see :meth:`_hold_port`)."""
        if self._server is not None:
            self._close_server()
            self._hold_port()

    async def reopen_listener(self) -> None:
        """Listen again on the same port after close_listener()."""
        if self._server is None and not self._stopped:
            await self._listen()

    def pause(self, on: bool = True) -> None:
        """While on, forward nothing in either direction; bytes (and EOFs) are held, not lost."""
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def reset_when(
        self, pattern: bytes | None, direction: str = UPSTREAM, once: bool = True
    ) -> None:
        """Reset a connection (RST both sides) when ``pattern`` passes in ``direction``.

        The chunk containing the pattern is not forwarded, so e.g. ``reset_when(b"XACK")``
        makes the ack never reach Redis. ``once`` disarms after the first hit; ``None`` disarms.
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, not {direction!r}")
        if pattern is not None and not pattern:
            raise ValueError("pattern must not be empty")
        self._reset_pattern = pattern
        self._reset_direction = direction
        self._reset_once = once
        for conn in self._conns.values():
            conn.tails = {UPSTREAM: b"", DOWNSTREAM: b""}

    def delay(self, seconds: float) -> None:
        """Hold every forwarded chunk ``seconds`` before passing it on (0 = no added latency)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = seconds

    # -- connection handling --------------------------------------------------------------------

    def _task_name(self, conn: _Connection, role: str) -> str:
        return f"{TASK_PREFIX}{self._port}:{conn.number}:{role}"

    def _spawn(self, conn: _Connection, coro: Coroutine[Any, Any, None], role: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=self._task_name(conn, role))
        conn.tasks.add(task)
        self._tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        task.add_done_callback(self._tasks.discard)

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept callback. Deliberately not a coroutine: asyncio would run it in an unnamed
        task we do not own; we start our own named task instead."""
        self._accepted += 1
        conn = _Connection(next(self._numbers), reader, writer)
        if self._refusing or self._stopped:
            _arm_rst(writer)
            writer.transport.abort()
            return
        self._conns[conn.number] = conn
        self._spawn(conn, self._connect(conn), "connect")

    async def _connect(self, conn: _Connection) -> None:
        """Open the upstream side; if the target is down, reset the client (as a dead peer)."""
        try:
            conn.server_reader, conn.server = await asyncio.open_connection(
                self.target_host, self.target_port, limit=READ_SIZE
            )
        except OSError:
            self._drop(conn, rst=True)
            return
        if conn.closed:  # reset or stopped while we were connecting
            _arm_rst(conn.server)
            conn.server.transport.abort()
            return
        self._spawn(conn, self._pump(conn, conn.client_reader, conn.server, UPSTREAM), "up")
        self._spawn(conn, self._pump(conn, conn.server_reader, conn.client, DOWNSTREAM), "down")

    def _drop(self, conn: _Connection, *, rst: bool) -> None:
        conn.close(rst=rst)
        self._conns.pop(conn.number, None)

    async def _pump(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        """Copy one direction until EOF, applying pause, delay and reset_when to each chunk.

        Any socket error resets the whole connection (both sides), so a reset on one side
        reaches the other one, as it would through a real network path.
        """
        try:
            while True:
                data = await reader.read(READ_SIZE)
                await self._flowing.wait()
                if self._delay > 0:
                    await asyncio.sleep(self._delay)
                    await self._flowing.wait()  # paused during the delay: keep holding
                if not data:
                    break
                if self._hit(conn, direction, data):
                    self._drop(conn, rst=True)
                    return
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()  # half-close: the other direction may still have data
        except OSError:
            self._drop(conn, rst=True)
            return
        conn.pumps_done += 1
        if conn.pumps_done == 2:
            conn.close_gracefully()
            self._conns.pop(conn.number, None)

    def _hit(self, conn: _Connection, direction: str, data: bytes) -> bool:
        """True when the armed pattern is in this chunk, or straddles it and the previous one."""
        pattern = self._reset_pattern
        if pattern is None or direction != self._reset_direction:
            return False
        keep = len(pattern) - 1
        window = conn.tails[direction] + data
        if pattern in window:
            self.resets_triggered += 1
            if self._reset_once:
                self._reset_pattern = None
            return True
        conn.tails[direction] = window[-keep:] if keep else b""
        return False
