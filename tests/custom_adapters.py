"""Custom ``import:`` adapters for the loader tests, built the way real Selinon adapters are."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from selinon import DataStorage, StoragePool

from celery_selinon_storage import MissingResultError
from celery_selinon_storage.storages.sql import SqlStorage


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


class PackageInfoStorage(DictStorage):
    """Shaped like thoth's ProjectInfoStore and fabric8's adapters (tests/selinon_published/README.md): a
    client attribute made at connect (``.ceph``), plain attributes (``bucket_name``), extra methods the tasks
    call, a generator over the records, and a property that looks up another storage, as fabric8's ``s3``."""

    def __init__(
        self, bucket_name: str = "packages", other_storage: str = "", call_seconds: float = 0.0
    ) -> None:
        super().__init__()
        self.bucket_name = bucket_name
        self.other_storage = other_storage
        self.call_seconds = call_seconds
        self.ceph: dict[str, Any] | None = None
        #: Callers inside a method right now, and the most ever seen at once (the guard keeps it at 1).
        self.inside = 0
        self.most_inside = 0

    def connect(self) -> None:
        super().connect()
        self.ceph = {}

    def disconnect(self) -> None:
        super().disconnect()
        self.ceph = None

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        assert self.ceph is not None, "store() on a disconnected adapter"
        self.ceph[node_args["package_name"]] = result
        return str(node_args["package_name"])

    def retrieve_project_info(self, package_name: str) -> Any:
        """Like thoth's: the record stored for a package (KeyError when there is none)."""
        with self._one_caller():
            assert self.ceph is not None, "retrieve_project_info() on a disconnected adapter"
            return self.ceph[package_name]

    def get_project_listing(self, *, prefix: str = "") -> list[str]:
        with self._one_caller():
            assert self.ceph is not None
            return sorted(name for name in self.ceph if name.startswith(prefix))

    def iter_project_info_documents(self) -> Iterator[tuple[str, Any]]:
        """Like thoth's: reads the client lazily, one document per step."""
        assert self.ceph is not None
        for name in sorted(self.ceph):
            with self._one_caller():
                assert self.ceph is not None, "a step ran on a disconnected adapter"
                document = self.ceph[name]
            yield name, document

    @staticmethod
    def describe(name: str) -> str:
        return f"package {name}"

    @classmethod
    def kind(cls) -> str:
        return cls.__name__

    @property
    def other(self) -> Any:
        """fabric8's ``s3`` property: another storage, looked up from inside this adapter."""
        return StoragePool.get_connected_storage(self.other_storage)

    def fail(self, error: str) -> None:
        raise RuntimeError(error)

    def _one_caller(self) -> Any:
        adapter = self

        class OneCaller:
            def __enter__(self) -> None:
                adapter.inside += 1
                adapter.most_inside = max(adapter.most_inside, adapter.inside)
                time.sleep(adapter.call_seconds)

            def __exit__(self, *exc: object) -> None:
                adapter.inside -= 1

        return OneCaller()


#: The flow name a forwarded copy is stored under: a copy is not forwarded again.
FORWARDED_FLOW = "forwarded"


class ForwardingSqlStorage(SqlStorage):
    """A real SqlStorage (one connection, so guarded) whose ``store`` also stores a copy in another storage,
    from inside its own call, through Selinon's StoragePool: as fabric8's ``AmazonS3.store_error`` writes to
    ``BayesianPostgres``. ``pause`` seconds pass between its own write and the copy, so two tasks storing into
    two such storages that forward to each other both hold their own guard when they forward.

    The record kept here is ``{"result": ..., "held": [began, ended]}``: when this store's call began and
    when its forwarded copy was stored (``time.monotonic()``, one clock for the machine)."""

    def __init__(self, forward_to: str, pause: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.forward_to = forward_to
        self.pause = pause

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Any:
        if flow_name == FORWARDED_FLOW:
            return super().store(node_args, flow_name, task_name, task_id, result)
        began = time.monotonic()
        super().store(node_args, flow_name, task_name, task_id, {"result": result, "held": [began, None]})
        time.sleep(self.pause)
        StoragePool.get_connected_storage(self.forward_to).store(
            node_args, FORWARDED_FLOW, task_name, task_id, {"copy_of": result, "from": self.storage_name}
        )
        record = {"result": result, "held": [began, time.monotonic()]}
        return super().store(node_args, flow_name, task_name, task_id, record)


class TracingSqlStorage(SqlStorage):
    """A real SqlStorage that is also a Selinon trace destination (``global: trace: - storage: {name,
    method: trace}``): each event is stored as a record of flow ``trace``, task name the event's name. Like any
    adapter it can store only once connected, so a trace call that reaches a never-connected instance
    (Selinon's own) fails."""

    def trace(self, event: int, details: dict[str, Any]) -> None:
        from selinon.trace import Trace

        record = {
            "event": Trace.event2str(event),
            "flow_name": details.get("flow_name"),
            "task_name": details.get("task_name"),
            "pid": os.getpid(),
        }
        self.store(None, "trace", record["event"], uuid.uuid4().hex, record)
