"""Selinon 1.4's own storage adapters doing the store and retrieve of ``bench_vs_plain``, on the same servers.

Selinon 1.4's adapters run only on the drivers of their day (SQLAlchemy 1.4 with SQLAlchemy-Utils,
redis-py < 6), so they live in a venv of their own:

    python3.11 -m venv .venv-selinon14
    .venv-selinon14/bin/pip install "selinon==1.4.*" "celery>=5,<6" "redis<6" "SQLAlchemy>=1.4,<2" \
        SQLAlchemy-Utils psycopg2-binary pymongo boto3

(``bench_vs_plain`` looks for it there, or where BENCH_SELINON14_PYTHON names its Python; a venv inside
the worktree wants ``.venv-selinon14/`` in .gitignore, which ruff follows.) Run alone, it prints each
adapter's ops/s (median of rounds):

    .venv-selinon14/bin/python -m integration.bench_selinon14 [--rounds 5] [--only postgresql,redis] \
        [--mongo mongodb://127.0.0.1:PORT] [--s3 http://127.0.0.1:PORT]

``bench_vs_plain`` starts it with ``--serve`` instead and drives it over stdin/stdout, one JSON line per
command, so that its batches alternate with the other sides' in the same rounds (the two processes never
run at once). What differs from our adapters, as Selinon 1.4 wrote them:

- PostgreSQL (``PostgreSQL``): a fixed table ``result`` (JSONB), ``INSERT`` through an ORM session and a
  commit, then a reload of the row for its id; a second store of a task id fails on its unique index,
  so every timed store here writes a new task id. Retrieve is an ORM query.
- MongoDB (``MongoDB``): ``insert_one`` (no upsert, so new task ids here too); retrieve is
  ``count_documents`` then ``find_one`` on ``task_id``, which has no index: both scan the collection.
- Redis (``Redis``): ``SET task_id`` of the whole record as JSON, no key prefix; ``GET`` and decode.
- S3 (``S3``, ``serialize_json: true``): ``put`` of the result as JSON at key ``task_id``; ``get``.

This module imports only the standard library at its top: ``bench_vs_plain`` (in the project's venv)
takes the records from here, so that both venvs store the very same ones.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from typing import Any


def records() -> dict[str, Any]:
    """The results every side stores, by size: a small one (~200 bytes of JSON) and a 64 KB one."""
    small = {
        "url": "https://example.com/products/1234",
        "status": 200,
        "items": [{"id": i, "name": f"item-{i}", "score": i * 1.5} for i in range(3)],
        "ok": True,
    }
    large = {
        "url": "https://example.com/products/1234",
        "status": 200,
        "items": [
            {"id": i, "name": f"item-{i}", "score": i * 1.5, "tags": ["alpha", "beta", "gamma"]}
            for i in range(874)
        ],
    }
    return {"200 B": small, "64 KB": large}


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what the adapters store)."""
    return len(json.dumps(value, separators=(",", ":")).encode())


FLOW, TASK = "bench_flow", "bench_task"


class SelinonSide:
    """One Selinon 1.4 adapter, connected, storing and retrieving records by task id."""

    def __init__(self, backend: str, options: dict[str, Any]) -> None:
        self.backend = backend
        self.options = options
        #: adapters that cannot replace a record get a new task id for every timed store
        self.inserts_only = backend in ("postgresql", "mongodb")
        self.generation = 0
        self.adapter = self._make()
        self.adapter.connect()

    def _make(self) -> Any:
        options = self.options
        if self.backend == "redis-plain":
            return PlainRedis(options["host"], options["port"], options["db"])
        if self.backend == "postgresql":
            from selinon.storages.postgresql import PostgreSQL

            return PostgreSQL(options["connection_string"])
        if self.backend == "redis":
            from selinon.storages.redis import Redis

            return Redis(host=options["host"], port=options["port"], db=options["db"])
        if self.backend == "mongodb":
            from selinon.storages.mongodb import MongoDB

            return MongoDB(
                options["db_name"], options["collection_name"], host=options["host"], port=options["port"]
            )
        if self.backend == "s3":
            import boto3
            from selinon.storages.s3 import S3

            # Selinon's connect creates a missing bucket with LocationConstraint None, which S3 refuses in
            # its default region: the bucket is made here first.
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=options["endpoint_url"],
                aws_access_key_id=options["aws_access_key_id"],
                aws_secret_access_key=options["aws_secret_access_key"],
                region_name=options["region_name"],
            )
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=options["bucket"])
            return S3(serialize_json=True, **options)
        raise SystemExit(
            f"bench_selinon14: unknown backend {self.backend!r}; use postgresql, redis, mongodb or s3"
        )

    def key(self, task_id: str) -> str:
        return f"{task_id}.{self.generation}" if self.inserts_only else task_id

    def prepare(self, record: Any, ids: list[str]) -> None:
        """Write every record once, untimed, and check that a few read back equal."""
        self.generation += 1
        for task_id in ids:
            self.adapter.store(None, FLOW, TASK, self.key(task_id), record)
        for task_id in ids[:10]:
            found = self.adapter.retrieve(FLOW, TASK, self.key(task_id))
            if found != record:
                raise SystemExit(f"bench_selinon14: {self.backend} gave back another record for {task_id!r}")

    def run(self, operation: str, record: Any, ids: list[str]) -> tuple[float, float]:
        """Wall-clock and CPU seconds for one store or retrieve of each id."""
        if operation == "store" and self.inserts_only:
            self.generation += 1
        keys = [self.key(task_id) for task_id in ids]
        adapter = self.adapter
        started, cpu = time.perf_counter(), time.process_time()
        if operation == "store":
            for key in keys:
                adapter.store(None, FLOW, TASK, key, record)
        else:
            for key in keys:
                adapter.retrieve(FLOW, TASK, key)
        return time.perf_counter() - started, time.process_time() - cpu

    def close(self) -> None:
        """Remove what the run wrote, then disconnect."""
        adapter = self.adapter
        if self.backend == "postgresql":
            adapter.session.rollback()
            adapter.session.close()
            with adapter.engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE IF EXISTS result")
                connection.exec_driver_sql("DROP SEQUENCE IF EXISTS result_id")
        elif self.backend == "mongodb":
            adapter.collection.drop()
        elif self.backend in ("redis", "redis-plain"):
            keys = list(adapter.conn.scan_iter(f"{self.options['prefix']}*", count=1000))
            for start in range(0, len(keys), 1000):
                adapter.conn.delete(*keys[start : start + 1000])
        elif self.backend == "s3":
            bucket = adapter._s3.Bucket(self.options["bucket"])
            bucket.objects.all().delete()
            bucket.delete()
        adapter.disconnect()


class PlainRedis:
    """redis-py's SET and GET of the result as JSON, behind Selinon's adapter interface: run in a process
    of its own, the control of the cross-process comparison (it should match the same client in-process)."""

    def __init__(self, host: str, port: int, db: int) -> None:
        self.host, self.port, self.db = host, port, db
        self.conn: Any = None

    def connect(self) -> None:
        import redis

        self.conn = redis.Redis(host=self.host, port=self.port, db=self.db)

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> None:
        self.conn.set(task_id, json.dumps(result))

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        return json.loads(self.conn.get(task_id))

    def disconnect(self) -> None:
        self.conn.close()


def versions() -> dict[str, str]:
    """Versions of Selinon and the drivers in this venv."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("selinon", "SQLAlchemy", "SQLAlchemy-Utils", "psycopg2-binary", "redis", "pymongo", "boto3"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def serve() -> None:
    """Answer one JSON command per line on stdin: open, prepare, collect, run, close (see
    ``bench_vs_plain``). The collector runs only when told, between rounds, as in the driving process."""
    gc.disable()
    side: SelinonSide | None = None
    payloads = records()
    for line in sys.stdin:
        command = json.loads(line)
        reply: dict[str, Any] = {}
        name = command["command"]
        if name == "open":
            side = SelinonSide(command["backend"], command["options"])
            reply["versions"] = versions()
        elif side is None:
            raise SystemExit("bench_selinon14: 'open' must come first")
        elif name == "prepare":
            side.prepare(payloads[command["payload"]], command["ids"])
        elif name == "collect":
            gc.collect()
        elif name == "run":
            wall, cpu = side.run(command["operation"], payloads[command["payload"]], command["ids"])
            reply.update(seconds=wall, cpu=cpu)
        elif name == "close":
            side.close()
            reply["closed"] = True
        print(json.dumps(reply), flush=True)
        if name == "close":
            return


def standalone(rounds: int, only: set[str], mongo: str | None, s3: str | None) -> None:
    """Each adapter alone: median ops/s of the rounds, per record size."""
    from urllib.parse import urlsplit

    tag = f"s14{time.time_ns() % 10**8}"
    backends: dict[str, tuple[dict[str, Any], int]] = {
        "postgresql": ({"connection_string": "postgresql://postgres@127.0.0.1:5432/selinon14_bench"}, 200),
        "redis": ({"host": "127.0.0.1", "port": 6379, "db": 9, "prefix": tag}, 1000),
    }
    if mongo:
        where = urlsplit(mongo)
        backends["mongodb"] = (
            {"host": where.hostname, "port": where.port, "db_name": "bench", "collection_name": tag},
            30,  # its retrieve scans the collection, which grows by this many documents a round
        )
    if s3:
        s3_options = {"endpoint_url": s3, "aws_access_key_id": "k", "aws_secret_access_key": "s",
                      "region_name": "us-east-1", "bucket": tag}  # fmt: skip
        backends["s3"] = (s3_options, 50)
    print(f"Selinon 1.4 adapters alone; {', '.join(f'{k} {v}' for k, v in versions().items())}")
    print("| backend | record | store ops/s | retrieve ops/s |")
    print("|---|---|---|---|")
    for backend, (options, count) in backends.items():
        if only and backend not in only:
            continue
        side = SelinonSide(backend, options)
        try:
            for label, record in records().items():
                ids = [f"{tag}-{i}" for i in range(count)]
                side.prepare(record, ids)
                rates: dict[str, list[float]] = {"store": [], "retrieve": []}
                for _ in range(rounds):
                    for operation, values in rates.items():
                        gc.collect()
                        values.append(count / side.run(operation, record, ids)[0])
                store, retrieve = (statistics.median(rates[operation]) for operation in ("store", "retrieve"))
                print(f"| {backend} | {label} | {store:,.0f} | {retrieve:,.0f} |", flush=True)
        finally:
            side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="take commands from bench_vs_plain on stdin")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated: postgresql, redis, mongodb, s3")
    parser.add_argument("--mongo", help="a MongoDB URI (nx-27017) to include MongoDB")
    parser.add_argument("--s3", help="an S3 endpoint URL (moto_server) to include S3")
    args = parser.parse_args()
    if args.serve:
        serve()
    else:
        standalone(args.rounds, {name for name in args.only.split(",") if name}, args.mongo, args.s3)


if __name__ == "__main__":
    main()
