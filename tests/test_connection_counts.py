"""Connections counted by the servers themselves: bounded per pool, none left after shutdown or a crash.

The worker's storages are a Redis of the test's own (``CLIENT LIST``) and the shared PostgreSQL, whose
sessions carry an application name of the test's own (``pg_stat_activity``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from billiard.exceptions import WorkerLostError

from tests.own_servers import OwnRedis
from tests.worker_app import store_in, task_states
from tests.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

BOTH = ["Redis", "Postgres"]
OBSERVER = "css-test-observer"  # the name of this test's own connections to the Redis it counts


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


@dataclass
class Servers:
    """The two storage servers of one test, as the servers see the worker."""

    storages: Path
    client: redis.Redis
    engine: sa.Engine
    prefix: str
    app_name: str

    def redis_connections(self) -> int:
        return sum(client["name"] != OBSERVER for client in self.client.client_list())

    def postgres_connections(self) -> int:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
        with self.engine.connect() as connection:
            return int(connection.execute(sa.text(query), {"name": self.app_name}).scalar_one())

    def connections(self) -> tuple[int, int]:
        return self.redis_connections(), self.postgres_connections()

    def redis_records(self) -> dict[str, int]:
        """Task id -> the pid that stored it."""
        keys = [str(key) for key in self.client.keys(f"{self.prefix}:*")]
        values = self.client.mget(keys) if keys else []
        return {
            key.split(":", 1)[1]: json.loads(str(value))["pid"]
            for key, value in zip(keys, values, strict=True)
        }

    def postgres_records(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(sa.text(f"SELECT task_id FROM {self.prefix}")).scalars())


@pytest.fixture
def servers(tmp_path: Path, redis_url: str, postgres_url: str, unique: str) -> Iterator[Servers]:
    app_name = f"css-{unique}"
    storages = tmp_path / "storages.yml"
    engine = sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+pg8000://"), poolclass=sa.pool.NullPool
    )
    own_redis = OwnRedis(tmp_path)
    with own_redis:
        storages.write_text(
            f"""\
storages:
  - name: Redis
    classname: RedisStorage
    configuration: {{url: "{own_redis.url}", key_prefix: "{unique}:"}}
  - name: Postgres
    classname: SqlStorage
    configuration:
      connection_string: "{postgres_url}"
      table_name: {unique}
      engine_options: {{connect_args: {{application_name: {app_name}}}}}
"""
        )
        observer = redis.Redis(port=own_redis.port, client_name=OBSERVER, decode_responses=True)
        yield Servers(storages, observer, engine, unique, app_name)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {unique}"))
    engine.dispose()


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
    pool: str, concurrency: int, extra: tuple[str, ...], servers: Servers, queue: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    tasks = 200 if extra else 120
    worker = workers(storages=servers.storages, pool=pool, concurrency=concurrency, queue=queue, extra=extra)
    with (
        Sampler(servers.redis_connections) as redis_peak,
        Sampler(servers.postgres_connections) as postgres_peak,
    ):
        worker.start().wait_ready()
        results = [store_in.apply_async((BOTH,), queue=queue) for _ in range(tasks)]
        pids = {result.get(timeout=180) for result in results}
        assert worker.stop(signal.SIGTERM) == 0
    after = servers.connections()

    bound = concurrency  # prefork: one connection per child; threads and greenlets: the pool's size
    print(f"\n{pool} -c {concurrency} {' '.join(extra)}: peak Redis {redis_peak.largest}, peak PostgreSQL "
          f"{postgres_peak.largest}, after shutdown {after}, {len(pids)} processes ran tasks")  # fmt: skip
    assert len(servers.redis_records()) == tasks
    assert 1 <= redis_peak.largest <= bound
    assert 1 <= postgres_peak.largest <= bound
    if pool != "prefork":
        assert postgres_peak.largest == 1, "threads and greenlets share one SqlStorage connection"
    if extra:
        assert len(pids) >= tasks - 1, "every task should have had a fresh child"
    assert after == (0, 0), "connections outlived the worker"


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 4)])
def test_sigterm_under_load_cuts_no_store_and_leaves_no_connection(
    pool: str, concurrency: int, servers: Servers, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    tasks = 300
    sent = [store_in.apply_async((BOTH, 0.05), queue=queue).id for _ in range(tasks)]
    worker = workers(storages=servers.storages, pool=pool, concurrency=concurrency, queue=queue)
    worker.start().wait_ready()
    wait_for(lambda: len(servers.redis_records()) >= 40, 60, "40 tasks to have stored")
    done_at_sigterm = len(servers.postgres_records())
    assert worker.stop(signal.SIGTERM) == 0
    after = servers.connections()  # the moment the worker has exited

    states = dict(zip(sent, task_states(sent), strict=True))
    finished = {task_id for task_id, state in states.items() if state == "SUCCESS"}
    failed = [task_id for task_id, state in states.items() if state == "FAILURE"]
    in_redis = set(servers.redis_records())
    half_done = in_redis ^ servers.postgres_records()
    print(f"\n{pool} -c {concurrency}: SIGTERM with {done_at_sigterm} tasks done, {len(finished)} done at exit, "
          f"connections right after exit (Redis, PostgreSQL) {after}")  # fmt: skip
    assert not failed and not half_done, "a store was cut off by the shutdown"
    assert in_redis == finished
    assert after == (0, 0), "connections outlived the worker"

    # Nothing was lost: what the first worker did not start, a second one does.
    second = workers(storages=servers.storages, pool=pool, concurrency=concurrency, queue=queue)
    second.start().wait_ready()
    wait_for(lambda: len(servers.postgres_records()) == tasks, 120, "every task to have stored")
    assert set(servers.redis_records()) == servers.postgres_records() == set(sent)
    assert second.stop(signal.SIGTERM) == 0
    assert servers.connections() == (0, 0)


def test_a_child_killed_mid_task_is_replaced_and_its_connections_go_with_it(
    servers: Servers, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    concurrency = 2
    worker = workers(storages=servers.storages, pool="prefork", concurrency=concurrency, queue=queue)
    with (
        Sampler(servers.redis_connections) as redis_peak,
        Sampler(servers.postgres_connections) as postgres_peak,
    ):
        worker.start().wait_ready()
        wait_for(lambda: servers.connections() == (2, 2), 30, "both children to connect both storages")
        stuck = store_in.apply_async((BOTH, 600), queue=queue)  # stores in Redis, then waits
        wait_for(lambda: stuck.id in servers.redis_records(), 30, "the task to have stored in Redis")
        victim = servers.redis_records()[stuck.id]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: servers.connections() == (2, 2), 30, "the replacement to connect, the victim's to go"
        )
        settled = time.monotonic() - killed_at
        wait_for(lambda: stuck.state == "FAILURE", 30, "the killed task to be reported")
        assert isinstance(stuck.result, WorkerLostError)
        results = [store_in.apply_async((BOTH,), queue=queue) for _ in range(100)]
        pids = {int(result.get(timeout=120)) for result in results}
        assert worker.stop(signal.SIGTERM) == 0
    after = servers.connections()
    print(f"\nchild {victim} killed mid-task: a replacement had connected both storages in {settled:.1f} s; "
          f"peak Redis {redis_peak.largest}, peak PostgreSQL {postgres_peak.largest}; after shutdown {after}")  # fmt: skip
    assert victim not in pids and len(pids) == concurrency, "the replacement child did not run tasks"
    assert redis_peak.largest <= concurrency + 1 and postgres_peak.largest <= concurrency + 1
    assert after == (0, 0)
