"""Issue #10: a call that fails or is interrupted half-way never leaves a connection out of step.

Reproducers against the real servers. Interruptions are injected at the socket: every ``send``,
``sendall``, ``recv`` and ``recv_into`` of the test's own thread goes through a ``Tap`` (pg8000 via
its ``makefile`` SocketIO, PyMySQL, redis-py, pymongo and urllib3 all call these methods of
``socket.socket``), which can raise on the Nth one, as a signal handler does (Celery's soft time
limit, gevent.Timeout, GreenletExit, KeyboardInterrupt). SQLite has no socket: its DBAPI cursor is
tapped instead, through ``connect_args={"factory": ...}``.
"""

from __future__ import annotations

import gc
import json
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded

from celery_selinon_storage import errors
from celery_selinon_storage.errors import (
    MissingResultError,
    ResultNotSerializableError,
    StorageError,
    StorageUnavailableError,
)
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.backends import adapter_factory

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

MiB = 1024 * 1024
Factory = Callable[[], JsonStorage]


InvalidRecordError = errors.InvalidRecordError


class Interrupt(BaseException):
    """What a signal handler raises in the middle of a call (not an ``Exception``, like GreenletExit)."""


# -- the tap: count and interrupt the I/O of this test's thread -------------------------------------


#: Largest read the tap lets through at once, so that every stretch of a reply is read by some call.
RECV_CAP = 16 * 1024


@dataclass
class Tap:
    """The socket I/O of one thread: counted in calls and bytes; interrupted once at a byte offset.

    A send that crosses the offset puts the bytes before it on the wire and then raises (a request
    cut short); a receive that starts at or past it raises before reading (a reply left unread).
    """

    thread: int
    sends: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: where each receive started, in bytes of the reply read so far
    recv_starts: list[int] = field(default_factory=list)
    trip: tuple[str, int] | None = None
    error: BaseException | None = None

    def reset(self) -> None:
        """Zero the counters and disarm."""
        self.sends = self.bytes_sent = self.bytes_received = 0
        self.recv_starts = []
        self.trip, self.error = None, None

    def arm(self, kind: str, offset: int, error: BaseException) -> None:
        """Raise ``error`` at byte ``offset`` of what this thread sends or receives ("send", "recv")."""
        self.reset()
        self.trip, self.error = (kind, offset), error

    def send_cut(self, size: int) -> int | None:
        """How many of the ``size`` bytes about to be sent go out before the interruption (None: all)."""
        self.sends += 1
        if self.trip is None or self.trip[0] != "send" or self.bytes_sent + size <= self.trip[1]:
            return None
        return self.trip[1] - self.bytes_sent

    def before_recv(self) -> None:
        """Raise the error if the interruption is due before this receive."""
        self.recv_starts.append(self.bytes_received)
        if self.trip is not None and self.trip[0] == "recv" and self.bytes_received >= self.trip[1]:
            raise self.fire()

    def fire(self) -> BaseException:
        """The error to raise, once."""
        error, self.trip, self.error = self.error, None, None
        assert error is not None
        return error

    def offsets(self, kind: str) -> dict[str, int]:
        """Where to interrupt the call just counted: named byte offsets of its request or reply."""
        if kind == "send":
            total = self.bytes_sent
            return {"first": 0, "middle": total // 2, "last": max(0, total - 1)}
        # a later run may split the reply differently: the last offset is one that every split reaches
        last = max(0, min(self.recv_starts[-1], self.bytes_received - RECV_CAP - 64))
        return {"first": 0, "middle": min(self.recv_starts[len(self.recv_starts) // 2], last), "last": last}


_TAPS: dict[int, Tap] = {}
_REAL_SENDALL = socket.socket.sendall


def _current_tap() -> Tap | None:
    return _TAPS.get(threading.get_ident())


def _tapped_send(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(sock: socket.socket, data: Any, *args: Any) -> Any:
        tap = _current_tap()
        if tap is None:
            return original(sock, data, *args)
        view = memoryview(data).cast("B")
        cut = tap.send_cut(len(view))
        if cut is not None:
            _REAL_SENDALL(sock, view[:cut])  # part of the request is on the wire, as after EINTR
            tap.bytes_sent += cut
            raise tap.fire()
        sent = original(sock, data, *args)
        tap.bytes_sent += len(view) if sent is None else int(sent)
        return sent

    return send


def _tapped_recv(original: Callable[..., Any]) -> Callable[..., Any]:
    def recv(sock: socket.socket, size: int, flags: int = 0) -> Any:
        tap = _current_tap()
        if tap is None or flags & socket.MSG_PEEK:
            return original(sock, size, flags)
        tap.before_recv()  # an interruption here leaves the reply in the socket, as after EINTR
        data = original(sock, min(size, RECV_CAP), flags)
        tap.bytes_received += len(data)
        return data

    return recv


def _tapped_recv_into(original: Callable[..., Any]) -> Callable[..., Any]:
    def recv_into(sock: socket.socket, buffer: Any, size: int = 0, flags: int = 0) -> Any:
        tap = _current_tap()
        if tap is None or flags & socket.MSG_PEEK:
            return original(sock, buffer, size, flags)
        tap.before_recv()
        received = original(sock, buffer, min(size or memoryview(buffer).nbytes, RECV_CAP), flags)
        tap.bytes_received += received
        return received

    return recv_into


@pytest.fixture
def tap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    """Tap this thread's socket I/O (other threads, such as pymongo's monitors, pass through)."""
    for name, wrap in (
        ("send", _tapped_send),
        ("sendall", _tapped_send),
        ("recv", _tapped_recv),
        ("recv_into", _tapped_recv_into),
    ):
        monkeypatch.setattr(socket.socket, name, wrap(getattr(socket.socket, name)))
    tapped = Tap(thread=threading.get_ident())
    _TAPS[tapped.thread] = tapped
    yield tapped
    del _TAPS[tapped.thread]


def _sqlite_send() -> None:
    """A statement about to run counts as one byte sent."""
    tap = _current_tap()
    if tap is not None:
        if tap.send_cut(1) is not None:
            raise tap.fire()
        tap.bytes_sent += 1


def _sqlite_recv() -> None:
    """A statement that ran, and each row fetched, count as one full read."""
    tap = _current_tap()
    if tap is not None:
        tap.before_recv()
        tap.bytes_received += RECV_CAP


class TappedCursor(sqlite3.Cursor):
    """SQLite has no socket: its cursor is tapped instead (before a statement runs, after, per fetch)."""

    def execute(self, sql: str, parameters: Any = (), /) -> TappedCursor:  # type: ignore[override]
        _sqlite_send()
        super().execute(sql, parameters)
        _sqlite_recv()  # the statement ran (and committed); its rows are not read yet
        return self

    def fetchone(self) -> Any:
        _sqlite_recv()
        return super().fetchone()


class TappedSqliteConnection(sqlite3.Connection):
    """Hands out ``TappedCursor``s (``sqlite3.connect(factory=...)``)."""

    def cursor(self, factory: Any = TappedCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Sockets a broken connection leaves unclosed are reported by the test that broke it, not a later one."""
    yield
    gc.collect()


# -- backends -------------------------------------------------------------------------------------

#: Socket timeouts, so that a connection left out of step fails in seconds instead of hanging. Not
#: shorter: after a call interrupted while the server ran it, the server finishes that statement (and
#: holds its row) before the next one on the same id can run, which takes seconds for 8 MB on a busy machine.
PG_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 10}}
MARIADB_OPTIONS: dict[str, Any] = {
    "connect_args": {"connect_timeout": 10, "read_timeout": 10, "write_timeout": 10}
}


#: What each backend's adapter gets besides the registry's options: short enough timeouts that a
#: connection left out of step fails instead of hanging, and SQLite's tapped connections.
EXTRA_OPTIONS: dict[str, dict[str, Any]] = {
    "sqlite": {"engine_options": {"connect_args": {"factory": TappedSqliteConnection}}},
    "postgresql+pg8000": {"engine_options": PG_OPTIONS},
    "mariadb": {"engine_options": MARIADB_OPTIONS},
    "redis": {"socket_timeout": 5},
}


def make_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Factory:
    """A new, unconnected adapter of ``backend`` on its real server, with names of this test's own."""
    return adapter_factory(backend, request, tmp_path, unique, **EXTRA_OPTIONS.get(backend, {}))


def connected(adapter: JsonStorage, request: pytest.FixtureRequest) -> JsonStorage:
    adapter.storage_name = "Results"
    adapter.connect()
    request.addfinalizer(adapter.disconnect)
    return adapter


def managed_storage(adapter: JsonStorage, request: pytest.FixtureRequest) -> ManagedStorage:
    adapter.storage_name = "Results"
    storage = ManagedStorage("Results", adapter, GuardKind.THREAD)
    storage.connect()
    request.addfinalizer(storage.shut_down)
    return storage


def read_back(storage: Any, expected: dict[str, list[Any]], keep_going: bool = False) -> list[str]:
    """What went wrong reading each record back (empty when each is one of the values it may have).

    Stops at the first problem unless ``keep_going``: a connection out of step can make each later
    call wait for its socket timeout.
    """
    problems = []
    for task_id, allowed in expected.items():
        problem = _read_one(storage, task_id, allowed)
        if problem:
            problems.append(problem)
            if not keep_going:
                break
    return problems


def _read_one(storage: Any, task_id: str, allowed: list[Any]) -> str:
    try:
        found = storage.retrieve("flow", "task", task_id)
    except Exception as exc:  # noqa: BLE001 - the test reports whatever the call raised
        return f"retrieve({task_id!r}) raised {type(exc).__name__}: {str(exc)[:200]}"
    if found in allowed:
        return ""
    owner = found.get("id") if isinstance(found, dict) else None
    whose = f"{owner}'s record"
    if owner in (None, task_id):
        whose = "a record not its own" if owner is None else "a wrong version of its record"
    return f"retrieve({task_id!r}) returned {whose}: {_short(found)}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 120 else text[:120] + "..."


# -- 1. a result that cannot be encoded, on PostgreSQL ---------------------------------------------

LONE_SURROGATE = json.loads('{"t":"\\ud83d oops"}')


def _postgres_storage(wrapped: str, request: pytest.FixtureRequest, unique: str) -> Any:
    adapter = make_factory("postgresql+pg8000", request, Path(), unique)()
    return connected(adapter, request) if wrapped == "adapter" else managed_storage(adapter, request)


@pytest.mark.parametrize("wrapped", ["adapter", "managed"])
def test_a_lone_surrogate_is_refused_as_not_serializable_before_any_io(
    wrapped: str, postgres_url: str, request: pytest.FixtureRequest, unique: str, tap: Tap
) -> None:
    storage = _postgres_storage(wrapped, request, unique)
    storage.store(None, "flow", "task", "alice", {"id": "alice"})
    tap.reset()
    with pytest.raises(ResultNotSerializableError) as caught:
        storage.store(None, "flow", "task", "carol", LONE_SURROGATE)
    assert isinstance(caught.value, InvalidRecordError)
    assert "'carol'" in str(caught.value)
    assert (tap.sends, tap.bytes_sent) == (0, 0), "nothing may be sent for a result that cannot be stored"


@pytest.mark.parametrize("wrapped", ["adapter", "managed"])
def test_after_a_store_that_failed_to_encode_every_record_reads_back_exactly(
    wrapped: str, postgres_url: str, request: pytest.FixtureRequest, unique: str
) -> None:
    storage = _postgres_storage(wrapped, request, unique)
    expected = {name: [{"id": name}] for name in ("alice", "bob")}
    for name, (value,) in expected.items():
        storage.store(None, "flow", "task", name, value)
    with pytest.raises(Exception):  # noqa: B017 - which error is the other test's concern
        storage.store(None, "flow", "task", "carol", LONE_SURROGATE)
    problems = read_back(storage, expected, keep_going=True)
    for name in ("dave", "erin"):
        try:
            storage.store(None, "flow", "task", name, {"id": name})
        except Exception as exc:  # noqa: BLE001 - reported below with the rest
            problems.append(f"store({name!r}) raised {type(exc).__name__}: {exc}")
        expected[name] = [{"id": name}]
    problems += read_back(storage, expected, keep_going=True)
    problems += _still_missing(storage, "carol")
    assert not problems, "\n".join(problems)


def _still_missing(storage: Any, task_id: str) -> list[str]:
    """A problem unless ``task_id`` has no record."""
    try:
        found = storage.retrieve("flow", "task", task_id)
    except MissingResultError:
        return []
    except Exception as exc:  # noqa: BLE001 - reported as the problem
        return [f"retrieve({task_id!r}) raised {type(exc).__name__}, not MissingResultError"]
    return [f"retrieve({task_id!r}) returned {_short(found)} for a record never stored"]


# -- 2. a call interrupted half-way by a BaseException --------------------------------------------

#: PostgreSQL through pg8000, whose I/O goes through the tapped sockets (psycopg's is libpq's, in C).
INTERRUPTED_BACKENDS = ["sqlite", "postgresql+pg8000", "mariadb", "redis", "mongo", "s3"]

#: Where to interrupt: at the start, the middle or the end of the call's request or of its reply.
POSITIONS: list[tuple[str, str]] = [
    ("send", "first"),
    ("send", "middle"),
    ("send", "last"),
    ("recv", "first"),
    ("recv", "middle"),
    ("recv", "last"),
]
SIZES = {"small": 100, "large": 8 * MiB}


def _soft_time_limit() -> BaseException:
    error: BaseException = SoftTimeLimitExceeded("soft time limit exceeded")
    return error


#: The errors raised mid-call: a BaseException, and Celery's soft time limit itself.
ERRORS: list[Callable[[], BaseException]] = [Interrupt, _soft_time_limit]


def scenarios(size: str) -> list[tuple[str, str, Callable[[], BaseException]]]:
    """(kind, where, error) to try; a large result is slow to move, so it gets one error per position."""
    if size == "small":
        return [(kind, where, error) for kind, where in POSITIONS for error in ERRORS]
    return [(kind, where, ERRORS[index % 2]) for index, (kind, where) in enumerate(POSITIONS)]


def _record(task_id: str, version: int, size: int) -> dict[str, Any]:
    return {"id": task_id, "version": version, "blob": task_id[0] * size}


@dataclass
class InterruptedCalls:
    """Calls of one operation on one record ("target"), each interrupted once, then every record read back.

    After a scenario that went wrong the storage is replaced by a new one, so that the next scenario
    starts in step and the test reports every scenario that goes wrong, not only the first.
    """

    new_storage: Callable[[], ManagedStorage]
    tap: Tap
    operation: str
    size: int
    expected: dict[str, list[Any]] = field(default_factory=dict)
    done: set[tuple[str, int, Callable[[], BaseException]]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.storage = self.new_storage()
        self.expected = {name: [_record(name, 0, 50)] for name in ("alice", "bob")}
        self.expected["target"] = [_record("target", 0, self.size)]
        for name, (value,) in self.expected.items():
            self.storage.store(None, "flow", "task", name, value)

    def call(self, value: dict[str, Any]) -> Any:
        if self.operation == "store":
            return self.storage.store(None, "flow", "task", "target", value)
        return self.storage.retrieve("flow", "task", "target")

    def scenario(self, number: int, kind: str, where: str, make_error: Callable[[], BaseException]) -> str:
        """Interrupt one call at the ``where`` of its ``kind``; what went wrong, or ""."""
        clean, interrupted = (_record("target", 2 * number + i, self.size) for i in (0, 1))
        self.tap.reset()
        outcome = self.call(clean)  # the clean run measures the call's request and reply
        if self.operation == "store":
            self.expected["target"] = [clean]
        elif outcome not in self.expected["target"]:
            return f"the clean {self.operation} returned {_short(outcome)}"
        total = self.tap.bytes_sent if kind == "send" else self.tap.bytes_received
        offset = self.tap.offsets(kind)[where]
        if (kind, offset, make_error) in self.done:
            return ""  # a short call: its first, middle and last offsets coincide
        self.done.add((kind, offset, make_error))
        error = make_error()
        self.tap.arm(kind, offset, error)
        what = f"{type(error).__name__} at byte {offset} of {total} {kind} by {self.operation}"
        try:
            self.call(interrupted)
        except type(error):
            pass
        else:
            return f"{what}: the call returned normally, the interruption was swallowed"
        finally:
            self.tap.reset()
        if self.operation == "store":
            self.expected["target"] = [clean, interrupted]  # either is right: the call may have been applied
        problems = read_back(self.storage, self.expected) or self._later_call_problems(number)
        return f"{what}: then {problems[0]}" if problems else ""

    def _later_call_problems(self, number: int) -> list[str]:
        later = _record("later", number, 10)
        self.storage.store(None, "flow", "task", "later", later)
        self.expected["later"] = [later]
        return read_back(self.storage, {"later": [later]})

    def run(self, scenarios: list[tuple[str, str, Callable[[], BaseException]]]) -> list[str]:
        """Every scenario; what went wrong in each that did."""
        problems = []
        for number, (kind, where, make_error) in enumerate(scenarios, start=1):
            try:
                problem = self.scenario(number, kind, where, make_error)
            except Exception as exc:  # noqa: BLE001 - a clean call that fails is reported like the rest
                problem = f"{kind} {where}: {type(exc).__name__}: {str(exc)[:200]}"
            if problem:
                problems.append(problem)
                self.storage = self.new_storage()  # start the next scenario in step
        return problems


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("operation", ["store", "retrieve"])
@pytest.mark.parametrize("backend", INTERRUPTED_BACKENDS)
def test_after_an_interrupted_call_every_record_reads_back_exactly(
    backend: str, operation: str, size: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str,
    tap: Tap,
) -> None:  # fmt: skip
    make = make_factory(backend, request, tmp_path, unique)
    calls = InterruptedCalls(lambda: managed_storage(make(), request), tap, operation, SIZES[size])
    problems = calls.run(scenarios(size))
    assert not problems, "\n".join(problems)


# -- 3. MariaDB compares task ids byte for byte ----------------------------------------------------

DISTINCT_IDS = [("Task-ABC", "task-abc"), ("abc", "abc "), ("café", "cafe")]


@pytest.mark.parametrize(("first", "second"), DISTINCT_IDS, ids=["case", "trailing-space", "accent"])
def test_mariadb_keeps_ids_that_differ_in_case_padding_or_accents_apart(
    first: str, second: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    storage = connected(make_factory("mariadb", request, tmp_path, unique)(), request)
    _assert_distinct(storage, first, second)


def _assert_distinct(storage: JsonStorage, first: str, second: str) -> None:
    storage.store(None, "flow", "task", first, {"id": first})
    storage.store(None, "flow", "task", second, {"id": second})
    assert read_back(storage, {first: [{"id": first}], second: [{"id": second}]}) == []
    storage.delete("flow", "task", first)
    assert storage.retrieve("flow", "task", second) == {"id": second}
    with pytest.raises(MissingResultError):
        storage.retrieve("flow", "task", first)


#: The results table as the previous version made it: task_id compared by a _ci collation.
OLD_TABLE = """
CREATE TABLE {table} (
    task_id VARCHAR(255) NOT NULL,
    flow_name VARCHAR(255),
    task_name VARCHAR(255),
    node_args JSON,
    result JSON,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (task_id)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci
"""


def test_mariadb_refuses_a_table_of_the_old_version_and_says_which_alter_table_fixes_it(
    mariadb_url: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    make = make_factory("mariadb", request, tmp_path, unique)
    engine = sa.create_engine(SqlStorage(mariadb_url).url, poolclass=sa.pool.NullPool)
    request.addfinalizer(engine.dispose)
    with engine.begin() as connection:
        connection.exec_driver_sql(OLD_TABLE.format(table=unique))
    adapter = make()
    with pytest.raises(StorageError) as caught:
        adapter.connect()
    message = str(caught.value)
    assert not isinstance(caught.value, StorageUnavailableError)
    assert "\n" not in message and unique in message, message
    assert not adapter.is_connected()
    statement = re.search(r"ALTER TABLE [^;'\"]+", message)
    assert statement is not None, f"no ALTER TABLE in: {message}"
    with engine.begin() as connection:
        connection.exec_driver_sql(statement.group(0).rstrip(" ."))
    _assert_distinct(connected(make(), request), "Task-ABC", "task-abc")


# -- 4. MongoDB: a task id is a value, never a query -----------------------------------------------

OPERATORS = [{"$gt": ""}, {"$regex": "^victim"}, {"$ne": "nothing"}]


@pytest.mark.parametrize("operator", OPERATORS, ids=["gt", "regex", "ne"])
def test_mongo_refuses_a_task_id_that_is_a_query_operator(
    operator: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    storage = connected(make_factory("mongo", request, tmp_path, unique)(), request)
    expected = {name: [{"id": name}] for name in ("victim-1", "other")}
    for name, (value,) in expected.items():
        storage.store(None, "flow", "task", name, value)
    outcomes = {}
    for operation in ("retrieve", "delete", "store"):
        call: Callable[..., Any] = getattr(storage, operation)
        arguments = (
            ("flow", "task", operator) if operation != "store" else (None, "flow", "task", operator, {})
        )
        try:
            outcomes[operation] = f"returned {_short(call(*arguments))}"
        except Exception as exc:  # noqa: BLE001 - the table below reports each outcome
            outcomes[operation] = "refused" if isinstance(exc, InvalidRecordError) else type(exc).__name__
    refused = {"retrieve": "refused", "delete": "refused", "store": "refused"}
    problems = read_back(storage, expected, keep_going=True)
    assert (outcomes, problems) == (refused, []), f"outcomes: {outcomes}; then: {problems}"
