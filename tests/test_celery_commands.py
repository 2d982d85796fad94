"""``celery -A proj storages check|schema`` through the real ``celery`` program, and what check and a
worker's start-up say of a storage that does not answer."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_selinon_storage.bootstep import STORAGES_ENV
from celery_selinon_storage.schema import storages_schema
from celery_selinon_storage.storages.sql import SqlStorage
from tests.backends import drop_table
from tests.test_settings import app_module, configured_worker, error_lines
from tests.workers import ROOT, WorkerProcess

pytestmark = pytest.mark.service

CELERY = Path(sys.executable).with_name("celery")
PASSWORD = "Cmd-s3cret-5531"


@pytest.fixture
def pg_table(postgres_url: str, unique: str) -> Iterator[str]:
    """A PostgreSQL table name of the test's own, dropped at the end."""
    yield unique
    with contextlib.suppress(Exception):
        drop_table(postgres_url, unique)


def has_table(url: str, table: str) -> bool:
    engine = sa.create_engine(SqlStorage(url).url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return sa.inspect(connection).has_table(table)
    finally:
        engine.dispose()


def celery(
    tmp_path: Path, settings: str, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``celery -A <a project module with these settings> storages ARGUMENTS``."""
    module, module_env = app_module(tmp_path, settings)
    environ = {key: value for key, value in os.environ.items() if key != STORAGES_ENV}
    return subprocess.run(
        [CELERY, "-A", module, "storages", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**environ, **module_env, **(env or {})},
    )


def pg_entries(postgres_url: str, redis_url: str, table: str) -> list[dict[str, object]]:
    return [
        {
            "name": "Results",
            "classname": "SqlStorage",
            "configuration": {"connection_string": postgres_url, "table_name": table},
        },
        {"name": "Redis", "classname": "RedisStorage", "configuration": {"url": redis_url}},
    ]


def test_check_reads_the_app_setting_and_creates_no_table(
    tmp_path: Path, postgres_url: str, redis_url: str, pg_table: str
) -> None:
    settings = f"app.conf.selinon_storages = {pg_entries(postgres_url, redis_url, pg_table)!r}"
    run = celery(tmp_path, settings, "check", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True
    results, redis = report["storages"]
    assert (results["name"], results["connect"], results["error"]) == ("Results", "ok", None)
    assert results["notes"] == [f"table {pg_table} does not exist (the worker creates it at start)"]
    assert (redis["name"], redis["connect"], redis["notes"]) == ("Redis", "ok", [])
    assert not has_table(postgres_url, pg_table)

    created = celery(tmp_path, settings, "check", "--json", "--create-tables")
    assert created.returncode == 0, created.stdout + created.stderr
    assert json.loads(created.stdout)["storages"][0]["notes"] == []
    assert has_table(postgres_url, pg_table)


def test_check_without_connecting_shows_the_same_columns(
    tmp_path: Path, postgres_url: str, redis_url: str, pg_table: str
) -> None:
    settings = (
        f"app.conf.selinon_storages = {{'storages': {pg_entries(postgres_url, redis_url, pg_table)!r}}}"
    )
    run = celery(tmp_path, settings, "check", "--no-connect")
    assert run.returncode == 0, run.stdout + run.stderr
    heading, *rows = run.stdout.splitlines()
    assert heading.split() == ["NAME", "TARGET", "TIME", "CONNECT"]
    assert [row.split()[0] for row in rows] == ["Results", "Redis"]
    assert all(row.endswith("  -  not tried") for row in rows)
    assert {row.index("not tried") for row in rows} == {heading.index("CONNECT")}
    assert rows[0][heading.index("TARGET") :].startswith(
        "SqlStorage('postgresql+psycopg://postgres@127.0.0.1:"
    )
    as_json = json.loads(celery(tmp_path, settings, "check", "--no-connect", "--json").stdout)
    assert [(s["connect"], s["ok"], s["latency_ms"]) for s in as_json["storages"]] == [
        ("not tried", True, None)
    ] * 2


def test_a_driver_error_is_readable_and_a_password_is_masked(tmp_path: Path, unique: str) -> None:
    entry = {
        "name": "Missing",
        "classname": "SqlStorage",
        "configuration": {"connection_string": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{unique}"},
    }
    run = celery(tmp_path, f"app.conf.selinon_storages = [{entry!r}]", "check")
    assert run.returncode == 1, run.stdout + run.stderr
    row = run.stdout.splitlines()[1]
    assert row.endswith(f'  failed: OperationalError: FATAL: database "{unique}" does not exist')
    assert f"SqlStorage('postgresql+psycopg://postgres:***@127.0.0.1:5432/{unique}'" in row
    assert PASSWORD not in run.stdout + run.stderr


def test_the_option_beats_the_variable_which_beats_the_setting(tmp_path: Path) -> None:
    files = {}
    for name in ("Option", "Variable"):
        files[name] = tmp_path / f"{name}.yml"
        files[name].write_text(f"storages:\n  - name: {name}\n    classname: InMemoryStorage\n")
    settings = "app.conf.selinon_storages = [{'name': 'Setting', 'classname': 'InMemoryStorage'}]"
    variable = {STORAGES_ENV: str(files["Variable"])}

    def names(*arguments: str, env: dict[str, str] | None = None) -> list[str]:
        run = celery(tmp_path, settings, "check", "--json", *arguments, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        return [storage["name"] for storage in json.loads(run.stdout)["storages"]]

    assert names() == ["Setting"]
    assert names(env=variable) == ["Variable"]
    assert names("--storages", str(files["Option"]), env=variable) == ["Option"]


def test_a_bad_or_missing_configuration_exits_78_with_one_line(tmp_path: Path) -> None:
    bad = celery(
        tmp_path,
        "app.conf.selinon_storages = [{'name': 'X', 'classname': 'InMemoryStorage', 'configuration': {'max_records': 'many'}}]",
        "check",
    )
    assert (bad.returncode, bad.stdout) == (78, "")
    assert bad.stderr == (
        "celery-selinon-storage: error: selinon_storages[0].configuration.max_records: storage 'X', "
        "option 'max_records': must be an integer or null, not text; fix its value\n"
    )
    missing = celery(tmp_path, "", "check", "--no-connect")
    assert (missing.returncode, missing.stdout) == (78, "")
    assert missing.stderr == (
        "celery-selinon-storage: error: no storages configured; set app.conf.selinon_storages (a storages "
        "YAML file's path, or the storages inline), pass --storages FILE, or set the environment variable "
        "CELERY_SELINON_STORAGES to a file's path\n"
    )


def test_schema_prints_the_json_schema(tmp_path: Path) -> None:
    run = celery(tmp_path, "", "schema")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == storages_schema()


def test_help_has_no_markup(tmp_path: Path) -> None:
    standalone = Path(sys.executable).with_name("celery-selinon-storage")
    texts = [
        celery(tmp_path, "", "--help").stdout,
        celery(tmp_path, "", "check", "--help").stdout,
        celery(tmp_path, "", "schema", "--help").stdout,
        subprocess.run([standalone, "--help"], capture_output=True, text=True, check=True).stdout,
        subprocess.run([standalone, "check", "--help"], capture_output=True, text=True, check=True).stdout,
    ]
    assert all("Usage:" in text for text in texts), texts
    assert not any("`" in text for text in texts), texts
    assert "--create-tables" in texts[1] and "--storages FILE" in texts[1] and "Exit status: 0" in texts[1]


@pytest.mark.worker
def test_a_storage_down_at_start_is_logged_with_its_masked_target_and_error(
    tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{unique}"
    settings = f"app.conf.selinon_storages = [{{'name': 'Missing', 'classname': 'SqlStorage', 'configuration': {{'connection_string': {url!r}}}}}]"
    worker = configured_worker(workers, tmp_path, settings, pool="threads", queue=queue).start().wait_ready()
    assert worker.stop(signal.SIGTERM) == 0
    warning = re.search(r"storage Missing could not connect at start .*", worker.output)
    assert warning is not None, worker.output
    assert warning.group(0) == (
        "storage Missing could not connect at start (OperationalError); it will connect on first use; target "
        f"SqlStorage('postgresql+psycopg://postgres:***@127.0.0.1:5432/{unique}', table_name='selinon_results'): "
        f'OperationalError: FATAL: database "{unique}" does not exist'
    )
    assert PASSWORD not in worker.output
    assert error_lines(worker.output) == []
