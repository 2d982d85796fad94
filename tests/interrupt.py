"""Interruptions inside the storage drivers' own sends and receives, for tests/test_storage_model.py.

Every network driver the adapters use reaches its server through ``socket.socket``, read from each driver's
source (one event per call at the hook; buffered streams count per driver call, not per ``recv``):

=====================  ===============================================  =========================================
driver                 send                                             receive
=====================  ===============================================  =========================================
pg8000 (PostgreSQL)    ``core._write`` / ``core._flush`` -> ``write`` /  ``core._read`` -> ``read`` of the stream
                       ``flush`` of its ``makefile("rwb")`` stream
PyMySQL (MariaDB)      ``Connection._write_bytes`` -> ``sendall``       ``Connection._read_bytes`` -> ``read`` of
                                                                        its ``makefile("rb")`` stream
redis-py               ``Connection.send_packed_command`` -> ``sendall``  ``SocketBuffer._read_from_socket`` ->
                                                                        ``recv``
pymongo                ``network_layer.sendall`` -> ``sendall``         ``network_layer.receive_data`` ->
                                                                        ``recv_into``
botocore/urllib3 (S3)  ``http.client.HTTPConnection.send`` ->           ``http.client.HTTPResponse`` (and botocore's
                       ``sendall``                                      "100 Continue" check) -> ``readline`` /
                                                                        ``read`` of the ``makefile("rb")`` stream
=====================  ===============================================  =========================================

``socket_hook`` wraps ``send``, ``sendall``, ``recv``, ``recv_into`` and ``makefile`` of ``socket.socket``. An
exception raised there surfaces inside the driver exactly where a reset connection, or a signal handler
(Celery's soft time limit) or a greenlet timeout would, so the driver's own error handling runs as it would
then. Streams count once per read, write or flush (their buffer's socket calls are part of that event), so
the Nth event does not depend on how the bytes were split in transit. The patch is process-wide, but only
calls made by the thread that armed the injector count (pymongo's monitor threads, for one, do not).

sqlite3 has no socket: ``sqlite_connection_class`` makes connections whose cursors count ``execute`` as a
send and ``fetchone`` as a receive. The in-memory adapter gets an ``InterruptibleDict``: a write to it is a
send, a read a receive.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from celery_selinon_storage.storages.memory import InMemoryStorage

T = TypeVar("T")

Kind = Literal["send", "receive"]
#: When the armed event raises: before the real call, after half of a send went out, or after the call.
When = Literal["before", "midway", "after"]

#: Modules whose frames sit between a driver and the socket (skipped when naming the caller).
_PLUMBING = frozenset({__name__, "socket", "ssl", "_pyio", "selectors"})


class Interrupted(BaseException):
    """An interruption that is not an ``Exception`` (as gevent.Timeout and GreenletExit are not)."""


@dataclass
class Shot:
    """One armed interruption: the ``nth`` event of the arming thread raises ``make()``, ``when``."""

    nth: int
    make: Callable[[], BaseException]
    when: When = "before"
    count: int = 0
    fired: BaseException | None = None
    #: (kind, module of the driver code that made it) of every event seen while armed
    events: list[tuple[Kind, str]] = field(default_factory=list)


class Injector:
    """Counts the arming thread's sends and receives and raises the armed exception at the chosen one."""

    def __init__(self) -> None:
        self._shot: Shot | None = None
        self._thread: int | None = None
        self._inside = False  # in an event already: the socket calls a stream makes are part of it

    @contextmanager
    def armed(self, shot: Shot) -> Iterator[Shot]:
        """Arm ``shot`` for the calling thread for the duration of the block (it fires at most once)."""
        self._shot, self._thread = shot, threading.get_ident()
        try:
            yield shot
        finally:
            self._shot = self._thread = None

    @contextmanager
    def recording(self) -> Iterator[list[tuple[Kind, str]]]:
        """Record the calling thread's events without interrupting any."""
        with self.armed(Shot(nth=0, make=Interrupted)) as shot:
            yield shot.events

    def around(self, kind: Kind, real: Callable[[], T], half: Callable[[], object] | None = None) -> T:
        """Run ``real`` (one send or receive), unless this is the armed event: then raise around it."""
        shot = self._shot
        if shot is None or self._inside or self._thread != threading.get_ident():
            return real()
        self._inside = True
        try:
            shot.events.append((kind, _caller_module()))
            shot.count += 1
            if shot.count != shot.nth:
                return real()
            error = shot.fired = shot.make()
            if shot.when == "midway" and half is not None:
                half()
            elif shot.when != "before":
                real()
            raise error
        finally:
            self._inside = False


def _caller_module() -> str:
    """The module of the innermost frame outside the socket plumbing: the driver that sent or received."""
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__") in _PLUMBING:
        frame = frame.f_back
    return str(frame.f_globals.get("__name__"))


class InterruptibleStream:
    """A file object made by ``socket.makefile``: each read, write or flush is one event, however many
    socket calls its buffer makes (so the count does not depend on how the bytes were split in transit)."""

    def __init__(self, stream: Any, injector: Injector) -> None:
        self._stream = stream
        self._injector = injector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> InterruptibleStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stream.close()

    def _receive(self, method: str, *args: Any) -> Any:
        return self._injector.around("receive", lambda: getattr(self._stream, method)(*args))

    def read(self, *args: Any) -> Any:
        return self._receive("read", *args)

    def read1(self, *args: Any) -> Any:
        return self._receive("read1", *args)

    def readinto(self, *args: Any) -> Any:
        return self._receive("readinto", *args)

    def readinto1(self, *args: Any) -> Any:
        return self._receive("readinto1", *args)

    def readline(self, *args: Any) -> Any:
        return self._receive("readline", *args)

    def peek(self, *args: Any) -> Any:
        return self._receive("peek", *args)

    def write(self, data: Any) -> Any:
        def half() -> Any:
            return self._stream.write(memoryview(data)[: max(1, len(data) // 2)])

        return self._injector.around("send", lambda: self._stream.write(data), half)

    def flush(self) -> None:
        self._injector.around("send", self._stream.flush)


@contextmanager
def socket_hook(injector: Injector) -> Iterator[None]:
    """Route the sends and receives of every ``socket.socket``, and of its ``makefile`` streams, through
    ``injector``."""
    names = ("send", "sendall", "recv", "recv_into", "makefile")
    originals = {name: getattr(socket.socket, name) for name in names}
    send, sendall, recv, recv_into, makefile = (originals[name] for name in names)

    def hooked_send(sock: socket.socket, data: Any, *flags: int) -> int:
        def half() -> int:
            return int(send(sock, memoryview(data)[: max(1, len(data) // 2)], *flags))

        return int(injector.around("send", lambda: send(sock, data, *flags), half))

    def hooked_sendall(sock: socket.socket, data: Any, *flags: int) -> None:
        def half() -> None:
            sendall(sock, memoryview(data)[: max(1, len(data) // 2)], *flags)

        injector.around("send", lambda: sendall(sock, data, *flags), half)

    def hooked_recv(sock: socket.socket, *args: Any) -> bytes:
        return bytes(injector.around("receive", lambda: recv(sock, *args)))

    def hooked_recv_into(sock: socket.socket, *args: Any) -> int:
        return int(injector.around("receive", lambda: recv_into(sock, *args)))

    def hooked_makefile(sock: socket.socket, *args: Any, **kwargs: Any) -> InterruptibleStream:
        return InterruptibleStream(makefile(sock, *args, **kwargs), injector)

    hooks = {
        "send": hooked_send,
        "sendall": hooked_sendall,
        "recv": hooked_recv,
        "recv_into": hooked_recv_into,
        "makefile": hooked_makefile,
    }
    for name, hook in hooks.items():
        setattr(socket.socket, name, hook)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(socket.socket, name, original)


def sqlite_connection_class(injector: Injector) -> type[sqlite3.Connection]:
    """A ``sqlite3.Connection`` class (``connect(factory=...)``) whose cursors report to ``injector``."""

    class InterruptibleCursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = (), /) -> InterruptibleCursor:
            injector.around("send", lambda: super(InterruptibleCursor, self).execute(sql, parameters))
            return self

        def fetchone(self) -> Any:
            return injector.around("receive", super().fetchone)

    class InterruptibleConnection(sqlite3.Connection):
        def cursor(self, factory: Any = InterruptibleCursor) -> Any:
            return super().cursor(factory)

    return InterruptibleConnection


class InterruptibleDict(dict[str, str]):
    """The in-memory adapter's records; every read and write is an event of ``injector``."""

    def __init__(self, injector: Injector) -> None:
        super().__init__()
        self.injector = injector

    def __getitem__(self, key: str) -> str:
        return self.injector.around("receive", lambda: super(InterruptibleDict, self).__getitem__(key))

    def __setitem__(self, key: str, value: str) -> None:
        self.injector.around("send", lambda: super(InterruptibleDict, self).__setitem__(key, value))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self.injector.around("receive", lambda: super(InterruptibleDict, self).get(key, default))

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        return self.injector.around("send", lambda: super(InterruptibleDict, self).pop(key, *default))


class InterruptibleMemoryStorage(InMemoryStorage):
    """``InMemoryStorage`` keeping its records in an ``InterruptibleDict``."""

    def __init__(self, injector: Injector, max_records: int | None = None) -> None:
        super().__init__(max_records)
        self.injector = injector

    def _open(self) -> InterruptibleDict:
        return InterruptibleDict(self.injector)
