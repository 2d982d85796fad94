"""The demo's Celery app: broker and result backend on the local filesystem, so no server is needed."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from selinon import Config

from celery_selinon_storage import get_storage, install

HERE = Path(__file__).resolve().parent
DEMO_DIR = Path(os.environ.setdefault("DEMO_DIR", "/tmp/celery-selinon-storage-demo"))
for folder in ("queue", "control", "results"):
    (DEMO_DIR / folder).mkdir(parents=True, exist_ok=True)

app = Celery("demo", broker="filesystem://", backend=f"file://{DEMO_DIR / 'results'}")
app.conf.update(
    broker_transport="integration.demo.transport:Transport",
    broker_transport_options={
        "data_folder_in": str(DEMO_DIR / "queue"),
        "data_folder_out": str(DEMO_DIR / "queue"),
        "control_folder": str(DEMO_DIR / "control"),
        "polling_interval": 0.05,
    },
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)
install(app)

# Selinon: its tasks are registered at import (Celery consumes only what is registered before the
# worker starts); its storage calls go to the worker's managed storages.
Config.set_celery_app(app)
Config.set_config_yaml(str(HERE / "nodes.yml"), [str(HERE / "flows.yml")])


@app.task(bind=True, name="demo.square", ignore_result=True)
def square(self, n: int) -> None:  # type: ignore[no-untyped-def]
    """A plain Celery task: store n² with the worker process's id, read it back and check it."""
    storage = get_storage("Results")
    result = {"n": n, "square": n * n, "pid": os.getpid()}
    storage.store({"n": n}, "demo", "square", self.request.id, result)
    if storage.retrieve("demo", "square", self.request.id) != result:
        raise RuntimeError(f"read back something else for task {self.request.id}")
