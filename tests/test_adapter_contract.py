"""The DataStorage contract, for every built-in adapter, against its real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selinon import DataStorage, SelinonMissingDataException

from celery_selinon_storage import MissingResultError, ResultNotSerializableError
from celery_selinon_storage.storages.base import JsonStorage
from tests.backends import CASES, Factory, adapter_factory

MiB = 1024 * 1024

#: Largest result tested per backend: 16 MiB, except where the server refuses it (README: limits).
LARGEST = {"mariadb": 15 * MiB, "mongo": 15 * MiB}


@pytest.fixture(params=CASES, ids=[f"{name}-{server}" for name, server in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    name, server = request.param
    return str(name), str(server)


@pytest.fixture
def backend(case: tuple[str, str]) -> str:
    """The kind of server (``postgresql`` for ``postgresql+pg8000``)."""
    return case[1].partition("+")[0]


@pytest.fixture
def make(case: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Factory:
    return adapter_factory(case[1], request, tmp_path, unique)


@pytest.fixture
def storage(make: Factory) -> Iterator[JsonStorage]:
    adapter = make()
    adapter.storage_name = "Results"
    adapter.connect()
    yield adapter
    adapter.disconnect()


RESULTS: list[Any] = [
    {"nested": {"list": [1, 2.5, None, True, "x"], "empty": {}}},
    "žluťoučký kůň 🐎",
    2**70,
    [],
    None,
    # floats JSON writes with an exponent stay floats (PostgreSQL's JSONB gave 1e16 back as an integer)
    [1e16, -1.7976931348623157e308, 5e-324, 1.5],
]


@pytest.mark.parametrize(
    "result", RESULTS, ids=["nested", "unicode", "big-int", "empty-list", "null", "floats"]
)
def test_retrieve_returns_exactly_what_was_stored(storage: JsonStorage, result: Any) -> None:
    record_id = storage.store({"arg": 1}, "flow", "task", "task-1", result)
    assert record_id is not None
    assert storage.retrieve("flow", "task", "task-1") == result
    assert repr(storage.retrieve("flow", "task", "task-1")) == repr(result)  # int stays int, float float


def test_storing_a_task_id_again_replaces_the_record(storage: JsonStorage) -> None:
    first = storage.store(None, "flow", "task", "task-1", {"attempt": 1})
    second = storage.store(None, "flow", "task", "task-1", {"attempt": 2})
    assert first == second
    assert storage.retrieve("flow", "task", "task-1") == {"attempt": 2}


def test_a_large_result_round_trips(storage: JsonStorage, backend: str) -> None:
    big = {"blob": "x" * LARGEST.get(backend, 16 * MiB), "n": 1}
    storage.store(None, "flow", "task", "big", big)
    assert storage.retrieve("flow", "task", "big") == big


def test_missing_records_raise_our_selinon_missing_data_error(storage: JsonStorage) -> None:
    for call in (storage.retrieve, storage.delete):
        with pytest.raises(
            MissingResultError, match="storage 'Results' has no record for task id 'nope'"
        ) as caught:
            call("flow", "task", "nope")
        assert isinstance(caught.value, SelinonMissingDataException)
        assert (caught.value.storage, caught.value.task_id) == ("Results", "nope")


def test_delete_removes_the_record(storage: JsonStorage) -> None:
    storage.store(None, "flow", "task", "gone", [1])
    storage.delete("flow", "task", "gone")
    with pytest.raises(MissingResultError):
        storage.retrieve("flow", "task", "gone")


def test_store_error_records_type_message_and_traceback(storage: JsonStorage) -> None:
    try:
        raise ValueError("bad input 42")
    except ValueError as exc:
        storage.store_error(None, "flow", "task", "failed", (ValueError, exc, exc.__traceback__))
    error = storage.retrieve("flow", "task", "failed")["error"]
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "bad input 42"
    assert "Traceback (most recent call last)" in error["traceback"] and "bad input 42" in error["traceback"]


def test_an_unserialisable_result_is_refused_and_writes_nothing(storage: JsonStorage) -> None:
    for bad in ({"when": object()}, float("nan")):
        with pytest.raises(
            ResultNotSerializableError, match="storage 'Results' cannot store the result of task id 'bad'"
        ):
            storage.store(None, "flow", "task", "bad", bad)
    with pytest.raises(MissingResultError):
        storage.retrieve("flow", "task", "bad")


def test_connect_again_after_disconnect(make: Factory) -> None:
    adapter = make()
    assert isinstance(adapter, DataStorage) and not adapter.is_connected()
    for _ in range(2):
        adapter.connect()
        assert adapter.is_connected()
        adapter.store(None, "flow", "task", "again", 1)
        adapter.disconnect()
        assert not adapter.is_connected()


def test_concurrency_safety_is_declared(backend: str, make: Factory) -> None:
    # one held DBAPI connection is not safe to share; the others pool their connections
    assert make().concurrency_safe is (backend != "sqlite" and backend not in ("postgresql", "mariadb"))
