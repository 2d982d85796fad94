"""Issue #10: records that cannot be stored, permanent failures and misuse fail once, clearly, before any I/O.

Reproducers against the real servers. "Before any I/O" is checked by counting what the test's thread
sends on any socket (``socket.socket.send``/``sendall``, which every driver's writes go through).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa

from celery_selinon_storage import errors, get_storage, open_storages
from celery_selinon_storage.errors import (
    ConfigurationError,
    MissingResultError,
    ResultNotSerializableError,
    ResultTooLargeError,
    StorageError,
    StorageUnavailableError,
)
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.s3 import S3Storage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.backends import adapter_factory
from tests.own_servers import OwnRedis

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Factory = Callable[[], JsonStorage]
MiB = 1024 * 1024


InvalidRecordError = errors.InvalidRecordError


# -- what the test's thread sends -----------------------------------------------------------------


@dataclass(repr=False)
class Sent:
    """Calls and bytes sent on any socket by one thread."""

    thread: int
    calls: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.calls = self.bytes = 0

    def __repr__(self) -> str:
        return f"sent {self.bytes:,} bytes in {self.calls} sends"


def _counting(sent: Sent, original: Callable[..., Any]) -> Callable[..., Any]:
    def send(sock: socket.socket, data: Any, *args: Any) -> Any:
        if threading.get_ident() == sent.thread:
            sent.calls += 1
            sent.bytes += memoryview(data).nbytes
        return original(sock, data, *args)

    return send


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    """Count what this thread sends (pymongo's monitor threads are not counted)."""
    counter = Sent(thread=threading.get_ident())
    for name in ("send", "sendall"):
        monkeypatch.setattr(socket.socket, name, _counting(counter, getattr(socket.socket, name)))
    return counter


# -- backends -------------------------------------------------------------------------------------

BACKENDS = ["memory", "sqlite", "postgresql", "mariadb", "redis", "mongo", "s3"]


def make_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Factory:
    """A new, unconnected adapter of ``backend`` on its real server, with names of this test's own."""
    return adapter_factory(backend, request, tmp_path, unique)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> Iterator[JsonStorage]:
    """A connected adapter holding one record, "kept", which must survive whatever the test does."""
    adapter = make_factory(backend, request, tmp_path, unique)()
    adapter.storage_name = "Results"
    adapter.connect()
    adapter.store(None, "flow", "task", "kept", {"kept": True})
    yield adapter
    adapter.disconnect()


def assert_still_works(storage: Any) -> None:
    """The earlier record reads back, and a new one stores and reads back."""
    assert storage.retrieve("flow", "task", "kept") == {"kept": True}
    storage.store(None, "flow", "task", "after", {"after": 1})
    assert storage.retrieve("flow", "task", "after") == {"after": 1}


# -- the error ------------------------------------------------------------------------------------


def test_invalid_record_error_is_the_base_of_the_errors_for_records_that_cannot_be_stored() -> None:
    assert hasattr(errors, "InvalidRecordError"), "celery_selinon_storage.errors has no InvalidRecordError"
    assert issubclass(InvalidRecordError, StorageError) and issubclass(InvalidRecordError, ValueError)
    assert issubclass(ResultNotSerializableError, InvalidRecordError)
    assert issubclass(ResultTooLargeError, InvalidRecordError)
    assert not issubclass(InvalidRecordError, StorageUnavailableError)


# -- ids and names: the same rules on every backend -----------------------------------------------

FIELDS = ("flow_name", "task_name", "task_id")
OPERATIONS = ("store", "retrieve", "delete")


def call(storage: Any, operation: str, flow_name: Any, task_name: Any, task_id: Any) -> Any:
    if operation == "store":
        return storage.store(None, flow_name, task_name, task_id, {"v": 1})
    return getattr(storage, operation)(flow_name, task_name, task_id)


def refusals(storage: Any, sent: Sent, values: dict[str, Any], fields: tuple[str, ...] = FIELDS) -> list[str]:
    """Each operation with each bad value in each field: one line per operation and field that let
    some value through, or refused it only after sending something."""
    problems = []
    for operation in OPERATIONS:
        for field in fields:
            outcomes = {
                label: _outcome(storage, sent, operation, field, value) for label, value in values.items()
            }
            wrong = [f"{label}: {outcome}" for label, outcome in outcomes.items() if outcome]
            if wrong:
                problems.append(f"{operation} with a bad {field} - " + "; ".join(wrong))
    return problems


def _outcome(storage: Any, sent: Sent, operation: str, field: str, value: Any) -> str:
    """What the call did; empty when it raised InvalidRecordError before sending anything."""
    arguments = {"flow_name": "flow", "task_name": "task", "task_id": "fine-id", field: value}
    sent.reset()
    try:
        return f"returned {call(storage, operation, **arguments)!r}"[:40]
    except InvalidRecordError:
        return "" if sent.calls == 0 else f"refused after sending {sent.bytes} bytes"
    except MissingResultError:
        return "MissingResultError"
    except Exception as exc:  # noqa: BLE001 - every other outcome is reported
        return f"{type(exc).__name__}: {str(exc)[:50]}"


NOT_TEXT: dict[str, Any] = {"dict": {"$gt": ""}, "int": 7, "bytes": b"fine-id", "None": None}


def test_ids_and_names_that_are_not_text_are_refused_before_any_io(storage: JsonStorage, sent: Sent) -> None:
    problems = refusals(storage, sent, NOT_TEXT)
    assert not problems, "\n".join(problems)
    assert_still_works(storage)


TOO_LONG: dict[str, Any] = {"256 x": "x" * 256, "256 é": "é" * 256, "1000 x": "x" * 1000}


def test_ids_and_names_over_255_characters_are_refused_before_any_io(
    storage: JsonStorage, sent: Sent
) -> None:
    problems = refusals(storage, sent, TOO_LONG)
    assert not problems, "\n".join(problems)
    assert_still_works(storage)


CONTROL: dict[str, Any] = {
    "NUL": "a\x00b",
    "CRLF": "a\r\nb",
    "TAB": "a\tb",
    "US": "a\x1fb",
    "DEL": "a\x7fb",
    "lone surrogate": "a\ud83db",
}


def test_control_characters_and_lone_surrogates_in_ids_and_names_are_refused_before_any_io(
    storage: JsonStorage, sent: Sent
) -> None:
    problems = refusals(storage, sent, CONTROL) + refusals(storage, sent, {"empty": ""}, ("task_id",))
    assert not problems, "\n".join(problems)
    assert_still_works(storage)


# the last three are not printable (str.isprintable) but hold no control character: accepted all the same
ACCEPTED_IDS = [
    "x" * 255,
    "é" * 255,
    "🐎" * 255,
    "Task-ABC",
    "a b",
    "ünïcödé-✓",
    "a\u00a0b",
    "a\u200bb",
    "a\u2028b",
]


def test_ids_and_names_of_up_to_255_characters_store_and_read_back(storage: JsonStorage) -> None:
    for number, text in enumerate(ACCEPTED_IDS):
        if isinstance(storage, S3Storage) and len(f"{storage.key_prefix}{text}.json".encode()) > 1024:
            # S3 keys hold at most 1,024 bytes: 255 four-byte characters do not fit, refused before I/O
            with pytest.raises(InvalidRecordError, match="S3 keys hold at most 1,024"):
                storage.store(None, text, text, text, {"n": number})
            continue
        storage.store(None, text, text, text, {"n": number})
        assert storage.retrieve(text, text, text) == {"n": number}, text[:20]
    assert_still_works(storage)


NON_ASCII_NAMES = [("flöw", "täsk"), ("流程", "任务"), ("🐎-flow", "task ✓")]


def test_non_ascii_flow_and_task_names_store_and_read_back(storage: JsonStorage) -> None:
    for number, (flow_name, task_name) in enumerate(NON_ASCII_NAMES):
        storage.store(None, flow_name, task_name, f"names-{number}", {"n": number})
        assert storage.retrieve(flow_name, task_name, f"names-{number}") == {"n": number}
        storage.delete(flow_name, task_name, f"names-{number}")


# -- results --------------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_result_nested_100000_deep_is_not_serializable(storage: JsonStorage, sent: Sent) -> None:
    deep = _nested(100_000)
    sent.reset()
    with pytest.raises(ResultNotSerializableError) as caught:
        storage.store(None, "flow", "task", "deep", deep)
    assert isinstance(caught.value, InvalidRecordError)
    assert sent.calls == 0
    with pytest.raises(MissingResultError):
        storage.retrieve("flow", "task", "deep")
    assert_still_works(storage)


NUL_RESULT = {"text": "before\x00after", "list": ["\x00"]}


def test_a_nul_character_in_a_result_round_trips(storage: JsonStorage) -> None:
    # PostgreSQL too: its json type keeps the text as written (only JSONB, of 0.1's tables, refuses U+0000)
    storage.store(None, "flow", "task", "nul", NUL_RESULT)
    assert storage.retrieve("flow", "task", "nul") == NUL_RESULT
    assert_still_works(storage)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_a_nul_in_a_task_id_is_refused_and_the_connection_stays_in_step(
    storage: JsonStorage, sent: Sent
) -> None:
    sent.reset()
    with pytest.raises(InvalidRecordError):
        storage.store(None, "flow", "task", "id\x00nul", {"v": 1})
    assert sent.calls == 0
    assert_still_works(storage)


# -- permanent failures: not "unavailable", tried once ---------------------------------------------


class PasswordRedis(OwnRedis):
    """A redis-server of the test's own that wants a password."""

    password = "the-right-password"

    def command(self) -> list[str]:
        return [*super().command(), "--requirepass", self.password]


class CountingRedisStorage(RedisStorage):
    """Counts its connection attempts."""

    connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


class CountingSqlStorage(SqlStorage):
    """Counts its connection attempts."""

    connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


def raised(do: Callable[[], Any]) -> BaseException | None:
    """The exception ``do()`` raised, or None."""
    try:
        do()
    except Exception as exc:  # noqa: BLE001 - the caller asserts which one
        return exc
    return None


def _managed(adapter: JsonStorage, request: pytest.FixtureRequest) -> ManagedStorage:
    adapter.storage_name = "Results"
    storage = ManagedStorage("Results", adapter, GuardKind.THREAD)
    request.addfinalizer(storage.shut_down)
    return storage


def test_a_wrong_redis_password_is_not_unavailable_and_is_tried_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with PasswordRedis(tmp_path) as server:
        admin = redis.Redis(port=server.port, password=PasswordRedis.password)
        request.addfinalizer(admin.close)
        before = _connections_received(admin)
        adapter = CountingRedisStorage(host="127.0.0.1", port=server.port, password="a-wrong-password")
        storage = _managed(adapter, request)
        with pytest.raises(Exception) as caught:  # which error is not decided, only what it is not
            storage.store(None, "flow", "task", "id-1", {"v": 1})
        connections = _connections_received(admin) - before
    tries = {"connect calls": adapter.connects, "connections the server received": connections}
    unavailable = isinstance(caught.value, StorageUnavailableError)
    assert (unavailable, *tries.values()) == (False, 1, 1), f"{caught.value!r}; {tries}"


def _connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_mariadb_access_denied_is_not_unavailable_and_is_tried_once(
    mariadb_url: str, request: pytest.FixtureRequest, unique: str
) -> None:
    parts = urlsplit(mariadb_url)
    url = parts._replace(netloc=f"css_nobody:wrong@{parts.hostname}:{parts.port or 3306}").geturl()
    adapter = CountingSqlStorage(url, table_name=unique)
    storage = _managed(adapter, request)
    with pytest.raises(Exception) as caught:  # which error is not decided, only what it is not
        storage.store(None, "flow", "task", "id-1", {"v": 1})
    unavailable = isinstance(caught.value, StorageUnavailableError)
    assert (unavailable, adapter.connects) == (False, 1), (
        f"{caught.value!r}; connect calls: {adapter.connects}"
    )
    # access denied: 1045, or 1698 where the server has no such user (MariaDB, unix_socket plugin)
    assert re.search(r"\b(1045|1698)\b", f"{caught.value} {caught.value.__cause__}")


def test_s3_a_flow_name_with_crlf_is_an_invalid_record_refused_before_any_io(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str, sent: Sent
) -> None:
    storage = _managed(make_factory("s3", request, tmp_path, unique)(), request)
    storage.connect()
    sent.reset()
    error = raised(lambda: storage.store(None, "flow\r\nX-Amz-Meta-Injected: 1", "task", "id-1", {"v": 1}))
    assert isinstance(error, InvalidRecordError) and sent.calls == 0, f"{error!r}; {sent}"
    storage.store(None, "flow", "task", "id-1", {"v": 1})
    assert storage.retrieve("flow", "task", "id-1") == {"v": 1}


def test_mariadb_a_result_beyond_max_allowed_packet_once_escaped_is_too_large_and_never_sent(
    mariadb_url: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, sent: Sent
) -> None:
    engine = sa.create_engine(SqlStorage(mariadb_url).url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        limit = int(connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
    engine.dispose()
    # n backslashes: 2n bytes of JSON (under the limit), 4n bytes once escaped in the statement (over it)
    backslashes = {"b": "\\" * (limit * 5 // 16)}
    storage = _managed(make_factory("mariadb", request, tmp_path, unique)(), request)
    storage.connect()
    storage.store(None, "flow", "task", "kept", {"kept": True})
    sent.reset()
    error = raised(lambda: storage.store(None, "flow", "task", "backslashes", backslashes))
    assert isinstance(error, ResultTooLargeError) and sent.bytes == 0, f"{error!r}; {sent}"
    assert isinstance(error, InvalidRecordError)
    assert_still_works(storage)


# -- misuse from task code ------------------------------------------------------------------------

STORAGES = """\
storages:
  - name: Memory
    classname: InMemoryStorage
  - name: Sql
    classname: SqlStorage
    configuration: {connection_string: "sqlite:///DB"}
"""


@pytest.mark.parametrize("method", ["disconnect", "close"])
@pytest.mark.parametrize("name", ["Memory", "Sql"])
def test_disconnect_or_close_from_task_code_is_refused_and_the_storage_keeps_working(
    name: str, method: str, tmp_path: Path
) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(STORAGES.replace("DB", str(tmp_path / "r.sqlite3")))
    with open_storages(path):
        storage = get_storage(name)
        storage.store(None, "flow", "task", "kept", {"kept": True})
        with pytest.raises(StorageError) as caught:
            getattr(storage, method)()
        assert "own" in str(caught.value).lower(), str(caught.value)
        assert not storage.closed and storage.is_connected()
        assert_still_works(get_storage(name))
    assert storage.closed


# -- configuration refused at load ----------------------------------------------------------------


def _load(tmp_path: Path, entry: str) -> Any:
    path = tmp_path / "storages.yml"
    path.write_text(f"storages:\n  - name: Results\n    classname: InMemoryStorage\n{entry}")
    return load_storages(path)


@pytest.mark.parametrize("max_records", [0, -1])
def test_in_memory_max_records_below_one_is_refused_at_load(max_records: int, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, f"    configuration: {{max_records: {max_records}}}\n")
    assert caught.value.option == "max_records" and "\n" not in str(caught.value)


RETRY_REFUSED = [
    ("backoff: 1.0e+308", "retry.backoff"),
    ("backoff: 60.5", "retry.backoff"),
    ("max_backoff: 61", "retry.max_backoff"),
    ("max_backoff: 1.0e+308", "retry.max_backoff"),
    ("attempts: 21", "retry.attempts"),
    ("attempts: 1000000", "retry.attempts"),
]


@pytest.mark.parametrize(("retry", "option"), RETRY_REFUSED, ids=[r for r, _ in RETRY_REFUSED])
def test_retry_values_out_of_range_are_refused_at_load(retry: str, option: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, f"    retry: {{{retry}}}\n")
    assert caught.value.option == option and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "retry", ["attempts: 20, backoff: 60, max_backoff: 60", "attempts: 1, backoff: 0, max_backoff: 0"]
)
def test_retry_values_at_the_limits_load(retry: str, tmp_path: Path) -> None:
    (spec,) = _load(tmp_path, f"    retry: {{{retry}}}\n")
    values = dict(item.split(": ") for item in retry.split(", "))
    assert spec.retry.attempts == int(values["attempts"])
    assert (spec.retry.backoff.base, spec.retry.backoff.cap) == (
        float(values["backoff"]),
        float(values["max_backoff"]),
    )
