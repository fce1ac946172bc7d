"""A private, throwaway Redis Cluster for the tests and the benchmarks.

The cluster sibling of :mod:`iris_demo.localredis`: ``masters * (1 + replicas)`` redis-server
children on free 127.0.0.1 ports (never 6379), nothing persisted, each in its own temp dir, a
1 s ``cluster-node-timeout`` so that a failover takes a few seconds, joined by
``redis-cli --cluster create``. Synchronous (``subprocess.Popen``), like RedisProcess; it talks
to the nodes in raw RESP, with no client library.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from iris_demo.localredis import (
    FORBIDDEN_PORT,
    _check_port,
    free_port,
    hold_port,
    ping,
    server_pid,
)

_MISSING = "{} not found: install the Debian packages redis-server and redis-tools"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
Reply = bytes | int | list["Reply"] | None


def _read(f: BinaryIO) -> Reply:
    """One RESP2 reply (an error reply raises RuntimeError)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        if kind == b"-":
            raise RuntimeError(body.decode(errors="replace"))
        return int(body) if kind == b":" else body
    size = int(body)
    if size < 0:
        return None
    return f.read(size + 2)[:size] if kind == b"$" else [_read(f) for _ in range(size)]


def call(port: int, *args: str, timeout: float = 5.0) -> Reply:
    """One command to the node on 127.0.0.1:port."""
    _check_port(port)
    parts = [f"*{len(args)}\r\n".encode()]
    parts += [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        with s.makefile("rb") as f:
            return _read(f)


def _text(port: int, *args: str) -> str:
    raw = call(port, *args)
    if not isinstance(raw, bytes):
        raise RuntimeError(f"{' '.join(args)} on {port}: unexpected reply {raw!r}")
    return raw.decode(errors="replace")


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as a dict; section "cluster" asks CLUSTER INFO instead."""
    text = _text(port, *(("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def cluster_nodes(port: int) -> list[list[str]]:
    """CLUSTER NODES as that node sees the cluster: the fields of each line."""
    return [line.split() for line in _text(port, "CLUSTER", "NODES").splitlines() if line]


def _port_of(fields: list[str]) -> int:
    return int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])


def _serves(fields: list[str], slot: int) -> bool:
    ranges = (r.partition("-") for r in fields[8:] if not r.startswith("["))  # [..]: migrating
    return any(int(lo) <= slot <= int(hi or lo) for lo, _, hi in ranges)


def _last(text: str, lines: int = 20) -> str:
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:]) or "(no output)"


class LocalCluster:
    """A Redis Cluster of redis-server children on 127.0.0.1, with failover hooks."""

    def __init__(self, masters: int = 3, replicas: int = 1, *,
                 extra_args: Sequence[str] = ()) -> None:
        if masters < 3 or replicas < 0:
            raise ValueError("redis-cli --cluster create needs masters >= 3 and replicas >= 0")
        self._masters, self._replicas, self._extra = masters, replicas, list(extra_args)
        self._root: Path | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._replicas_of: dict[int, list[int]] = {}  # a killed master -> its replicas
        self._buses: dict[int, int] = {}  # a node's port -> its cluster bus port
        self._held: list[socket.socket] = []  # the ports of killed nodes, until stop()
        self.ports: list[int] = []
        self.create_output = ""  # what redis-cli --cluster create said

    def start(self, timeout: float = 30) -> LocalCluster:
        """Start the nodes, join them, and return once every node is ok and linked."""
        if self._procs:
            return self
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError(_MISSING.format("redis-server" if server is None else "redis-cli"))
        deadline = time.monotonic() + timeout
        self._root = Path(tempfile.mkdtemp(prefix="iris-cluster-"))
        try:
            for _ in range(self._masters * (1 + self._replicas)):
                self._launch(server, deadline)
            argv = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas", str(self._replicas), "--cluster-yes"]
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                out = (exc.stdout or b"").decode(errors="replace")  # bytes, whatever text=
                raise RuntimeError(f"redis-cli --cluster create timed out:\n{_last(out)}") from exc
            self.create_output = done.stdout + done.stderr
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create exited with {done.returncode}:"
                                   f"\n{_last(self.create_output)}")
            self._wait(self._not_ready, deadline, "the cluster to be ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, exe: str, deadline: float) -> None:
        """One node on a fresh port and bus port; a port lost to a race is retried."""
        assert self._root is not None
        for _attempt in range(5):
            port, bus = free_port(), free_port()
            while port == bus or {port, bus} & {FORBIDDEN_PORT, *self.ports}:
                port, bus = free_port(), free_port()
            workdir = self._root / f"node-{port}"
            workdir.mkdir(exist_ok=True)
            log = workdir / "redis.log"
            argv = [
                exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
                "--save", "", "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log),
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0", *self._extra,
            ]  # fmt: skip
            with (workdir / "stderr").open("wb") as err:  # a bad argument is said here
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                        start_new_session=True)
            self._procs[port] = proc  # stop() reaps it, started or not
            self._buses[port] = bus
            while proc.poll() is None and time.monotonic() < deadline:
                if ping(port) and server_pid(port) == proc.pid:
                    self.ports.append(port)
                    return
                time.sleep(0.02)
            if proc.poll() is None:  # the deadline, not a port taken meanwhile: no retry
                break
        said = "".join(f.read_text(errors="replace") for f in (log.parent / "stderr", log)
                       if f.exists())
        how = "timed out" if proc.poll() is None else f"exited with {proc.returncode}"
        raise RuntimeError(f"redis-server did not start ({how}):\n{_last(said)}")

    def _not_ready(self) -> str | None:
        """What keeps the cluster from being ready, or None."""
        for port in self.ports:
            ci = info(port, "cluster")
            if ci.get("cluster_state") != "ok":
                return f"node {port} has cluster_state:{ci.get('cluster_state')}"
            if int(ci.get("cluster_known_nodes", 0)) != len(self.ports):
                return f"node {port} knows {ci.get('cluster_known_nodes')} nodes"
            rep = info(port, "replication")
            if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                return f"replica {port} has master_link_status:{rep.get('master_link_status')}"
        masters = self.masters()
        return None if len(masters) == self._masters else f"masters are {masters}"

    def _wait(self, problem: Callable[[], str | None], deadline: float, what: str) -> None:
        last: str | None = "never checked"
        while time.monotonic() < deadline:
            try:
                last = problem()
            except (OSError, RuntimeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if last is None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}: {last}\n"
                           f"redis-cli --cluster create said:\n{_last(self.create_output)}")

    def stop(self) -> None:
        """SIGKILL every node (nothing is persisted), reap them, remove the temp dirs."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        held, self._held = self._held, []
        for sock in held:
            sock.close()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    @property
    def url(self) -> str:
        """A seed: the first master."""
        return f"redis://127.0.0.1:{(self.masters() or self.ports)[0]}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.masters()]

    def live(self) -> list[int]:
        return [p for p in self.ports if p in self._procs and self._procs[p].poll() is None]

    def pids(self) -> dict[int, int]:
        return {p: self._procs[p].pid for p in self.live()}

    def masters(self) -> list[int]:
        """Live nodes that say role:master now."""
        return [p for p in self.live() if info(p, "replication").get("role") == "master"]

    def master_of(self, key: str) -> int:
        """The port of the master serving key's slot, as the first live node sees it."""
        seed = self.live()[0]
        slot = call(seed, "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        for fields in cluster_nodes(seed):
            flags = fields[2].split(",")
            if "master" in flags and "fail" not in flags and _serves(fields, slot):
                return _port_of(fields)
        raise RuntimeError(f"no master serves slot {slot} (key {key!r})")

    def kill(self, port: int) -> None:
        """SIGKILL that node (a crash); its replicas are noted for wait_failover. Its port and
        bus port stay bound here, not listening, until stop() (see ``hold_port``): clients
        that still try the node are refused, never answered by another test's server."""
        if port not in self._procs:
            raise ValueError(f"no node of this cluster on port {port}")
        with contextlib.suppress(OSError, RuntimeError):
            self._note_replicas(port)
        self._procs[port].kill()
        self._procs[port].wait()
        for number in (port, self._buses[port]):
            with contextlib.suppress(OSError):  # taken already: nothing to hold
                self._held.append(hold_port(number))

    def node_id(self, port: int) -> str:
        return _text(port, "CLUSTER", "MYID")

    def begin_move(self, slot: int, to: int) -> tuple[int, list[str]]:
        """Start moving ``slot`` to the master on ``to``, as ``redis-cli --cluster reshard``
        does (IMPORTING there, MIGRATING here): (the source master's port, the slot's keys).
        Move each with ``migrate``, then ``end_move``; meanwhile clients get ASK and TRYAGAIN."""
        source = next(p for p in self.masters()
                      if any(_port_of(f) == p and _serves(f, slot) for f in cluster_nodes(p)))
        call(to, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        call(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(to))
        keys = call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100000")
        assert isinstance(keys, list)
        return source, [k.decode() if isinstance(k, bytes) else str(k) for k in keys]

    def migrate(self, source: int, to: int, key: str) -> None:
        """MIGRATE one key. A MIGRATE whose reply was lost or came too late (a loaded machine)
        leaves the key on both nodes (redis/redis#2770), and clients went on writing the
        source's copy: while the slot is migrating, the source serves every key it still
        holds, and the target only keys the source no longer has (ASK). So the source's copy
        is the one to keep: the key is migrated again with REPLACE (``redis-cli --cluster``
        does so when both copies are equal, redis/redis#5708, and asks for
        ``--cluster-replace`` otherwise; a copy differing from the source's was seen here)."""
        try:
            call(source, "MIGRATE", "127.0.0.1", str(to), key, "0", "5000", timeout=10)
        except RuntimeError as exc:
            if "BUSYKEY" not in str(exc):
                raise
            call(source, "MIGRATE", "127.0.0.1", str(to), key, "0", "5000", "REPLACE",
                 timeout=10)

    def end_move(self, source: int, slot: int, to: int) -> None:
        """The slot belongs to ``to`` now, on every master (what is left at ``source`` moves
        there first)."""
        keys = call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100000")
        assert isinstance(keys, list)
        for key in keys:
            self.migrate(source, to, key.decode() if isinstance(key, bytes) else str(key))
        for port in self.masters():
            call(port, "CLUSTER", "SETSLOT", str(slot), "NODE", self.node_id(to))

    def _note_replicas(self, port: int, timeout: float = 10) -> list[int]:
        """The replicas of the master on ``port``: those its node table names, and those
        replicating from it (INFO replication), since on a loaded machine the table learns a
        new replica by gossip after its replication link is up (asked again for up to
        ``timeout`` seconds while a node does not answer)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                me = self.node_id(port)
                linked = [int(m.group(1)) for key, value in info(port, "replication").items()
                          if re.fullmatch(r"slave\d+", key)
                          and (m := re.search(r"port=(\d+)", value))]
                named = [_port_of(f) for f in cluster_nodes(port) if f[3] == me]
                replicas = list(dict.fromkeys(named + linked))
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._replicas_of[port] = replicas
        return replicas

    def failover(self, port: int, timeout: float = 30) -> int:
        """A planned failover (CLUSTER FAILOVER on a replica of the master on ``port``, which
        lives on as a replica; clients blocked on it are cut short): the new master's port."""
        replicas = self._note_replicas(port)
        if not replicas:
            raise RuntimeError(f"node {port} has no replica to fail over to")
        call(replicas[0], "CLUSTER", "FAILOVER")
        return self.wait_failover(port, timeout)

    def wait_failover(self, killed_port: int, timeout: float = 30) -> int:
        """Wait until a replica of the killed master is master in every live node's view and
        every live node is cluster_state:ok; return the new master's port."""
        replicas = [p for p in self._replicas_of.get(killed_port, []) if p in self.live()]
        if not replicas:
            raise RuntimeError(f"node {killed_port} has no live replica to fail over to "
                               "(kill it with LocalCluster.kill)")
        promoted: list[int] = []

        def not_yet() -> str | None:
            for port in self.live():
                if info(port, "cluster").get("cluster_state") != "ok":
                    return f"node {port} is not cluster_state:ok"
            new = [p for p in replicas if info(p, "replication").get("role") == "master"]
            if not new:
                return f"no replica of {killed_port} ({replicas}) is master yet"
            for port in self.live():
                flags = {_port_of(f): f[2].split(",") for f in cluster_nodes(port)}
                if "master" not in flags.get(new[0], []):
                    return f"node {port} does not see {new[0]} as master yet"
            promoted[:] = new[:1]
            return None

        self._wait(not_yet, time.monotonic() + timeout, f"a failover of {killed_port}")
        return promoted[0]

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
