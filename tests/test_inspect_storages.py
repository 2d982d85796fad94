"""``celery -A app inspect storages`` reports every worker process's storages, prefork children included."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.storages_files import write_storages
from tests.worker_app import store_in
from tests.workers import WorkerProcess, inspect_storages, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]


def store_calls(processes: list[dict[str, Any]]) -> dict[str, int]:
    """Store calls per storage, summed over the reported processes."""
    return {
        name: sum(p["storages"][name]["operations"]["store"]["calls"] for p in processes)
        for name in ("Unsafe", "Safe")
    }


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 4)])
def test_inspect_reports_each_process_with_its_counts(
    pool: str,
    concurrency: int,
    tmp_path: Path,
    redis_url: str,
    queue: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    storages = write_storages(tmp_path, tmp_path / "events.jsonl")
    worker = workers(storages=storages, pool=pool, concurrency=concurrency, queue=queue).start().wait_ready()
    results = [store_in.apply_async(([name],), queue=queue) for _ in range(10) for name in ("Unsafe", "Safe")]
    task_pids = {int(result.get(timeout=60)) for result in results}
    # Prefork children refresh their reports every 0.5 s: ask until every process and store is reported.
    reported: list[dict[str, Any]] = []
    reporting = concurrency if pool == "prefork" else 1

    def all_reported() -> bool:
        reported[:] = inspect_storages(worker)["processes"]
        calls = store_calls(reported)
        return len(reported) >= reporting and calls["Unsafe"] >= 10 and calls["Safe"] >= 10

    wait_for(all_reported, 30, "every process to report every store")
    processes = reported
    assert worker.stop(signal.SIGTERM) == 0

    pids = {process["pid"] for process in processes}
    if pool == "prefork":
        assert len(processes) == concurrency and worker.pid not in pids and task_pids <= pids
    else:
        assert pids == {worker.pid}
    assert store_calls(processes) == {"Unsafe": 10, "Safe": 10}
    for process in processes:
        unsafe = process["storages"]["Unsafe"]
        assert unsafe["class"] == "RecordingStorage" and unsafe["connected"] is True
        assert unsafe["guard"] == "thread"  # prefork children too: a task may start threads
        assert process["storages"]["Safe"]["guard"] == "none"
        store = unsafe["operations"]["store"]
        if store["calls"]:
            assert (
                store["errors"] == 0 and store["mean_ms"] >= 50
            )  # the recording adapter holds each call 50 ms
