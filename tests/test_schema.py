"""The shipped JSON Schema matches the adapters and accepts what the loader accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from celery_selinon_storage.schema import SCHEMA_PATH, storages_schema
from celery_selinon_storage.specs import ENTRY_KEYS

ROOT = Path(__file__).resolve().parent.parent


def validate(document: Any) -> None:
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def test_the_shipped_file_is_the_generated_schema() -> None:
    # after changing an adapter's options: python -c "from celery_selinon_storage.schema import write_schema; write_schema()"
    assert json.loads(SCHEMA_PATH.read_text()) == storages_schema()


def test_the_entry_keys_are_the_loaders() -> None:
    item = storages_schema()["properties"]["storages"]["items"]
    assert tuple(item["properties"]) == ENTRY_KEYS


@pytest.mark.parametrize("path", ["integration/demo/nodes.yml", "tests/selinon_app/nodes.yml.in"])
def test_the_projects_own_files_validate(path: str) -> None:
    validate(yaml.safe_load((ROOT / path).read_text()))


GOOD = [
    {
        "storages": [
            {
                "name": "R",
                "classname": "RedisStorage",
                "configuration": {"host": "h", "port": 6379, "ttl": None},
            }
        ]
    },
    {"storages": [{"name": "InMemoryStorage"}]},
    {
        "storages": [
            {"name": "R", "classname": "RedisStorage", "configuration": {"port": "${REDIS_PORT:-6379}"}}
        ]
    },
    {
        "storages": [
            {
                "name": "S",
                "classname": "SqlStorage",
                "import": "selinon.storage",
                "configuration": {"connection_string": "sqlite://"},
            }
        ]
    },
    {
        "storages": [
            {
                "name": "C",
                "classname": "Mine",
                "import": "myproject.storages",
                "configuration": {"anything": 1},
            }
        ]
    },
]

BAD = [
    {"storages": []},
    {"storages": [{"classname": "SqlStorage"}]},
    {"storages": [{"name": "S", "classname": "SqlStorage", "configuration": {"conection_string": "x"}}]},
    {"storages": [{"name": "S", "classname": "SqlStorage", "configuration": {"echo": True}}]},
    {"storages": [{"name": "R", "classname": "RedisStorage", "configuration": {"port": "6379x"}}]},
    {
        "storages": [
            {"name": "M", "classname": "S3Storage", "configuration": {"db_name": "d", "collection_name": "c"}}
        ]
    },
    {"storages": [{"name": "R", "clasname": "RedisStorage"}]},
]


@pytest.mark.parametrize("document", GOOD)
def test_good_documents_validate(document: Any) -> None:
    validate(document)


@pytest.mark.parametrize("document", BAD)
def test_bad_documents_do_not(document: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
