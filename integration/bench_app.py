"""The Celery app of the end-to-end benchmark: the same ~1 KB result kept by a managed storage or by
Celery's own result backend, on the same Redis server."""

from __future__ import annotations

import os
import threading

from celery import Celery

from celery_selinon_storage import get_storage, install
from celery_selinon_storage.storages.redis import RedisStorage

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
PAYLOAD = {
    "url": "https://example.com/" + "a" * 40,
    "status": 200,
    "items": [{"id": i, "name": f"item-{i}", "score": i * 1.5} for i in range(20)],
}

app = Celery("bench", broker=f"{REDIS}/10", backend=f"{REDIS}/11")
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    worker_prefetch_multiplier=16,
    result_expires=600,
)
install(app)


class GuardedRedisStorage(RedisStorage):
    """RedisStorage that claims not to be concurrency-safe, to measure what the guard costs."""

    concurrency_safe = False


@app.task(bind=True, name="bench.managed", ignore_result=True)
def managed(self, storage: str) -> None:  # type: ignore[no-untyped-def]
    """Keep the result in a managed storage."""
    get_storage(storage).store(None, "bench", "managed", self.request.id, PAYLOAD)


_raw: dict[int, RedisStorage] = {}
_raw_lock = threading.Lock()


@app.task(bind=True, name="bench.raw", ignore_result=True)
def raw(self, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Keep the result through the bare adapter: no managed storage, no guard (one per process)."""
    storage = _raw.get(os.getpid())
    if storage is None:
        with _raw_lock:
            storage = _raw.get(os.getpid())
            if storage is None:
                storage = RedisStorage(url=f"{REDIS}/12", key_prefix=f"{prefix}:")
                storage.connect()  # before other threads can see it
                _raw[os.getpid()] = storage
    storage.store(None, "bench", "raw", self.request.id, PAYLOAD)


@app.task(name="bench.backend")
def backend() -> dict[str, object]:
    """Keep the result in Celery's result backend."""
    return PAYLOAD
