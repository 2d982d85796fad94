"""``InMemoryStorage``: results in the worker process's memory (tests, demos, caches)."""

from __future__ import annotations

from typing import Any

from ..errors import OptionProblem
from .base import JsonStorage, Record


class InMemoryStorage(JsonStorage):
    """Keeps JSON results in a dict; each worker process has its own, lost when it exits."""

    concurrency_safe = True  # dict operations are atomic; nothing waits on I/O

    def __init__(self, max_records: int | None = None) -> None:
        if max_records is not None and max_records < 1:
            raise OptionProblem("max_records", "must be at least 1, or null for no limit")
        self.max_records = max_records

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_records={self.max_records!r})"

    def _open(self) -> dict[str, str]:
        return {}

    def _close(self, handle: Any) -> None:
        handle.clear()

    def _write(self, record: Record) -> str:
        records: dict[str, str] = self.handle()
        if self.max_records is not None and record.task_id not in records:
            while len(records) >= self.max_records:
                records.pop(next(iter(records)))  # oldest first
        records[record.task_id] = record.text
        return record.task_id

    def _read(self, task_id: str) -> str | None:
        found: str | None = self.handle().get(task_id)
        return found

    def _remove(self, task_id: str) -> bool:
        return self.handle().pop(task_id, None) is not None


class SelinonInMemoryStorage(InMemoryStorage):
    """Selinon's in-memory adapter's options (``echo``, ``json``: printing each record, not done here).

    Serves ``selinon.storages.memory.InMemoryStorage`` (Selinon 1.4) and selinonlib's ``InMemoryStorage``.
    Each process keeps its own records, as there.
    """

    def __init__(self, echo: bool | str = False, json: bool = False) -> None:
        super().__init__()

    def __repr__(self) -> str:
        return "SelinonInMemoryStorage()"
