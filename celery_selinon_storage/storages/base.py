"""What every built-in adapter shares: its name in messages, strict JSON and error records."""

from __future__ import annotations

import json
import traceback
from types import TracebackType
from typing import Any, ClassVar

from selinon import DataStorage

from ..errors import MissingResultError, ResultNotSerializableError

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class JsonStorage(DataStorage):  # type: ignore[misc]
    """Base of the built-in adapters: results are JSON documents keyed by task id."""

    #: True when one instance may be called by several threads or greenlets at once.
    concurrency_safe: ClassVar[bool] = False

    #: The storage's name from the YAML; set by the lifecycle, used in messages.
    storage_name: str = ""

    def __del__(self) -> None:
        """Disconnecting is the lifecycle's job, never the garbage collector's."""

    @property
    def label(self) -> str:
        """The name to use in messages."""
        return self.storage_name or type(self).__name__

    def not_connected(self) -> ConnectionError:
        """The error for a call before ``connect`` or after ``disconnect``."""
        return ConnectionError(f"storage {self.label!r} is not connected")

    def missing(self, task_id: str) -> MissingResultError:
        """The error for a task id with no record."""
        return MissingResultError(self.label, task_id)

    def dumps(self, task_id: str, value: Any) -> str:
        """``value`` as strict JSON text, or ``ResultNotSerializableError``."""
        try:
            return to_json(value)
        except (TypeError, ValueError) as exc:
            raise ResultNotSerializableError(self.label, task_id, str(exc)) from None

    def store_error(
        self, node_args: Any, flow_name: str, task_name: str, task_id: str, exc_info: ExcInfo
    ) -> Any:
        """Record the failure (type, message, traceback text) in place of a result."""
        return self.store(node_args, flow_name, task_name, task_id, {"error": error_record(exc_info)})


#: Strict, compact JSON: NaN and infinities are refused (no JSON parser outside Python reads them).
#: Built once: ``json.dumps`` with options makes a new encoder on every call.
to_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class ClientStorage(JsonStorage):
    """An adapter whose connection is one thread-safe driver client (its pool inside): connected while
    it holds one; disconnecting closes it."""

    concurrency_safe = True
    _client: Any = None

    def is_connected(self) -> bool:
        return self._client is not None

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def client(self) -> Any:
        """The connected client, or the "not connected" error."""
        if self._client is None:
            raise self.not_connected()
        return self._client


def error_record(exc_info: ExcInfo) -> dict[str, str]:
    """A JSON-ready description of an exception."""
    exc_type, exc, tb = exc_info
    return {
        "type": f"{exc_type.__module__}.{exc_type.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc_type, exc, tb)),
    }
