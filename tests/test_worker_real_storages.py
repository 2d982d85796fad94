"""Every adapter on its real server, inside real workers of every pool: stores land, reads match."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_selinon_storage import open_storages
from tests.services import S3_KEYS
from tests.worker_app import store_and_read_back
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.service]

POOLS = {"prefork": 2, "threads": 4, "eventlet": 8, "gevent": 8}
NAMES = ["Postgres", "MariaDB", "Redis", "Mongo", "S3"]


@pytest.mark.parametrize("pool", list(POOLS))
def test_all_adapters_serve_tasks_under_each_pool(
    pool: str,
    tmp_path: Path,
    queue: str,
    unique: str,
    redis_url: str,
    postgres_url: str,
    mariadb_url: str,
    mongo_uri: str,
    s3_endpoint: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    storages = tmp_path / "storages.yml"
    storages.write_text(
        f"""\
storages:
  - name: Postgres
    classname: SqlStorage
    configuration: {{connection_string: "{postgres_url}", table_name: {unique}}}
  - name: MariaDB
    classname: SqlStorage
    configuration: {{connection_string: "{mariadb_url}", table_name: {unique}}}
  - name: Redis
    classname: RedisStorage
    configuration: {{url: "{redis_url}", key_prefix: "{unique}:", ttl: 600}}
  - name: Mongo
    classname: MongoStorage
    configuration: {{uri: "{mongo_uri}", db_name: css_tests, collection_name: {unique}}}
  - name: S3
    classname: S3Storage
    configuration:
      bucket: {unique}
      endpoint_url: "{s3_endpoint}"
      use_ssl: false
      aws_access_key_id: "{S3_KEYS["aws_access_key_id"]}"
      aws_secret_access_key: "{S3_KEYS["aws_secret_access_key"]}"
"""
    )
    worker = workers(storages=storages, pool=pool, concurrency=POOLS[pool], queue=queue).start().wait_ready()
    sent = [
        store_and_read_back.apply_async((NAMES, {"i": i, "text": "ž" * i}), queue=queue) for i in range(30)
    ]
    assert [result.get(timeout=120) for result in sent] == [True] * 30
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "could not connect" not in worker.output

    with open_storages(storages) as opened:
        for name in NAMES:
            storage = opened.get(name)
            for i, result in enumerate(sent):
                assert storage.retrieve("test_flow", "store_and_read_back", result.id) == {
                    "i": i,
                    "text": "ž" * i,
                }
        opened.get("Postgres").adapter.handle().connection.exec_driver_sql(f"DROP TABLE {unique}")
        opened.get("MariaDB").adapter.handle().connection.exec_driver_sql(f"DROP TABLE {unique}")
