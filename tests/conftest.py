"""Fixtures shared by the tests: real servers and real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import hypothesis_profiles
from tests.green_queries import with_driver
from tests.servers import mongo_wire_server, s3_server
from tests.services import MARIADB_URL, MONGO_URI, POSTGRES_URL, REDIS_URL, S3_ENDPOINT, require_server
from tests.workers import WorkerProcess

hypothesis_profiles.load()  # before any test module builds its settings


@pytest.fixture
def redis_url() -> str:
    """The Redis used as broker and result backend by the worker tests, and by RedisStorage tests."""
    return require_server(REDIS_URL, "Redis")


@pytest.fixture
def postgres_url() -> str:
    return require_server(POSTGRES_URL, "PostgreSQL")


@pytest.fixture
def mariadb_url() -> str:
    """The test MariaDB, on PyMySQL: the tests that interrupt a driver mid-exchange reach its I/O only
    in Python (mysqlclient's is in C). ``mariadb_server_url`` leaves the driver to the storage."""
    return with_driver(require_server(MARIADB_URL, "MariaDB"), "pymysql")


@pytest.fixture
def mariadb_server_url() -> str:
    """The test MariaDB's URL as the user wrote it: a URL naming no driver gets the storage's choice."""
    return require_server(MARIADB_URL, "MariaDB")


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB wire-protocol server: ``CSS_TEST_MONGO_URI``, else nx-27017 started on a free port."""
    if MONGO_URI:
        yield require_server(MONGO_URI, "MongoDB")
        return
    with mongo_wire_server(tmp_path_factory.mktemp("mongo")) as uri:
        yield uri


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 endpoint: ``CSS_TEST_S3_ENDPOINT``, else moto_server started on a free port."""
    if S3_ENDPOINT:
        yield require_server(S3_ENDPOINT, "S3")
        return
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own, so leftover messages of other tests never reach its workers."""
    return f"css-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique() -> str:
    """A name of this test's own (tables, key prefixes, buckets)."""
    return f"css{uuid.uuid4().hex[:12]}"


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
