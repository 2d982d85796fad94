"""FilesystemStorage: what only files need (the contract tests cover the rest): names that are not one file
name are refused before any I/O, and a reader never sees part of a record."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_selinon_storage import InvalidRecordError
from celery_selinon_storage.storages.filesystem import FilesystemStorage


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FilesystemStorage]:
    adapter = FilesystemStorage(str(tmp_path / "results"))
    adapter.storage_name = "Files"
    adapter.connect()
    yield adapter
    adapter.disconnect()


def every_file(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.parametrize(
    ("flow_name", "task_name", "task_id"),
    [
        ("flow", "task", "../../outside"),
        ("flow", "task", "a/b"),
        ("flow", "task", ".."),
        ("flow", "task", "."),
        ("..", "task", "id"),
        ("flow", "../..", "id"),
        ("flow/../..", "task", "id"),
        ("", "task", "id"),
        ("flow", "task", "x" * 251),  # with .json, 256 bytes: one more than a file name holds
        ("flow", "task", "ž" * 126),  # 252 bytes of UTF-8
    ],
)
def test_names_that_are_not_one_file_name_are_refused_and_nothing_is_written(
    storage: FilesystemStorage, tmp_path: Path, flow_name: str, task_name: str, task_id: str
) -> None:
    before = every_file(tmp_path)
    for call in (
        lambda: storage.store(None, flow_name, task_name, task_id, {"x": 1}),
        lambda: storage.retrieve(flow_name, task_name, task_id),
        lambda: storage.delete(flow_name, task_name, task_id),
    ):
        with pytest.raises(InvalidRecordError, match="storage 'Files' refuses"):
            call()
    assert every_file(tmp_path) == before


def test_the_longest_name_a_file_holds_is_accepted(storage: FilesystemStorage) -> None:
    task_id = "x" * 250  # 255 bytes with .json
    storage.store(None, "flow", "task", task_id, [1])
    assert storage.retrieve("flow", "task", task_id) == [1]
    assert (storage.path / "flow" / "task" / f"{task_id}.json").read_bytes() == b"[1]"


def test_a_reader_sees_the_old_record_or_the_new_one_never_part_of_one(storage: FilesystemStorage) -> None:
    """Two large results written in turn while another thread reads: every read is one of them whole."""
    versions = [{"version": n, "blob": str(n) * 2_000_000} for n in (1, 2)]
    storage.store(None, "flow", "task", "busy", versions[0])
    done = threading.Event()
    seen: list[int] = []

    def read_until_done() -> None:
        while not done.is_set():
            seen.append(storage.retrieve("flow", "task", "busy")["version"])

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for n in range(20):
            storage.store(None, "flow", "task", "busy", versions[n % 2])
    finally:
        done.set()
        reader.join()
    assert seen and set(seen) <= {1, 2}
    assert os.listdir(storage.path / "flow" / "task") == ["busy.json"]  # no temporary file left behind


def test_a_path_that_is_not_a_directory_fails_at_connect(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    adapter = FilesystemStorage(str(taken))
    with pytest.raises(FileExistsError):
        adapter.connect()
    assert not adapter.is_connected()
