"""Faults injected for real, against real workers: a storage server killed with SIGKILL mid-load and
restarted, frozen with SIGSTOP mid-load (and during a warm shutdown), or down at start."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pymongo
import pytest
import redis

from tests.freezing import Freezer, OwnMariaDB, OwnMongoWire, OwnMoto, thaw_quietly
from tests.own_servers import OwnPostgres, OwnRedis, OwnServer
from tests.services import S3_KEYS
from tests.worker_app import store_with_retry, task_failures, task_states
from tests.workers import ROOT, WorkerProcess, inspect_storages, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

TASKS = 400
#: Each try waits at most 0.5 s: shorter than the outage, so that the outage reaches the tasks.
RETRY = "retry: {attempts: 3, backoff: 0.05, max_backoff: 0.5}\n    timeout: 1.5"


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

    configuration = f'{{url: "{server.url}", key_prefix: "{prefix}:"}}'
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


def mariadb_target(directory: Path, table: str) -> Target:
    server = OwnMariaDB(directory)

    def stored() -> list[int]:
        if not server.query(f"SELECT 1 FROM information_schema.tables WHERE table_name = '{table}'"):
            return []
        return [int(i) for (i,) in server.query(f"SELECT JSON_VALUE(result, '$.i') FROM test.{table}")]

    configuration = f'{{connection_string: "{server.url}", table_name: {table}}}'
    return Target(server, f"SqlStorage\n    configuration: {configuration}", stored)


def mongo_target(directory: Path, collection: str) -> Target:
    server = OwnMongoWire(directory)

    def stored() -> list[int]:
        client: Any = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000)
        try:
            documents = client["faults"][collection].find({}, {"result": 1})
            return [json.loads(document["result"])["i"] for document in documents]
        finally:
            client.close()

    configuration = f'{{uri: "{server.url}", db_name: faults, collection_name: {collection}}}'
    return Target(server, f"MongoStorage\n    configuration: {configuration}", stored)


#: moto in one process: replay the recorded requests through a private port, then serve the public one.
#: Both servers share the process's S3 state, so the public port opens only once the state is back.
_DURABLE_MOTO = """
import json, sys, threading
from moto.moto_api import recorder
from moto.server import ThreadedMotoServer
from tests.servers import free_port
port, replaying = int(sys.argv[1]), sys.argv[2] == "replay"
def is_write(line):  # reads change nothing; a line cut by the crash was never acknowledged
    try:
        return json.loads(line)["method"] not in ("GET", "HEAD")
    except ValueError:
        return False
if replaying:
    lines = recorder.download_recording().splitlines(keepends=True)
    recorder.upload_recording("".join(line for line in lines if is_write(line)))
    private = ThreadedMotoServer("127.0.0.1", free_port(), verbose=False)
    private.start()
    recorder.replay_recording(target_host=f"http://127.0.0.1:{private._port}")
    private.stop()
ThreadedMotoServer("127.0.0.1", port, verbose=False).start()
threading.Event().wait()
"""


class DurableMoto(OwnMoto):
    """moto keeps its objects in memory: this one records every request to a file and, started again
    after a crash, replays them before it listens, so that what it acknowledged survives, as on S3."""

    @property
    def recording(self) -> Path:
        return self.directory / "moto-recording.jsonl"

    def command(self) -> list[str]:
        replay = "replay" if self.recording.exists() else "fresh"
        return [sys.executable, "-c", _DURABLE_MOTO, str(self.port), replay]

    def popen_options(self) -> dict[str, object]:
        recording = {"MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        return {"env": {**os.environ, **recording, "PYTHONPATH": str(ROOT)}, "cwd": ROOT}


def s3_target(directory: Path, bucket: str) -> Target:
    server = DurableMoto(directory)

    def stored() -> list[int]:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", **S3_KEYS)
        if bucket not in [found["Name"] for found in client.list_buckets()["Buckets"]]:
            return []
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ]
        return [json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["i"] for key in keys]

    keys = ", ".join(f"{option}: {value}" for option, value in S3_KEYS.items())
    configuration = f'{{endpoint_url: "{server.url}", bucket: {bucket}, region_name: us-east-1, {keys}}}'
    return Target(server, f"S3Storage\n    configuration: {configuration}", stored)


TARGETS = {
    "redis": redis_target,
    "postgres": postgres_target,
    "mariadb": mariadb_target,
    "mongo": mongo_target,
    "s3": s3_target,
}


def send_stores(numbers: range, queue: str) -> list[str]:
    """Send a ``store_with_retry`` task for each number; their ids."""
    return [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in numbers]


def storages_file(path: Path, target: Target, extra: str = "") -> Path:
    entry = f"  - name: Results\n    classname: {target.storage}\n    {RETRY}\n{extra}"
    path.write_text(f"storages:\n{entry}")
    return path


#: The pools each kill test runs side by side, each worker on its queue of its own, with its concurrency.
POOLS = {"prefork": 2, "threads": 4, "gevent": 16}


@pytest.mark.parametrize("kind", list(TARGETS))
def test_a_server_killed_and_restarted_mid_load_loses_and_duplicates_nothing(
    kind: str, tmp_path: Path, redis_url: str, queue: str, unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    """One server, and a prefork, a threads and a gevent worker storing into it side by side (each pool's
    tasks numbered apart); the server is killed mid-load and restarted."""
    target = TARGETS[kind](tmp_path, unique)
    storages = storages_file(tmp_path / "storages.yml", target)
    queues = {pool: f"{queue}-{pool}" for pool in POOLS}
    first = {pool: n * TASKS for n, pool in enumerate(POOLS)}
    total = len(POOLS) * TASKS
    with target.server:
        running = {
            pool: workers(storages=storages, pool=pool, concurrency=concurrency, queue=queues[pool]).start()
            for pool, concurrency in POOLS.items()
        }
        for worker in running.values():
            worker.wait_ready()
        sent = {
            pool: send_stores(range(first[pool], first[pool] + TASKS // 2), queues[pool]) for pool in POOLS
        }
        wait_for(lambda: len(target.stored()) >= total // 5, 60, "a fifth of the records")
        target.server.crash()  # SIGKILL, mid-load
        killed_at = time.monotonic()
        for pool in POOLS:  # the outage meets every pool's tasks, however fast the first half went
            sent[pool] += send_stores(range(first[pool] + TASKS // 2, first[pool] + TASKS), queues[pool])
        time.sleep(1.5)
        target.server.start()  # the same port and data
        outage = time.monotonic() - killed_at
        every = [task_id for ids in sent.values() for task_id in ids]

        def progress() -> str:
            """Each pool's task states, and the end of its worker's log."""
            return "\n".join(
                f"{pool}: {Counter(task_states(sent[pool]))}\n{running[pool].output[-2000:]}"
                for pool in POOLS
            )

        wait_for(
            lambda: all(s in ("SUCCESS", "FAILURE") for s in task_states(every)),
            240,
            "every task",
            detail=progress,
        )
        for pool, worker in running.items():
            assert worker.process is not None and worker.process.poll() is None, f"the {pool} worker died"
        assert task_states(every) == ["SUCCESS"] * total, task_failures(every)[:5]
        stored = target.stored()
        assert len(set(stored)) == total, f"{total - len(set(stored))} records lost"
        assert sorted(stored) == list(range(total)), "a record is duplicated or wrong"
        for worker in running.values():
            assert worker.stop(signal.SIGTERM) == 0
    retries = {pool: len(re.findall(r"retry: Retry in", worker.output)) for pool, worker in running.items()}
    assert all(retries.values()), f"the outage did not hit every pool's tasks: {retries}"
    assert all("StorageUnavailableError" in worker.output for worker in running.values())
    print(
        f"\n{kind}: outage {outage:.1f} s, task retries {retries}, {TASKS} records per pool, none lost or duplicated"
    )


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_storage_down_at_start_is_served_once_its_server_comes_up(
    kind: str, tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    target = TARGETS[kind](tmp_path, unique)
    storages = storages_file(tmp_path / "storages.yml", target)
    worker = workers(storages=storages, pool="prefork", concurrency=2, queue=queue).start().wait_ready()
    down = re.compile(r"storage Results could not connect at start \(\w+\); it will connect on first use")
    # each prefork child logs it on its own schedule, maybe after the worker's "ready"
    wait_for(lambda: down.search(worker.output) is not None, 10, "the child to log its storage down")
    sent = [store_with_retry.apply_async(("Results", {"i": i}), queue=queue).id for i in range(20)]
    time.sleep(1.0)
    with target.server:
        wait_for(lambda: all(s == "SUCCESS" for s in task_states(sent)), 120, "every task")
        assert sorted(target.stored()) == list(range(20))
        assert worker.stop(signal.SIGTERM) == 0


#: The storage's whole-call timeout in the frozen-server tests, in seconds.
FROZEN_TIMEOUT = 2
FROZEN_TASKS = 300
#: Tasks sent once the server is frozen (as many as the pool runs at once, and more).
FROZEN_LATE_TASKS = 20


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_a_server_frozen_mid_load_holds_no_task_past_its_timeout_and_loses_nothing(
    pool: str, tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    """PostgreSQL frozen with SIGSTOP (all its processes) for 6 s mid-load, then again while the worker
    makes a warm shutdown: calls end within the storage's ``timeout:``, the tasks retry and all finish
    once it answers, and the warm shutdown ends within the timeout too.

    More tasks are sent once it is frozen: a worker can finish the first batch between the test seeing a
    fifth of it stored and the freeze, and then no call would meet the frozen server."""
    target = postgres_target(tmp_path, unique)
    storages = storages_file(tmp_path / "storages.yml", target)
    storages.write_text(storages.read_text().replace("timeout: 1.5", f"timeout: {FROZEN_TIMEOUT}"))
    concurrency = {"prefork": 2, "threads": 4, "gevent": 16}[pool]
    freezer = Freezer()
    with target.server:
        try:
            worker = workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue)
            worker.start().wait_ready()
            sent = send_stores(range(FROZEN_TASKS), queue)
            wait_for(lambda: len(target.stored()) >= FROZEN_TASKS // 5, 60, "a fifth of the records")
            with freezer.frozen(target.server):
                frozen_at = time.monotonic()
                sent += send_stores(range(FROZEN_TASKS, FROZEN_TASKS + FROZEN_LATE_TASKS), queue)
                wait_for(
                    lambda: "StorageUnavailableError" in worker.output,
                    FROZEN_TIMEOUT + 4,
                    "a call to give up",
                )
                gave_up_after = time.monotonic() - frozen_at
                time.sleep(max(0.0, 6 - gave_up_after))
            wait_for(lambda: all(s in ("SUCCESS", "FAILURE") for s in task_states(sent)), 120, "every task")
            assert task_states(sent) == ["SUCCESS"] * len(sent)
            stored = target.stored()
            assert sorted(stored) == list(range(len(sent))), "a record is lost, duplicated or wrong"
            counted = counts_of_store(worker, concurrency if pool == "prefork" else 1)
            assert counted["timeouts"] >= 1 and counted["retries"] >= 1, counted

            # a warm shutdown while tasks wait on the frozen server (sent once it is frozen: a pool that
            # ran them before the freeze would leave the shutdown nothing to wait for)
            with freezer.frozen(target.server):
                late = [
                    store_with_retry.apply_async(("Results", {"i": -1}), queue=queue).id for _ in range(8)
                ]
                running = min(len(late), concurrency)
                wait_for(
                    lambda: sum(f"[{task_id}] received" in worker.output for task_id in late) >= running,
                    30,
                    "the late tasks to reach the pool",
                )
                time.sleep(0.5)  # the tasks are in their calls
                stopping_at = time.monotonic()
                exit_status = worker.stop(signal.SIGTERM, timeout=60)
                shutdown = time.monotonic() - stopping_at
            assert exit_status == 0, worker.output[-3000:]
            gave_up_late = [task_id for task_id in late if f"[{task_id}] retry: Retry in" in worker.output]
            assert gave_up_late, f"no late task met the frozen server:\n{worker.output[-6000:]}"
        finally:
            freezer.close()
            thaw_quietly(target.server)
    # (the first batch may be done before the freeze: then the first call is a late task, sent after it)
    assert gave_up_after <= FROZEN_TIMEOUT + 1.5, f"the first call gave up after {gave_up_after:.1f} s"
    # the running tasks end within their timeout; the worker then closes its pool and broker connection
    assert shutdown <= FROZEN_TIMEOUT + 8, f"warm shutdown took {shutdown:.1f} s with the server frozen"
    print(
        f"\npostgres frozen, {pool}: first call gave up after {gave_up_after:.1f} s "
        f"({counted['timeouts']} calls timed out, {counted['retries']} retries in inspect storages), "
        f"{len(sent)}/{len(sent)} records exact, warm shutdown while frozen {shutdown:.1f} s, "
        f"{len(gave_up_late)} of {len(late)} late tasks gave up during it"
    )


def counts_of_store(worker: WorkerProcess, processes: int) -> dict[str, int]:
    """Store calls, retries and timeouts of storage Results, summed over the processes ``celery inspect
    storages`` reports (prefork children refresh their reports every 0.5 s: ask until all have)."""
    reports: list[Any] = []

    def all_reported() -> bool:
        reports[:] = inspect_storages(worker)["processes"]
        return len(reports) >= processes

    wait_for(all_reported, 30, "every process to report")
    stores = [report["storages"]["Results"]["operations"]["store"] for report in reports]
    assert all(report["storages"]["Results"]["timeout"] == FROZEN_TIMEOUT for report in reports)
    return {key: sum(store[key] for store in stores) for key in ("calls", "retries", "timeouts")}
