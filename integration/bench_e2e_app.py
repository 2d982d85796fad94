"""The Celery app of ``bench_e2e_pools``: one small result per task, kept by a managed storage (on Redis or
on PostgreSQL) or by Celery's own result backend on the same server (``redis://`` or ``db+postgresql://``).

Each task names where its result goes, so one worker runs every variant and the benchmark alternates
them in rounds. The two Celery backends are set per task (``backend=``); Celery's tracer stores through
the task's backend.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.backends.database import DatabaseBackend
from celery.backends.redis import RedisBackend

from celery_selinon_storage import get_storage, install
from integration.bench_selinon14 import records

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
#: Celery's database backend; SQLAlchemy 2.1 runs postgresql:// on psycopg 3
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/bench")
#: the ~200-byte record of bench_vs_plain
PAYLOAD: dict[str, object] = records()["200 B"]
#: Celery's tables for this run (set by the benchmark; the index names are the same for every table)
TABLES = os.environ.get("BENCH_CELERY_TABLES", "celery_e2e")

app = Celery("bench_e2e", broker=f"{REDIS}/10")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=16,
    result_expires=600,
    database_table_names={"task": f"{TABLES}_taskmeta", "group": f"{TABLES}_groupmeta"},
    # kombu's Redis broker pool, sized for gevent -c 16 (as the test app does)
    broker_pool_limit=64,
    broker_transport_options={"max_connections": 64},
)
install(app)

redis_backend = RedisBackend(app=app, url=f"{REDIS}/11")
database_backend = DatabaseBackend(app=app, url=POSTGRES)  # what db+postgresql://... makes


@app.task(bind=True, name="bench_e2e.managed", ignore_result=True)
def managed(self, storage: str) -> None:  # type: ignore[no-untyped-def]
    """Keep the result in the managed storage called ``storage``."""
    get_storage(storage).store(None, "bench", "managed", self.request.id, PAYLOAD)


@app.task(name="bench_e2e.redis_backend", backend=redis_backend)
def to_redis_backend() -> dict[str, object]:
    """Keep the result in Celery's Redis result backend."""
    return PAYLOAD


@app.task(name="bench_e2e.database_backend", backend=database_backend)
def to_database_backend() -> dict[str, object]:
    """Keep the result in Celery's database result backend (PostgreSQL)."""
    return PAYLOAD
