"""Custom ``import:`` adapters for the loader tests, built the way real Selinon adapters are."""

from __future__ import annotations

import os
from typing import Any

from selinon import DataStorage

from celery_selinon_storage import MissingResultError


class DictStorage(DataStorage):  # type: ignore[misc]
    """Results in a dict; ``connect`` and friends do no I/O."""

    def __init__(self) -> None:
        self.results: dict[str, Any] | None = None

    def connect(self) -> None:
        self.results = {}

    def is_connected(self) -> bool:
        return self.results is not None

    def disconnect(self) -> None:
        self.results = None

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        assert self.results is not None
        self.results[task_id] = result
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        try:
            assert self.results is not None
            return self.results[task_id]
        except KeyError:
            raise MissingResultError(type(self).__name__, task_id) from None


class EnvironmentUrlStorage(DictStorage):
    """Reads its URL from the environment when built: ``'{VAR}'.format(**os.environ)``, a KeyError when unset."""

    def __init__(self, url: str = "redis://{CSS_TEST_UNSET_STORAGE_HOST}:6379/0") -> None:
        super().__init__()
        self.url = url.format(**os.environ)


class RaisingStorage(DictStorage):
    """Raises ``RuntimeError(message)`` when built (the message may hold anything)."""

    def __init__(self, message: str = "refused") -> None:
        super().__init__()
        raise RuntimeError(message)
