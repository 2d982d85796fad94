"""The Celery app that the worker tests start as ``celery -A tests.worker_app worker``.

Broker and result backend: the Redis of ``CSS_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_selinon_storage import StorageUnavailableError, get_storage, install

REDIS_URL = os.environ.get("CSS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def make_test_app(name: str) -> Celery:
    """A Celery app on the test Redis, consuming the test's own queue, with the storages installed."""
    celery_app = Celery(name, broker=REDIS_URL, backend=REDIS_URL)
    celery_app.conf.update(
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
        task_default_queue=os.environ.get("CSS_TEST_QUEUE", "celery"),
        worker_prefetch_multiplier=1,
        result_expires=600,
        # kombu's Redis transport pools 10 connections by default: gevent -c 16 acking retried tasks while
        # a storage server restarts ran out of them ("Couldn't ack ... MaxConnectionsError")
        broker_transport_options={"max_connections": 64},
    )
    install(celery_app)
    return celery_app


app = make_test_app("worker_app")


def task_states(task_ids: list[str]) -> list[str]:
    """The stored state of each task (read from the result backend, without subscribing)."""
    return [str(app.backend.get_task_meta(task_id)["status"]) for task_id in task_ids]


def task_failures(task_ids: list[str]) -> list[str]:
    """The error of each task that failed, as its result backend holds it."""
    metas = [app.backend.get_task_meta(task_id) for task_id in task_ids]
    return [f"{meta['result']!r}" for meta in metas if meta["status"] == "FAILURE"]


@app.task(bind=True, name="tests.store_in")
def store_in(self, storage_names: list[str], pause: float = 0.0) -> str:  # type: ignore[no-untyped-def]
    """Store this process's pid in each named storage, keyed by this task's id, ``pause`` seconds apart.

    Returns the pid. A task stopped between two stores leaves the first record without the second.
    """
    for position, name in enumerate(storage_names):
        if position and pause:
            time.sleep(pause)
        get_storage(name).store(None, "test_flow", "store_in", self.request.id, {"pid": os.getpid()})
    return str(os.getpid())


@app.task(bind=True, name="tests.store_and_read_back")
def store_and_read_back(self, storage_names: list[str], payload: dict[str, object]) -> bool:  # type: ignore[no-untyped-def]
    """Store ``payload`` in each named storage and read it back; True when every copy is identical."""
    for name in storage_names:
        storage = get_storage(name)
        storage.store(None, "test_flow", "store_and_read_back", self.request.id, payload)
        if storage.retrieve("test_flow", "store_and_read_back", self.request.id) != payload:
            return False
    return True


@app.task(
    bind=True,
    name="tests.store_with_retry",
    autoretry_for=(StorageUnavailableError,),
    retry_backoff=0.2,
    retry_backoff_max=2,
    retry_jitter=False,
    max_retries=100,
)
def store_with_retry(self, storage_name: str, payload: dict[str, object]) -> str:  # type: ignore[no-untyped-def]
    """Store ``payload``; while the storage is unavailable, Celery retries the task."""
    get_storage(storage_name).store(None, "faults", "store_with_retry", self.request.id, payload)
    return str(self.request.id)
