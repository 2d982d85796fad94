"""Servers of a test's own, on free ports, which the test may crash (SIGKILL) and start again.

Redis persists every write to its append-only file; PostgreSQL recovers from its write-ahead log.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

import pg8000.dbapi

from tests.servers import free_port, wait_for_port
from tests.workers import wait_for


class OwnServer:
    """One server process in a session of its own, so that a crash takes all its processes down."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        return {}

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_for_port(self.port, self.process)

    def start(self) -> OwnServer:
        """Start (or start again, on the same port and data)."""
        with (self.directory / f"{self.name}.out").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self.popen_options(),
            )  # fmt: skip
        self.wait_ready()
        return self

    def crash(self) -> None:
        """SIGKILL to every process of the server, as the OOM killer or a power cut would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        _wait_until_gone(self.process.pid)

    def stop(self) -> None:
        """A clean shutdown; a server that is down already is left alone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.crash()

    def __enter__(self) -> OwnServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that started but never became ready must not outlive the test
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()


class OwnRedis(OwnServer):
    """redis-server writing every command to its append-only file before answering."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--logfile", str(self.directory / "redis.log")]  # fmt: skip


class OwnPostgres(OwnServer):
    """A PostgreSQL cluster made with initdb in a directory of its own (trust auth, user postgres).

    PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` user. The cluster lives in a
    temporary directory of its own, removed by ``stop()`` (the end of a ``with``), else when the object is
    collected or at exit at the latest; the server's log is copied to ``directory`` first.
    """

    name = "postgres"

    def __init__(self, directory: Path) -> None:
        # the data must be reachable by the postgres user, which pytest's root-only tmp_path is not
        super().__init__(Path(tempfile.mkdtemp(prefix="css-pg-")))
        self._remove_cluster = weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
        self.log_directory = directory
        self.data = self.directory / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        try:
            if self._user:
                shutil.chown(self.directory, self._user)
            subprocess.run(
                [_postgres_tool("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True, capture_output=True, user=self._user,
            )  # fmt: skip
        except BaseException:
            self._remove_cluster()
            raise

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self) -> list[str]:
        return [_postgres_tool("postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"]  # fmt: skip

    def popen_options(self) -> dict[str, Any]:
        return {"user": self._user}

    def wait_ready(self, timeout: float = 60) -> None:
        """Listening is not enough: during crash recovery the server refuses sessions."""
        super().wait_ready()
        log = self.directory / "postgres.out"
        wait_for(self._accepts_sessions, timeout, "PostgreSQL to accept sessions", detail=log.read_text)

    def _accepts_sessions(self) -> bool:
        try:
            self._connect(timeout=5).close()
        except pg8000.dbapi.DatabaseError:
            return False
        return True

    def stop(self) -> None:
        super().stop()
        log = self.directory / "postgres.out"
        if log.exists():
            (self.log_directory / "postgres.out").write_bytes(log.read_bytes())
        self._remove_cluster()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` run on a connection of its own."""
        connection = self._connect(timeout=10)
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            rows = list(cursor.fetchall()) if cursor.description else []
            connection.commit()
            return rows
        finally:
            connection.close()

    def _connect(self, timeout: float) -> pg8000.dbapi.Connection:
        return pg8000.dbapi.connect(user="postgres", host="127.0.0.1", port=self.port, timeout=timeout)


def _postgres_tool(name: str) -> str:
    """A server program of the newest PostgreSQL installed (Debian keeps them out of PATH)."""
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    found = installed[-1] if installed else shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt install postgresql)")
    return found


def _version(path: str) -> int:
    return int(Path(path).parent.parent.name.split(".")[0])


def _wait_until_gone(session: int, timeout: float = 10) -> None:
    """Until no process of the session is left (PostgreSQL's backends die with their postmaster)."""
    wait_for(
        lambda: all(_session_of(pid) != session for pid in _pids()),
        timeout,
        f"every process of session {session} to die of SIGKILL",
    )


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
