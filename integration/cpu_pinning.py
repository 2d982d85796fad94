"""The servers on one CPU, the benchmark on another, for the length of a run.

A server with a thread or a process per connection serves a connection fast or slowly by where the
scheduler runs that thread, and keeps to it. On this 2-core VM, five fresh mysqlclient connections left to
the scheduler read in 41 to 100 µs each, each steadily: two clients on two connections compared their
luck. Six connections with the server's threads on the client's CPU read in 37 µs each, and on the other
CPU in 95 to 100 µs each. Sharing the client's CPU, the server's background work (InnoDB's log flushes)
also runs between the client's calls and falls unevenly on the sides; on a CPU of its own it does not.
So the servers get the first CPU and the benchmark the last: every connection is served alike.

Servers already running (found by the port they listen on) are pinned, threads, children and all, and each
thread gets its own CPUs back at the end (threads and children started meanwhile get their process's);
so are the servers the benchmark starts, once they listen. SIGTERM ends the run through the same
restoring, and a Ctrl-C or SIGTERM that comes during the restoring waits for its end; after a SIGKILL,
``taskset -a -p -c 0-N PID`` gives a server its CPUs back.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from types import FrameType, TracebackType

import psutil


class CpuPinning:
    """This process on ``client_cpu``; the servers named by ``pin_servers`` on ``server_cpu``."""

    def __init__(self, server_cpu: int, client_cpu: int) -> None:
        self.server_cpu, self.client_cpu = server_cpu, client_cpu
        self._own: set[int] = set()
        #: per server pid: the CPUs of each of its threads and of its descendants' threads, before pinning
        self._saved: dict[int, dict[int, set[int]]] = {}
        self._previous_sigterm: object = None

    @classmethod
    def split(cls) -> CpuPinning | None:
        """The first CPU for the servers and the last for this process, or None with only one CPU."""
        cpus = sorted(os.sched_getaffinity(0))
        return cls(cpus[0], cpus[-1]) if len(cpus) > 1 else None

    def __enter__(self) -> CpuPinning:
        self._own = os.sched_getaffinity(0)
        self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        os.sched_setaffinity(0, {self.client_cpu})
        return self

    def pin_servers(self, ports: Iterable[int]) -> tuple[list[int], list[int]]:
        """Move the processes listening on ``ports`` (their threads and children too) to the server CPU.

        Returns the pids pinned, and the ports whose listener could not be seen or may not be moved
        (another user's process without the right to it, or init or an ancestor of this process, which
        socket activation can make the listener)."""
        ports = set(ports)
        listeners = _listeners(ports)
        untouchable = {1, *(process.pid for process in psutil.Process().parents())}
        pinned, missed = (
            [],
            sorted(ports - {port for port, pid in listeners.items() if pid not in untouchable}),
        )
        for pid in {pid for pid in listeners.values() if pid not in untouchable}:
            try:
                saved = _threads_affinity(pid)
                self._saved.setdefault(pid, saved)
                for thread in saved:
                    with contextlib.suppress(OSError):  # a thread that ended meanwhile
                        os.sched_setaffinity(thread, {self.server_cpu})
            except (psutil.Error, PermissionError):
                missed += [port for port, owner in listeners.items() if owner == pid]
                continue
            pinned.append(pid)
        return sorted(pinned), sorted(missed)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        # a Ctrl-C or SIGTERM that comes now is held until every server has its CPUs back
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
        try:
            for pid, saved in self._saved.items():
                with contextlib.suppress(psutil.Error, OSError):  # a server the benchmark started has ended
                    process_cpus = saved.get(pid, set(range(os.cpu_count() or 1)))
                    for thread in _threads_affinity(pid):  # now: those started meanwhile included
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(thread, saved.get(thread, process_cpus))
            os.sched_setaffinity(0, self._own)
            signal.signal(signal.SIGTERM, self._previous_sigterm)  # type: ignore[arg-type]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


#: The signals that would stop a run part-way through giving the servers their CPUs back.
_STOPPING_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through __exit__, which gives the servers their CPUs back


def _listeners(ports: set[int]) -> dict[int, int]:
    """Port -> pid of the process listening on it on this host, for the ports whose listener is visible."""
    return {
        connection.laddr.port: connection.pid
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port in ports and connection.pid
    }


def _threads_affinity(pid: int) -> dict[int, set[int]]:
    """Thread id -> CPUs, for every thread of ``pid`` and of its descendants (PostgreSQL's backends)."""
    root = psutil.Process(pid)
    found: dict[int, set[int]] = {}
    for process in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError):  # a backend that ended meanwhile
            for thread in process.threads():
                found[thread.id] = os.sched_getaffinity(thread.id)
    return found
