"""Faults injected for real: a storage server killed with SIGKILL mid-load and restarted, or down at start."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.servers import free_port, wait_for_port
from tests.worker_app import app, store_with_retry
from tests.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

TASKS = 1000


@contextmanager
def own_redis(directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of the test's own, persisting every write to its append-only file."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(directory / "redis.log")]  # fmt: skip
    process = subprocess.Popen(command)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def storages_for(path: Path, port: int, prefix: str) -> Path:
    path.write_text(
        f"""\
storages:
  - name: Results
    classname: RedisStorage
    configuration: {{url: "redis://127.0.0.1:{port}/0", key_prefix: "{prefix}:", socket_timeout: 2, socket_connect_timeout: 1}}
    retry: {{attempts: 3, backoff: 0.05, max_backoff: 0.5}}
"""
    )
    return path


def states(ids: list[str]) -> list[str]:
    return [str(app.backend.get_task_meta(task_id)["status"]) for task_id in ids]


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 4), ("gevent", 16)])
def test_a_redis_killed_and_restarted_mid_load_loses_and_duplicates_nothing(
    pool: str, concurrency: int, tmp_path: Path, redis_url: str, queue: str, unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    port = free_port()
    storages = storages_for(tmp_path / "storages.yml", port, unique)
    client = redis.Redis(port=port, socket_timeout=2)
    with own_redis(tmp_path, port) as server:
        worker = (
            workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue).start().wait_ready()
        )
        sent = [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in range(TASKS)]
        wait_for(lambda: client.dbsize() >= TASKS // 5, 60, "a fifth of the records")
        server.kill()  # SIGKILL, mid-load
        server.wait(10)
        killed_at = time.monotonic()
        time.sleep(1.5)
    with own_redis(tmp_path, port):  # the same port and append-only file
        outage = time.monotonic() - killed_at
        wait_for(lambda: all(s in ("SUCCESS", "FAILURE") for s in states(sent)), 240, "every task")
        assert worker.process is not None and worker.process.poll() is None, "the worker died"
        assert states(sent) == ["SUCCESS"] * TASKS
        keys = client.keys(f"{unique}:*")
        assert len(keys) == TASKS, f"{TASKS - len(keys)} records lost"
        values = sorted(json.loads(value or "null")["i"] for value in client.mget(keys))
        assert values == list(range(TASKS)), "a record is duplicated or wrong"
        assert worker.stop(signal.SIGTERM) == 0
    retries = len(re.findall(r"retry: Retry in", worker.output))
    assert retries > 0, "the outage did not hit any task: the test proved nothing"
    assert "StorageUnavailableError" in worker.output
    print(f"\n{pool}: outage {outage:.1f} s, {retries} task retries, {TASKS}/{TASKS} records, 0 duplicates")


def test_a_storage_down_at_start_is_served_once_its_server_comes_up(
    tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    storages = storages_for(tmp_path / "storages.yml", port, unique)
    worker = workers(storages=storages, pool="prefork", concurrency=2, queue=queue).start().wait_ready()
    assert (
        "storage Results could not connect at start (ConnectionError); it will connect on first use"
        in worker.output
    )
    sent = [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in range(20)]
    time.sleep(1.0)
    with own_redis(tmp_path, port):
        wait_for(lambda: all(s == "SUCCESS" for s in states(sent)), 120, "every task")
        assert len(redis.Redis(port=port).keys(f"{unique}:*")) == 20
        assert worker.stop(signal.SIGTERM) == 0
