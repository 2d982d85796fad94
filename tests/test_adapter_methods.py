"""An adapter's own methods and attributes, reached through its managed storage as Selinon tasks reach them.

thoth's tasks call ``StoragePool.get_connected_storage("ProjectInfoStore").retrieve_project_info(...)``;
fabric8's read ``.session`` and test ``isinstance(self.storage, BayesianPostgres)`` (see
tests/selinon_published/README.md). ``PackageInfoStorage`` in tests/custom_adapters.py has their shape.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selinon import DataStorage, StoragePool

from celery_selinon_storage import (
    StorageClosedError,
    StorageUnavailableError,
    WrongProcessError,
    get_storage,
    open_storages,
)
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import OTHER_OPERATION, ManagedStorage
from tests.custom_adapters import PackageInfoStorage

NODE_ARGS = {"package_name": "selinon"}

STORAGES = """\
storages:
  - name: ProjectInfoStore
    import: tests.custom_adapters
    classname: PackageInfoStorage
    configuration: {bucket_name: thoth-packages, other_storage: Readme, call_seconds: CALL_SECONDS}
  - name: Readme
    import: tests.custom_adapters
    classname: PackageInfoStorage
"""


@pytest.fixture
def storages(tmp_path: Path) -> Iterator[None]:
    path = tmp_path / "storages.yml"
    path.write_text(STORAGES.replace("CALL_SECONDS", "0.02"))
    with open_storages(path):
        get_storage("ProjectInfoStore").store(NODE_ARGS, "flow", "Task", "t1", {"version": "1.4.0"})
        get_storage("ProjectInfoStore").store(
            {"package_name": "celery"}, "flow", "Task", "t2", {"version": "5"}
        )
        yield


def test_tasks_reach_the_adapters_methods_through_selinon_and_get_storage(storages: None) -> None:
    for storage in (StoragePool.get_connected_storage("ProjectInfoStore"), get_storage("ProjectInfoStore")):
        assert storage.retrieve_project_info("selinon") == {"version": "1.4.0"}
        assert storage.get_project_listing(prefix="s") == ["selinon"]  # keyword arguments pass through
        assert storage.describe("selinon") == "package selinon"  # a staticmethod
        assert storage.kind() == "PackageInfoStorage"  # a classmethod
        with pytest.raises(KeyError):  # the adapter's own error, as under Selinon
            storage.retrieve_project_info("missing")
        assert storage.ceph is not None, "an answer of the adapter's dropped its connection"


def test_attributes_read_as_the_adapter_holds_them(storages: None) -> None:
    storage = StoragePool.get_connected_storage("ProjectInfoStore")
    assert storage.bucket_name == "thoth-packages"
    assert storage.ceph == {"selinon": {"version": "1.4.0"}, "celery": {"version": "5"}}
    assert storage.ceph is storage.adapter.ceph
    # fabric8's ``s3`` property: another storage, looked up from inside the adapter: the managed one
    assert storage.other is get_storage("Readme")


def test_isinstance_of_the_adapter_class_holds_and_the_type_stays_managed(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    assert isinstance(
        storage, PackageInfoStorage
    )  # fabric8: isinstance(self.storage, (BayesianPostgres, ...))
    assert isinstance(storage, ManagedStorage) and isinstance(storage, DataStorage)
    assert type(storage) is ManagedStorage
    assert storage.__class__ is PackageInfoStorage


def test_each_method_is_counted_under_its_name_and_others_under_one(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    storage.retrieve_project_info("selinon")
    storage.retrieve_project_info("selinon")
    with pytest.raises(RuntimeError, match="boom"):
        storage.fail("boom")
    storage._one_caller()  # a private method: not a name of its own
    stats = {name: s.as_dict() for name, s in storage.stats.items()}
    assert (stats["retrieve_project_info"]["calls"], stats["retrieve_project_info"]["errors"]) == (2, 0)
    assert (stats["fail"]["calls"], stats["fail"]["errors"]) == (1, 1)
    assert stats[OTHER_OPERATION]["calls"] == 1
    assert "_one_caller" not in stats
    assert stats["store"]["calls"] == 2  # the fixture's stores, counted as before


def test_a_made_up_method_counts_as_other() -> None:
    class MadeUp(PackageInfoStorage):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("get_"):
                return types.MethodType(lambda self: name, self)  # a bound method of its own making
            raise AttributeError(name)

    storage = ManagedStorage("MadeUp", MadeUp(), GuardKind.THREAD)
    storage.connect()
    assert storage.get_anything() == "get_anything"
    assert storage.get_more() == "get_more"
    assert storage.stats[OTHER_OPERATION].calls == 2
    assert not hasattr(storage, "absent")


def test_a_missing_attribute_is_an_attribute_error_that_names_the_storage(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    with pytest.raises(
        AttributeError, match=r"storage 'ProjectInfoStore' \(PackageInfoStorage\) has no attribute 'sesion'"
    ):
        storage.sesion  # noqa: B018
    assert not hasattr(storage, "sesion")
    assert getattr(storage, "sesion", None) is None


def test_methods_run_under_the_guard(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    assert storage.guard_kind is GuardKind.THREAD
    errors: list[BaseException] = []

    def call_many() -> None:
        try:
            for _ in range(5):
                storage.retrieve_project_info("selinon")
                storage.get_project_listing()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.adapter.most_inside == 1, "two threads were inside the adapter at once"


def test_a_generator_runs_each_step_under_the_guard(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    documents = storage.iter_project_info_documents()
    seen: list[str] = []
    other = threading.Thread(target=lambda: [storage.get_project_listing() for _ in range(10)])
    other.start()  # calls the adapter while the steps run
    for name, _document in documents:
        seen.append(name)
    other.join()
    assert seen == ["celery", "selinon"]
    assert storage.adapter.most_inside == 1


def test_a_generator_left_early_is_closed_under_the_guard(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    documents = storage.iter_project_info_documents()
    assert next(documents)[0] == "celery"
    documents.close()
    assert storage._call_guard.acquire(timeout=0)  # not left held
    storage._call_guard.release()


def test_setting_an_attribute_sets_it_on_the_adapter(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    storage.bucket_name = "renamed"
    assert storage.adapter.bucket_name == "renamed" and storage.bucket_name == "renamed"
    storage.session = "a session"  # a name the adapter did not have: the adapter gets it too
    assert storage.adapter.session == "a session"
    del storage.session
    assert not hasattr(storage.adapter, "session")
    retry = storage.retry
    storage.retry = retry  # the managed storage's own attribute stays its own
    assert "retry" not in vars(storage.adapter)


def test_a_closed_storage_refuses_its_methods_and_attributes(tmp_path: Path) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(STORAGES.replace("CALL_SECONDS", "0"))
    with open_storages(path):
        storage = get_storage("ProjectInfoStore")
    with pytest.raises(StorageClosedError, match="storage 'ProjectInfoStore' is closed"):
        storage.retrieve_project_info("selinon")
    with pytest.raises(StorageClosedError):
        storage.ceph  # noqa: B018


def test_another_process_is_refused_the_methods_and_attributes(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a copy made by the fork, as a prefork child of a parent with storages
        outcomes = []
        attempts: list[Callable[[], Any]] = [
            lambda: storage.retrieve_project_info("selinon"),
            lambda: storage.ceph,
        ]
        for attempt in attempts:
            try:
                attempt()
                outcomes.append("served")
            except WrongProcessError:
                outcomes.append("WrongProcessError")
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcomes.append(type(exc).__name__)
        os.write(write, ",".join(outcomes).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == "WrongProcessError,WrongProcessError"


def test_a_storage_busy_past_a_tries_share_is_unavailable_and_safe_to_retry(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    storage._call_guard.acquire()  # a call in progress in this thread
    caught: list[BaseException] = []

    def call() -> None:
        try:
            storage.retrieve_project_info("selinon")
        except BaseException as exc:  # noqa: BLE001 - checked below
            caught.append(exc)

    object.__setattr__(storage, "retry", type(storage.retry)(attempts=1, timeout=0.2))
    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    storage._call_guard.release()
    assert len(caught) == 1 and isinstance(caught[0], StorageUnavailableError), caught
    assert "retrieve_project_info() did not start, so the call is safe to retry" in str(caught[0])
    assert storage.stats["retrieve_project_info"].timeouts == 1


def test_a_managed_storage_is_neither_copied_nor_pickled(storages: None) -> None:
    storage = get_storage("ProjectInfoStore")
    for attempt in (lambda: copy.copy(storage), lambda: pickle.dumps(storage)):
        with pytest.raises(TypeError, match="storage 'ProjectInfoStore' cannot be copied or pickled"):
            attempt()


def test_the_report_lists_the_methods_called(storages: None) -> None:
    from celery_selinon_storage import state

    get_storage("ProjectInfoStore").retrieve_project_info("selinon")
    processes = state.current()
    assert processes is not None
    operations = processes.report()["storages"]["ProjectInfoStore"]["operations"]
    assert operations["retrieve_project_info"]["calls"] == 1
    assert "1 retrieve_project_info" in processes.summary()


def test_dir_lists_the_adapters_attributes(storages: None) -> None:
    names = dir(get_storage("ProjectInfoStore"))
    assert {"retrieve_project_info", "ceph", "bucket_name", "store", "retry"} <= set(names)


def test_a_method_monkeypatched_through_the_storage_is_put_back(
    storages: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = get_storage("ProjectInfoStore")
    with monkeypatch.context() as patch:
        patch.setattr(storage, "retrieve_project_info", lambda name: f"patched {name}")
        assert storage.retrieve_project_info("selinon") == "patched selinon"
    assert "retrieve_project_info" not in vars(storage.adapter)
    assert storage.retrieve_project_info("selinon") == {"version": "1.4.0"}
