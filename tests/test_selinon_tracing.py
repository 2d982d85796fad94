"""Selinon's tracing into a storage goes to the worker's managed instance of that storage.

nodes.yml's ``global: trace: - storage: {name: Traces, method: trace}`` makes Selinon's generated config
call ``TracingSqlStorage.trace(<Selinon's own instance>, event, details)``; that instance is never
connected in a worker whose storages are managed, so every trace call failed. ``TracingSqlStorage``
(tests/custom_adapters.py) stores each event it gets in SQLite, where the test reads them.
"""

from __future__ import annotations

import functools
import json
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selinon import Config, run_flow
from selinon.global_config import GlobalConfig
from selinon.trace import Trace

from celery_selinon_storage import open_storages
from celery_selinon_storage.selinon_bridge import StorageTrace, bridge_selinon, managed_trace
from tests.custom_adapters import TracingSqlStorage
from tests.selinon_app.app import HERE, app
from tests.workers import WorkerProcess, wait_for

FLOWS = 4

NODES = """\
global:
  default_task_queue: "{queue}"
  default_dispatcher_queue: "{queue}"
  trace:
    - storage:
        name: Traces
        method: trace
tasks:
  - name: Start
    import: tests.selinon_app.tasks
    storage: Results
  - name: Double
    import: tests.selinon_app.tasks
    storage: Results
  - name: AddOne
    import: tests.selinon_app.tasks
    storage: Results
flows:
  - chain
storages:
  - name: Results
    import: celery_selinon_storage
    classname: SqlStorage
    configuration: {{connection_string: "sqlite:///{directory}/results.sqlite3"}}
  - name: Traces
    import: tests.custom_adapters
    classname: TracingSqlStorage
    configuration: {{connection_string: "sqlite:///{traces}"}}
"""


@pytest.fixture
def selinons_trace_state() -> Iterator[None]:
    """Selinon keeps its trace functions and storage trace entries in class attributes, for the whole process:
    put back what was there, so that no later test calls this test's trace storage."""
    functions, storages = list(Trace._trace_functions), list(GlobalConfig._trace_storage)
    yield
    Trace._trace_functions[:] = functions
    GlobalConfig._trace_storage[:] = storages


def trace_events(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT result FROM selinon_results WHERE flow_name = 'trace'").fetchall()
    return [json.loads(row[0]) for row in rows]


@pytest.mark.worker
@pytest.mark.service
def test_a_flows_trace_events_reach_the_managed_trace_storage(
    tmp_path: Path,
    queue: str,
    redis_url: str,
    workers: Callable[..., WorkerProcess],
    selinons_trace_state: None,
) -> None:
    traces = tmp_path / "traces.sqlite3"
    nodes = tmp_path / "nodes.yml"
    nodes.write_text(NODES.format(queue=queue, directory=tmp_path, traces=traces))
    env = {"CSS_TEST_NODES": str(nodes), "CSS_TEST_SELINON_CONFIG": "early"}
    # prefork: Selinon's config, its trace functions with it, is set in the parent at import, before the fork;
    # the managed storages live in the children (Selinon's dispatcher retries make a run take ~15 s)
    worker = workers(
        storages=nodes, pool="prefork", concurrency=2, queue=queue, app="tests.selinon_app.app", env=env
    ).start()
    worker.wait_ready()

    if Config.celery_app is not app:
        Config.set_celery_app(app)
    Config.set_config_yaml(str(nodes), [str(HERE / "flows.yml")])
    dispatchers = [run_flow("chain", {"n": n}) for n in range(FLOWS)]

    def states() -> list[str]:
        return [str(app.backend.get_task_meta(d.id)["status"]) for d in dispatchers]

    wait_for(
        lambda: all(state in ("SUCCESS", "FAILURE") for state in states()),
        120,
        "every flow to finish",
        detail=lambda: f"{states()}\n{worker.output}",
    )
    assert states() == ["SUCCESS"] * FLOWS, worker.output
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "Failed to report to trace function" not in worker.output, worker.output

    events = trace_events(traces)
    counts = Counter(event["event"] for event in events)
    # each flow: three tasks started, stored their result and ended; its dispatcher started and ended it
    assert counts["TASK_START"] == counts["TASK_END"] == counts["STORAGE_STORE"] == 3 * FLOWS, counts
    assert counts["FLOW_START"] == counts["FLOW_END"] == FLOWS, counts
    assert {event["task_name"] for event in events if event["event"] == "STORAGE_STORE"} == {
        "Start",
        "Double",
        "AddOne",
    }
    assert worker.pid not in {event["pid"] for event in events}  # served in the children


def test_a_storage_trace_set_before_or_after_the_bridge_reaches_the_managed_instance(
    tmp_path: Path, selinons_trace_state: None
) -> None:
    traces = tmp_path / "traces.sqlite3"
    storages_file = tmp_path / "storages.yml"
    storages_file.write_text(
        "storages:\n  - name: Traces\n    import: tests.custom_adapters\n    classname: TracingSqlStorage\n"
        f"    configuration: {{connection_string: 'sqlite:///{traces}'}}\n"
    )
    selinons = TracingSqlStorage(f"sqlite:///{traces}")  # as Selinon's generated config makes it
    before = functools.partial(TracingSqlStorage.trace, selinons)
    Trace._trace_functions.append(before)  # set before the bridge: the bridge rewrites it
    bridge_selinon()
    Config.trace_by_func(functools.partial(TracingSqlStorage.trace, selinons))  # set after
    routed = [func for func in Trace._trace_functions if isinstance(func, StorageTrace)]
    assert len(routed) == 2 and before not in Trace._trace_functions
    assert all(func.method == "trace" for func in routed)

    storage_mapping = Config.storage_mapping
    Config.storage_mapping = {"Traces": selinons}
    try:
        with open_storages(storages_file) as storages:
            Trace.log(Trace.FLOW_START, {"flow_name": "chain"})
            stats = storages.get("Traces").stats["trace"]
            assert (stats.calls, stats.errors) == (2, 0)
    finally:
        Config.storage_mapping = storage_mapping
    assert [event["event"] for event in trace_events(traces)] == ["FLOW_START", "FLOW_START"]
    assert not selinons.is_connected()  # Selinon's own instance was never used


def test_other_trace_functions_are_left_as_they_are() -> None:
    def mine(event: int, details: dict[str, Any]) -> None:
        return None

    logging_trace = Trace.logging_trace_func
    assert managed_trace(mine) is mine
    assert managed_trace(logging_trace) is logging_trace
