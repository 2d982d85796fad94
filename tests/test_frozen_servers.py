"""Issue #11: every storage call is bounded by a deadline, whatever the server does.

A server frozen with SIGSTOP (its whole process tree), a listener that accepts TCP and never answers,
a port that refuses, an SQLite database locked by another connection: the call must end with
``StorageUnavailableError`` within the deadline plus 1 s, and the same ``ManagedStorage`` must work once
the server answers again.

The deadline is asked for in one of two ways (most cases run both):

* ``driver-options``: the deadline (2 s) passed as the adapter's own timeout options, one try
  (``attempts: 1``): the adapter must hand them to its driver on every path (connect, handshake, read,
  write), and the driver must honour them.
* ``timeout-key``: only the storage entry's ``timeout: 2`` (seconds, next to ``retry:``), driver options
  left at their defaults, three tries: the deadline covers the whole call, retries and reconnects included.

A refused port is also tried exactly as many times as ``attempts`` says (no retry layer under ours).

The servers are the module's own (started once per module, never shared with other modules), so
freezing them disturbs no other test.
"""

from __future__ import annotations

import gc
import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celery_selinon_storage.errors import StorageUnavailableError
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.lifecycle import (
    DEFAULT_CONNECT_BUDGET,
    start_process_storages,
    stop_process_storages,
)
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.retry import FullJitterBackoff, RetryPolicy
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages import builtin_storage_class
from celery_selinon_storage.storages.base import JsonStorage
from tests.freezing import (
    Freezer,
    Outcome,
    OwnMariaDB,
    OwnMongoWire,
    OwnMoto,
    SilentListener,
    refused_port,
    start_call,
    thaw_quietly,
)
from tests.own_servers import OwnPostgres, OwnRedis, OwnServer
from tests.services import S3_KEYS

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

S = TypeVar("S", bound=OwnServer)

#: The deadline of every call in this module, in seconds.
DEADLINE = 2
#: How long a call may take: the deadline plus 1 s.
BOUND = DEADLINE + 1
#: How long a call that overran may take to end once the server answers again (or the listener closes).
SETTLE = 60

FLOW, TASK = "flow", "task"
ONE_TRY = RetryPolicy(attempts=1)
THREE_QUICK_TRIES = RetryPolicy(attempts=3, backoff=FullJitterBackoff(base=0.01, cap=0.05))


# -- backends -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """An adapter, its server, and its configuration with or without driver timeouts."""

    name: str
    classname: str
    server_fixture: str
    #: the URL of a server on 127.0.0.1 at a port
    url: Callable[[int], str]
    #: (url, unique name, driver timeout in seconds or None) -> the adapter's configuration
    configuration: Callable[[str, str, float | None], dict[str, Any]]
    #: whether each try opens one TCP connection (a pooled client with monitor threads does not)
    one_connection_per_try: bool = True
    #: whether the driver has an option of its own that bounds a read (psycopg has none: its reads are
    #: bounded by the entry's timeout: alone)
    bounds_reads_by_its_options: bool = True
    #: the driver connects through Python's socket.socket (libpq connects in C: its tries are counted as
    #: psycopg's connection attempts)
    connects_in_python: bool = True


def redis_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"url": url, "key_prefix": f"{unique}:"}
    if seconds is not None:
        options.update(socket_timeout=seconds, socket_connect_timeout=seconds)
    return options


def postgres_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": url, "table_name": unique}
    if seconds is not None:
        options["engine_options"] = {"connect_args": {"timeout": seconds}}  # pg8000: every socket operation
    return options


def psycopg_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": url, "table_name": unique}
    if seconds is not None:
        # libpq: the connect only, in whole seconds (psycopg has no read timeout)
        options["engine_options"] = {"connect_args": {"connect_timeout": seconds}}
    return options


def mariadb_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": url, "table_name": unique}
    if seconds is not None:
        # PyMySQL: connect_timeout covers the TCP connect only; the handshake is a read. mysqlclient: the
        # same names, in whole seconds
        timeouts = {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
        options["engine_options"] = {"connect_args": timeouts}
    return options


def sqlite_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": url, "table_name": unique}
    if seconds is not None:
        options["engine_options"] = {"connect_args": {"timeout": seconds}}  # sqlite3: the busy timeout
    return options


def mongo_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"uri": url, "db_name": unique, "collection_name": "results"}
    if seconds is not None:
        options["server_selection_timeout_ms"] = int(seconds * 1000)  # the only timeout it has
    return options


def s3_configuration(url: str, unique: str, seconds: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"endpoint_url": url, "bucket": unique, "region_name": "us-east-1", **S3_KEYS}
    if seconds is not None:
        options.update(connect_timeout=seconds, read_timeout=seconds)
    return options


BACKENDS = [
    Backend("redis", "RedisStorage", "own_redis", lambda port: f"redis://127.0.0.1:{port}/0",
            redis_configuration),
    Backend("postgres", "SqlStorage", "own_postgres",
            lambda port: f"postgresql+pg8000://postgres@127.0.0.1:{port}/postgres", postgres_configuration),
    Backend("postgres-psycopg", "SqlStorage", "own_postgres",
            lambda port: f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", psycopg_configuration,
            bounds_reads_by_its_options=False, connects_in_python=False),
    Backend("mariadb", "SqlStorage", "own_mariadb", lambda port: f"mysql+pymysql://root@127.0.0.1:{port}/test",
            mariadb_configuration),
    Backend("mariadb-mysqlclient", "SqlStorage", "own_mariadb",
            lambda port: f"mysql+mysqldb://root@127.0.0.1:{port}/test", mariadb_configuration,
            connects_in_python=False),
    Backend("mongo", "MongoStorage", "own_mongo", lambda port: f"mongodb://127.0.0.1:{port}",
            mongo_configuration, one_connection_per_try=False),
    Backend("s3", "S3Storage", "own_moto", lambda port: f"http://127.0.0.1:{port}", s3_configuration),
]  # fmt: skip
BACKEND_PARAMS = [pytest.param(backend, id=backend.name) for backend in BACKENDS]
COUNTED_PARAMS = [
    pytest.param(backend, id=backend.name) for backend in BACKENDS if backend.one_connection_per_try
]
SQLITE = Backend("sqlite", "SqlStorage", "", lambda _: "", sqlite_configuration)


# -- the two ways of asking for a deadline ------------------------------------------------------------


def with_driver_options(backend: Backend, url: str, unique: str, tmp_path: Path) -> ManagedStorage:
    """The deadline as the adapter's driver timeouts, one try."""
    adapter = builtin_storage_class(backend.classname)(**backend.configuration(url, unique, DEADLINE))
    assert isinstance(adapter, JsonStorage)
    adapter.storage_name = "Results"
    return ManagedStorage("Results", adapter, GuardKind.THREAD, ONE_TRY)


def with_timeout_key(backend: Backend, url: str, unique: str, tmp_path: Path) -> ManagedStorage:
    """The deadline as the entry's ``timeout:`` alone (driver options left at their defaults), three tries."""
    entry = {
        "name": "Results",
        "classname": backend.classname,
        "timeout": DEADLINE,
        "retry": {"attempts": 3},
        "configuration": backend.configuration(url, unique, None),
    }
    path = tmp_path / "storages.yml"
    path.write_text(json.dumps({"storages": [entry]}, indent=2))  # JSON is YAML
    [spec] = load_storages(path)
    return ManagedStorage(spec.name, spec.create(), GuardKind.THREAD, spec.retry)


Variant = Callable[[Backend, str, str, Path], ManagedStorage]
Later = Callable[[ManagedStorage], ManagedStorage]
VARIANTS = [
    pytest.param(with_driver_options, id="driver-options"),
    pytest.param(with_timeout_key, id="timeout-key"),
]
#: A call frozen mid-exchange: only a driver with a read timeout of its own can be bounded by its options.
MID_CALL_PARAMS = [
    pytest.param(backend, variant.values[0], id=f"{variant.id}-{backend.name}")
    for backend in BACKENDS
    for variant in VARIANTS
    if backend.bounds_reads_by_its_options or variant.id != "driver-options"
]


# -- servers of this module's own ---------------------------------------------------------------------


def _serve(server: S) -> Iterator[S]:
    with server:
        try:
            yield server
        finally:
            thaw_quietly(server)  # a stopped process cannot act on SIGTERM


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    yield from _serve(OwnRedis(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    yield from _serve(OwnPostgres(tmp_path_factory.mktemp("postgres")))


@pytest.fixture(scope="module")
def own_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMariaDB]:
    yield from _serve(OwnMariaDB(tmp_path_factory.mktemp("mariadb")))


@pytest.fixture(scope="module")
def own_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMongoWire]:
    yield from _serve(OwnMongoWire(tmp_path_factory.mktemp("mongo")))


@pytest.fixture(scope="module")
def own_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMoto]:
    yield from _serve(OwnMoto(tmp_path_factory.mktemp("moto")))


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """A socket a failed call left unclosed is reported (ResourceWarning) by the test that left it, not
    by whichever later test happens to run the garbage collector."""
    yield
    gc.collect()


@pytest.fixture
def shut_down_later() -> Iterator[Later]:
    """Register a storage to be shut down at the end of the test (clients hold sockets and threads)."""
    made: list[ManagedStorage] = []

    def register(storage: ManagedStorage) -> ManagedStorage:
        made.append(storage)
        return storage

    yield register
    for storage in made:
        storage.shut_down(timeout=SETTLE)


@pytest.fixture
def freezer() -> Iterator[Freezer]:
    """Freezes servers; whatever is still frozen at the end of the test is thawed."""
    freezer = Freezer()
    yield freezer
    freezer.close()


def own_server(request: pytest.FixtureRequest, backend: Backend) -> Any:
    """The module's own server for ``backend`` (started on first use)."""
    return request.getfixturevalue(backend.server_fixture)


# -- checks -------------------------------------------------------------------------------------------


def assert_unavailable_in_time(call: Outcome, ended_in_time: bool, what: str) -> None:
    """The call ended within the bound, with ``StorageUnavailableError`` naming the storage."""
    assert ended_in_time, (
        f"{what}: the call was still running after {BOUND} s; once the server was back it {call.describe()}"
    )
    assert isinstance(call.error, StorageUnavailableError), f"{what}: {call.describe()}"
    assert str(call.error).startswith("storage 'Results' is unavailable (")


def settle(call: Outcome) -> None:
    """Wait for a call that may have overran to end, now that the server answers or the listener is gone
    (a call still holding the storage's guard would block the next one)."""
    assert call.wait(SETTLE), f"the call did not end even after the server was back: {call.describe()}"


def store(storage: ManagedStorage, task_id: str, result: Any) -> Callable[[], Any]:
    return lambda: storage.store(None, FLOW, TASK, task_id, result)


# -- a frozen server ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "variant"), MID_CALL_PARAMS)
def test_a_call_to_a_frozen_server_ends_within_the_deadline_and_the_storage_then_works(
    backend: Backend, variant: Variant, request: pytest.FixtureRequest, freezer: Freezer, unique: str,
    tmp_path: Path, shut_down_later: Later,
) -> None:  # fmt: skip
    server = own_server(request, backend)
    storage = shut_down_later(variant(backend, backend.url(server.port), unique, tmp_path))
    storage.connect()
    storage.store(None, FLOW, TASK, "before", {"n": 1})
    with freezer.frozen(server):
        call = start_call(store(storage, "while-frozen", {"n": 2}))
        ended_in_time = call.wait(BOUND)
    settle(call)
    assert_unavailable_in_time(call, ended_in_time, f"{backend.name} frozen with SIGSTOP")
    storage.store(None, FLOW, TASK, "after", {"n": 3})  # the same instance, once the server is back
    assert storage.retrieve(FLOW, TASK, "before") == {"n": 1}
    assert storage.retrieve(FLOW, TASK, "after") == {"n": 3}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_first_call_to_a_frozen_server_ends_within_the_deadline_and_then_connects(
    backend: Backend, variant: Variant, request: pytest.FixtureRequest, freezer: Freezer, unique: str,
    tmp_path: Path, shut_down_later: Later,
) -> None:  # fmt: skip
    """The connect path: the kernel completes the handshake of a frozen server, which then says nothing."""
    server = own_server(request, backend)
    storage = shut_down_later(variant(backend, backend.url(server.port), unique, tmp_path))
    with freezer.frozen(server):
        call = start_call(store(storage, "while-frozen", {"n": 1}))
        ended_in_time = call.wait(BOUND)
    settle(call)
    assert_unavailable_in_time(call, ended_in_time, f"first call, {backend.name} frozen with SIGSTOP")
    storage.store(None, FLOW, TASK, "after", {"n": 2})
    assert storage.retrieve(FLOW, TASK, "after") == {"n": 2}


# -- a listener that never answers --------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_connecting_to_a_listener_that_never_answers_ends_within_the_deadline(
    backend: Backend, variant: Variant, unique: str, tmp_path: Path, shut_down_later: Later
) -> None:
    with SilentListener() as listener:
        storage = shut_down_later(variant(backend, backend.url(listener.port), unique, tmp_path))
        call = start_call(store(storage, "silent", {"n": 1}))
        ended_in_time = call.wait(BOUND)
        accepted = listener.accepted
    settle(call)  # closing the listener ends a call that overran
    assert_unavailable_in_time(call, ended_in_time, f"{backend.name} behind a silent listener")
    assert accepted >= 1, "the adapter never connected: the test proved nothing"
    if backend.one_connection_per_try and storage.retry.attempts == 1:
        assert accepted == 1, f"one try made {accepted} connections: a retry layer under the storage's own"


# -- a refused port -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", COUNTED_PARAMS)
def test_a_refused_port_is_tried_exactly_as_many_times_as_attempts_says(
    backend: Backend, unique: str, monkeypatch: pytest.MonkeyPatch, shut_down_later: Later
) -> None:
    """``attempts: 3`` means three connections, not three times the driver's own retries."""
    with refused_port() as port:
        tries = count_connects(monkeypatch, port, backend)
        adapter = builtin_storage_class(backend.classname)(
            **backend.configuration(backend.url(port), unique, DEADLINE)
        )
        storage = shut_down_later(ManagedStorage("Results", adapter, GuardKind.THREAD, THREE_QUICK_TRIES))
        call = start_call(store(storage, "refused", {"n": 1}))
        ended_in_time = call.wait(BOUND)
        settle(call)
    assert_unavailable_in_time(call, ended_in_time, f"{backend.name} on a refused port")
    assert ", 3 attempts)" in str(call.error)
    assert tries == [port] * 3, f"3 attempts made {len(tries)} connections"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_refused_port_fails_within_the_deadline(
    backend: Backend, unique: str, tmp_path: Path, shut_down_later: Later
) -> None:
    """Whatever the driver does about a refused port (pymongo keeps selecting a server), ``timeout:`` holds."""
    with refused_port() as port:
        storage = shut_down_later(with_timeout_key(backend, backend.url(port), unique, tmp_path))
        call = start_call(store(storage, "refused", {"n": 1}))
        ended_in_time = call.wait(BOUND)
        settle(call)
    assert_unavailable_in_time(call, ended_in_time, f"{backend.name} on a refused port")


def count_connects(monkeypatch: pytest.MonkeyPatch, port: int, backend: Backend) -> list[int]:
    """One entry per TCP connection any thread starts to ``port`` from now on (filled as they happen);
    the connections themselves are real. libpq connects in C: psycopg's connection attempts are counted
    (each one a connect by libpq)."""
    seen: list[int] = []
    if backend.name == "mariadb-mysqlclient":
        return count_mysqlclient_attempts(monkeypatch, port, seen)
    if not backend.connects_in_python:
        return count_psycopg_attempts(monkeypatch, port, seen)
    original = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
            seen.append(port)
        original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def count_mysqlclient_attempts(monkeypatch: pytest.MonkeyPatch, port: int, seen: list[int]) -> list[int]:
    """mysqlclient connects in C: each ``MySQLdb.connect`` to ``port`` is one connection."""
    import MySQLdb

    original = MySQLdb.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("port") == port:
            seen.append(port)
        return original(*args, **kwargs)

    monkeypatch.setattr(MySQLdb, "connect", connect)
    return seen


def count_psycopg_attempts(monkeypatch: pytest.MonkeyPatch, port: int, seen: list[int]) -> list[int]:
    from psycopg.conninfo import conninfo_to_dict

    from celery_selinon_storage.storages.psycopg_deadlines import DeadlineConnection

    original = DeadlineConnection._connect_gen.__func__  # type: ignore[attr-defined]

    def attempt(cls: type[DeadlineConnection], conninfo: str = "", *args: Any, **kwargs: Any) -> Any:
        if str(conninfo_to_dict(conninfo).get("port")) == str(port):
            seen.append(port)
        return original(cls, conninfo, *args, **kwargs)

    monkeypatch.setattr(DeadlineConnection, "_connect_gen", classmethod(attempt))
    return seen


# -- SQLite: a database locked by another connection --------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_call_on_a_locked_sqlite_database_ends_within_the_deadline_and_the_storage_then_works(
    variant: Variant, unique: str, tmp_path: Path, shut_down_later: Later
) -> None:
    """SQLite waits for a lock as long as its busy timeout: that wait is bounded by the deadline too."""
    database = tmp_path / "results.db"
    storage = shut_down_later(variant(SQLITE, f"sqlite:///{database}", unique, tmp_path))
    storage.connect()
    storage.store(None, FLOW, TASK, "before", {"n": 1})
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock (a frozen worker, say)
        call = start_call(store(storage, "while-locked", {"n": 2}))
        ended_in_time = call.wait(BOUND)
        holder.execute("COMMIT")
    finally:
        holder.close()
    settle(call)
    assert_unavailable_in_time(call, ended_in_time, "SQLite locked by another connection")
    storage.store(None, FLOW, TASK, "after", {"n": 3})
    assert storage.retrieve(FLOW, TASK, "before") == {"n": 1}
    assert storage.retrieve(FLOW, TASK, "after") == {"n": 3}


# -- start-up and shutdown ----------------------------------------------------------------------------


def test_a_silent_storage_delays_neither_the_others_nor_the_start(tmp_path: Path, unique: str) -> None:
    """Storages connect side by side: the one behind a silent listener is listed first and its connect
    waits 3 s (``timeout: 9``, 3 tries), longer than start-up waits; the SQLite one is connected when
    start-up returns (before, it waited for the silent one's connect to time out)."""
    silent_url = "postgresql://postgres@127.0.0.1:{port}/x"
    with SilentListener() as listener:
        specs = [
            spec_of(tmp_path, "Silent", 9, {"connection_string": silent_url.format(port=listener.port)}),
            spec_of(tmp_path, "Local", DEADLINE, {"connection_string": f"sqlite:///{tmp_path / 'local.db'}"}),
        ]
        started = time.monotonic()
        storages = start_process_storages(specs, GuardKind.THREAD)
        took = time.monotonic() - started
        local_connected = storages.get("Local").is_connected()
        silent_connected = storages.get("Silent").is_connected()
    closing = time.monotonic()
    stop_process_storages()  # the listener is gone: the silent storage's connect has failed by now
    closed_in = time.monotonic() - closing
    assert local_connected, "the SQLite storage waited for the silent one"
    assert not silent_connected
    # waiting for the silent storage would take its 3 s; the slack is for a loaded machine
    assert took < DEFAULT_CONNECT_BUDGET + 0.9, f"start-up took {took:.1f} s"
    assert closed_in < 1, f"closing took {closed_in:.1f} s"


def spec_of(tmp_path: Path, name: str, timeout: float, configuration: dict[str, Any]) -> Any:
    """The checked spec of an SqlStorage entry, loaded from a file as the worker does."""
    entry = {"name": name, "classname": "SqlStorage", "timeout": timeout, "configuration": configuration}
    path = tmp_path / f"{name}.yml"
    path.write_text(json.dumps({"storages": [entry]}))
    [spec] = load_storages(path)
    return spec
