"""Where secrets used to leak, end to end: ``check`` (text and --json) with passwords that are part of
the URL around them, passwords given as query parameters, a ``${...}`` error in a password option, S3
credentials in ``endpoint_url``, and a worker logging at DEBUG with S3 credentials."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pg8000.dbapi
import pytest

from celery_selinon_storage.storages.redis import RedisStorage
from celery_selinon_storage.storages.sql import SqlStorage
from tests.own_servers import OwnRedis
from tests.servers import free_port
from tests.worker_app import store_in
from tests.workers import READY, ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.service

QUERY_PASSWORD = "Query-Secret-8812"


def check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m celery_selinon_storage check PATH`` as a deployment would run it."""
    return subprocess.run(
        [sys.executable, "-m", "celery_selinon_storage", "check", str(path), "--timeout", "10", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def postgres(postgres_url: str, unique: str) -> Iterator[tuple[str, str]]:
    """``host:port/database`` of the test PostgreSQL (trust auth: any password works), and a table name
    of this test's own, dropped afterwards."""
    parts = urlsplit(postgres_url)
    yield f"{parts.hostname}:{parts.port}{parts.path}", unique
    connection = pg8000.dbapi.connect(
        user="postgres", host=parts.hostname or "127.0.0.1", port=parts.port or 5432, database=parts.path[1:]
    )
    connection.autocommit = True
    connection.cursor().execute(f"DROP TABLE IF EXISTS {unique}_q, {unique}_p")
    connection.close()


@pytest.fixture
def redis_password_one(tmp_path: Path) -> Iterator[int]:
    """A Redis of this test's own whose password is ``1``; yields its port."""
    server = OwnRedis(tmp_path)
    with server:
        subprocess.run(
            ["redis-cli", "-p", str(server.port), "CONFIG", "SET", "requirepass", "1"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield server.port


@pytest.fixture
def storages_file(tmp_path: Path, postgres: tuple[str, str], redis_password_one: int) -> Path:
    address, table = postgres
    path = tmp_path / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: PgQuery
    classname: SqlStorage
    configuration: {{connection_string: "postgresql://postgres@{address}?password={QUERY_PASSWORD}", table_name: {table}_q}}
  - name: PgPostgres
    classname: SqlStorage
    configuration: {{connection_string: "postgresql://postgres:postgres@{address}", table_name: {table}_p}}
  - name: RedisOne
    classname: RedisStorage
    configuration: {{url: "redis://:1@127.0.0.1:{redis_password_one}/0", key_prefix: "{table}:"}}
  - name: RedisOneDown
    classname: RedisStorage
    configuration: {{url: "redis://:1@127.0.0.1:{free_port()}/0", socket_connect_timeout: 0.5}}
"""
    )
    return path


def down_port(path: Path) -> int:
    return int(path.read_text().rsplit("127.0.0.1:", 1)[1].split("/", 1)[0])


def test_check_prints_urls_masked_by_structure(
    storages_file: Path, postgres: tuple[str, str], redis_password_one: int
) -> None:
    address, table = postgres
    down = down_port(storages_file)
    run = check(storages_file)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()[1:]}  # under the heading
    assert set(lines) == {"PgQuery", "PgPostgres", "RedisOne", "RedisOneDown"}
    query = f"SqlStorage('postgresql+psycopg://postgres@{address}?password=***', table_name='{table}_q')"
    assert query in lines["PgQuery"]
    # the scheme stays whole; the user name is the password too, so it is masked with it
    assert (
        f"SqlStorage('postgresql+psycopg://***:***@{address}', table_name='{table}_p')" in lines["PgPostgres"]
    )
    assert f"RedisStorage('redis://:***@127.0.0.1:{redis_password_one}/0'" in lines["RedisOne"]
    assert f"RedisStorage('redis://:***@127.0.0.1:{down}/0'" in lines["RedisOneDown"]
    assert [
        lines[name].split("  ")[-1].startswith("ok") for name in ("PgQuery", "PgPostgres", "RedisOne")
    ] == [True] * 3
    # the driver's message keeps every digit of the address it could not reach
    assert f"failed: ConnectionError: Error 111 connecting to 127.0.0.1:{down}." in lines["RedisOneDown"]
    assert QUERY_PASSWORD not in run.stdout + run.stderr
    assert "***ql" not in run.stdout and "postgres:postgres" not in run.stdout


def test_check_json_masks_the_same_way(
    storages_file: Path, postgres: tuple[str, str], redis_password_one: int
) -> None:
    address, table = postgres
    down = down_port(storages_file)
    run = check(storages_file, "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    report = {entry["name"]: entry for entry in json.loads(run.stdout)["storages"]}
    assert report["PgQuery"]["target"] == (
        f"SqlStorage('postgresql+psycopg://postgres@{address}?password=***', table_name='{table}_q')"
    )
    assert report["PgPostgres"]["target"] == (
        f"SqlStorage('postgresql+psycopg://***:***@{address}', table_name='{table}_p')"
    )
    assert report["RedisOne"]["target"] == (
        f"RedisStorage('redis://:***@127.0.0.1:{redis_password_one}/0', key_prefix='{table}:', ttl=None)"
    )
    assert [report[name]["ok"] for name in ("PgQuery", "PgPostgres", "RedisOne", "RedisOneDown")] == [
        True,
        True,
        True,
        False,
    ]
    assert report["RedisOneDown"]["error"].startswith(
        f"ConnectionError: Error 111 connecting to 127.0.0.1:{down}."
    )
    assert QUERY_PASSWORD not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("password", "hidden"),
    [
        ("Tail${Pw-Part-7731}x", "Pw-Part-7731"),  # not a variable name
        ("${DB_PASS:Hunter-typo-3391}", "Hunter-typo-3391"),  # ':' written for ':-'
        ("pre${LEAKY_PART_5512}post", "LEAKY_PART_5512"),  # a name, but no such variable
    ],
)
def test_a_reference_error_in_a_password_does_not_quote_it(
    tmp_path: Path, password: str, hidden: str
) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(
        f'storages:\n  - name: R\n    classname: RedisStorage\n    configuration:\n      password: "{password}"\n'
    )
    run = check(path)
    assert run.returncode == 78
    assert run.stderr.startswith(
        f"celery-selinon-storage: error: {path}:5: storage 'R', option 'password': the ${{...}} reference "
    )
    assert run.stderr.count("\n") == 1 and run.stdout == ""
    assert hidden not in run.stderr and "Tail" not in run.stderr and "post" not in run.stderr


@pytest.mark.worker
def test_a_worker_refuses_the_reference_error_without_quoting_it(
    tmp_path: Path, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(
        "storages:\n  - name: Sql\n    classname: SqlStorage\n    configuration:\n"
        "      connection_string: 'postgresql://app:Pw-${Half_Of_Secret-4410}@db/app'\n"
    )
    worker = workers(storages=path, pool="solo", queue=queue)
    assert worker.run_to_exit() == 78
    assert f"{path}:5: storage 'Sql', option 'connection_string': the ${{...}} reference is not valid" in (
        worker.output
    )
    assert "Half_Of_Secret" not in worker.output and "Pw-" not in worker.output


def test_adapter_reprs_mask_urls_by_structure() -> None:
    """Waits for the adapters to build their reprs with ``mask_url``."""
    sql = repr(SqlStorage(f"postgresql://postgres:postgres@127.0.0.1:5432/test?password={QUERY_PASSWORD}"))
    assert QUERY_PASSWORD not in sql and "postgres:postgres" not in sql
    assert "'postgresql+psycopg://" in sql and "@127.0.0.1:5432/test?password=***" in sql
    redis = repr(RedisStorage(url=f"redis://:1@127.0.0.1:6379/1?password={QUERY_PASSWORD}"))
    assert redis.startswith("RedisStorage('redis://:***@127.0.0.1:6379/1?password=***'")
    assert QUERY_PASSWORD not in redis


# -- S3: wait for the adapter (endpoint_url userinfo refused at load; botocore kept below DEBUG) ----

ENDPOINT_PASSWORD = "Endpoint-Pw-5521"


def s3_endpoint_with_userinfo(tmp_path: Path, s3_endpoint: str, unique: str) -> Path:
    parts = urlsplit(s3_endpoint)
    path = tmp_path / "storages.yml"
    path.write_text(
        "storages:\n  - name: S3\n    classname: S3Storage\n    configuration:\n"
        f"      bucket: {unique}\n"
        f"      endpoint_url: 'http://key-user:{ENDPOINT_PASSWORD}@{parts.hostname}:{parts.port}'\n"
        "      use_ssl: false\n"
    )
    return path


def test_check_refuses_credentials_in_the_s3_endpoint_url(
    tmp_path: Path, s3_endpoint: str, unique: str
) -> None:
    path = s3_endpoint_with_userinfo(tmp_path, s3_endpoint, unique)
    run = check(path, "--json")
    assert run.returncode == 78, run.stdout + run.stderr
    assert run.stderr.startswith(
        f"celery-selinon-storage: error: {path}:6: storage 'S3', option 'endpoint_url': "
    )
    assert "aws_access_key_id" in run.stderr and run.stderr.count("\n") == 1
    assert ENDPOINT_PASSWORD not in run.stdout + run.stderr


@pytest.mark.worker
def test_a_worker_refuses_credentials_in_the_s3_endpoint_url(
    tmp_path: Path, s3_endpoint: str, unique: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    path = s3_endpoint_with_userinfo(tmp_path, s3_endpoint, unique)
    worker = workers(storages=path, pool="solo", queue=queue).start()
    process = worker.process
    assert process is not None
    wait_for(lambda: process.poll() is not None or bool(READY.search(worker.output)), 60, "exit or ready")
    assert process.poll() == 78, worker.output
    assert f"{path}:6: storage 'S3', option 'endpoint_url': " in worker.output
    assert ENDPOINT_PASSWORD not in worker.output


@pytest.mark.worker
def test_a_worker_logging_at_debug_keeps_the_s3_keys_out_of_its_log(
    tmp_path: Path, redis_url: str, s3_endpoint: str, queue: str, unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    key_id = f"AKID{unique.upper()}"
    secret = f"S3-Secret-{unique}"
    path = tmp_path / "storages.yml"
    path.write_text(
        "storages:\n  - name: S3\n    classname: S3Storage\n"
        f"    configuration: {{bucket: {unique}, endpoint_url: '{s3_endpoint}', use_ssl: false, "
        f"aws_access_key_id: {key_id}, aws_secret_access_key: {secret}}}\n"
    )
    worker = workers(storages=path, pool="prefork", concurrency=1, queue=queue, extra=("--loglevel", "DEBUG"))
    worker.start().wait_ready()
    assert store_in.apply_async((["S3"],), queue=queue).get(timeout=60)
    assert worker.stop(signal.SIGTERM) == 0
    log = worker.output
    assert "storages closed in process" in log
    assert "DEBUG/" in log  # the worker did log at DEBUG
    leaks = [
        (word, log[max(0, log.find(word) - 120) : log.find(word) + 40])
        for word in (key_id, secret)
        if word in log
    ]
    assert not leaks, leaks
