"""A private, throwaway redis-server for the demo, the tests and the benchmarks.

Synchronous (``subprocess.Popen``) so it works in plain pytest fixtures and from async code
alike. It never persists anything and refuses port 6379, where a Redis that is not ours runs.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

FORBIDDEN_PORT = 6379
_NOT_FOUND = "redis-server not found: install the Debian package redis-server (make test does this)"
_PING = b"*1\r\n$4\r\nPING\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"


def hold_port(port: int = 0) -> socket.socket:
    """Bind 127.0.0.1:``port`` (0: one the kernel picks) without listening, and return the
    socket: connects to the port are refused (the kernel answers a SYN with RST), and the
    kernel gives the port to no other socket that asks for a free one while it is held. It
    reuses the address, as servers bind, so a server may bind and listen on the port while it
    is held (a restart without a moment where the port is free).

    Raises OSError if a socket that does not allow reuse, or a listening one, has the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """Ask the kernel for a free loopback port (small race window; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_port(port: int) -> int:
    """6379 belongs to someone else's Redis: never start on it, never talk to it."""
    if port == FORBIDDEN_PORT:
        raise ValueError("port 6379 is reserved for a Redis that is not ours; use another port")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:port answers PING (raw RESP, no client library)."""
    _check_port(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(_PING)
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(port: int, timeout: float = 0.5) -> int | None:
    """The process_id a Redis on 127.0.0.1:port reports, or None if it does not answer.

    Lets start() tell *its* server from another one already holding the port.
    """
    _check_port(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(_INFO_SERVER)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                data += chunk
            head, _, data = data.partition(b"\r\n")
            if not head.startswith(b"$"):
                return None
            size = int(head[1:])
            while len(data) < size:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except (OSError, ValueError):
        return None
    for line in data[:size].decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class RedisProcess:
    """One redis-server child process on 127.0.0.1, with lifecycle and fault-injection hooks."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self._port = _check_port(port) if port is not None else free_port()
        self._own_dir = workdir is None
        self._workdir: Path | None = Path(workdir) if workdir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._held: socket.socket | None = None  # the port, between kill() and restart()

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def logfile(self) -> Path | None:
        return self._workdir / "redis.log" if self._workdir is not None else None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Launch redis-server and return once it answers PING."""
        if self.running:
            return self
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(_NOT_FOUND)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="iris-redis-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            exe, "--port", str(self._port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            "--dir", str(self._workdir), "--logfile", str(self.logfile),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(  # its own session: a Ctrl-C is for iris, which stops it
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # reap the child and drop our tempdir; the message has the log tail
            raise
        self._release_port()  # the server listens there now
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll PING until the deadline; fail early, with the log tail, if the child dies.

        PONG alone is not enough: another server may hold the port, so the answering
        server's process_id must be our child's.
        """
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"redis-server exited with {code}:\n{self._log_tail()}")
            if ping(self._port) and server_pid(self._port) == self._proc.pid:
                return
            time.sleep(0.02)
        raise RuntimeError(
            f"redis-server did not answer PING within {timeout}s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            assert self.logfile is not None
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, wait 5 s, then SIGKILL. Idempotent; removes the tempdir it created."""
        self._release_port()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL and reap: a crash. The data is gone (nothing is persisted).

        Until restart() or stop(), the port stays bound here without listening (see
        :func:`hold_port`): connects are refused, as after a crash, and the kernel gives the
        port to nobody asking for a free one (a test running in parallel) meanwhile."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        if self._held is None:
            with contextlib.suppress(OSError):  # taken already: restart() says so, with the log
                self._held = hold_port(self._port)

    def _release_port(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: undo freeze()."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> RedisProcess:
        """Start again on the same port (after kill() the data is gone; that is intended).
        redis-server binds it while kill()'s hold is still on (both sockets reuse the address,
        and only one listens), so the port is never free in between."""
        if self.running:
            self.kill()
        return self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError("redis-server is not running")
        assert self._proc is not None
        self._proc.send_signal(sig)

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisProcess(port={self._port}, pid={self.pid}, running={self.running})"
