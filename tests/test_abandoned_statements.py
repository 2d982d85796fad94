"""A statement the storage gave up on never takes effect after its call has ended.

A call that times out (or is interrupted) drops its connection, but the server may still hold the
statement it was sent: here it waits behind a row lock another session holds. Once that lock goes, the
server would run the statement, long after the call raised and after later calls read the record. The
storage ends such a server session (and waits until it is gone) before its next call, so the caller's
``unavailable, safe to retry`` stays true: the statement ran before the call ended, or never.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from celery_selinon_storage.errors import MissingResultError, StorageUnavailableError
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.retry import FullJitterBackoff, RetryPolicy
from celery_selinon_storage.storages import abandoned_sessions
from celery_selinon_storage.storages.sql import SqlStorage
from tests.green_queries import with_driver

pytestmark = pytest.mark.service

FLOW, TASK = "flow", "task"
#: One try of one second: the call gives up while its statement waits on the lock.
ONE_SHORT_TRY = RetryPolicy(attempts=1, backoff=FullJitterBackoff(base=0.001, cap=0.01), timeout=1.0)

URLS: dict[str, tuple[str, str]] = {
    "postgresql-psycopg": ("postgres_url", "psycopg"),
    "postgresql-pg8000": ("postgres_url", "pg8000"),
    "mariadb-pymysql": ("mariadb_url", "pymysql"),
    "mariadb-mysqlclient": ("mariadb_url", "mysqldb"),
}


@pytest.fixture(params=sorted(URLS))
def url(request: pytest.FixtureRequest) -> str:
    fixture, driver = URLS[str(request.param)]
    found = str(request.getfixturevalue(fixture))
    return with_driver(found, driver)


@pytest.fixture
def storage(url: str, unique: str) -> Iterator[ManagedStorage]:
    managed = ManagedStorage("Results", SqlStorage(url, table_name=unique), GuardKind.THREAD, ONE_SHORT_TRY)
    managed.connect()
    yield managed
    managed.shut_down()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {unique}")
    engine.dispose()


def lock_row(url: str, table: str, task_id: str) -> Any:
    """Another session holding the record's row lock (in an open transaction): commit it to release."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    connection = engine.connect()
    transaction = connection.begin()
    quoted = "'" + task_id + "'"
    connection.exec_driver_sql(f"SELECT task_id FROM {table} WHERE task_id = {quoted} FOR UPDATE").all()
    return engine, connection, transaction


@pytest.mark.parametrize("operation", ["delete", "store"])
def test_a_statement_given_up_on_is_never_run_after_the_call_ended(
    storage: ManagedStorage, url: str, unique: str, operation: str
) -> None:
    storage.store({}, FLOW, TASK, "t1", {"v": 1})
    engine, locker, transaction = lock_row(url, unique, "t1")
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            if operation == "delete":
                storage.delete(FLOW, TASK, "t1")
            else:
                storage.store({}, FLOW, TASK, "t1", {"v": 2})
        assert time.monotonic() - started < 2.5
        before = storage.retrieve(FLOW, TASK, "t1")  # the next call: the abandoned statement is ended first
    finally:
        transaction.commit()  # the row lock goes: a statement still waiting on it would run now
        locker.close()
        engine.dispose()
    time.sleep(0.5)
    try:
        after = storage.retrieve(FLOW, TASK, "t1")
    except MissingResultError:
        after = None
    assert after == before, f"the record changed after the call that gave up: {before!r} -> {after!r}"
    assert before in ({"v": 1}, {"v": 2}, None)


def test_a_session_that_only_shares_the_number_of_an_abandoned_one_is_left_alone(url: str) -> None:
    """The server may give a dropped session's number to a later one (pids wrap, MariaDB restarts):
    that one is not ended."""
    dialect = sa.engine.make_url(url).get_backend_name()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    other = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    ender = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        key = abandoned_sessions.server_session(dialect, other)
        assert key is not None
        number, detail = key
        abandoned_sessions.end_sessions(ender, dialect, [(number, detail + "-an-earlier-one")], 2.0)
        assert other.exec_driver_sql("SELECT 1").scalar() == 1
        abandoned_sessions.end_sessions(ender, dialect, [key], 2.0)
        with pytest.raises(sa.exc.DBAPIError):
            other.exec_driver_sql("SELECT 1").scalar()
    finally:
        other.invalidate()
        ender.close()
        engine.dispose()


def test_a_server_without_the_session_views_connects_without_the_fence(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that speaks the protocol but has no ``pg_stat_activity`` or process list (some
    PostgreSQL- or MySQL-compatible servers): no session to end later, and the connection still works."""
    dialect = sa.engine.make_url(url).get_backend_name()
    family = "postgresql" if dialect == "postgresql" else "mysql"
    monkeypatch.setitem(abandoned_sessions._WHO_AM_I, family, "SELECT 1, 2 FROM css_no_such_view")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        assert abandoned_sessions.server_session(dialect, connection) is None
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        connection.close()
        engine.dispose()
