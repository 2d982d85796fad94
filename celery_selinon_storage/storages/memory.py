"""``InMemoryStorage``: results in the worker process's memory (tests, demos, caches)."""

from __future__ import annotations

import json
from typing import Any

from .base import JsonStorage


class InMemoryStorage(JsonStorage):
    """Keeps JSON results in a dict; each worker process has its own, lost when it exits."""

    concurrency_safe = True  # dict operations are atomic; nothing waits on I/O

    def __init__(self, max_records: int | None = None) -> None:
        self.max_records = max_records
        self._records: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"InMemoryStorage(max_records={self.max_records!r})"

    def connect(self) -> None:
        if self._records is None:
            self._records = {}

    def is_connected(self) -> bool:
        return self._records is not None

    def disconnect(self) -> None:
        self._records = None

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        records = self._connected()
        text = self.dumps(task_id, result)
        if self.max_records is not None and task_id not in records and len(records) >= self.max_records:
            records.pop(next(iter(records)))  # oldest first
        records[task_id] = text
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        try:
            return json.loads(self._connected()[task_id])
        except KeyError:
            raise self.missing(task_id) from None

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        if self._connected().pop(task_id, None) is None:
            raise self.missing(task_id)

    def _connected(self) -> dict[str, str]:
        if self._records is None:
            raise self.not_connected()
        return self._records
