"""Connections counted by the servers themselves: bounded per pool, none left after shutdown."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tests.own_servers import OwnRedis
from tests.worker_app import store_in
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.service]


class Sampler:
    """Samples a connection count every 50 ms in a thread; remembers the largest."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count, self.largest, self._stop = count, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.largest = max(self.largest, self.count())
            time.sleep(0.05)


def storages_file(path: Path, redis_port: int, postgres_url: str, app_name: str, prefix: str) -> Path:
    path.write_text(
        f"""\
storages:
  - name: Redis
    classname: RedisStorage
    configuration: {{url: "redis://127.0.0.1:{redis_port}/0", key_prefix: "{prefix}:"}}
  - name: Postgres
    classname: SqlStorage
    configuration:
      connection_string: "{postgres_url}"
      table_name: {prefix}
      engine_options: {{connect_args: {{application_name: {app_name}}}}}
"""
    )
    return path


@pytest.mark.parametrize(
    ("pool", "concurrency", "extra"),
    [
        ("prefork", 3, ()),
        ("threads", 4, ()),
        ("gevent", 16, ()),
        ("prefork", 2, ("--max-tasks-per-child", "1")),
    ],
    ids=["prefork", "threads", "gevent", "prefork-recycling"],
)
def test_connections_stay_bounded_and_none_outlive_the_worker(
    pool: str, concurrency: int, extra: tuple[str, ...], tmp_path: Path, redis_url: str, postgres_url: str,
    queue: str, unique: str, workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    redis_server = OwnRedis(tmp_path)
    port = redis_server.port
    app_name = f"css-{unique}"
    storages = storages_file(tmp_path / "storages.yml", port, postgres_url, app_name, unique)
    engine = sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+pg8000://"), poolclass=sa.pool.NullPool
    )

    def postgres_connections() -> int:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
            return int(connection.execute(query, {"name": app_name}).scalar_one())

    with redis_server:
        client = redis.Redis(port=port)

        def redis_connections() -> int:
            return len(client.client_list()) - 1  # not this test's own

        tasks = 200 if extra else 120
        worker = workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue, extra=extra)
        with Sampler(redis_connections) as redis_peak, Sampler(postgres_connections) as postgres_peak:
            worker.start().wait_ready()
            results = [store_in.apply_async((["Redis", "Postgres"],), queue=queue) for _ in range(tasks)]
            pids = {result.get(timeout=180) for result in results}
            assert worker.stop(signal.SIGTERM) == 0
        after = (redis_connections(), postgres_connections())
        stored = len(client.keys(f"{unique}:*"))
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {unique}"))
    engine.dispose()

    bound = concurrency  # prefork: one connection per child; threads and greenlets: the pool's size
    print(f"\n{pool} -c {concurrency} {' '.join(extra)}: peak Redis {redis_peak.largest}, peak PostgreSQL "
          f"{postgres_peak.largest}, after shutdown {after}, {len(pids)} processes ran tasks")  # fmt: skip
    assert stored == tasks
    assert 1 <= redis_peak.largest <= bound
    assert 1 <= postgres_peak.largest <= bound
    if pool != "prefork":
        assert postgres_peak.largest == 1, "threads and greenlets share one SqlStorage connection"
    if extra:
        assert len(pids) >= tasks - 1, "every task should have had a fresh child"
    assert after == (0, 0), "connections outlived the worker"
