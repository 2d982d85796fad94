"""A built-in adapter on each kind of real server, as the registry describes it, for the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from celery_selinon_storage.storages import BUILTIN_STORAGES, builtin_storage_class
from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.green_queries import with_driver
from tests.services import S3_KEYS

Factory = Callable[[], JsonStorage]

#: A kind of server through a driver other than its default, as ``kind+driver``: PostgreSQL's default is
#: psycopg, and pg8000 where eventlet's monkey-patching is active.
OTHER_DRIVERS = [("SqlStorage", "postgresql+pg8000")]

#: Every built-in adapter on every kind of server its registry entry names, as (class name, server), and
#: the other drivers.
CASES = [
    *((name, server) for name, builtin in BUILTIN_STORAGES.items() for server in builtin.servers),
    *OTHER_DRIVERS,
]

#: Kind of server -> the built-in adapter that runs on it.
ADAPTER_ON = {server: name for name, server in CASES}

#: Where each kind of server is: a fixture of conftest.py (sqlite, memory and filesystem need none).
_SERVER_FIXTURES = {
    "postgresql": "postgres_url",
    "mariadb": "mariadb_url",
    "redis": "redis_url",
    "mongo": "mongo_uri",
    "s3": "s3_endpoint",
}
_SQL_SERVERS = ("sqlite", "postgresql", "mariadb")


def server_url(server: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a server of that kind for this test (a file of its own for SQLite), with the driver that
    ``kind+driver`` names."""
    if server == "memory":
        return "memory://"
    if server == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite3'}"
    if server == "filesystem":
        return str(tmp_path / "files")
    kind, _, driver = server.partition("+")
    url = str(request.getfixturevalue(_SERVER_FIXTURES[kind]))
    return with_driver(url, driver) if driver else url


def adapter_factory(
    server: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, **options: Any
) -> Factory:
    """New, unconnected adapters on a real server of that kind, their records under ``unique`` (dropped at
    the end of the test), with ``options`` added to the registry's."""
    name = ADAPTER_ON[server]
    url = server_url(server, request, tmp_path)
    kind = server.partition("+")[0]
    configuration = {**BUILTIN_STORAGES[name].servers[kind](url, unique), **options}
    if kind in _SQL_SERVERS:
        request.addfinalizer(lambda: drop_table(url, unique))
    if server == "s3":  # boto3 reads the keys from the environment
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEYS["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_KEYS["aws_secret_access_key"])
    cls = builtin_storage_class(name)
    return lambda: cls(**configuration)  # type: ignore[no-any-return]


def drop_table(url: str, table: str) -> None:
    """Drop a results table a test made."""
    engine = sa.create_engine(SqlStorage(url).url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
