"""A storage adapter that records every call to a shared log file, for tests across processes.

Each event is one JSON line written with a single ``write`` on an ``O_APPEND`` file, so lines of
several processes never interleave. Times are ``time.monotonic()`` (one clock for the machine).
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from selinon import DataStorage

from celery_selinon_storage import MissingResultError
from celery_selinon_storage.specs import BUILDING_TO_CHECK
from celery_selinon_storage.storages.redis import RedisStorage


def _task_id_of_caller() -> str:
    try:
        import greenlet  # present under eventlet and gevent

        return f"{threading.get_ident()}:{id(greenlet.getcurrent())}"
    except ImportError:
        return str(threading.get_ident())


def record_event(
    log_path: str, event: str, label: str, instance: str, task_id: str | None, **extra: Any
) -> None:
    """Append one event line to ``log_path``."""
    line = json.dumps(
        {
            "event": event,
            "label": label,
            "instance": instance,
            "pid": os.getpid(),
            "caller": _task_id_of_caller(),
            "task_id": task_id,
            "t": time.monotonic(),
            **extra,
        }
    )
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def made_by_this_package() -> bool:
    """Whether the instance being built is one of the worker's managed storages (not Selinon's own)."""
    return any("celery_selinon_storage/lifecycle.py" in frame.filename for frame in traceback.extract_stack())


class RecordingStorage(DataStorage):  # type: ignore[misc]
    """Not concurrency-safe: the worker's guard must serialise its callers."""

    concurrency_safe = False

    def __init__(
        self, log_path: str, label: str, call_seconds: float = 0.05, connect_seconds: float = 0.0
    ) -> None:
        self.log_path = log_path
        self.label = label
        self.call_seconds = call_seconds
        self.connect_seconds = connect_seconds
        self.instance = uuid.uuid4().hex
        self.connected = False
        self.results: dict[str, Any] = {}
        if not BUILDING_TO_CHECK.get():  # the loader's check instance is built and dropped, never used
            self._record("create")

    def __del__(self) -> None:
        """No cleanup here."""

    def _record(self, event: str, task_id: str | None = None) -> None:
        record_event(self.log_path, event, self.label, self.instance, task_id)

    def connect(self) -> None:
        time.sleep(self.connect_seconds)  # a slow server
        self._record("connect")
        self.connected = True

    def is_connected(self) -> bool:
        return self.connected

    def disconnect(self) -> None:
        self._record("disconnect")
        self.connected = False

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        if not self.connected:
            self._record("store-while-disconnected", task_id)
        self._record("store-begin", task_id)
        time.sleep(self.call_seconds)  # green under eventlet/gevent: lets other tasks run meanwhile
        self.results[task_id] = result
        self._record("store-end", task_id)
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        try:
            return self.results[task_id]
        except KeyError:
            raise MissingResultError(self.label, task_id) from None


class SafeRecordingStorage(RecordingStorage):
    """Declares itself concurrency-safe: the guard must let its callers overlap."""

    concurrency_safe = True


class RecordingRedisStorage(RedisStorage):
    """A real RedisStorage that also logs who made it and every call, to tell Selinon's instances from ours."""

    def __init__(self, log_path: str, label: str, **options: Any) -> None:
        super().__init__(**options)
        self.log_path, self.event_label, self.instance = log_path, label, uuid.uuid4().hex
        if not BUILDING_TO_CHECK.get():
            self._record("create", managed=made_by_this_package())

    def _record(self, event: str, task_id: str | None = None, **extra: Any) -> None:
        record_event(self.log_path, event, self.event_label, self.instance, task_id, **extra)

    def connect(self) -> None:
        self._record("connect")
        super().connect()

    def disconnect(self) -> None:
        self._record("disconnect")
        super().disconnect()

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        self._record("store", task_id, task_name=task_name)
        return str(super().store(node_args, flow_name, task_name, task_id, result))

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        self._record("retrieve", task_id, task_name=task_name)
        return super().retrieve(flow_name, task_name, task_id)


def read_events(log_path: Path) -> list[dict[str, Any]]:
    """Every recorded event, in the order written."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line]
