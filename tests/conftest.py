"""Fixtures shared by the tests: real servers and real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import REDIS_URL, require_server
from tests.workers import WorkerProcess


@pytest.fixture
def redis_url() -> str:
    """The Redis used as broker and result backend by the worker tests."""
    return require_server(REDIS_URL, "Redis")


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own, so leftover messages of other tests never reach its workers."""
    return f"css-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make worker processes; any still running at the end of the test is killed."""
    started: list[WorkerProcess] = []

    def make(**kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, **kwargs)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.kill()
