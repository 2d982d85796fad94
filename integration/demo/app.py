"""The demo's Celery app: a broker on the local filesystem, so no server is needed."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from celery_selinon_storage import get_storage, install

DEMO_DIR = Path(os.environ.setdefault("DEMO_DIR", "/tmp/celery-selinon-storage-demo"))
QUEUE_DIR = DEMO_DIR / "queue"
QUEUE_DIR.mkdir(parents=True, exist_ok=True)

app = Celery("demo", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(QUEUE_DIR),
        "data_folder_out": str(QUEUE_DIR),
        "control_folder": str(DEMO_DIR / "control"),
        "polling_interval": 0.05,
    },
    task_ignore_result=True,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)
install(app)


@app.task(bind=True, name="demo.square")
def square(self, n: int) -> None:  # type: ignore[no-untyped-def]
    """Store n² with the worker process's id, read it back and check it."""
    storage = get_storage("Results")
    result = {"n": n, "square": n * n, "pid": os.getpid()}
    storage.store({"n": n}, "demo_flow", "square", self.request.id, result)
    if storage.retrieve("demo_flow", "square", self.request.id) != result:
        raise RuntimeError(f"read back something else for task {self.request.id}")
