"""app.conf.selinon_storages: a path, or the storages inline (a mapping or a list), Django's namespaced
settings, and selinon_storages_required; checked by the loader and by real workers."""

from __future__ import annotations

import os
import signal
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.bootstep import STORAGES_ENV, StoragesSource, storages_source
from celery_selinon_storage.specs import StorageSpec, load_inline_storages, load_storages
from tests.worker_app import store_and_read_back, store_in
from tests.workers import ROOT, WorkerProcess

ENTRIES: list[dict[str, Any]] = [
    {"name": "Scratch", "classname": "InMemoryStorage", "configuration": {"max_records": 100}},
    {
        "name": "Results",
        "classname": "SqlStorage",
        "import": "selinon.storage",
        "configuration": {"connection_string": "sqlite://", "table_name": "${CSS_TABLE:-results}"},
        "retry": {"attempts": 5},
        "timeout": 4,
    },
]

YAML = """\
storages:
  - name: Scratch
    classname: InMemoryStorage
    configuration: {max_records: 100}
  - name: Results
    classname: SqlStorage
    import: selinon.storage
    configuration: {connection_string: "sqlite://", table_name: "${CSS_TABLE:-results}"}
    retry: {attempts: 5}
    timeout: 4
"""


def checked(specs: list[StorageSpec]) -> list[tuple[Any, ...]]:
    """What a spec holds, less where it was written."""
    return [(spec.name, spec.cls, dict(spec.options), spec.retry) for spec in specs]


def inline_error(value: Any, setting: str = "selinon_storages") -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_inline_storages(value, setting, environ={})
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- the loader --------------------------------------------------------------------------------------


def test_a_mapping_and_a_list_give_what_the_file_gives(tmp_path: Path) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(YAML)
    from_file = checked(load_storages(path, environ={"CSS_TABLE": "t1"}))
    assert from_file[1][2] == {"connection_string": "sqlite://", "table_name": "t1"}
    assert checked(load_inline_storages({"storages": ENTRIES}, environ={"CSS_TABLE": "t1"})) == from_file
    assert checked(load_inline_storages(ENTRIES, environ={"CSS_TABLE": "t1"})) == from_file
    assert checked(load_inline_storages(tuple(ENTRIES), environ={"CSS_TABLE": "t1"})) == from_file


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            [ENTRIES[0], {"name": "R", "classname": "RedisStorage", "configuration": {"port": "high"}}],
            "selinon_storages[1].configuration.port: storage 'R', option 'port': must be an integer, not text; fix its value",
        ),
        (
            {"storages": [{"name": "S", "classname": "SqlStorage", "configuration": {}}]},
            "selinon_storages.storages[0].configuration: storage 'S', option 'connection_string': required option is missing; add it under configuration: (SqlStorage takes: connection_string, encoding, echo, table_name, engine_options)",
        ),
        (
            [ENTRIES[0], ENTRIES[0]],
            "selinon_storages[1].name: storage 'Scratch': the name is used twice (first at selinon_storages[0].name); storage names must be unique",
        ),
        (
            [{**ENTRIES[0], "max_records": 1}],
            "selinon_storages[0].max_records: storage 'Scratch': unknown key 'max_records'; a storage takes: name, classname, import, configuration, cache, retry, timeout",
        ),
        (
            [{**ENTRIES[1], "retry": {"attempts": 0}}],
            "selinon_storages[0].retry.attempts: storage 'Results', option 'retry.attempts': must be a whole number from 1 to 20; fix its value",
        ),
        (
            [{**ENTRIES[1], "configuration": {"connection_string": "${CSS_NOT_SET_ANYWHERE}"}}],
            "selinon_storages[0].configuration.connection_string: storage 'Results', option 'connection_string': the ${...} reference names an environment variable that is not set; set the variable, or write ${NAME:-default} to give a default, or $$ for a literal dollar",
        ),
        (
            [{"name": "X", "classname": "InMemoryStorage", "configuration": {"max-records": 1}}],
            "selinon_storages[0].configuration['max-records']: storage 'X', option 'max-records': unknown option; InMemoryStorage takes: max_records",
        ),
        (
            [],
            "selinon_storages: 'storages:' must be a non-empty list of storages (each with name, classname, configuration)",
        ),
        ({"Storages": ENTRIES}, "selinon_storages: there is no top-level 'storages:' list; add one"),
        (
            ["Scratch"],
            "selinon_storages[0]: each item of 'storages:' must be a mapping with name, classname and configuration",
        ),
    ],
)
def test_an_inline_error_is_one_line_naming_the_setting_path(value: Any, expected: str) -> None:
    assert inline_error(value) == expected


def test_a_list_that_holds_itself_is_refused_in_one_line() -> None:
    entry: dict[str, Any] = {"name": "Loop", "classname": "InMemoryStorage"}
    entry["configuration"] = {"max_records": [entry]}
    assert inline_error([entry]).startswith(
        "selinon_storages: the value is nested too deeply (or holds itself) and cannot be checked"
    )


def test_a_setting_of_another_type_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StoragesSource(42, "selinon_storages").load()
    assert str(caught.value) == (
        "selinon_storages: must be the path of a storages YAML file, a mapping with a 'storages' list, "
        "or that list; it is int"
    )


def test_a_path_in_the_setting_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGES_ENV, raising=False)
    path = tmp_path / "storages.yml"
    path.write_text(YAML)
    app = Celery("proj", set_as_current=False)
    app.conf.selinon_storages = path
    source = storages_source(app, None)
    assert source == StoragesSource(path, "selinon_storages")
    assert [spec.name for spec in source.load()] == ["Scratch", "Results"]


def test_a_django_style_settings_module_with_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """``config_from_object('django.conf:settings', namespace='CELERY')`` reads CELERY_SELINON_STORAGES;
    errors name the setting as the module spells it."""
    monkeypatch.delenv(STORAGES_ENV, raising=False)
    settings = types.ModuleType("proj_settings")
    settings.CELERY_SELINON_STORAGES = [ENTRIES[0], {**ENTRIES[0], "name": "Other", "configuration": []}]  # type: ignore[attr-defined]
    app = Celery("proj", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    source = storages_source(app, None)
    assert source is not None and source.origin == "CELERY_SELINON_STORAGES"
    with pytest.raises(ConfigurationError) as caught:
        source.load()
    assert str(caught.value) == (
        "CELERY_SELINON_STORAGES[1].configuration: storage 'Other': "
        "'configuration:' must be a mapping of option: value"
    )
    settings.CELERY_SELINON_STORAGES = {"storages": ENTRIES[:1]}  # type: ignore[attr-defined]
    source = storages_source(app, None)
    assert source is not None and [spec.name for spec in source.load()] == ["Scratch"]


# -- real workers --------------------------------------------------------------------------------------


def app_module(tmp_path: Path, body: str) -> tuple[str, dict[str, str]]:
    """A project module configuring the test app (``from tests.worker_app import app``) as ``body`` says;
    its name, and the environment a worker needs to import it."""
    name = f"css_settings_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(f"from tests.worker_app import app\n\n{body}\n")
    return name, {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def configured_worker(
    workers: Callable[..., WorkerProcess], tmp_path: Path, body: str, **kwargs: Any
) -> WorkerProcess:
    """A worker of the test app configured by ``body``, with no --storages option and no variable."""
    module, env = app_module(tmp_path, body)
    worker = workers(storages=None, app=module, env=env, **kwargs)
    worker.env.pop(STORAGES_ENV, None)
    return worker


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("celery-selinon-storage")]


@pytest.mark.worker
@pytest.mark.service
@pytest.mark.parametrize(("pool", "shape"), [("prefork", "mapping"), ("threads", "list")])
def test_a_worker_uses_storages_given_inline(
    pool: str,
    shape: str,
    tmp_path: Path,
    redis_url: str,
    queue: str,
    unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    entries = [
        {
            "name": "Redis",
            "classname": "RedisStorage",
            "configuration": {"url": redis_url, "key_prefix": unique},
        },
        ENTRIES[0],
    ]
    value = {"storages": entries} if shape == "mapping" else entries
    worker = configured_worker(
        workers, tmp_path, f"app.conf.selinon_storages = {value!r}", pool=pool, concurrency=2, queue=queue
    )
    worker.start().wait_ready()
    payload = {"shape": shape, "n": [1, 2.5, None]}
    results = [
        store_and_read_back.apply_async((["Redis", "Scratch"], payload), queue=queue) for _ in range(4)
    ]
    assert [result.get(timeout=60) for result in results] == [True] * 4
    assert worker.stop(signal.SIGTERM) == 0
    assert "storages started in process" in worker.output and "Redis (RedisStorage" in worker.output


@pytest.mark.worker
def test_a_bad_inline_setting_stops_the_worker_with_one_line(
    tmp_path: Path, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    value = [ENTRIES[0], {"name": "Redis", "classname": "RedisStorage", "configuration": {"ttl": "a day"}}]
    worker = configured_worker(
        workers, tmp_path, f"app.conf.selinon_storages = {value!r}", pool="solo", queue=queue
    )
    assert worker.run_to_exit() == 78
    assert error_lines(worker.output) == [
        "celery-selinon-storage: error: selinon_storages[1].configuration.ttl: storage 'Redis', option 'ttl': "
        "must be an integer or null, not text; fix its value"
    ]


@pytest.mark.worker
def test_a_worker_without_storages_exits_78_by_default(
    tmp_path: Path, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = configured_worker(workers, tmp_path, "", pool="prefork", queue=queue)
    assert worker.run_to_exit() == 78
    assert error_lines(worker.output) == [
        "celery-selinon-storage: error: no storages configured; set app.conf.selinon_storages (a storages "
        "YAML file's path, or the storages inline), start the worker with --storages FILE, or set the "
        "environment variable CELERY_SELINON_STORAGES to a file's path (or set selinon_storages_required = "
        "False to run this worker without them)"
    ]


@pytest.mark.worker
@pytest.mark.service
def test_a_worker_may_run_without_storages_when_they_are_not_required(
    tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = configured_worker(
        workers, tmp_path, "app.conf.selinon_storages_required = False", pool="threads", queue=queue
    )
    worker.start().wait_ready()
    with pytest.raises(Exception, match=r"storages are not started in process \d+"):
        store_in.apply_async((["Scratch"],), queue=queue).get(timeout=60)
    assert worker.stop(signal.SIGTERM) == 0
    assert (
        "celery-selinon-storage: no storages configured, so this worker has none and get_storage() fails in "
        "its tasks; set app.conf.selinon_storages (a storages YAML file's path, or the storages inline), "
        "start the worker with --storages FILE, or set the environment variable CELERY_SELINON_STORAGES to "
        "a file's path"
    ) in worker.output


@pytest.mark.worker
@pytest.mark.service
def test_a_worker_configured_from_django_settings(
    tmp_path: Path, redis_url: str, queue: str, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    """The usual Django set-up: ``config_from_object('django.conf:settings', namespace='CELERY')``."""
    settings = f"css_django_{unique}"
    entries = [
        {
            "name": "Redis",
            "classname": "RedisStorage",
            "configuration": {"url": redis_url, "key_prefix": unique},
        }
    ]
    (tmp_path / f"{settings}.py").write_text(f'SECRET_KEY = "test"\nCELERY_SELINON_STORAGES = {entries!r}\n')
    worker = configured_worker(
        workers,
        tmp_path,
        f"import os\nos.environ['DJANGO_SETTINGS_MODULE'] = {settings!r}\n"
        "app.config_from_object('django.conf:settings', namespace='CELERY')",
        pool="prefork",
        queue=queue,
    )
    worker.start().wait_ready()
    result = store_and_read_back.apply_async((["Redis"], {"from": "django"}), queue=queue)
    assert result.get(timeout=60) is True
    assert worker.stop(signal.SIGTERM) == 0
