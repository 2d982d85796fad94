"""Process storages outside a worker: open_storages, get_storage and their refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from celery_selinon_storage import (
    MissingResultError,
    StorageClosedError,
    StorageNotFoundError,
    StoragesNotStartedError,
    get_storage,
    open_storages,
)
from celery_selinon_storage.errors import StoragesAlreadyStartedError
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.storages.memory import InMemoryStorage

STORAGES = """\
storages:
  - name: Memory
    classname: InMemoryStorage
  - name: Sql
    classname: SqlStorage
    configuration: {connection_string: "sqlite:///DB"}
"""


@pytest.fixture
def storages_file(tmp_path: Path) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(STORAGES.replace("DB", str(tmp_path / "r.sqlite3")))
    return path


def test_open_storages_connects_serves_and_closes(storages_file: Path) -> None:
    with open_storages(storages_file) as storages:
        memory = get_storage("Memory")
        assert memory is storages.get("Memory") and memory.is_connected()
        assert memory.guard_kind is GuardKind.NONE  # InMemoryStorage is concurrency-safe
        assert get_storage("Sql").guard_kind is GuardKind.THREAD
        memory.store(None, "f", "t", "id-1", {"a": [1, 2]})
        assert memory.retrieve("f", "t", "id-1") == {"a": [1, 2]}
        assert memory.stats["store"].calls == 1
    assert memory.closed and not memory.is_connected()
    with pytest.raises(StorageClosedError, match="storage 'Memory' is closed"):
        memory.retrieve("f", "t", "id-1")
    with pytest.raises(StoragesNotStartedError, match=rf"storages are not started in process {os.getpid()}"):
        get_storage("Memory")


def test_an_unknown_name_lists_the_storages_that_exist(storages_file: Path) -> None:
    with open_storages(storages_file), pytest.raises(StorageNotFoundError) as caught:
        get_storage("Redis")
    assert str(caught.value) == "no storage named 'Redis' in this process; the storages are: Memory, Sql"


def test_starting_twice_in_one_process_is_refused(storages_file: Path) -> None:
    with (
        open_storages(storages_file),
        pytest.raises(StoragesAlreadyStartedError, match="already started"),
        open_storages(storages_file),
    ):
        pass


def test_missing_record_names_the_storage_and_task_id(storages_file: Path) -> None:
    with open_storages(storages_file):
        for name in ("Memory", "Sql"):
            with pytest.raises(MissingResultError) as caught:
                get_storage(name).retrieve("f", "t", "nope")
            assert str(caught.value) == f"storage {name!r} has no record for task id 'nope'"


FORK_SCRIPT = """
import os, sys
from celery_selinon_storage import WrongProcessError, get_storage, open_storages
with open_storages(sys.argv[1]):
    memory = get_storage("Memory")
    pid = os.fork()
    if pid == 0:
        try:
            memory.retrieve("f", "t", "x")
            print("used")
        except WrongProcessError as exc:
            print(exc)
        sys.stdout.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    print("parent", os.getpid())
"""


def test_an_instance_carried_across_a_fork_is_refused(storages_file: Path) -> None:
    # A separate interpreter: forking pytest itself would fork its plugins and threads too.
    run = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, str(storages_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child_line, parent_line = run.stdout.splitlines()
    parent_pid = parent_line.split()[1]
    assert child_line.startswith(f"storage 'Memory' was created in process {parent_pid} and used in process ")
    assert child_line.endswith(
        "connections must not cross a fork: call get_storage() in the process that uses it"
    )


def test_a_storage_that_cannot_connect_at_start_connects_on_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "storages.yml"
    db_dir = tmp_path / "later"
    path.write_text(
        f"storages:\n  - name: Sql\n    classname: SqlStorage\n    configuration: {{connection_string: 'sqlite:///{db_dir}/r.sqlite3'}}\n"
    )
    with open_storages(path):
        sql = get_storage("Sql")
        assert not sql.is_connected()
        assert (
            "storage Sql could not connect at start (OperationalError); it will connect on first use"
            in caplog.text
        )
        db_dir.mkdir()
        sql.store(None, "f", "t", "id", [1])
        assert sql.is_connected() and sql.retrieve("f", "t", "id") == [1]


def test_close_waits_for_a_running_call_and_cold_close_does_not(storages_file: Path) -> None:
    with open_storages(storages_file):
        sql: ManagedStorage = get_storage("Sql")
        guard = sql._call_guard
        guard.acquire()  # a call in progress
        done = threading.Event()

        def close() -> None:
            sql.shut_down()
            done.set()

        closer = threading.Thread(target=close)
        closer.start()
        assert not done.wait(0.2), "close did not wait for the running call"
        guard.release()
        assert done.wait(5)
        assert not sql.is_connected()

        memory_like = get_storage("Sql")
        assert memory_like.shut_down(timeout=0.01) is True  # already closed: nothing to wait for


class RefusingStorage(InMemoryStorage):
    """A custom adapter whose constructor fails in the child and quotes its password, as careless ones do."""

    def __init__(self, password: str) -> None:
        raise ValueError(f"cannot log in with {password}")


def test_a_child_whose_storages_fail_to_start_tells_its_tasks_why_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_selinon_storage import bootstep, state
    from celery_selinon_storage.inspection import ChildReports
    from celery_selinon_storage.specs import StorageSpec

    monkeypatch.setattr(state, "_failure", None)  # restored after the test, with the plan below
    monkeypatch.setattr(state, "_plan", None)
    spec = StorageSpec(name="Legacy", cls=RefusingStorage, options={"password": "hunter2-secret"})
    reports = ChildReports()
    state.set_plan(state.ChildPlan([spec], GuardKind.THREAD, reports))
    try:
        bootstep._on_child_start()
    finally:
        reports.close()
    with pytest.raises(StoragesNotStartedError) as caught:
        get_storage("Legacy")
    assert str(caught.value) == (
        f"storages failed to start in process {os.getpid()}: ValueError: cannot log in with ***"
    )
    assert "storages could not start in process" in caplog.text and "hunter2-secret" not in caplog.text
