"""The Celery app of the published-files and rolling-upgrade tests: ``celery -A tests.selinon_published.worker_app``.

Its tasks reach the storages as tasks do (``get_storage``); the stand-in adapters the published files name
are importable from ``ADAPTERS``, which the tests put on the worker's ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from celery_selinon_storage import get_storage
from tests.worker_app import make_test_app

#: The directory of the stand-ins for the custom adapters (``thoth``, ``f8a_worker``, ``demo_worker``).
ADAPTERS = Path(__file__).with_name("adapters")

#: The node arguments the published adapters key their records by (thoth's by package name, the Travis ones
#: by organization, repo and build).
NODE_ARGS = {"package_name": "selinon", "organization": "selinon", "repo": "selinon", "build": 1}

app = make_test_app("selinon_published")


def round_trip(storage: Any, name: str) -> str | None:
    """Store a record through ``storage`` and read it back; what went wrong, or None."""
    task_id = f"css-published-{uuid.uuid4().hex}"
    result = {"storage": name, "values": [1, 2.5, "čaj", None, True]}
    try:
        storage.store(NODE_ARGS, "published_flow", "PublishedTask", task_id, result)
        got = storage.retrieve("published_flow", "PublishedTask", task_id)
    except Exception as exc:  # noqa: BLE001 - each storage's failure is reported, the others still run
        return f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):  # Selinon's adapters set no TTL: leave nothing in shared servers
        storage.delete("published_flow", "PublishedTask", task_id)
    return None if got == result else f"read back {got!r}"


@app.task(name="published.round_trips")
def round_trips(names: list[str]) -> dict[str, str]:
    """``round_trip`` through each named storage of this worker process; the failures by name."""
    failures = {name: round_trip(get_storage(name), name) for name in names}
    return {name: problem for name, problem in failures.items() if problem is not None}


@app.task(name="published.store")
def store(name: str, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> None:
    """Store a record as a task of Selinon's would."""
    get_storage(name).store(node_args, flow_name, task_name, task_id, result)


@app.task(name="published.retrieve")
def retrieve(name: str, flow_name: str, task_name: str, task_id: str) -> Any:
    """Read a record as Selinon's dispatcher reads a parent's result."""
    return get_storage(name).retrieve(flow_name, task_name, task_id)
