"""The servers on one CPU, the benchmark on another, for the length of a run.

A server with a thread or a process per connection serves a connection fast or slowly by where the
scheduler runs that thread, and keeps to it. On this 2-core VM, five fresh mysqlclient connections left to
the scheduler read in 41 to 100 µs each, each steadily: two clients on two connections compared their
luck. Six connections with the server's threads on the client's CPU read in 37 µs each, and on the other
CPU in 95 to 100 µs each. Sharing the client's CPU, the server's background work (InnoDB's log flushes)
also runs between the client's calls and falls unevenly on the sides; on a CPU of its own it does not.
So the servers get the first CPU and the benchmark the last: every connection is served alike.

Servers already running (found by the port they listen on) are pinned, threads, children and all, and get
their CPUs back at the end; so are the servers the benchmark starts, once they listen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from types import TracebackType

import psutil


class CpuPinning:
    """This process on ``client_cpu``; the servers named by ``pin_servers`` on ``server_cpu``."""

    def __init__(self, server_cpu: int, client_cpu: int) -> None:
        self.server_cpu, self.client_cpu = server_cpu, client_cpu
        self._own: set[int] = set()
        self._saved: dict[int, set[int]] = {}

    @classmethod
    def split(cls) -> CpuPinning | None:
        """The first CPU for the servers and the last for this process, or None with only one CPU."""
        cpus = sorted(os.sched_getaffinity(0))
        return cls(cpus[0], cpus[-1]) if len(cpus) > 1 else None

    def __enter__(self) -> CpuPinning:
        self._own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.client_cpu})
        return self

    def pin_servers(self, ports: Iterable[int]) -> list[int]:
        """Move the processes listening on ``ports`` (and their threads and children) to the server CPU."""
        pids = _listeners(set(ports))
        for pid in pids:
            self._saved.setdefault(pid, os.sched_getaffinity(pid))
            _set_all(pid, {self.server_cpu})
        return sorted(pids)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        for pid, cpus in self._saved.items():
            with contextlib.suppress(psutil.Error, OSError):  # a server the benchmark started has ended
                _set_all(pid, cpus)
        os.sched_setaffinity(0, self._own)


def _listeners(ports: set[int]) -> set[int]:
    """The processes listening on ``ports`` on this host."""
    return {
        connection.pid
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port in ports and connection.pid
    }


def _set_all(pid: int, cpus: set[int]) -> None:
    """``cpus`` for every thread of ``pid`` and of its descendants (PostgreSQL's backends are children)."""
    root = psutil.Process(pid)
    for process in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError):  # a backend that ended meanwhile
            for thread in process.threads():
                os.sched_setaffinity(thread.id, cpus)
