"""Selinon flows in real workers of every pool read and write only the worker's managed storages."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from selinon import Config, run_flow

from celery_selinon_storage import open_storages
from tests.recording import read_events
from tests.selinon_app.app import HERE, app
from tests.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.service]

POOLS = {"prefork": 2, "threads": 4, "eventlet": 8, "gevent": 8}
CASES = [(pool, "early") for pool in POOLS] + [("prefork", "late"), ("threads", "late")]


@pytest.mark.parametrize(("pool", "when"), CASES)
def test_flows_complete_on_managed_storages_and_never_touch_selinons_own(
    pool: str,
    when: str,
    tmp_path: Path,
    queue: str,
    unique: str,
    redis_url: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    events_path = tmp_path / "events.jsonl"
    nodes = tmp_path / "nodes.yml"
    nodes.write_text(
        (HERE / "nodes.yml.in")
        .read_text()
        .replace("@EVENTS@", str(events_path))
        .replace("@REDIS@", redis_url)
        .replace("@PREFIX@", unique)
        .replace("@QUEUE@", queue)
    )
    env = {"CSS_TEST_NODES": str(nodes), "CSS_TEST_SELINON_CONFIG": when}
    worker = workers(
        storages=nodes, pool=pool, concurrency=POOLS[pool], queue=queue, app="tests.selinon_app.app", env=env
    ).start()
    worker.wait_ready()

    if Config.celery_app is not app:  # once per process, as a real client does
        Config.set_celery_app(app)
    Config.set_config_yaml(str(nodes), [str(HERE / "flows.yml")])
    dispatchers = [run_flow("chain", {"n": n}) for n in range(6)]

    # Poll the stored states: a long-lived result subscription of this test process is not under test.
    def states() -> list[str]:
        return [str(app.backend.get_task_meta(d.id)["status"]) for d in dispatchers]

    wait_for(
        lambda: all(state in ("SUCCESS", "FAILURE") for state in states()),
        120,
        "every flow to finish",
        detail=lambda: f"{states()}\n{worker.output}",
    )
    assert states() == ["SUCCESS"] * len(dispatchers), worker.output
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "Traceback" not in worker.output, worker.output

    events = read_events(events_path)
    made = {e["instance"]: e for e in events if e["event"] == "create"}
    selinons = {i for i, e in made.items() if not e["managed"]}
    managed = {i for i, e in made.items() if e["managed"]}
    assert selinons, "Selinon built no instances of its own: the test proves nothing"
    assert not [e for e in events if e["instance"] in selinons and e["event"] != "create"], (
        "Selinon's own instance was used"
    )
    calls = [e for e in events if e["event"] in ("store", "retrieve")]
    assert calls and all(e["instance"] in managed for e in calls)
    # every flow stored three results and read two parents through the storage
    assert sum(e["event"] == "store" for e in calls) == 3 * len(dispatchers)
    assert sum(e["event"] == "retrieve" for e in calls) >= 2 * len(dispatchers)
    if pool == "prefork":
        assert worker.pid not in {made[i]["pid"] for i in managed}

    final_ids = [e["task_id"] for e in calls if e["event"] == "store" and e["task_name"] == "AddOne"]
    with open_storages(nodes) as storages:
        values = sorted(storages.get("Results").retrieve("chain", "AddOne", i)["value"] for i in final_ids)
    assert values == [2 * n + 1 for n in range(6)]
