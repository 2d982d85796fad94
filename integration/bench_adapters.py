"""Each adapter's store and retrieve against the plain driver doing the same work, on the same server.

The same ~1 KB JSON record keyed by task id: upserted by store, fetched and decoded by retrieve.
Adapter and plain driver alternate in short batches in one process (who goes first flips every
round), and the table reports ops/s over all rounds and the ratio adapter/plain.

python -m integration.bench_adapters [--rounds 5] [--scale 1.0] [--only redis,postgresql]
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pg8000.dbapi
import pymongo
import pymysql
import redis

from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.mongo import MongoStorage
from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.s3 import S3Storage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.servers import mongo_wire_server, s3_server

RECORD = {
    "url": "https://example.com/" + "a" * 40,
    "status": 200,
    "items": [{"id": i, "name": f"item-{i}", "score": i * 1.5} for i in range(20)],
}
FLOW, TASK = "bench_flow", "bench_task"


class Plain:
    """The plain driver doing the adapter's work: connect once, then store and retrieve."""

    def store(self, task_id: str, result: Any) -> None:
        raise NotImplementedError

    def retrieve(self, task_id: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PlainSql(Plain):
    """One autocommit DBAPI connection, the same upsert SQL written by hand."""

    UPSERT: ClassVar[dict[str, str]] = {
        "postgresql": (
            "INSERT INTO {t} (task_id, flow_name, task_name, node_args, result) VALUES (%s, %s, %s, CAST(%s AS JSONB), CAST(%s AS JSONB)) "
            "ON CONFLICT (task_id) DO UPDATE SET flow_name = excluded.flow_name, task_name = excluded.task_name, "
            "node_args = excluded.node_args, result = excluded.result, updated_at = now()"
        ),
        "mysql": (
            "INSERT INTO {t} (task_id, flow_name, task_name, node_args, result) VALUES (%s, %s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE flow_name = VALUES(flow_name), task_name = VALUES(task_name), "
            "node_args = VALUES(node_args), result = VALUES(result), updated_at = now()"
        ),
        "sqlite": (
            "INSERT INTO {t} (task_id, flow_name, task_name, node_args, result) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET flow_name = excluded.flow_name, task_name = excluded.task_name, "
            "node_args = excluded.node_args, result = excluded.result, updated_at = CURRENT_TIMESTAMP"
        ),
    }
    SELECT: ClassVar[dict[str, str]] = {
        "postgresql": "SELECT CAST(result AS TEXT) FROM {t} WHERE task_id = %s",
        "mysql": "SELECT result FROM {t} WHERE task_id = %s",
        "sqlite": "SELECT result FROM {t} WHERE task_id = ?",
    }

    def __init__(self, dialect: str, connection: Any, table: str) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.upsert = self.UPSERT[dialect].format(t=table)
        self.select = self.SELECT[dialect].format(t=table)

    def store(self, task_id: str, result: Any) -> None:
        self.cursor.execute(self.upsert, ("plain-" + task_id, FLOW, TASK, "null", json.dumps(result)))

    def retrieve(self, task_id: str) -> Any:
        self.cursor.execute(self.select, ("plain-" + task_id,))
        return json.loads(self.cursor.fetchone()[0])

    def close(self) -> None:
        self.connection.close()


class PlainRedis(Plain):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def store(self, task_id: str, result: Any) -> None:
        self.client.set(self.prefix + task_id, json.dumps(result))

    def retrieve(self, task_id: str) -> Any:
        return json.loads(self.client.get(self.prefix + task_id))  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()


class PlainMongo(Plain):
    def __init__(self, client: Any, collection: Any) -> None:
        self.client, self.collection = client, collection

    def store(self, task_id: str, result: Any) -> None:
        document = {"_id": task_id, "flow_name": FLOW, "task_name": TASK, "result": json.dumps(result)}
        self.collection.replace_one({"_id": task_id}, document, upsert=True)

    def retrieve(self, task_id: str) -> Any:
        return json.loads(self.collection.find_one({"_id": task_id}, {"result": 1})["result"])

    def close(self) -> None:
        self.client.close()


class PlainS3(Plain):
    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def store(self, task_id: str, result: Any) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=f"plain/{task_id}.json", Body=json.dumps(result).encode(),
            ContentType="application/json", Metadata={"flow-name": FLOW, "task-name": TASK},
        )  # fmt: skip

    def retrieve(self, task_id: str) -> Any:
        return json.loads(
            self.client.get_object(Bucket=self.bucket, Key=f"plain/{task_id}.json")["Body"].read()
        )

    def close(self) -> None:
        self.client.close()


@dataclass
class Backend:
    name: str
    ops: int  # per operation per round
    adapter: Callable[[], JsonStorage]
    plain: Callable[[JsonStorage], Plain]  # built after the adapter connected (table, bucket exist)


def backends(workdir: Path, stack: ExitStack) -> Iterator[Backend]:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    yield Backend(
        "postgresql", 2000, lambda: SqlStorage("postgresql://postgres@127.0.0.1:5432/test", table_name=table),
        lambda _: PlainSql("postgresql", _autocommit(pg8000.dbapi.connect(user="postgres", host="127.0.0.1", database="test")), table),
    )  # fmt: skip
    yield Backend(
        "mariadb", 2000, lambda: SqlStorage("mysql://root@127.0.0.1:3306/test", table_name=table),
        lambda _: PlainSql("mysql", pymysql.connect(host="127.0.0.1", user="root", database="test", autocommit=True), table),
    )  # fmt: skip
    sqlite_path = workdir / "bench.sqlite3"
    yield Backend(
        "sqlite", 5000, lambda: SqlStorage(f"sqlite:///{sqlite_path}", table_name=table),
        lambda _: PlainSql("sqlite", _sqlite(sqlite_path), table),
    )  # fmt: skip
    yield Backend(
        "redis", 3000, lambda: RedisStorage(key_prefix=f"{table}:"),
        lambda _: PlainRedis(redis.Redis(socket_timeout=10, socket_connect_timeout=5), f"{table}:plain:"),
    )  # fmt: skip
    mongo_uri = stack.enter_context(mongo_wire_server(workdir))
    yield Backend(
        "mongodb (nx-27017)", 500, lambda: MongoStorage("bench", table, uri=mongo_uri),
        lambda _: _plain_mongo(mongo_uri, table),
    )  # fmt: skip
    endpoint = stack.enter_context(s3_server(workdir))
    s3: dict[str, Any] = {
        "endpoint_url": endpoint,
        "aws_access_key_id": "k",
        "aws_secret_access_key": "s",
        "region_name": "us-east-1",
    }
    yield Backend(
        "s3 (moto_server)", 300, lambda: S3Storage(bucket=table.replace("_", "-"), use_ssl=False, **s3),
        lambda _: PlainS3(boto3.session.Session().client("s3", **s3), table.replace("_", "-")),
    )  # fmt: skip


def _autocommit(connection: Any) -> Any:
    connection.autocommit = True
    return connection


def _sqlite(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


def _plain_mongo(uri: str, collection: str) -> PlainMongo:
    client: Any = pymongo.MongoClient(uri)
    return PlainMongo(client, client["bench"][collection + "_plain"])


def measure(backend: Backend, rounds: int, scale: float) -> dict[str, float]:
    adapter = backend.adapter()
    adapter.connect()
    plain = backend.plain(adapter)
    ops = max(10, int(backend.ops * scale))
    ids = [f"task-{i}" for i in range(ops)]
    runs: dict[tuple[str, str], list[float]] = {}
    # adapter and plain keep their records apart (table rows, keys, collections or objects of their own
    # where they share a server); each first writes every record once, untimed, so that every timed
    # store is the same kind of upsert: a replacement.
    calls: dict[str, tuple[Callable[[str], Any], Callable[[str], Any]]] = {
        "adapter": (
            lambda i: adapter.store(None, FLOW, TASK, i, RECORD),
            lambda i: adapter.retrieve(FLOW, TASK, i),
        ),
        "plain": (lambda i: plain.store(i, RECORD), plain.retrieve),
    }
    for store, retrieve in calls.values():
        for task_id in ids:
            store(task_id)
        assert all(retrieve(task_id) == RECORD for task_id in ids[:20])
    # Short alternating batches: a drift of the machine or the server (they share two cores)
    # falls on both sides alike.
    batch = max(10, ops // 10)
    for round_number in range(rounds):
        order = list(calls) if round_number % 2 == 0 else list(reversed(calls))
        for start in range(0, ops, batch):
            chunk = ids[start : start + batch]
            for operation in (0, 1):
                for who in order:
                    call = calls[who][operation]
                    gc.collect()
                    started = time.perf_counter()
                    for task_id in chunk:
                        call(task_id)
                    runs.setdefault((who, ("store", "retrieve")[operation]), []).append(
                        time.perf_counter() - started
                    )
    adapter.disconnect()
    plain.close()
    rates = {f"{who}_{op}": ops * rounds / sum(times) for (who, op), times in runs.items()}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the operations per round")
    parser.add_argument("--only", default="", help="comma-separated backend names")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    print("| backend | store ops/s (adapter / plain) | ratio | retrieve ops/s (adapter / plain) | ratio |")
    print("|---|---|---|---|---|")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for backend in backends(workdir, stack):
            if only and backend.name.split()[0] not in only:
                continue
            rates = measure(backend, args.rounds, args.scale)
            cells = []
            for op in ("store", "retrieve"):
                ours, theirs = rates[f"adapter_{op}"], rates[f"plain_{op}"]
                cells += [f"{ours:,.0f} / {theirs:,.0f}", f"{ours / theirs:.3f}"]
            print(f"| {backend.name} | " + " | ".join(cells) + " |", flush=True)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
