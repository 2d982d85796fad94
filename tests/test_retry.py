"""Bounded retries with backoff around storage calls, configured per storage."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from celery_selinon_storage import ConfigurationError, StorageUnavailableError
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.retry import FullJitterBackoff, RetriesExhausted, RetryPolicy
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages.memory import InMemoryStorage
from celery_selinon_storage.storages.redis import RedisStorage


class FlakyStorage(InMemoryStorage):
    """Fails its first ``failures`` stores with ConnectionError; one connection, not concurrency-safe."""

    concurrency_safe = False

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()

    def store(self, *args: Any) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("server went away")
        return str(super().store(*args))


FAST = RetryPolicy(attempts=3, backoff=FullJitterBackoff(base=0.001, cap=0.002))


def managed(failures: int) -> ManagedStorage:
    storage = ManagedStorage("Flaky", FlakyStorage(failures), GuardKind.THREAD, FAST)
    storage.connect()
    return storage


def test_a_transient_failure_is_retried_on_a_new_connection() -> None:
    storage = managed(failures=2)
    assert storage.store(None, "f", "t", "id", [1]) == "id"
    adapter = storage.adapter
    assert isinstance(adapter, FlakyStorage) and adapter.connects == 3  # the first, then one per failure
    assert storage.stats["store"].calls == 1 and storage.stats["store"].errors == 0


def test_exhausted_retries_raise_storage_unavailable_naming_the_storage() -> None:
    storage = managed(failures=5)
    with pytest.raises(StorageUnavailableError) as caught:
        storage.store(None, "f", "t", "id", [1])
    assert str(caught.value) == (
        "storage 'Flaky' is unavailable (ConnectionError on store, 3 attempts); the call is safe to retry"
    )
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert storage.stats["store"].errors == 1


def test_other_errors_are_not_retried() -> None:
    storage = managed(failures=0)
    with pytest.raises(Exception, match="has no record"):
        storage.retrieve("f", "t", "missing")
    assert storage.adapter.connects == 1  # type: ignore[attr-defined]


def test_the_policy_stops_after_its_attempts_and_backs_off_within_its_cap() -> None:
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise TimeoutError

    with pytest.raises(RetriesExhausted) as caught:
        RetryPolicy(attempts=4, backoff=FullJitterBackoff(0.001, 0.001)).call(failing, lambda e: True)
    assert len(calls) == 4 and caught.value.attempts == 4
    backoff = FullJitterBackoff(base=0.1, cap=0.3)
    assert all(
        0 <= backoff.compute(n) <= min(0.3, 0.1 * 2 ** (n - 1)) for n in range(1, 8) for _ in range(50)
    )


def write(tmp_path: Path, retry: str) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(f"storages:\n  - name: M\n    classname: InMemoryStorage\n    retry: {retry}\n")
    return path


def test_retry_is_configured_per_storage(tmp_path: Path) -> None:
    [spec] = load_storages(write(tmp_path, "{attempts: 5, backoff: 0.2, max_backoff: 3}"))
    assert spec.retry == RetryPolicy(attempts=5, backoff=FullJitterBackoff(base=0.2, cap=3.0))


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        (
            "{attempts: 0}",
            "storage 'M', option 'retry.attempts': must be a whole number from 1 to 20; fix its value",
        ),
        (
            "{attempts: 2.5}",
            "storage 'M', option 'retry.attempts': must be a whole number from 1 to 20; fix its value",
        ),
        ("{backoff: -1}", "storage 'M', option 'retry.backoff': must be seconds from 0 to 60; fix its value"),
        # a delay too long to sleep (OverflowError in time.sleep) is refused when the file is read
        (
            "{backoff: 1e308}",
            "storage 'M', option 'retry.backoff': must be seconds from 0 to 60; fix its value",
        ),
        (
            "{max_backoff: .inf}",
            "storage 'M', option 'retry.max_backoff': must be seconds from 0 to 60; fix its value",
        ),
        (
            "{attempts: 1000000}",
            "storage 'M', option 'retry.attempts': must be a whole number from 1 to 20; fix its value",
        ),
        (
            "{tries: 3}",
            "storage 'M', option 'retry.tries': unknown retry option; 'retry:' takes: attempts, backoff, max_backoff",
        ),
        ("3", "storage 'M': 'retry:' must be a mapping with attempts, backoff and max_backoff"),
    ],
)
def test_bad_retry_settings_are_reported(tmp_path: Path, retry: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_storages(write(tmp_path, retry))
    assert str(caught.value).endswith(f":4: {message}")


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [("57P03", True), ("57P01", True), ("08006", True), ("53300", True), ("42601", False), ("23505", False)],
)
def test_sql_judges_pg8000_server_errors_by_their_sqlstate(sqlstate: str, transient: bool) -> None:
    """pg8000 reports "the database system is starting up" (57P03) as a plain ProgrammingError."""
    pg8000 = pytest.importorskip("pg8000.dbapi")
    sa = pytest.importorskip("sqlalchemy")
    from celery_selinon_storage.storages.sql import SqlStorage

    storage = SqlStorage("sqlite://")
    server_error = pg8000.ProgrammingError({"S": "FATAL", "C": sqlstate, "M": "..."})
    assert storage.is_transient(server_error) is transient
    assert storage.is_transient(sa.exc.ProgrammingError("SELECT 1", {}, server_error)) is transient
    assert storage.is_transient(sa.exc.OperationalError("SELECT 1", {}, Exception("gone")))
    assert not storage.is_transient(ValueError("not JSON"))


class OneConnectionStorage(InMemoryStorage):
    """One connection: a store in flight must never see it dropped. Stores of "fail" break it."""

    concurrency_safe = False

    def __init__(self) -> None:
        super().__init__()
        self.dropped_under_a_call = 0
        self.in_call = False

    def is_transient(self, error: BaseException) -> bool:
        time.sleep(0.01)  # asked after each failure: a slow answer widens the window for another call
        return isinstance(error, ConnectionError)

    def disconnect(self) -> None:
        self.dropped_under_a_call += self.in_call
        super().disconnect()

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        self.in_call = True
        try:
            if task_id.startswith("fail"):
                raise ConnectionError("server went away")
            time.sleep(0.05)
            return str(super().store(node_args, flow_name, task_name, task_id, result))
        finally:
            self.in_call = False


def test_a_failed_call_never_drops_the_connection_another_thread_is_using() -> None:
    adapter = OneConnectionStorage()
    storage = ManagedStorage("One", adapter, GuardKind.THREAD, FAST)
    storage.connect()

    stored: list[str] = []

    def store_many(prefix: str) -> None:
        for i in range(10):
            with contextlib.suppress(StorageUnavailableError):
                stored.append(storage.store(None, "f", "t", f"{prefix}{i}", i))

    threads = [threading.Thread(target=store_many, args=(prefix,)) for prefix in ("ok", "fail", "ok2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert adapter.dropped_under_a_call == 0
    assert sorted(stored) == sorted(f"{prefix}{i}" for prefix in ("ok", "ok2") for i in range(10))


def test_each_retry_is_logged_with_the_storage_its_target_the_attempt_and_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = managed(failures=2)
    with caplog.at_level(logging.WARNING, logger="celery_selinon_storage"):
        storage.store(None, "f", "t", "id", [1])
    retries = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [line.split("; retrying in ")[0] for line in retries] == [
        "storage 'Flaky' (FlakyStorage(max_records=None)): store failed with ConnectionError, attempt 1 of 3",
        "storage 'Flaky' (FlakyStorage(max_records=None)): store failed with ConnectionError, attempt 2 of 3",
    ]
    assert all(re.fullmatch(r".*; retrying in \d+\.\d{3} s", line) for line in retries)
    assert storage.stats["store"].as_dict()["retries"] == 2


def test_a_retry_log_line_shows_a_masked_target(caplog: pytest.LogCaptureFixture) -> None:
    adapter = RedisStorage(url="redis://:s3cret-pw@127.0.0.1:1/0", socket_connect_timeout=0.2)
    storage = ManagedStorage("Down", adapter, GuardKind.THREAD, FAST)
    with (
        caplog.at_level(logging.WARNING, logger="celery_selinon_storage"),
        pytest.raises(StorageUnavailableError),
    ):
        storage.store(None, "f", "t", "id", [1])
    assert "storage 'Down' (RedisStorage('redis://:***@127.0.0.1:1/0'" in caplog.text
    assert "attempt 2 of 3" in caplog.text and "s3cret-pw" not in caplog.text
