"""Issue #12, rolling upgrade: an entry that names Selinon 1.4's own classes reads and writes Selinon's layout.

The records of "old workers" are written here with the plain drivers (redis-py, pymongo, psycopg, boto3,
files) exactly as Selinon 1.4's adapters write them (read from their source: docs/selinon.md); a real worker
reads them back, and the records it writes are checked in that layout, byte for byte where Selinon's are
bytes (Redis, S3, files) and field for field where they are documents and rows (MongoDB, PostgreSQL).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
import psycopg
import pymongo
import pytest
import redis
import yaml
from bson import ObjectId

from celery_selinon_storage import MissingResultError, ResultNotSerializableError, open_storages
from tests.selinon_published.worker_app import retrieve, store
from tests.services import S3_KEYS
from tests.workers import WorkerProcess

pytestmark = pytest.mark.service

FLOW, TASK = "rolling_flow", "RollingTask"
NODE_ARGS = {"ecosystem": "pypi", "name": "selinon", "version": None}
RESULT = {"values": [1, 2.5, "čaj", None, True, 2**40], "nested": {"list": [], "map": {}}}

#: What a Selinon 1.4 worker wrote: ``json.dumps`` with its defaults (ASCII escapes, ", " and ": ").
selinon_json = json.dumps

#: Selinon's PostgreSQL model as SQLAlchemy creates it (``Result`` in selinon/storages/postgresql/models.py).
SELINON_DDL = (
    "CREATE SEQUENCE result_id",
    "CREATE TABLE result (id INTEGER NOT NULL, flow_name VARCHAR(128), task_name VARCHAR(128), "
    "task_id VARCHAR(255), result JSONB, node_args JSONB, PRIMARY KEY (id), UNIQUE (task_id))",
)


def envelope(task_id: str, result: Any) -> dict[str, Any]:
    """The record Selinon's Redis adapter writes, its fields in Selinon's order."""
    return {
        "node_args": NODE_ARGS,
        "flow_name": FLOW,
        "task_name": TASK,
        "task_id": task_id,
        "result": result,
    }


class OldWorker(Protocol):
    """A store as a worker still on Selinon 1.4's adapter writes and reads it, with the plain driver."""

    def write(self, task_id: str, result: Any) -> None: ...

    def check(self, task_id: str, result: Any) -> None:
        """Assert that ``task_id``'s record is exactly what Selinon's adapter would have written."""


class OldRedis:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def write(self, task_id: str, result: Any) -> None:
        self.client.set(task_id, selinon_json(envelope(task_id, result)))

    def check(self, task_id: str, result: Any) -> None:
        assert self.client.get(task_id) == selinon_json(envelope(task_id, result)).encode()
        assert self.client.ttl(task_id) == -1  # no expiry, as Selinon's


class OldMongo:
    def __init__(self, uri: str, collection: str) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
        self.collection = self.client["css_tests"][collection]

    def write(self, task_id: str, result: Any) -> None:
        self.collection.insert_one(
            {
                "flow_name": FLOW,
                "node_args": NODE_ARGS,
                "task_name": TASK,
                "task_id": task_id,
                "result": result,
            }
        )

    def check(self, task_id: str, result: Any) -> None:
        [document] = self.collection.find({"task_id": task_id})
        assert isinstance(document.pop("_id"), ObjectId)
        assert document == {
            "flow_name": FLOW, "node_args": NODE_ARGS, "task_name": TASK, "task_id": task_id, "result": result,
        }  # fmt: skip
        assert list(document) == ["flow_name", "node_args", "task_name", "task_id", "result"]


class OldPostgres:
    def __init__(self, url: str) -> None:
        self.connection = psycopg.connect(url, autocommit=True)

    def write(self, task_id: str, result: Any) -> None:
        self.connection.execute(
            "INSERT INTO result (id, flow_name, task_name, task_id, result, node_args) "
            "VALUES (nextval('result_id'), %s, %s, %s, %s::jsonb, %s::jsonb)",
            (FLOW, TASK, task_id, selinon_json(result), selinon_json(NODE_ARGS)),
        )

    def check(self, task_id: str, result: Any) -> None:
        row = self.connection.execute(
            "SELECT id, flow_name, task_name, task_id, result, node_args FROM result WHERE task_id = %s",
            (task_id,),
        ).fetchone()
        assert row is not None and isinstance(row[0], int)
        assert row[1:] == (FLOW, TASK, task_id, result, NODE_ARGS)


class OldS3:
    def __init__(self, endpoint: str, bucket: str) -> None:
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="eu-central-1", **S3_KEYS
        )
        self.bucket = bucket

    def write(self, task_id: str, result: Any) -> None:
        self.client.put_object(Bucket=self.bucket, Key=task_id, Body=selinon_json(result).encode())

    def check(self, task_id: str, result: Any) -> None:
        found = self.client.get_object(Bucket=self.bucket, Key=task_id)
        assert found["Body"].read() == selinon_json(result).encode()
        assert found["Metadata"] == {}


class OldFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, task_id: str) -> Path:
        return self.root / FLOW / TASK / f"{task_id}.json"

    def write(self, task_id: str, result: Any) -> None:
        self.path(task_id).parent.mkdir(parents=True, exist_ok=True)
        self.path(task_id).write_text(selinon_json(result))

    def check(self, task_id: str, result: Any) -> None:
        assert self.path(task_id).read_bytes() == selinon_json(result).encode()


@contextlib.contextmanager
def database(postgres_url: str, name: str) -> Iterator[str]:
    """A database of its own, dropped afterwards: Selinon's table has a fixed name (``result``)."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def postgres_database(postgres_url: str, unique: str) -> Iterator[str]:
    with database(postgres_url, unique) as url:
        yield url


@pytest.fixture
def nodes(
    tmp_path: Path, unique: str, redis_url: str, mongo_uri: str, postgres_database: str, s3_endpoint: str
) -> Path:
    """A nodes.yml of Selinon 1.4's class paths, as a Selinon deployment writes it."""
    redis_parts, mongo_parts = urlsplit(redis_url), urlsplit(mongo_uri)
    s3 = (
        f"bucket: {unique}, location: eu-central-1, region_name: eu-central-1, endpoint_url: '{s3_endpoint}', "
        f"use_ssl: false, aws_access_key_id: {S3_KEYS['aws_access_key_id']}, "
        f"aws_secret_access_key: {S3_KEYS['aws_secret_access_key']}"
    )
    path = tmp_path / "nodes.yml"
    path.write_text(
        f"""\
storages:
  - name: Redis
    import: selinon.storages.redis
    configuration: {{host: '{redis_parts.hostname}', port: {redis_parts.port}, db: {redis_parts.path[1:]}}}
  - name: MongoDB
    import: selinon.storages.mongodb
    configuration: {{db_name: css_tests, collection_name: {unique}, host: '{mongo_parts.hostname}',
                     port: {mongo_parts.port}}}
  - name: PostgreSQL
    import: selinon.storages.postgresql
    configuration: {{connection_string: '{postgres_database.replace("postgresql://", "postgres://")}'}}
  - name: S3
    import: selinon.storages.s3
    configuration: {{{s3}, serialize_json: true}}
  - name: S3Bytes
    classname: S3
    import: selinon.storages.s3
    configuration: {{{s3}}}
  - name: Filesystem
    import: selinon.storages.filesystem
    configuration: {{path: '{tmp_path / "results"}'}}
"""
    )
    return path


@pytest.fixture
def old_workers(
    nodes: Path,
    tmp_path: Path,
    unique: str,
    redis_url: str,
    mongo_uri: str,
    postgres_database: str,
    s3_endpoint: str,
) -> Iterator[dict[str, OldWorker]]:
    """Per storage of ``nodes``, its store as Selinon 1.4 keeps it (Selinon made the table and the bucket)."""
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        for statement in SELINON_DDL:
            connection.execute(statement)
    old_s3 = OldS3(s3_endpoint, unique)
    old_s3.client.create_bucket(
        Bucket=unique, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    old_mongo = OldMongo(mongo_uri, unique)
    old_postgres = OldPostgres(postgres_database)
    yield {
        "Redis": OldRedis(redis_url),
        "MongoDB": old_mongo,
        "PostgreSQL": old_postgres,
        "S3": old_s3,
        "Filesystem": OldFiles(tmp_path / "results"),
    }
    old_mongo.collection.drop()
    old_mongo.client.close()
    old_postgres.connection.close()


@pytest.mark.worker
def test_a_worker_reads_what_selinon_wrote_and_writes_what_selinon_reads(
    nodes: Path, old_workers: dict[str, OldWorker], queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    written_before = {name: f"selinon-{uuid.uuid4()}" for name in old_workers}
    for name, old in old_workers.items():
        old.write(written_before[name], {**RESULT, "by": "selinon", "storage": name})
    worker = workers(
        storages=nodes, pool="prefork", concurrency=2, queue=queue, app="tests.selinon_published.worker_app"
    ).start()
    worker.wait_ready()

    reads = {
        name: retrieve.apply_async((name, FLOW, TASK, written_before[name]), queue=queue)
        for name in old_workers
    }
    assert {name: read.get(timeout=60) for name, read in reads.items()} == {
        name: {**RESULT, "by": "selinon", "storage": name} for name in old_workers
    }
    written_now = {name: f"worker-{uuid.uuid4()}" for name in old_workers}
    stores = [
        store.apply_async(
            (name, NODE_ARGS, FLOW, TASK, written_now[name], {**RESULT, "storage": name}), queue=queue
        )
        for name in old_workers
    ]
    for sent in stores:
        sent.get(timeout=60)
    assert worker.stop() == 0, worker.output
    for name, old in old_workers.items():
        old.check(written_now[name], {**RESULT, "storage": name})


def test_storing_over_a_selinon_record_replaces_it_and_missing_records_raise_missing_result_error(
    nodes: Path, old_workers: dict[str, OldWorker]
) -> None:
    task_id = f"selinon-{uuid.uuid4()}"
    with open_storages(nodes) as storages:
        for name, old in old_workers.items():
            storage = storages.get(name)
            with pytest.raises(MissingResultError, match=f"storage '{name}' has no record for task id"):
                storage.retrieve(FLOW, TASK, task_id)
            old.write(task_id, {"attempt": 1})
            storage.store(NODE_ARGS, FLOW, TASK, task_id, {"attempt": 2})  # Selinon's PostgreSQL refused this
            old.check(task_id, {"attempt": 2})
            storage.delete(FLOW, TASK, task_id)
            with pytest.raises(MissingResultError):
                storage.delete(FLOW, TASK, task_id)
        with pytest.raises(ResultNotSerializableError, match=r"keeps results in JSONB \(Selinon's layout\)"):
            storages.get("PostgreSQL").store(NODE_ARGS, FLOW, TASK, task_id, {"large": 1e16})  # JSONB: 10**16


def test_mongodb_duplicates_written_by_selinon_read_as_the_newest_and_are_deleted_together(
    nodes: Path, old_workers: dict[str, OldWorker]
) -> None:
    old = old_workers["MongoDB"]
    assert isinstance(old, OldMongo)
    task_id = f"selinon-{uuid.uuid4()}"
    old.write(task_id, {"attempt": 1})
    old.write(task_id, {"attempt": 2})  # Selinon inserts: a task stored twice has two documents
    with open_storages(nodes) as storages:
        storage = storages.get("MongoDB")
        assert storage.retrieve(FLOW, TASK, task_id) == {"attempt": 2}
        storage.store(NODE_ARGS, FLOW, TASK, task_id, {"attempt": 3})
        newest = old.collection.find_one({"task_id": task_id}, sort=[("_id", pymongo.DESCENDING)])
        assert newest is not None and newest["result"] == {"attempt": 3}
        assert old.collection.count_documents({"task_id": task_id}) == 2  # replaced, none added
        assert storage.retrieve(FLOW, TASK, task_id) == {"attempt": 3}
        storage.delete(FLOW, TASK, task_id)
        assert old.collection.count_documents({"task_id": task_id}) == 0


def test_s3_without_serialize_json_stores_bytes_as_given_as_selinon_did(
    nodes: Path, old_workers: dict[str, OldWorker]
) -> None:
    old = old_workers["S3"]
    assert isinstance(old, OldS3)
    task_id = f"selinon-{uuid.uuid4()}"
    old.client.put_object(Bucket=old.bucket, Key=task_id, Body=b"\x00raw \xff bytes")
    with open_storages(nodes) as storages:
        storage = storages.get("S3Bytes")
        assert storage.retrieve(FLOW, TASK, task_id) == b"\x00raw \xff bytes"
        storage.store(NODE_ARGS, FLOW, TASK, task_id, b"new \x01 bytes")
        assert old.client.get_object(Bucket=old.bucket, Key=task_id)["Body"].read() == b"new \x01 bytes"
        with pytest.raises(ResultNotSerializableError, match="set serialize_json: true"):
            storage.store(NODE_ARGS, FLOW, TASK, task_id, {"a": 1})
        assert storage.retrieve(FLOW, TASK, task_id) == b"new \x01 bytes"  # the refused store wrote nothing


def test_the_postgresql_table_made_here_is_selinons(
    nodes: Path, postgres_url: str, postgres_database: str, unique: str
) -> None:
    """With no table yet, the built-in makes the one Selinon's model makes (columns, key, unique, sequence)."""
    columns = (
        "SELECT column_name, data_type, character_maximum_length, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'result' ORDER BY ordinal_position"
    )
    constraints = (
        "SELECT tc.constraint_type, kcu.column_name FROM information_schema.table_constraints tc "
        "JOIN information_schema.key_column_usage kcu USING (constraint_name) WHERE tc.table_name = 'result' "
        "ORDER BY 1"
    )
    sequence = "SELECT sequence_name FROM information_schema.sequences"
    with (
        database(postgres_url, f"{unique}_selinon") as by_selinon,
        psycopg.connect(by_selinon, autocommit=True) as old,
    ):
        for statement in SELINON_DDL:
            old.execute(statement)
        expected = [old.execute(query).fetchall() for query in (columns, constraints, sequence)]
    with open_storages(nodes) as storages:  # no table in the nodes' database yet: the built-in makes it
        storages.get("PostgreSQL").connect()
    with psycopg.connect(postgres_database, autocommit=True) as new:
        assert [new.execute(query).fetchall() for query in (columns, constraints, sequence)] == expected


def selinons_own(nodes: Path, name: str) -> Any:
    """Selinon 1.4's own adapter for the entry ``name`` of ``nodes``, connected (Redis: given the client its
    ``connect`` makes, without the ``charset``/``errors`` arguments redis-py 8 no longer takes)."""
    [entry] = [entry for entry in yaml.safe_load(nodes.read_text())["storages"] if entry["name"] == name]
    module = importlib.import_module(entry["import"])
    adapter = getattr(module, entry.get("classname", name))(**entry["configuration"])
    if name == "Redis":
        adapter.conn = redis.Redis(host=adapter.host, port=adapter.port, db=adapter.db)
    else:
        adapter.connect()
    return adapter


def test_selinons_own_adapters_read_what_the_builtins_write_and_the_reverse(
    nodes: Path, old_workers: dict[str, OldWorker]
) -> None:
    """Selinon's code itself, where it still runs on these drivers (its PostgreSQL adapter does not:
    docs/selinon.md shows the same check run in a venv of Selinon 1.4's time)."""
    with open_storages(nodes) as storages:
        for name in ("Redis", "MongoDB", "S3", "Filesystem"):
            selinon, builtin = selinons_own(nodes, name), storages.get(name)
            by_selinon, by_builtin = f"selinon-{uuid.uuid4()}", f"builtin-{uuid.uuid4()}"
            selinon.store(NODE_ARGS, FLOW, TASK, by_selinon, RESULT)
            assert builtin.retrieve(FLOW, TASK, by_selinon) == RESULT, name
            builtin.store(NODE_ARGS, FLOW, TASK, by_builtin, RESULT)
            assert selinon.retrieve(FLOW, TASK, by_builtin) == RESULT, name
            old_workers[name].check(by_selinon, RESULT)
            old_workers[name].check(by_builtin, RESULT)
            selinon.delete(FLOW, TASK, by_builtin)
            builtin.delete(FLOW, TASK, by_selinon)
            selinon.disconnect()
