"""Real ``celery worker`` processes under every pool own their storages as the README promises."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.recording import read_events
from tests.storages_files import write_storages
from tests.worker_app import app, store_in
from tests.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

#: Pool -> concurrency used for it.
POOLS = {"prefork": 2, "threads": 4, "eventlet": 8, "gevent": 8, "solo": 1}
CONCURRENT_IN_ONE_PROCESS = {"threads", "eventlet", "gevent"}

Event = dict[str, Any]


def by_instance(events: list[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event["instance"]].append(event)
    return grouped


def overlaps(events: list[Event]) -> int:
    """How many store calls began while another call on the same instance was still running."""
    begins = {e["task_id"]: e["t"] for e in events if e["event"] == "store-begin"}
    ends = {e["task_id"]: e["t"] for e in events if e["event"] == "store-end"}
    intervals = sorted((begins[t], ends[t]) for t in begins if t in ends)
    return sum(1 for (_, end), (begin, _) in itertools.pairwise(intervals) if begin < end)


def check_instances(events: list[Event]) -> dict[str, list[Event]]:
    """Each instance: used only in its own process, connected before use, disconnected once, last."""
    instances = by_instance(events)
    for instance_events in instances.values():
        kinds = [e["event"] for e in instance_events]
        assert kinds[0] == "create", kinds[:3]
        assert {e["pid"] for e in instance_events} == {instance_events[0]["pid"]}, "used outside its process"
        first_use = next((i for i, k in enumerate(kinds) if k == "store-begin"), len(kinds))
        assert "connect" in kinds[:first_use], "used before it was connected"
        assert "store-while-disconnected" not in kinds
        assert kinds.count("disconnect") == 1, kinds
        assert kinds[-1] == "disconnect", "a call ran after the disconnect"
        assert kinds.count("store-begin") == kinds.count("store-end"), "a store was cut off"
    # one instance per storage per process
    per_process = defaultdict(list)
    for instance_events in instances.values():
        per_process[(instance_events[0]["pid"], instance_events[0]["label"])].append(instance_events)
    assert all(len(found) == 1 for found in per_process.values()), "two instances in one process"
    return instances


@pytest.mark.parametrize("pool", list(POOLS))
def test_every_pool_owns_guards_and_closes_its_storages(
    pool: str, tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    events_path = tmp_path / "events.jsonl"
    storages = write_storages(tmp_path, events_path)
    concurrency = POOLS[pool]
    worker = workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue).start().wait_ready()
    # prefork and solo run one task at a time, but a task may start threads: a thread lock there too
    # (prefork children log their storages on their own schedule, maybe after the worker's "ready")
    guard = f"guard={'thread' if pool in ('prefork', 'solo') else pool.rstrip('s')}"
    wait_for(lambda: guard in worker.output, 10, guard, detail=lambda: worker.output)

    fast = [store_in.apply_async(([name],), queue=queue) for _ in range(12) for name in ("Unsafe", "Safe")]
    task_pids = {int(result.get(timeout=60)) for result in fast}

    # Tasks still running at SIGTERM must finish their stores before anything disconnects.
    slow = [store_in.apply_async((["Slow"],), queue=queue) for _ in range(concurrency * 2)]
    running = min(concurrency, 2)
    wait_for(
        lambda: (
            sum(e["event"] == "store-begin" and e["label"] == "Slow" for e in read_events(events_path))
            >= running
        ),
        30,
        "slow stores to begin",
    )
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "Traceback" not in worker.output

    # Nothing lost: a second worker finishes whatever the first did not start.
    second = workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue).start().wait_ready()
    for result in slow:
        result.get(timeout=60)
    assert second.stop(signal.SIGTERM) == 0, second.output

    events = read_events(events_path)
    instances = check_instances(events)
    creating_pids = {e["pid"] for e in events if e["event"] == "create"}
    if pool == "prefork":
        assert worker.pid not in creating_pids and second.pid not in creating_pids, (
            "the parent built storages"
        )
        assert task_pids <= creating_pids
    else:
        assert creating_pids == {worker.pid, second.pid}
        assert task_pids == {worker.pid}
    stored = {e["task_id"] for e in events if e["event"] == "store-end"}
    assert {r.id for r in fast + slow} <= stored, "a task's store is missing"

    for instance_events in instances.values():
        label = instance_events[0]["label"]
        if label == "Unsafe":
            assert overlaps(instance_events) == 0, "the guard let two calls into an unsafe adapter"
    if pool in CONCURRENT_IN_ONE_PROCESS:
        safe_overlaps = sum(overlaps(i) for i in instances.values() if i[0]["label"] == "Safe")
        assert safe_overlaps > 0, "a concurrency-safe adapter was serialised"


def test_prefork_children_replaced_by_recycling_or_a_crash_build_fresh_instances(
    tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    events_path = tmp_path / "events.jsonl"
    storages = write_storages(tmp_path, events_path)
    worker = (
        workers(
            storages=storages,
            pool="prefork",
            concurrency=2,
            queue=queue,
            extra=("--max-tasks-per-child", "2"),
        )
        .start()
        .wait_ready()
    )

    results = [store_in.apply_async((["Unsafe"],), queue=queue) for _ in range(12)]
    task_pids = {int(result.get(timeout=60)) for result in results}
    assert len(task_pids) >= 6, "children were not recycled"

    # A child killed outright is replaced by one that builds its own instances.
    events = read_events(events_path)
    children = {e["pid"] for e in events if e["event"] == "create"}
    closed = {e["pid"] for e in events if e["event"] == "disconnect"}
    live = [pid for pid in children - closed if _alive(pid)]
    assert live, "no live child found"
    killed_at = time.monotonic()
    os.kill(live[0], signal.SIGKILL)
    after_crash = [store_in.apply_async((["Unsafe"],), queue=queue) for _ in range(4)]
    for result in after_crash:
        result.get(timeout=60)
    assert worker.stop(signal.SIGTERM) == 0, worker.output

    events = read_events(events_path)
    survivors = [e for e in events if e["pid"] != live[0]]
    check_instances(survivors)  # every other child disconnected its own, once
    # (the killed child may have been on its way out, recycled, when the signal came: no claim about it)
    born_after = {e["pid"] for e in events if e["event"] == "create" and e["t"] > killed_at}
    assert born_after - children, "no child built fresh instances after the crash"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def teardown_module() -> None:
    app.close()


def test_a_slow_connect_neither_kills_a_prefork_child_nor_lets_a_task_use_it_unconnected(
    tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    events_path = tmp_path / "events.jsonl"
    storages = tmp_path / "storages.yml"
    storages.write_text(
        "storages:\n  - name: Unsafe\n    classname: RecordingStorage\n    import: tests.recording\n"
        f"    configuration: {{log_path: '{events_path}', label: Unsafe, connect_seconds: 6.0}}\n"
    )
    worker = workers(storages=storages, pool="prefork", concurrency=1, queue=queue).start().wait_ready()
    results = [store_in.apply_async((["Unsafe"],), queue=queue) for _ in range(3)]
    for result in results:
        result.get(timeout=60)
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "storages still connecting after 2.0s, continuing in the background: Unsafe" in worker.output
    assert "Timed out waiting for UP message" not in worker.output
    assert "SIGKILL" not in worker.output
    events = read_events(events_path)
    check_instances(events)
    assert len({e["pid"] for e in events}) == 1, "the child was replaced"


@pytest.mark.parametrize("pool", ["prefork", "eventlet", "gevent", "solo"])
def test_cold_shutdown_disconnects_without_hanging(
    pool: str, tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    # Celery 5.7's own cold shutdown fails with a traceback under threads and solo (no kill_job) and
    # under eventlet and gevent (a blocking call in the hub); what is ours must still not hang or fail.
    events_path = tmp_path / "events.jsonl"
    storages = write_storages(tmp_path, events_path)
    worker = workers(storages=storages, pool=pool, concurrency=2, queue=queue).start().wait_ready()
    store_in.apply_async((["Unsafe", "Safe"],), queue=queue).get(timeout=30)
    store_in.apply_async((["Slow"],), queue=queue)
    wait_for(
        lambda: any(e["event"] == "store-begin" and e["label"] == "Slow" for e in read_events(events_path)),
        30,
        "a slow store to begin",
    )
    # Not hanging: stop() fails the test unless the worker has exited 20 s after SIGQUIT. Its exit status
    # is Celery's (1 under eventlet and gevent, whose cold shutdown fails as said above).
    worker.stop(signal.SIGQUIT, timeout=20)
    assert "Hitting Ctrl+C again will terminate all running tasks" in worker.output  # cold shutdown began
    for ours in (
        "StorageClosedError",
        "WrongProcessError",
        "StoragesNotStartedError",
        "failed to disconnect",
    ):
        assert ours not in worker.output
    events = read_events(events_path)
    used = {e["instance"] for e in events if e["event"] == "store-begin"}
    disconnected = [e["instance"] for e in events if e["event"] == "disconnect"]
    assert used <= set(disconnected), "an instance that was used was not disconnected"
    assert len(disconnected) == len(set(disconnected)), "an instance was disconnected twice"
