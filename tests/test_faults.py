"""Faults injected for real: a storage server killed with SIGKILL mid-load and restarted, or down at start."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.own_servers import OwnPostgres, OwnRedis, OwnServer
from tests.worker_app import store_with_retry, task_states
from tests.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

TASKS = 1000
RETRY = "retry: {attempts: 3, backoff: 0.05, max_backoff: 0.5}"


@dataclass
class Target:
    """A server the test may crash, the storage entry that points at it, and what it holds."""

    server: OwnServer
    storage: str
    stored: Callable[[], list[int]]  # the "i" of every stored record, in any order


def redis_target(directory: Path, prefix: str) -> Target:
    server = OwnRedis(directory)
    client = redis.Redis(port=server.port, socket_timeout=2)

    def stored() -> list[int]:
        keys = client.keys(f"{prefix}:*")
        return [json.loads(value or "null")["i"] for value in client.mget(keys)] if keys else []

    configuration = (
        f'{{url: "{server.url}", key_prefix: "{prefix}:", socket_timeout: 2, socket_connect_timeout: 1}}'
    )
    return Target(server, f"RedisStorage\n    configuration: {configuration}", stored)


def postgres_target(directory: Path, table: str) -> Target:
    server = OwnPostgres(directory)

    def stored() -> list[int]:
        if not server.query(f"SELECT 1 FROM pg_tables WHERE tablename = '{table}'"):
            return []
        return [int(i) for (i,) in server.query(f"SELECT result->>'i' FROM {table}")]

    # the default driver (psycopg, or pg8000 under eventlet), each wait bounded by the entry's timeout
    configuration = f'{{connection_string: "{server.url}", table_name: {table}}}'
    return Target(server, f"SqlStorage\n    configuration: {configuration}", stored)


TARGETS = {"redis": redis_target, "postgres": postgres_target}


def storages_file(path: Path, target: Target) -> Path:
    path.write_text(f"storages:\n  - name: Results\n    classname: {target.storage}\n    {RETRY}\n")
    return path


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_server_killed_and_restarted_mid_load_loses_and_duplicates_nothing(
    kind: str, pool: str, tmp_path: Path, redis_url: str, queue: str, unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    target = TARGETS[kind](tmp_path, unique)
    concurrency = {"prefork": 2, "threads": 4, "gevent": 16}[pool]
    storages = storages_file(tmp_path / "storages.yml", target)
    with target.server:
        worker = (
            workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue).start().wait_ready()
        )
        sent = [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in range(TASKS)]
        wait_for(lambda: len(target.stored()) >= TASKS // 5, 60, "a fifth of the records")
        target.server.crash()  # SIGKILL, mid-load
        killed_at = time.monotonic()
        time.sleep(1.5)
        target.server.start()  # the same port and data
        outage = time.monotonic() - killed_at
        wait_for(lambda: all(s in ("SUCCESS", "FAILURE") for s in task_states(sent)), 240, "every task")
        assert worker.process is not None and worker.process.poll() is None, "the worker died"
        assert task_states(sent) == ["SUCCESS"] * TASKS
        stored = target.stored()
        assert len(set(stored)) == TASKS, f"{TASKS - len(set(stored))} records lost"
        assert sorted(stored) == list(range(TASKS)), "a record is duplicated or wrong"
        assert worker.stop(signal.SIGTERM) == 0
    retries = len(re.findall(r"retry: Retry in", worker.output))
    assert retries > 0, "the outage did not hit any task: the test proved nothing"
    assert "StorageUnavailableError" in worker.output
    print(
        f"\n{kind} {pool}: outage {outage:.1f} s, {retries} task retries, {TASKS}/{TASKS} records, 0 duplicates"
    )


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_storage_down_at_start_is_served_once_its_server_comes_up(
    kind: str, tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    target = TARGETS[kind](tmp_path, unique)
    storages = storages_file(tmp_path / "storages.yml", target)
    worker = workers(storages=storages, pool="prefork", concurrency=2, queue=queue).start().wait_ready()
    assert re.search(
        r"storage Results could not connect at start \(\w+\); it will connect on first use", worker.output
    )
    sent = [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in range(20)]
    time.sleep(1.0)
    with target.server:
        wait_for(lambda: all(s == "SUCCESS" for s in task_states(sent)), 120, "every task")
        assert sorted(target.stored()) == list(range(20))
        assert worker.stop(signal.SIGTERM) == 0
