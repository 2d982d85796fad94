"""Issue #12: Selinon's own class paths are served by built-in variants; their options are accepted."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest
import selinon.storages.memory
import yaml

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.selinon_classes import SELINON_CLASSES
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages import builtin_storage_class

#: Every option of each Selinon class's constructor (tests/selinon_published/README.md), with the values
#: published files give them.
PUBLISHED_OPTIONS: dict[str, dict[str, Any]] = {
    "SelinonRedisStorage": {
        "host": "127.0.0.1", "port": "6379", "db": 13, "password": None, "socket_timeout": 5.0,
        "connection_pool": None, "charset": "utf-8", "errors": "strict", "unix_socket_path": "/run/redis.sock",
    },
    "SelinonInMemoryStorage": {"echo": "stderr", "json": True},
    "SelinonSqlStorage": {
        "connection_string": "postgres://user:secret@127.0.0.1:5432/results?sslmode=disable",
        "encoding": "utf-8", "echo": False,
    },
    "SelinonMongoStorage": {"db_name": "results", "collection_name": "tasks", "host": "127.0.0.1", "port": "27017"},
    "SelinonS3Storage": {
        "bucket": "results", "location": "eu-central-1", "endpoint_url": "http://127.0.0.1:9000", "use_ssl": False,
        "aws_access_key_id": "key", "aws_secret_access_key": "secret", "region_name": "eu-central-1",
        "serialize_json": True,
    },
    "SelinonFilesystemStorage": {"path": "results"},
}  # fmt: skip


def write_nodes(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    path = tmp_path / "nodes.yml"
    path.write_text(yaml.safe_dump({"storages": list(entries)}))
    return path


@pytest.mark.parametrize(("module", "classname"), list(SELINON_CLASSES), ids="{0[0]}.{0[1]}".format)
def test_each_selinon_class_path_is_served_by_a_builtin_with_its_published_options(
    module: str, classname: str, tmp_path: Path
) -> None:
    served = SELINON_CLASSES[(module, classname)]
    options = PUBLISHED_OPTIONS[served.variant]
    if module == "selinonlib.storages.s3":  # selinonlib's S3 had no serialize_json
        options = {key: value for key, value in options.items() if key != "serialize_json"}
    path = write_nodes(
        tmp_path, {"name": "Results", "import": module, "classname": classname, "configuration": options}
    )
    [spec] = load_storages(path)
    assert spec.cls.__name__ == served.variant
    assert issubclass(spec.cls, builtin_storage_class(served.builtin))
    assert spec.cls.__module__.startswith("celery_selinon_storage.storages.")
    spec.create()  # built with the published options, no I/O


def test_selinonlib_is_not_needed_and_selinons_own_classes_are_not_used() -> None:
    assert importlib.util.find_spec("selinonlib") is None
    assert importlib.util.find_spec("selinon.storages.redis") is not None  # Selinon 1.4 is installed


def test_the_start_up_log_says_which_builtin_serves_each_entry_and_what_it_ignores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_nodes(
        tmp_path,
        {
            "name": "Redis",
            "import": "selinon.storages.redis",
            "configuration": PUBLISHED_OPTIONS["SelinonRedisStorage"],
        },
        {
            "name": "Files",
            "import": "selinon.storages.filesystem",
            "classname": "Filesystem",
            "configuration": {},
        },
        {"name": "Own", "classname": "InMemoryStorage", "configuration": {}},
    )
    with caplog.at_level(logging.INFO, logger="celery_selinon_storage"):
        load_storages(path)
    assert [record.getMessage() for record in caplog.records] == [
        "storage 'Redis': selinon.storages.redis.Redis is served by the built-in RedisStorage in Selinon's data "
        "layout (key = task id, value = the whole record as JSON); ignored: charset='utf-8' (results are UTF-8 "
        "JSON), errors='strict' (UTF-8 JSON always decodes), connection_pool=None (redis-py pools its own "
        "connections), unix_socket_path='/run/redis.sock' (Selinon's adapter never used it either; it connects "
        "to host and port)",
        "storage 'Files': selinon.storages.filesystem.Filesystem is served by the built-in FilesystemStorage in "
        "Selinon's data layout ({path}/{flow_name}/{task_name}/{task_id}.json)",
    ]


def test_a_class_named_through_a_module_of_ones_own_is_kept_as_it_is(tmp_path: Path) -> None:
    path = write_nodes(
        tmp_path,
        {"name": "Memory", "import": "tests.selinon_published.keep_as_is", "classname": "InMemoryStorage",
         "configuration": {"echo": False}},
    )  # fmt: skip
    [spec] = load_storages(path)
    assert spec.cls is selinon.storages.memory.InMemoryStorage


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"import": "selinon.storages.redis", "classname": "Redis", "configuration": {"charset": "latin-1"}},
            "storage 'Results', option 'charset': 'latin-1' is not supported; results are stored as UTF-8 JSON",
        ),
        (
            {"import": "selinon.storages.mongodb", "classname": "MongoDB",
             "configuration": {"db_name": "d", "collection_name": "c", "port": "mongo"}},
            "storage 'Results', option 'port': must be an integer, not 'mongo'; fix its value",
        ),
        (
            {"import": "selinonlib.storages.sqlStorage", "classname": "SqlStorage",
             "configuration": {"connection_string": "sqlite:///results.db"}},
            "storage 'Results', option 'connection_string': Selinon's table keeps results in JSONB, so this class "
            "serves PostgreSQL only; for another database write classname: SqlStorage (the built-in) instead",
        ),
    ],
    ids=["charset", "port", "not-postgresql"],
)  # fmt: skip
def test_options_a_builtin_cannot_honour_are_refused_in_one_line(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    path = write_nodes(tmp_path, {"name": "Results", **entry})
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path)
    assert str(caught.value).endswith(message)
    assert str(caught.value).startswith(f"{path}:")
