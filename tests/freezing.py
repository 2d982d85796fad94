"""Servers that stop answering: frozen with SIGSTOP, or a listener that accepts and never replies.

A frozen server keeps its port: the kernel still completes TCP handshakes up to the listen backlog, and
bytes sent to it wait in its socket buffers, so a client sees a connection that never answers, as with a
hung or swapped-out host. Every server here runs in a session of its own (``OwnServer``); freezing
stops its process group with one ``killpg``, then every descendant that left the group (PostgreSQL's
backends each call setsid()).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from tests.own_servers import OwnServer
from tests.servers import _tool
from tests.workers import wait_for

# -- freezing ---------------------------------------------------------------------------------------


#: /proc states of a process that cannot run: stopped, traced, dead, zombie (``X`` also: gone).
_NOT_RUNNING = frozenset("TtXxZ")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent's pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` (``T``: stopped), or ``X`` once it is gone."""
    fields = _stat_fields(pid)
    return "X" if fields is None else fields[0]


def process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it.

    Not the process group: PostgreSQL's backends each call setsid(), so they leave their postmaster's
    group and session, and only their parentage ties them to it.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Freezer:
    """SIGSTOPs and SIGCONTs a server's whole process tree; whatever it froze is thawed when it is
    closed, collected, or at interpreter exit at the latest (a frozen server must never outlive a test)."""

    def __init__(self) -> None:
        self._stopped: dict[int, set[int]] = {}  # a server's leader -> every pid sent SIGSTOP
        self._finalizer = weakref.finalize(self, _thaw_all, self._stopped)

    def freeze(self, server: OwnServer) -> None:
        """Stop every process of ``server``; returns once all of them are stopped.

        The leader's process group first (all at once), then any descendant outside it; a stopped
        parent forks no new child meanwhile.
        """
        leader = _leader_of(server)
        stopped = self._stopped.setdefault(leader, set())
        stopped.add(leader)
        os.killpg(leader, signal.SIGSTOP)  # start_new_session: the leader's pid is its group's id

        def all_stopped() -> bool:
            running = {pid for pid in process_tree(leader) if _state(pid) not in _NOT_RUNNING}
            stopped.update(running)
            _signal(running, signal.SIGSTOP)
            return not running

        wait_for(all_stopped, 10, f"every process of {server.name} (pid {leader}) to stop")

    def thaw(self, server: OwnServer) -> None:
        """Let every process of ``server`` run again."""
        leader = _leader_of(server)
        _thaw(leader, self._stopped.pop(leader, set()))

    @contextlib.contextmanager
    def frozen(self, server: OwnServer) -> Iterator[None]:
        """``server`` frozen for the block, thawed after it however the block ends."""
        self.freeze(server)
        try:
            yield
        finally:
            self.thaw(server)

    def close(self) -> None:
        """Thaw everything still frozen."""
        self._finalizer()


def _leader_of(server: OwnServer) -> int:
    if server.process is None or server.process.poll() is not None:
        raise RuntimeError(f"{server.name} is not running")
    return server.process.pid


def _thaw(leader: int, stopped: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGCONT)
    _signal(stopped | process_tree(leader), signal.SIGCONT)


def _thaw_all(stopped: dict[int, set[int]]) -> None:
    for leader, pids in list(stopped.items()):
        _thaw(leader, pids)
    stopped.clear()


def thaw_quietly(server: OwnServer) -> None:
    """SIGCONT to every process of a server that may or may not be frozen (before stopping it: a stopped
    process cannot act on SIGTERM)."""
    if server.process is not None and server.process.poll() is None:
        _thaw(server.process.pid, set())


# -- a listener that never answers ------------------------------------------------------------------


class SilentListener:
    """Accepts TCP connections on a free port and never reads or writes a byte.

    Every accepted socket is kept open until the listener is closed, so a client waits for an answer
    (or a timeout) instead of seeing a reset.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"silent-{self.port}", daemon=True)

    @property
    def accepted(self) -> int:
        """How many connections it has accepted so far."""
        with self._lock:
            return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._held.append(connection)

    def __enter__(self) -> SilentListener:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and close every held connection (clients still waiting see them end)."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(5)
        with self._lock:
            held, self._held = self._held, []
        for connection in held:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections at once: bound by the block, never listening (so
    no other program can take it meanwhile)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port: int = holder.getsockname()[1]
        yield port


# -- a call that may hang -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """A call run in a thread of its own, so that a call that hangs cannot hang the test."""

    thread: threading.Thread
    started: float
    ended: float | None = None
    value: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        """How long the call took (so far, if it is still running)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def wait(self, seconds: float) -> bool:
        """Whether the call has ended, waiting up to ``seconds`` for it."""
        return self.done.wait(seconds)

    def describe(self) -> str:
        """What became of the call, for assertion messages."""
        if not self.done.is_set():
            return f"still running after {self.seconds:.1f} s"
        if self.error is not None:
            return f"{type(self.error).__name__} after {self.seconds:.1f} s: {self.error}"
        return f"returned {self.value!r} after {self.seconds:.1f} s"


def start_call(call: Callable[[], Any]) -> Outcome:
    """Run ``call()`` in a daemon thread; the outcome records its result or error and when it ended."""
    outcome = Outcome(thread=threading.Thread(daemon=True), started=time.monotonic())

    def run() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:  # noqa: BLE001 - the test judges whatever the call raised
            outcome.error = exc
        finally:
            outcome.ended = time.monotonic()
            outcome.done.set()

    outcome.thread = threading.Thread(target=run, name="bounded-call", daemon=True)
    outcome.thread.start()
    return outcome


# -- servers of the test's own, which it may freeze ---------------------------------------------------


class OwnMongoWire(OwnServer):
    """nx-27017 (the MongoDB wire protocol over SQLite) on a free port."""

    name = "nx-27017"

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [_tool("nx-27017"), "--db", str(self.directory / "nx.db"), "-p", str(self.port),
                "--log-file", str(self.directory / "nx.log"), "--pid-file", str(self.directory / "nx.pid")]  # fmt: skip


class OwnMoto(OwnServer):
    """moto_server (an S3 API in memory) on a free port."""

    name = "moto"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [_tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]


class OwnMariaDB(OwnServer):
    """Debian's mariadbd on a free port, with a data directory made by mariadb-install-db (about 1 s).

    root has no password and may connect from 127.0.0.1; database ``test`` exists. As root, the server
    runs as the ``mysql`` user. The data directory is removed by ``stop()``, else at exit at the latest.
    """

    name = "mariadb"

    def __init__(self, directory: Path) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="css-maria-")))
        self._remove_data = weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
        self.log_directory = directory
        self.data = self.directory / "data"
        self._user = ["--user=mysql"] if os.geteuid() == 0 else []
        try:
            if self._user:
                shutil.chown(self.directory, "mysql")
            subprocess.run(
                [_mariadb_tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}", *self._user,
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        except BaseException:
            self._remove_data()
            raise

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def command(self) -> list[str]:
        return [_mariadb_tool("mariadbd"), "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.directory / 'mariadb.sock'}",
                f"--pid-file={self.directory / 'mariadb.pid'}", *self._user, "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M", f"--log-error={self.directory / 'mariadb.err'}"]  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        """Listening comes before the server takes sessions; once it does, database ``test`` is made."""
        super().wait_ready()
        wait_for(self._accepts_sessions, timeout, "MariaDB to accept sessions", detail=self._log)
        self.query("CREATE DATABASE IF NOT EXISTS test")

    def _log(self) -> str:
        log = self.directory / "mariadb.err"
        return log.read_text(errors="replace") if log.exists() else ""

    def _accepts_sessions(self) -> bool:
        try:
            self._connect().close()
        except pymysql.err.OperationalError:
            return False
        return True

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` run on a connection of its own."""
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def _connect(self) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", connect_timeout=5, read_timeout=10, autocommit=True
        )

    def stop(self) -> None:
        super().stop()
        (self.log_directory / "mariadb.err").write_text(self._log())
        self._remove_data()


def _mariadb_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"MariaDB's {name} is not installed (Debian: apt install mariadb-server)")
    return found
