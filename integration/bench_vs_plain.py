"""Each built-in adapter against the fastest plain client for its backend, side by side in one process.

For every backend, the same record (a ~200-byte JSON result, then a 64 KB one) is stored (an upsert by
task id, always replacing: every side writes its records once, untimed, first) and retrieved (fetched
and decoded) by:

- the plain clients a user would otherwise write the same upsert and get with (psycopg 3 and pg8000;
  mysqlclient and PyMySQL; sqlite3; redis-py with and without hiredis; pymongo; boto3); a SQL server's
  plain client runs on the connection of the adapter on its driver (see ``SqlSides``); the fastest plain
  client is the one with the least CPU time per call (see ``fastest_plain``);
- the adapter, once per driver, the default URL marked "default";
- ``ManagedStorage`` over that adapter (what tasks call: the prefork guard, the retry policy, counters);
- peers: Celery's result backends (``backend.store_result`` and ``backend.get_task_meta``), and
  Selinon 1.4's own adapters, run by ``bench_selinon14`` in the venv ``.venv-selinon14`` (skipped when
  that venv is absent) and driven from here, so that their batches alternate with the rest.

A round runs one short batch on every side in turn (who goes first rotates); each side's ops/s is the
median of its batches', and each ratio the median of the rounds' ratios (side/reference in the same
round). Also printed: this process's CPU time per call (the client's own work). Exits 1
when an adapter falls below 0.95x the fastest plain client, counting the adapter as configured by default
and the adapter on that fastest client's driver (ManagedStorage over them is reported, not held to it).

Each backend takes about a minute on a quiet 2-core machine; run them apart (--only) to keep a run short:

python -m integration.bench_vs_plain [--passes 2] [--scale 1.0] [--only postgresql,redis]
    [--json integration/results/bench_vs_plain-pg.json] [--chart docs/benchmarks-vs-plain.png]
python -m integration.bench_vs_plain --replot integration/results/bench_vs_plain-*.json --chart docs/...png
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import psycopg
import psycopg.sql
import pymongo
import pymysql
import redis
import redis.utils
from celery import Celery, states
from redis._parsers import _RESP2Parser

from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.mongo import MongoStorage
from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.s3 import S3Storage
from celery_selinon_storage.storages.sql import SqlStorage
from integration import charts
from integration.bench_selinon14 import encoded_size, records
from integration.cpu_pinning import CpuPinning
from tests.servers import mongo_wire_server, s3_server

ROOT = Path(__file__).resolve().parent.parent
#: a database of the benchmark's own (made when absent): Celery's index names are the same for every table
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/bench")
MARIADB = os.environ.get("BENCH_MARIADB", "mysql://root@127.0.0.1:3306/test")
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 9
#: a PgBouncer in transaction mode in front of POSTGRES's server, for SqlStorage through it (optional)
PGBOUNCER = os.environ.get("BENCH_PGBOUNCER", "")
#: the Python of a venv with Selinon 1.4 and its drivers (see bench_selinon14)
SELINON14_PYTHON = Path(os.environ.get("BENCH_SELINON14_PYTHON", ROOT / ".venv-selinon14" / "bin" / "python"))
FLOW, TASK = "bench_flow", "bench_task"
RECORDS = records()
#: below this ratio to the fastest plain client, an adapter fails the benchmark
THRESHOLD = 0.95
#: What the plain clients encode with: the adapters' bytes (compact, UTF-8), through an encoder built once,
#: as a careful user writes it (json.dumps with options builds an encoder per call).
compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Side:
    """One contender: stores and retrieves records by task id, timed in batches."""

    def __init__(
        self,
        label: str,
        role: str,
        driver: str,
        store: Callable[[str, Any], object] | None = None,
        retrieve: Callable[[str], Any] | None = None,
        *,
        close: Callable[[], object] | None = None,
        default: bool = False,
        share: float = 1.0,
    ) -> None:
        self.label = label
        #: plain, adapter, managed, celery or selinon14
        self.role = role
        #: the client library it runs on, to compare an adapter with the plain client of its own driver
        self.driver = driver
        self.default = default
        #: the share of the rounds it runs in (a slow peer sits some out; its rate is per call all the same)
        self.share = share
        self._store, self._retrieve, self._close = store, retrieve, close

    def prepare(self, payload: str, ids: list[str]) -> None:
        """Write every record once, untimed, and check that a few come back equal."""
        assert self._store is not None and self._retrieve is not None
        record = RECORDS[payload]
        for task_id in ids:
            self._store(task_id, record)
        for task_id in ids[:10]:
            if self._retrieve(task_id) != record:
                raise SystemExit(f"{self.label} gave back another record for {task_id!r}")

    def run(self, operation: str, payload: str, ids: list[str]) -> tuple[float, float]:
        """Wall-clock and CPU seconds (this process's) for one store or one retrieve of each id."""
        assert self._store is not None and self._retrieve is not None
        record, store, retrieve = RECORDS[payload], self._store, self._retrieve
        started, cpu = time.perf_counter(), time.process_time()
        if operation == "store":
            for task_id in ids:
                store(task_id, record)
        else:
            for task_id in ids:
                retrieve(task_id)
        return time.perf_counter() - started, time.process_time() - cpu

    def collect(self) -> None:
        """Run the garbage collector where the side runs (this process collects for its own sides)."""

    def close(self) -> None:
        if self._close is not None:
            self._close()


class Selinon14Side(Side):
    """A Selinon 1.4 adapter in ``bench_selinon14 --serve``, run in its own venv, one command at a time."""

    def __init__(
        self,
        backend: str,
        options: dict[str, Any],
        driver: str,
        share: float = 1.0,
        python: Path = SELINON14_PYTHON,
    ) -> None:
        super().__init__(f"Selinon 1.4 {backend} adapter", "selinon14", driver, share=share)
        self.process = subprocess.Popen(
            [str(python), "-m", "integration.bench_selinon14", "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "SQLALCHEMY_SILENCE_UBER_WARNING": "1"},
        )
        self.versions: dict[str, str] = self._ask(command="open", backend=backend, options=options)[
            "versions"
        ]

    def _ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"bench_selinon14 stopped on {command['command']!r} (its error is above)")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def prepare(self, payload: str, ids: list[str]) -> None:
        self._ask(command="prepare", payload=payload, ids=ids)

    def run(self, operation: str, payload: str, ids: list[str]) -> tuple[float, float]:
        reply = self._ask(command="run", operation=operation, payload=payload, ids=ids)
        return float(reply["seconds"]), float(reply["cpu"])

    def collect(self) -> None:
        self._ask(command="collect")

    def close(self) -> None:
        self._ask(command="close")
        self.process.wait(30)


# -- sides -----------------------------------------------------------------------------------


def adapter_sides(
    adapter: JsonStorage, label: str, driver: str, default: bool, managed_too: bool = True
) -> list[Side]:
    """The adapter called directly, and through ManagedStorage with the guard prefork gives it."""
    adapter.connect()
    bare = Side(label, "adapter", driver,
                lambda i, r: adapter.store(None, FLOW, TASK, i, r), lambda i: adapter.retrieve(FLOW, TASK, i),
                close=adapter.disconnect, default=default)  # fmt: skip
    if not managed_too:
        return [bare]
    managed = ManagedStorage(f"bench {label}", adapter, GuardKind.THREAD)
    managed.connect()
    return [
        bare,
        Side(f"ManagedStorage({label})", "managed", driver,
             lambda i, r: managed.store(None, FLOW, TASK, i, r), lambda i: managed.retrieve(FLOW, TASK, i),
             close=managed.shut_down, default=default),
    ]  # fmt: skip


def control(make: Callable[[], Side]) -> Iterator[Side]:
    """The plain client, and a second instance of it: the spread of the ratio of two equal sides is the
    noise floor of the run."""
    yield make()
    twin = make()
    twin.label, twin.role = f"{twin.label}, again (control)", "control"
    yield twin


def plain_sql(
    label: str, driver: str, connection: Any, upsert: str, select: str, *, own: bool = True
) -> Side:
    """A DBAPI connection in autocommit running a hand-written upsert and select (``own``: closed at the end;
    else an adapter's, which the adapter closes)."""
    cursor = connection.cursor()

    def store(task_id: str, result: Any) -> None:
        cursor.execute(upsert, (task_id, FLOW, TASK, "null", compact_json(result)))

    def retrieve(task_id: str) -> Any:
        cursor.execute(select, (task_id,))
        return json.loads(cursor.fetchone()[0])

    return Side(label, "plain", driver, store, retrieve, close=connection.close if own else None)


class SqlSides:
    """SqlStorage on each driver (the URL names it; the default URL's marked), and the plain client of
    each driver on that adapter's own connection.

    A server with a thread or a process per connection (MariaDB, PostgreSQL) serves identical connections
    at different speeds, by where the scheduler runs that thread: five fresh mysqlclient connections on
    this 2-core machine took 41 to 100 µs a read, each steadily. Sharing the adapter's connection leaves
    only the client's own work to compare.
    """

    def __init__(self, url: str, table: str, drivers: list[str]) -> None:
        dialect = url.split("://", 1)[0]
        default_driver = SqlStorage(url, table_name=table).url.get_driver_name()
        self.adapters: dict[str, SqlStorage] = {}
        self.sides: list[Side] = []
        for driver in drivers:
            is_default = driver == default_driver
            shown = f"{dialect}:// (default: {driver})" if is_default else f"{dialect}+{driver}://"
            storage = SqlStorage(url.replace("://", f"+{driver}://", 1), table_name=table)
            self.sides += adapter_sides(storage, f"SqlStorage {shown}", driver, is_default)
            self.adapters[driver] = storage

    def plain(self, label: str, driver: str, upsert: str, select: str) -> Side:
        """The plain client of ``driver``, on the connection of the adapter on that driver."""
        connection = self.adapters[driver]._handle.driver_connection
        return plain_sql(label, driver, connection, upsert, select, own=False)


def postgresql_variants(table: str) -> Iterator[Side]:
    """SqlStorage configured for PgBouncer's transaction mode, not held to the threshold: psycopg without
    server-side prepared statements (PgBouncer before 1.21 cannot keep them), directly and, when
    BENCH_PGBOUNCER names one, through PgBouncer, like pg8000 (whose statements are unnamed)."""
    unprepared = {"connect_args": {"prepare_threshold": None}}
    psycopg_url = POSTGRES.replace("://", "+psycopg://", 1)
    variants = [
        (
            SqlStorage(psycopg_url, table_name=table, engine_options=unprepared),
            "psycopg, prepare_threshold: null",
        )
    ]
    if PGBOUNCER:
        variants += [
            (SqlStorage(PGBOUNCER.replace("://", "+psycopg://", 1), table_name=table, engine_options=unprepared),
             "psycopg, prepare_threshold: null, through PgBouncer"),
            (SqlStorage(PGBOUNCER.replace("://", "+pg8000://", 1), table_name=table), "pg8000, through PgBouncer"),
        ]  # fmt: skip
    for storage, label in variants:
        (side,) = adapter_sides(storage, f"SqlStorage ({label})", label, False, managed_too=False)
        side.role = "variant"
        yield side


def _server_conninfo(url: str, database: str) -> dict[str, Any]:
    where = urlsplit(url)
    return {"host": where.hostname, "port": where.port or 5432, "user": where.username, "dbname": database}


def ensure_database(url: str) -> None:
    """Create the URL's PostgreSQL database unless it exists."""
    name = urlsplit(url).path[1:]
    with psycopg.connect(**_server_conninfo(url, "postgres"), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def postgresql_sides(table: str, tag: str, stack: ExitStack) -> Iterator[Side]:
    ensure_database(POSTGRES)
    upsert = (
        f"INSERT INTO {table} (task_id, flow_name, task_name, node_args, result) VALUES (%s, %s, %s, CAST(%s AS JSON), CAST(%s AS JSON)) "
        "ON CONFLICT (task_id) DO UPDATE SET flow_name = excluded.flow_name, task_name = excluded.task_name, "
        "node_args = excluded.node_args, result = excluded.result, updated_at = now()"
    )
    select = f"SELECT CAST(result AS TEXT) FROM {table} WHERE task_id = %s"
    # the adapters first: they create the table
    sql = SqlSides(POSTGRES, table, ["psycopg", "pg8000"])
    yield from sql.sides
    yield from postgresql_variants(table)
    yield from control(lambda: sql.plain("psycopg 3", "psycopg", upsert, select))
    yield sql.plain("pg8000", "pg8000", upsert, select)
    yield from celery_database_sides(f"db+{POSTGRES}", tag, stack)
    if SELINON14_PYTHON.exists():
        database = POSTGRES.rsplit("/", 1)[0] + "/selinon14_bench"
        yield Selinon14Side("postgresql", {"connection_string": database}, "psycopg2")


def celery_database_sides(url: str, tag: str, stack: ExitStack) -> Iterator[Side]:
    """Celery's database backend, as in a prefork child (an engine with a pool, kept) and as in a threads
    or solo worker (no fork seen: a new engine, and so a new connection, for every call)."""
    import sqlalchemy as sa

    # SQLAlchemy 2.1 runs postgresql:// on psycopg 3 (2.0 and before: psycopg2)
    driver = sa.engine.make_url(url.removeprefix("db+")).get_dialect().driver
    tables = {"task": f"celery_{tag}_taskmeta", "group": f"celery_{tag}_groupmeta"}
    _drop_celery_tables(url, _stale_celery_tables(url))  # Celery names its indexes alike for every table
    for forked, label, share in ((True, "prefork child", 1.0), (False, "threads or solo pool", 0.05)):
        app = Celery(f"bench-{tag}", backend=url, set_as_current=False)
        app.conf.update(database_table_names=tables, result_extended=False)
        backend = app.backend
        if forked:
            backend.session_manager._after_fork()  # what Celery's after-fork hook does in a prefork child
        yield celery_side(f"Celery db+postgresql:// backend ({label})", backend, driver, share)
    stack.callback(_drop_celery_tables, url, tables)


def celery_side(label: str, backend: Any, driver: str, share: float = 1.0) -> Side:
    """A Celery result backend's write (``store_result``, as a finished task's) and read (``get_task_meta``,
    its cache off: a read from the server)."""

    def store(task_id: str, result: Any) -> None:
        backend.store_result(task_id, result, states.SUCCESS)

    def retrieve(task_id: str) -> Any:
        return backend.get_task_meta(task_id, cache=False)["result"]

    return Side(label, "celery", driver, store, retrieve, share=share)


def _stale_celery_tables(url: str) -> dict[str, str]:
    """Tables that an interrupted run of this benchmark left in its database."""
    where = urlsplit(url.removeprefix("db+"))
    with psycopg.connect(
        **_server_conninfo(url.removeprefix("db+"), where.path[1:]), autocommit=True
    ) as connection:
        found = connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename ~ '^(celery_[0-9a-f]{8}_(task|group)meta|[0-9a-f]{8}_(task|group)meta)$'"
        ).fetchall()
    return {name: name for (name,) in found}


def _drop_celery_tables(url: str, tables: dict[str, str]) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as connection:
        for table in tables.values():
            connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
    engine.dispose()


def mariadb_sides(table: str) -> Iterator[Side]:
    upsert = (
        f"INSERT INTO {table} (task_id, flow_name, task_name, node_args, result) VALUES (%s, %s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE flow_name = VALUES(flow_name), task_name = VALUES(task_name), "
        "node_args = VALUES(node_args), result = VALUES(result), updated_at = now()"
    )
    select = f"SELECT result FROM {table} WHERE task_id = %s"
    mysqlclient = importlib.util.find_spec("MySQLdb") is not None
    if not mysqlclient:
        print("(mysqlclient skipped: it is not installed; it builds from source with Debian's "
              "libmariadb-dev and pkg-config: pip install mysqlclient)", flush=True)  # fmt: skip
    sql = SqlSides(MARIADB, table, ["pymysql", "mysqldb"] if mysqlclient else ["pymysql"])
    yield from sql.sides
    if mysqlclient:
        yield from control(lambda: sql.plain("mysqlclient", "mysqldb", upsert, select))
    yield sql.plain("PyMySQL", "pymysql", upsert, select)


def sqlite_sides(path: Path, table: str) -> Iterator[Side]:
    yield from adapter_sides(
        SqlStorage(f"sqlite:///{path}", table_name=table), "SqlStorage sqlite://", "sqlite3", True
    )
    upsert = (
        f"INSERT INTO {table} (task_id, flow_name, task_name, node_args, result) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (task_id) DO UPDATE SET flow_name = excluded.flow_name, task_name = excluded.task_name, "
        "node_args = excluded.node_args, result = excluded.result, updated_at = CURRENT_TIMESTAMP"
    )
    select = f"SELECT result FROM {table} WHERE task_id = ?"
    yield from control(lambda: plain_sql("sqlite3", "sqlite3", _sqlite(path), upsert, select))


def _sqlite(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


class RedisStorageWithoutHiredis(RedisStorage):
    """RedisStorage on redis-py's pure-Python reply parser even where hiredis is installed."""

    def _open(self) -> redis.Redis:
        client = super()._open()
        client.connection_pool.connection_kwargs["parser_class"] = _RESP2Parser
        return client


def plain_redis(driver: str, tag: str, hiredis: bool) -> Side:
    """redis-py's SET and GET, on its default options; with or without hiredis (when installed)."""
    options: dict[str, Any] = {"host": REDIS_HOST, "port": REDIS_PORT, "db": REDIS_DB}
    if not hiredis:
        options["parser_class"] = _RESP2Parser
    client = redis.Redis(connection_pool=redis.ConnectionPool(**options))

    def store(task_id: str, result: Any) -> None:
        client.set(f"{tag}:plain:{task_id}", compact_json(result))

    def retrieve(task_id: str) -> Any:
        return json.loads(client.get(f"{tag}:plain:{task_id}"))  # type: ignore[arg-type]

    return Side(plain_label(driver), "plain", driver, store, retrieve, close=client.close)


def plain_label(driver: str) -> str:
    return driver.replace("+hiredis", " with hiredis")


def redis_sides(tag: str) -> Iterator[Side]:
    hiredis = redis.utils.HIREDIS_AVAILABLE
    fast = "redis-py+hiredis" if hiredis else "redis-py"
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    yield from adapter_sides(RedisStorage(url=url, key_prefix=f"{tag}:"), "RedisStorage", fast, True)
    if hiredis:
        slow = RedisStorageWithoutHiredis(url=url, key_prefix=f"{tag}:")
        yield from adapter_sides(slow, "RedisStorage, hiredis not used", "redis-py", False, managed_too=False)
    yield from control(lambda: plain_redis(fast, tag, hiredis))
    if hiredis:
        yield plain_redis("redis-py", tag, False)
    app = Celery(f"bench-{tag}", backend=url, set_as_current=False)
    yield celery_side("Celery redis:// backend", app.backend, fast)
    if SELINON14_PYTHON.exists():
        options = {"host": REDIS_HOST, "port": REDIS_PORT, "db": REDIS_DB, "prefix": tag}
        yield Selinon14Side("redis", options, "redis-py 5")
        # the same plain client as the reference, in a process of its own like the Selinon side: how far
        # a side in another process drifts from one in this process (its ratio should be 1)
        remote = Selinon14Side("redis-plain", options, fast, python=Path(sys.executable))
        remote.label, remote.role = f"{plain_label(fast)}, in another process (control)", "control"
        yield remote


def mongo_sides(uri: str, table: str) -> Iterator[Side]:
    yield from adapter_sides(MongoStorage("bench", table, uri=uri), "MongoStorage", "pymongo", True)
    yield from control(lambda: plain_mongo(uri, table))
    if SELINON14_PYTHON.exists():
        where = urlsplit(uri)
        options = {
            "host": where.hostname,
            "port": where.port,
            "db_name": "bench",
            "collection_name": table + "_s14",
        }
        # Selinon's retrieve scans the collection (no index on task_id) twice: a few calls are enough
        yield Selinon14Side("mongodb", options, "pymongo", share=0.1)


def plain_mongo(uri: str, table: str) -> Side:
    """pymongo: the adapter's document, replaced by _id (an upsert), and found by _id."""
    client: Any = pymongo.MongoClient(uri)
    collection = client["bench"][table + "_plain"]

    def store(task_id: str, result: Any) -> None:
        document = {"_id": task_id, "flow_name": FLOW, "task_name": TASK, "result": compact_json(result)}
        collection.replace_one({"_id": task_id}, document, upsert=True)

    def retrieve(task_id: str) -> Any:
        return json.loads(collection.find_one({"_id": task_id}, {"result": 1})["result"])

    return Side("pymongo", "plain", "pymongo", store, retrieve, close=client.close)


def s3_sides(endpoint: str, bucket: str) -> Iterator[Side]:
    s3: dict[str, Any] = {"endpoint_url": endpoint, "aws_access_key_id": "k", "aws_secret_access_key": "s",
                          "region_name": "us-east-1"}  # fmt: skip
    yield from adapter_sides(S3Storage(bucket=bucket, use_ssl=False, **s3), "S3Storage", "boto3", True)
    yield from control(lambda: plain_s3(s3, bucket))
    if SELINON14_PYTHON.exists():
        yield Selinon14Side("s3", {**s3, "bucket": bucket + "-s14"}, "boto3")


def plain_s3(s3: dict[str, Any], bucket: str) -> Side:
    """boto3's put_object (with the adapter's content type and metadata) and get_object."""
    client = boto3.session.Session().client("s3", **s3)

    def store(task_id: str, result: Any) -> None:
        client.put_object(Bucket=bucket, Key=f"plain/{task_id}.json", Body=compact_json(result).encode(),
                          ContentType="application/json", Metadata={"flow-name": FLOW, "task-name": TASK})  # fmt: skip

    def retrieve(task_id: str) -> Any:
        return json.loads(client.get_object(Bucket=bucket, Key=f"plain/{task_id}.json")["Body"].read())

    return Side("boto3", "plain", "boto3", store, retrieve, close=client.close)


@dataclass
class Backend:
    name: str
    #: per record size: ids per pass, and calls per batch (about a millisecond's worth or more)
    plan: dict[str, tuple[int, int]]
    sides: Callable[[], Iterator[Side]]
    cleanup: Callable[[], object] = lambda: None


def backends(
    workdir: Path, stack: ExitStack, tag: str, only: set[str], pinning: CpuPinning | None
) -> Iterator[Backend]:
    table = f"bench_{tag}"
    small, large = RECORDS
    if not only or "postgresql" in only:
        yield Backend(
            "postgresql",
            {small: (300, 5), large: (60, 1)},
            lambda: postgresql_sides(table, tag, stack),
            lambda: _drop(POSTGRES, table),
        )
    if not only or "mariadb" in only:
        yield Backend(
            "mariadb",
            {small: (300, 10), large: (80, 1)},
            lambda: mariadb_sides(table),
            lambda: _drop(MARIADB, table),
        )
    if not only or "sqlite" in only:
        yield Backend(
            "sqlite",
            {small: (2000, 50), large: (400, 10)},
            lambda: sqlite_sides(workdir / "bench.sqlite3", table),
        )
    if not only or "redis" in only:
        yield Backend(
            "redis",
            {small: (1000, 10), large: (200, 2)},
            lambda: redis_sides(tag),
            lambda: _forget_redis_keys(tag),
        )
    if not only or "mongodb" in only:
        uri = stack.enter_context(mongo_wire_server(workdir))
        if pinning is not None:
            pinning.pin_servers([urlsplit(uri).port or 27017])
        yield Backend(
            "mongodb (nx-27017)", {small: (300, 10), large: (80, 1)}, lambda: mongo_sides(uri, table)
        )
    if not only or "s3" in only:
        endpoint = stack.enter_context(s3_server(workdir))
        if pinning is not None:
            pinning.pin_servers([urlsplit(endpoint).port or 80])
        yield Backend("s3 (moto_server)", {small: (90, 3), large: (40, 1)},
                      lambda: s3_sides(endpoint, table.replace("_", "-")))  # fmt: skip


def server_ports(only: set[str]) -> set[int]:
    """The ports of the running servers that the chosen backends measure."""
    urls = {"postgresql": [POSTGRES, *([PGBOUNCER] if PGBOUNCER else [])], "mariadb": [MARIADB]}
    default_port = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}
    ports = {urlsplit(url).port or default_port[urlsplit(url).scheme.split("+")[0]]
             for name, listed in urls.items() if not only or name in only for url in listed}  # fmt: skip
    if not only or "redis" in only:
        ports.add(REDIS_PORT)
    return ports


def _drop(url: str, table: str) -> None:
    storage = SqlStorage(url, table_name=table)
    storage.connect()
    storage.handle().connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    storage.disconnect()


def _forget_redis_keys(tag: str) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    for pattern in (f"{tag}*", f"celery-task-meta-{tag}*"):
        keys = list(client.scan_iter(pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    client.close()


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Figures:
    """One side's results for one record size: per round (one batch), ops/s and CPU seconds per call."""

    label: str
    role: str
    driver: str
    default: bool
    #: None for the rounds the side sat out (see Side.share)
    rates: dict[str, list[float | None]] = field(default_factory=lambda: {"store": [], "retrieve": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"store": [], "retrieve": []})

    def median(self, operation: str) -> float:
        return statistics.median(rate for rate in self.rates[operation] if rate is not None)

    def cpu_us(self, operation: str) -> float:
        """Median CPU microseconds per call in this process (the client's own work)."""
        return 1e6 * statistics.median(self.cpu[operation])


def measure(sides: list[Side], payload: str, ops: int, passes: int, *, batch: int, tag: str) -> list[Figures]:
    """Each side's figures in every round. A round runs one batch of ``batch`` calls on every side in turn,
    in an order shuffled for each round, so that a drift of the shared machine falls on every side alike;
    ``passes`` times over ``ops`` ids, stores and retrieves in rounds of their own.
    The collector runs between passes only."""
    starts = range(0, ops, batch)
    # a side with a share below 1 runs in that share of the rounds only (its rates elsewhere are None)
    every = {side: max(1, round(1 / side.share)) for side in sides}
    chunks = {
        side: [[f"{tag}-{i}-{n}" for i in range(start, min(start + batch, ops))] for start in starts]
        for n, side in enumerate(sides)
    }
    for side in sides:
        side.prepare(
            payload,
            [i for index, chunk in enumerate(chunks[side]) if index % every[side] == 0 for i in chunk],
        )
    figures = {side: Figures(side.label, side.role, side.driver, side.default) for side in sides}
    # a new order every round: which side runs after which (and inherits what it left behind in the
    # server, the kernel and the caches: a slow peer's open transaction, evicted lines) is left to chance
    shuffle = random.Random(len(sides) * ops).shuffle
    for _ in range(passes):
        gc.collect()
        for side in sides:
            side.collect()
        gc.disable()
        try:
            for index in range(len(starts)):
                for operation in ("store", "retrieve"):
                    order = list(sides)
                    shuffle(order)
                    for side in order:
                        if index % every[side]:
                            figures[side].rates[operation].append(None)
                            continue
                        chunk = chunks[side][index]
                        wall, cpu = side.run(operation, payload, chunk)
                        figures[side].rates[operation].append(len(chunk) / wall)
                        figures[side].cpu[operation].append(cpu / len(chunk))
        finally:
            gc.enable()
    return list(figures.values())


def ratios(side: Figures, reference: Figures, operation: str) -> list[float]:
    """Per round, side/reference, both measured in the same round."""
    pairs = zip(side.rates[operation], reference.rates[operation], strict=True)
    return [ours / theirs for ours, theirs in pairs if ours is not None and theirs is not None]


def ratio(side: Figures, reference: Figures, operation: str) -> float:
    """The median over rounds of side/reference."""
    return statistics.median(ratios(side, reference, operation))


def fastest_plain(figures: list[Figures], operation: str) -> Figures:
    """The plain client that does the least work per call: the one with the least CPU time in this process.

    Not the one with the best wall-clock rate: two plain clients run on two connections, and on a server
    that commits to disk (MariaDB's stores here) the commits' time varies more between connections than
    the clients differ. The ratios themselves are wall-clock, against this client."""
    return min((f for f in figures if f.role == "plain"), key=lambda f: f.cpu_us(operation))


def is_headline(side: Figures, reference: Figures) -> bool:
    """What the summary shows: the adapter and ManagedStorage over it, as configured by default and on the
    fastest plain client's driver."""
    return side.role in ("adapter", "managed") and (side.default or side.driver == reference.driver)


def is_gated(side: Figures, reference: Figures) -> bool:
    """Held to the threshold: the adapter of a headline configuration. ManagedStorage over it does work no
    plain client does (the process check, the guard, the retry policy, the counters): its ratios and CPU
    time are reported, not held to the adapter's target."""
    return side.role == "adapter" and is_headline(side, reference)


def report(backend: str, payload: str, figures: list[Figures]) -> tuple[list[dict[str, Any]], list[str]]:
    """Print one table section; return its rows (for --json) and the failures."""
    rows, failures = [], []
    for side in figures:
        row: dict[str, Any] = {"backend": backend, "record": payload, "side": side.label, "role": side.role,
                               "driver": side.driver, "default": side.default}  # fmt: skip
        cells = []
        for operation in ("store", "retrieve"):
            reference = fastest_plain(figures, operation)
            same = next((f for f in figures if f.role == "plain" and f.driver == side.driver), None)
            value = ratio(side, reference, operation)
            gated = is_gated(side, reference)
            row[operation] = {
                "ops": side.median(operation),
                "vs_fastest_plain": value,
                "fastest_plain": reference.label,
                "vs_same_driver_plain": ratio(side, same, operation)
                if same is not None and same is not side
                else None,
                "gated": gated,
                "headline": is_headline(side, reference),
                "cpu_us": side.cpu_us(operation),
                # the middle half of the rounds' ratios: how much they scatter
                "quartiles": statistics.quantiles(ratios(side, reference, operation), n=4)[::2],
            }
            mark = ""
            if gated and value < THRESHOLD:
                mark = " **below**"
                failures.append(
                    f"{backend}, {payload}, {side.label}, {operation}: {value:.3f}x {reference.label}"
                )
            same_cell = (
                ""
                if row[operation]["vs_same_driver_plain"] is None
                else f"{row[operation]['vs_same_driver_plain']:.3f}"
            )
            cells += [f"{side.median(operation):,.0f}", f"{value:.3f}{mark}", same_cell]
        rows.append(row)
        name = side.label + (" ◀ fastest plain" if side.role == "plain" and any(
            fastest_plain(figures, op) is side for op in ("store", "retrieve")) else "")  # fmt: skip
        cells.append(f"{side.cpu_us('store'):,.0f} / {side.cpu_us('retrieve'):,.0f}")
        print(f"| {backend} | {payload} | {name} | " + " | ".join(cells) + " |", flush=True)
    return rows, failures


def peer_rows(backend: str, payload: str, figures: list[Figures]) -> list[dict[str, Any]]:
    """What tasks call against each peer, per operation: ManagedStorage over the default adapter and, where
    the fastest plain client runs on another driver, over the adapter on that driver too."""
    fastest = fastest_plain(figures, "retrieve").driver
    ours = [f for f in figures if f.role == "managed" and (f.default or f.driver == fastest)]
    rows = []
    for mine in ours:
        for peer in figures:
            if peer.role not in ("celery", "selinon14"):
                continue
            rows.append({
                "backend": backend, "record": payload, "ours": mine.label, "peer": peer.label,
                "default": mine.default,
                **{op: {"ours": mine.median(op), "peer": peer.median(op), "ratio": ratio(mine, peer, op)}
                   for op in ("store", "retrieve")},
            })  # fmt: skip
    return rows


def versions(selinon14: dict[str, str]) -> dict[str, str]:
    """Python, client libraries and servers of this run."""
    found = {"python": platform.python_version()}
    for name in ("celery-selinon-storage", "SQLAlchemy", "psycopg", "pg8000", "mysqlclient", "PyMySQL", "redis",
                 "hiredis", "pymongo", "boto3", "celery", "psycopg2-binary", "moto", "nx-27017"):  # fmt: skip
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    found["sqlite"] = sqlite3.sqlite_version
    with psycopg.connect(**_server_conninfo(POSTGRES, "postgres"), autocommit=True) as connection:
        found["PostgreSQL"] = str(connection.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
    where = urlsplit(MARIADB)
    mariadb = pymysql.connect(host=where.hostname, port=where.port or 3306, user=where.username)
    with mariadb.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        found["MariaDB"] = str(cursor.fetchone()[0])  # type: ignore[index]
    mariadb.close()
    found["Redis"] = str(redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("server")["redis_version"])
    found.update({f"Selinon 1.4 venv: {k}": v for k, v in selinon14.items()})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--passes", type=int, default=2, help="times over each backend's ids (rounds: passes x batches)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the ids per backend")
    parser.add_argument(
        "--only", default="", help="comma-separated: postgresql, mariadb, sqlite, redis, mongodb, s3"
    )
    parser.add_argument(
        "--large", action=argparse.BooleanOptionalAction, default=True, help="also the 64 KB record"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--chart", type=Path, help="draw the ratios into this PNG")
    parser.add_argument(
        "--replot", type=Path, nargs="+", help="draw --chart from --json files, measuring nothing"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the servers and this process where the scheduler puts them (see cpu_pinning)",
    )
    args = parser.parse_args()  # fmt: skip
    if args.replot:
        chart(merged([json.loads(path.read_text()) for path in args.replot]), args.chart)
        return
    sizes = {name: encoded_size(record) for name, record in RECORDS.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; records of {', '.join(f'{s:,} bytes' for s in sizes.values())}; "
          "ops/s: median of the rounds' batches; ratios: median of the rounds' ratios")  # fmt: skip
    if not SELINON14_PYTHON.exists():
        print(
            f"(Selinon 1.4 skipped: no {SELINON14_PYTHON} (BENCH_SELINON14_PYTHON); see integration/bench_selinon14.py)"
        )
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "sizes": sizes, "rows": [], "peers": [],
                               "failures": [], "runs": []}  # fmt: skip
    payloads = list(RECORDS) if args.large else list(RECORDS)[:1]
    only = {name for name in args.only.split(",") if name}
    tag = uuid.uuid4().hex[:8]
    selinon14_versions: dict[str, str] = {}
    with ExitStack() as stack:
        pinning = None if args.no_pin else CpuPinning.split()
        if pinning is not None:
            stack.enter_context(pinning)
            pinned, missed = pinning.pin_servers(server_ports(only))
            print(f"(the servers measured, pids {', '.join(map(str, pinned)) or 'none'} and those the benchmark "
                  f"starts, run on CPU {pinning.server_cpu}, the benchmark on CPU {pinning.client_cpu}; --no-pin "
                  "leaves them be)", flush=True)  # fmt: skip
            if missed:
                print(f"(not pinned: the listeners of ports {', '.join(map(str, missed))}, not visible or not "
                      "ours to move: their figures vary with where the scheduler runs them)", flush=True)  # fmt: skip
        print(
            "| backend | record | side | store ops/s | vs fastest plain | vs same driver | retrieve ops/s | vs fastest plain | vs same driver | client CPU µs per store / retrieve |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for backend in backends(workdir, stack, tag, only, pinning):
            selinon14_versions |= run_backend(
                backend, payloads, args.passes, args.scale, tag=tag, results=results
            )
    results["versions"] = versions(selinon14_versions)
    print("\n" + "; ".join(f"{run['backend']}, {run['record']}: {run['rounds']} rounds of {run['batch']} calls per side"
                           for run in results["runs"]))  # fmt: skip
    print_peers(results["peers"])
    print("\n" + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.chart:
        chart(results, args.chart)
    if results["failures"]:
        print(f"\nbelow {THRESHOLD}x the fastest plain client:\n  " + "\n  ".join(results["failures"]))
        sys.exit(1)
    print(f"\nevery adapter held to it is at {THRESHOLD}x the fastest plain client or above")


def run_backend(
    backend: Backend, payloads: list[str], passes: int, scale: float, *, tag: str, results: dict[str, Any]
) -> dict[str, str]:
    """Measure one backend's sides on each record, print and collect the figures; returns the Selinon 1.4
    venv's versions (empty when it did not run)."""
    started = time.perf_counter()
    sides: list[Side] = []
    try:
        sides.extend(backend.sides())
        for payload in payloads:
            planned, batch = backend.plan[payload]
            ops = max(batch, int(planned * scale))
            figures = measure(sides, payload, ops, passes, batch=batch, tag=f"{tag}-{payload[:2].strip()}")
            rows, failures = report(backend.name, payload, figures)
            results["rows"] += rows
            results["failures"] += failures
            results["peers"] += peer_rows(backend.name, payload, figures)
            rounds = passes * -(-ops // batch)
            results["runs"].append(
                {"backend": backend.name, "record": payload, "rounds": rounds, "batch": batch}
            )
    finally:
        for side in sides:
            side.close()
        backend.cleanup()
    print(f"| {backend.name} | ({time.perf_counter() - started:.0f} s) |", flush=True)
    return next((side.versions for side in sides if isinstance(side, Selinon14Side)), {})


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several --json files as one (runs of different backends)."""
    first = runs[0]
    return {
        **first,
        **{key: [item for run in runs for item in run[key]] for key in ("rows", "peers", "failures", "runs")},
    }


def print_peers(peers: list[dict[str, Any]]) -> None:
    if not peers:
        return
    print(
        "\n| backend | record | ours | peer | store ops/s (ours / peer) | ours/peer | retrieve ops/s (ours / peer) | ours/peer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in peers:
        cells = []
        for op in ("store", "retrieve"):
            cells += [f"{row[op]['ours']:,.0f} / {row[op]['peer']:,.0f}", f"{row[op]['ratio']:.2f}"]
        print(
            f"| {row['backend']} | {row['record']} | {row['ours']} | {row['peer']} | "
            + " | ".join(cells)
            + " |"
        )


DRIVER_NAMES = {"psycopg": "psycopg 3", "pg8000": "pg8000", "pymysql": "PyMySQL", "mysqldb": "mysqlclient"}


def chart(results: dict[str, Any], path: Path) -> None:
    """Two panels, small record: each adapter held to the threshold (the default configuration, and the
    adapter on the fastest plain client's driver) and ManagedStorage over it, as a ratio of the fastest
    plain client; and ManagedStorage against the peers (ratio ours/peer, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = next(iter(results["sizes"]))
    rows = [r for r in results["rows"] if r["record"] == small]

    def group(row: dict[str, Any]) -> str:
        name = row["backend"].split(" (")[0]
        driver = DRIVER_NAMES.get(row["driver"])
        return f"{name}\n{driver}{chr(10) + '(default)' if row['default'] else ''}" if driver else name

    held = [
        r
        for r in rows
        if r["role"] in ("adapter", "managed")
        and any(r[op].get("headline", r[op]["gated"]) for op in ("store", "retrieve"))
    ]
    groups = list(dict.fromkeys(group(r) for r in held))
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.2
    for index, (role, op) in enumerate(
        [("adapter", "store"), ("managed", "store"), ("adapter", "retrieve"), ("managed", "retrieve")]
    ):
        values = [
            next(r[op]["vs_fastest_plain"] for r in held if group(r) == g and r["role"] == role)
            for g in groups
        ]
        positions = [p + (index - 1.5) * width for p in range(len(groups))]
        drawn = left.bar(
            positions, values, width, label=f"{'adapter' if role == 'adapter' else 'ManagedStorage'}, {op}"
        )
        left.bar_label(drawn, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    controls = [r[op]["vs_same_driver_plain"] for r in rows if r["role"] == "control" and "another process" not in r["side"]
                for op in ("store", "retrieve")]  # fmt: skip
    left.axhspan(min(controls), max(controls), color="grey", alpha=0.15,
                 label=f"control: plain client vs itself ({min(controls):.2f}-{max(controls):.2f})")  # fmt: skip
    left.axhline(THRESHOLD, color="red", linewidth=1, linestyle="--", label=f"{THRESHOLD}x")
    left.set_xticks(range(len(groups)), groups, fontsize=7)
    left.set_ylim(0, 1.5)
    left.set_ylabel("throughput / fastest plain client (higher is better)")
    left.set_title(f"Adapters vs the fastest plain client, {small} record", fontsize=10)
    left.legend(fontsize=7, loc="upper center", ncol=3)
    # PostgreSQL: ManagedStorage on psycopg 3, the fastest driver (its rows over pg8000 are in the tables)
    peers = [p for p in results["peers"] if p["record"] == small and "pg8000" not in p["ours"]]
    labels = [f"{p['backend'].split(' (')[0]}: vs {p['peer'].replace(' backend', '')}" for p in peers]
    for offset, op in ((-0.2, "store"), (0.2, "retrieve")):
        drawn = right.barh(
            [i + offset for i in range(len(peers))], [p[op]["ratio"] for p in peers], 0.4, label=op
        )
        right.bar_label(drawn, fmt="%.2f", fontsize=6, padding=2)
    right.axvline(1.0, color="grey", linewidth=0.6)
    right.set_xscale("log")
    right.set_yticks(range(len(peers)), labels, fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("ManagedStorage / peer, log scale (above 1: ours is faster)")
    right.set_title("Against what users run today (PostgreSQL: ours on psycopg 3)", fontsize=10)
    right.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"celery-selinon-storage, {results['date']}: each figure from one run (the median of its rounds)",
        fontsize=9,
    )
    charts.save(figure, path)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
