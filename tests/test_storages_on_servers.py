"""What each backend promises beyond the shared contract, checked on the real server."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymongo.monitoring
import pytest
import redis
import sqlalchemy as sa

from celery_selinon_storage import ResultNotSerializableError, ResultTooLargeError
from celery_selinon_storage.storages.mongo import MongoStorage
from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.s3 import S3Storage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.green_queries import most_at_once, run_in_greenlets, with_driver
from tests.own_servers import OwnRedis
from tests.services import S3_KEYS

pytestmark = pytest.mark.service


# -- SQL -----------------------------------------------------------------------------------


def test_the_seed_postgres_url_works_as_written() -> None:
    storage = SqlStorage("postgres://postgres:postgres@postgres:5432/postgres", encoding="utf-8", echo=False)
    # pg8000 under eventlet's monkey-patching: tests/test_driver_choice.py
    assert storage.url.drivername == "postgresql+psycopg"
    assert "postgres:postgres@" not in repr(storage) and "***" in repr(storage)


def test_postgresql_keeps_results_as_written_with_a_unique_task_id(postgres_url: str, unique: str) -> None:
    storage = SqlStorage(postgres_url, table_name=unique)
    storage.connect()
    try:
        inspector = sa.inspect(storage.handle().connection)
        columns = {column["name"]: str(column["type"]) for column in inspector.get_columns(unique)}
        # json, not JSONB: JSONB rewrites numbers (1e16 came back as the integer 10000000000000000)
        assert columns["result"] == "JSON" and columns["node_args"] == "JSON"
        assert inspector.get_pk_constraint(unique)["constrained_columns"] == ["task_id"]
    finally:
        storage.handle().connection.exec_driver_sql(f"DROP TABLE {unique}")
        storage.disconnect()


#: The results table as version 0.1 made it on PostgreSQL: JSONB columns.
JSONB_TABLE = """
CREATE TABLE {table} (
    task_id VARCHAR(255) PRIMARY KEY, flow_name VARCHAR(255), task_name VARCHAR(255),
    node_args JSONB, result JSONB, updated_at TIMESTAMP WITH TIME ZONE DEFAULT now()
)
"""


def test_a_jsonb_table_of_0_1_refuses_only_what_it_would_change_and_says_how_to_migrate(
    postgres_url: str, unique: str
) -> None:
    engine = sa.create_engine(SqlStorage(postgres_url).url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(JSONB_TABLE.format(table=unique))
    storage = SqlStorage(postgres_url, table_name=unique)
    storage.connect()
    try:
        storage.store(None, "f", "t", "plain", {"n": 1, "x": 2.5})
        assert storage.retrieve("f", "t", "plain") == {"n": 1, "x": 2.5}
        migrations = set()
        for result, what in (([1e16], "the float 1e+16"), ({"s": "a\x00b"}, "the character U+0000")):
            with pytest.raises(ResultNotSerializableError, match=f"it holds {re.escape(what)}") as caught:
                storage.store(None, "f", "t", "big", result)
            migrations.update(re.findall(r"ALTER TABLE [^;]+", str(caught.value)))
        [migrate] = migrations
        storage.disconnect()
        with engine.begin() as connection:
            connection.exec_driver_sql(migrate)
        storage.connect()
        storage.store(None, "f", "t", "big", [1e16, "a\x00b"])
        assert repr(storage.retrieve("f", "t", "big")) == repr([1e16, "a\x00b"])
        assert storage.retrieve("f", "t", "plain") == {"n": 1, "x": 2.5}  # the old records survive it
    finally:
        storage.disconnect()
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {unique}")
        engine.dispose()


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
def test_several_processes_creating_the_table_at_once_all_succeed(
    server: str, request: pytest.FixtureRequest, unique: str
) -> None:
    url = request.getfixturevalue(server)
    code = f"""
        import time
        from celery_selinon_storage.storages.sql import SqlStorage
        start = {time.time() + 1.5}
        storage = SqlStorage({url!r}, table_name={unique!r})
        time.sleep(max(0, start - time.time()))
        storage.connect()
        storage.store(None, "f", "t", str(time.time()), [1])
        storage.disconnect()
    """
    processes = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    try:
        errors = [p.communicate(timeout=60)[1].decode() for p in processes]
        assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    finally:
        engine = sa.create_engine(SqlStorage(url).url, poolclass=sa.pool.NullPool)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {unique}"))
        engine.dispose()


#: (hub, URL fixture, driver, green?) - does a query yield to the hub while it waits for the server?
GREEN_DRIVERS = [
    ("eventlet", "postgres_url", "pg8000", True),
    ("gevent", "postgres_url", "pg8000", True),
    ("gevent", "postgres_url", "psycopg", True),
    ("eventlet", "postgres_url", "psycopg", False),
    ("eventlet", "mariadb_url", "pymysql", True),
    ("gevent", "mariadb_url", "pymysql", True),
]


@pytest.mark.parametrize(("hub", "server", "driver", "green"), GREEN_DRIVERS)
def test_which_sql_drivers_let_the_hub_run_during_a_query(
    hub: str, server: str, driver: str, green: bool, request: pytest.FixtureRequest
) -> None:
    url = with_driver(request.getfixturevalue(server), driver)
    spans = run_in_greenlets(hub, url, queries=4).spans
    # By the server's clock: a green driver yields while its query sleeps, so the other three greenlets
    # send theirs and the server holds all four at once; a blocking one holds the hub until its answer
    # comes, so each query reaches the server only after the one before has ended.
    assert most_at_once(spans) == (4 if green else 1), f"{driver} under {hub}: query spans {spans}"


def test_the_default_drivers_outside_eventlet() -> None:
    """psycopg, and mysqlclient (which the suite's set-up builds: scripts/services)."""
    assert SqlStorage("postgresql://h/db").url.drivername == "postgresql+psycopg"
    assert SqlStorage("mariadb://h/db").url.drivername == "mariadb+mysqldb"
    assert SqlStorage("mysql://h/db").url.drivername == "mysql+mysqldb"


# -- Redis ---------------------------------------------------------------------------------


def _commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_redis_uses_one_round_trip_per_call_namespaced_keys_and_a_ttl(tmp_path: Path, unique: str) -> None:
    """Counted on a Redis of the test's own: the shared one also serves the tests running alongside."""
    server = OwnRedis(tmp_path)
    with server:
        client = redis.Redis.from_url(server.url)
        storage = RedisStorage(url=server.url, key_prefix=f"{unique}:", ttl=120)
        storage.connect()
        try:
            before = _commands_processed(client)
            for i in range(10):
                storage.store(None, "f", "t", f"id{i}", {"i": i})
            middle = _commands_processed(client)
            assert [storage.retrieve("f", "t", f"id{i}") for i in range(10)] == [{"i": i} for i in range(10)]
            after = _commands_processed(client)
            assert middle - before == 10 + 1  # ten SETs and the INFO that counted them
            assert after - middle == 10 + 1
            assert sorted(client.keys(f"{unique}:*")) == sorted(f"{unique}:id{i}".encode() for i in range(10))
            assert 0 < client.ttl(f"{unique}:id0") <= 120
        finally:
            storage.disconnect()
            client.close()


def test_redis_password_stays_out_of_repr_and_errors(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    storage = RedisStorage(url=f"redis://user:hunter2-redis@{parts.hostname}:{parts.port}/0")
    assert "hunter2-redis" not in repr(storage)
    with pytest.raises(redis.RedisError) as caught:
        storage.connect()
    assert "hunter2-redis" not in str(caught.value)


def test_redis_refuses_a_charset_other_than_utf8() -> None:
    with pytest.raises(ValueError, match="'latin-1' is not supported; results are stored as UTF-8 JSON"):
        RedisStorage(charset="latin-1")


# -- MongoDB -------------------------------------------------------------------------------


class CommandCounter(pymongo.monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: Any) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_mongo_retrieve_is_one_round_trip(mongo_uri: str, unique: str) -> None:
    counter = CommandCounter()
    pymongo.monitoring.register(counter)  # applies to clients created from now on
    storage = MongoStorage(db_name="css_tests", collection_name=unique, uri=mongo_uri)
    storage.connect()
    try:
        storage.store(None, "f", "t", "one", {"a": 1})
        counter.commands.clear()
        assert storage.retrieve("f", "t", "one") == {"a": 1}
        storage.store(None, "f", "t", "one", {"a": 2})
        assert counter.commands == ["find", "update"]  # one each: no count before the read
    finally:
        storage._collection().drop()
        storage.disconnect()


def test_mongo_credentials_stay_out_of_repr() -> None:
    storage = MongoStorage("db", "c", uri="mongodb://app:hunter2-mongo@db1:27017,db2:27017/?replicaSet=rs")
    assert repr(storage) == "MongoStorage('mongodb://db1:27017,db2:27017', db_name='db', collection_name='c')"
    assert "hunter2" not in repr(MongoStorage("db", "c", username="app", password="hunter2-mongo"))


# -- S3 ------------------------------------------------------------------------------------


def _s3(endpoint: str, bucket: str, region: str | None) -> S3Storage:
    return S3Storage(
        bucket=bucket, endpoint_url=endpoint, region_name=region,
        use_ssl=False, **S3_KEYS,
    )  # fmt: skip


@pytest.mark.parametrize("region", [None, "us-east-1", "eu-west-1", "ap-southeast-2"])
def test_s3_creates_its_bucket_in_any_region_and_keeps_the_documented_key_layout(
    s3_endpoint: str, unique: str, region: str | None
) -> None:
    bucket = f"{unique}-{region or 'default'}"
    storage = _s3(s3_endpoint, bucket, region)
    storage.connect()
    try:
        key = storage.store(None, "flow1", "task1", "abc", {"x": 1})
        assert key == "selinon/abc.json"
        head = storage.handle().head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"flow-name": "flow1", "task-name": "task1"}
        location = storage.handle().get_bucket_location(Bucket=bucket)["LocationConstraint"]
        assert location == (None if region in (None, "us-east-1") else region)
        _s3(s3_endpoint, bucket, region).connect()  # a second process finding the bucket is fine
    finally:
        storage.handle().delete_object(Bucket=bucket, Key="selinon/abc.json")
        storage.handle().delete_bucket(Bucket=bucket)
        storage.disconnect()


def test_s3_secret_stays_out_of_repr() -> None:
    storage = S3Storage(bucket="b", aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="hunter2-s3")
    assert "hunter2" not in repr(storage) and "AKIAEXAMPLE" not in repr(storage)


def test_s3_takes_the_seeds_bucket_name_alias_but_not_both() -> None:
    assert S3Storage(bucket_name="results").bucket == "results"
    with pytest.raises(ValueError, match="give the bucket's name once"):
        S3Storage(bucket="a", bucket_name="b")


def test_mariadb_refuses_a_result_beyond_max_allowed_packet_clearly_and_keeps_working(
    mariadb_url: str, unique: str
) -> None:
    storage = SqlStorage(mariadb_url, table_name=unique)
    storage.storage_name = "Results"
    storage.connect()
    try:
        with pytest.raises(
            ResultTooLargeError,
            match=r"storage 'Results' cannot store the result of task id 'huge': it is 17,8\d\d,\d\d\d bytes as JSON and the server accepts at most 16,777,216; raise the server's max_allowed_packet or store less",
        ):
            storage.store(None, "f", "t", "huge", "x" * (17 * 1024 * 1024))
        storage.store(None, "f", "t", "small", [1])
        assert storage.retrieve("f", "t", "small") == [1]
    finally:
        storage.handle().connection.exec_driver_sql(f"DROP TABLE {unique}")
        storage.disconnect()


def test_mongo_refuses_a_result_beyond_16_mib_clearly(mongo_uri: str, unique: str) -> None:
    storage = MongoStorage(db_name="css_tests", collection_name=unique, uri=mongo_uri)
    storage.storage_name = "Results"
    storage.connect()
    try:
        with pytest.raises(
            ResultTooLargeError,
            match=r"storage 'Results' cannot store the result of task id 'huge': .* MongoDB documents hold at most 16 MiB",
        ):
            storage.store(None, "f", "t", "huge", "x" * (17 * 1024 * 1024))
    finally:
        storage._collection().drop()
        storage.disconnect()
