"""Good storages files: Selinon's nodes.yml, anchors and merge keys, environment references."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages.memory import InMemoryStorage
from celery_selinon_storage.storages.sql import SqlStorage


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(text)
    return path


def test_a_selinon_nodes_yml_works_as_is(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
tasks:
  - name: Task1
    import: myproject.tasks
    storage: Results
storages:
  - name: Results
    classname: SqlStorage
    import: selinon.storage
    cache:
      name: LRU
      import: selinon.caches
      configuration: {max_cache_size: 10}
    configuration:
      connection_string: 'postgres://postgres:postgres@postgres:5432/postgres'
      encoding: 'utf-8'
      echo: false
flows:
  - flow1
""",
    )
    [spec] = load_storages(path)
    assert (spec.name, spec.cls, spec.line) == ("Results", SqlStorage, 6)
    assert dict(spec.options) == {
        "connection_string": "postgres://postgres:postgres@postgres:5432/postgres",
        "encoding": "utf-8",
        "echo": False,
    }


def test_anchors_and_merge_keys_share_configuration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
defaults: &sql
  connection_string: sqlite://
  echo: false
storages:
  - name: A
    classname: SqlStorage
    configuration:
      <<: *sql
      table_name: a_results
  - name: B
    classname: SqlStorage
    configuration:
      <<: *sql
      echo: true
""",
    )
    a, b = load_storages(path)
    assert dict(a.options) == {"connection_string": "sqlite://", "echo": False, "table_name": "a_results"}
    assert dict(b.options) == {"connection_string": "sqlite://", "echo": True}


def test_environment_references_expand_and_convert_by_annotation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Results
    classname: SqlStorage
    configuration:
      connection_string: postgresql://app:${DB_PASSWORD}@${DB_HOST:-localhost}/app
      echo: ${SQL_ECHO:-false}
      table_name: price_in_$$
  - name: Memory
    classname: InMemoryStorage
    configuration:
      max_records: ${MAX_RECORDS}
""",
    )
    results, memory = load_storages(path, environ={"DB_PASSWORD": "p{a}ss$word", "MAX_RECORDS": "100"})
    assert results.options["connection_string"] == "postgresql://app:p{a}ss$word@localhost/app"
    assert results.options["echo"] is False
    assert results.options["table_name"] == "price_in_$"
    assert memory.cls is InMemoryStorage and memory.options["max_records"] == 100


def test_text_from_the_environment_stays_text_where_text_is_wanted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storages:\n  - {name: R, classname: SqlStorage, configuration: {connection_string: 'sqlite://', table_name: '${T}'}}\n",
    )
    [spec] = load_storages(path, environ={"T": "123"})
    assert spec.options["table_name"] == "123"


def test_environment_text_that_is_not_a_number_is_a_type_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storages:\n  - name: M\n    classname: InMemoryStorage\n    configuration:\n      max_records: ${N}\n",
    )
    with pytest.raises(
        ConfigurationError,
        match=r"storages.yml:5: storage 'M', option 'max_records': must be an integer or null, not text",
    ) as caught:
        load_storages(path, environ={"N": "many"})
    assert caught.value.option == "max_records"


def test_a_key_written_twice_inside_an_option_names_the_option(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: R
    classname: SqlStorage
    configuration:
      connection_string: sqlite://
      engine_options:
        pool_size: 1
        pool_size: 2
""",
    )
    with pytest.raises(
        ConfigurationError,
        match=r":8: storage 'R', option 'engine_options': key 'pool_size' is written twice in one mapping \(first on line 7\)",
    ):
        load_storages(path)


def test_a_storage_key_written_twice_names_the_storage(tmp_path: Path) -> None:
    path = write(
        tmp_path, "storages:\n  - name: R\n    classname: SqlStorage\n    classname: InMemoryStorage\n"
    )
    with pytest.raises(ConfigurationError, match=r":4: storage 'R': key 'classname' is written twice"):
        load_storages(path)


def test_a_malformed_reference_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storages:\n  - name: R\n    classname: SqlStorage\n    configuration:\n      connection_string: 'sqlite:///${HOME'\n",
    )
    with pytest.raises(
        ConfigurationError,
        match=r":5: storage 'R', option 'connection_string': '\$\{' is not closed; write \$\{NAME\} or \$\$ for a literal dollar",
    ):
        load_storages(path)


def test_the_classname_defaults_to_the_name_as_in_selinon(tmp_path: Path) -> None:
    [spec] = load_storages(write(tmp_path, "storages:\n  - name: InMemoryStorage\n"))
    assert spec.cls is InMemoryStorage and dict(spec.options) == {}


def test_a_missing_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    path = write(
        tmp_path, "storages:\n  - name: R\n    classname: NeedsDriver\n    import: tests.needs_driver\n"
    )
    with pytest.raises(
        ConfigurationError,
        match=r"module 'tests.needs_driver' cannot be imported \(MissingDriverError: no_such_driver_xyz is not installed; pip install 'celery-selinon-storage\[sql\]'\)",
    ):
        load_storages(path)


def test_a_spec_repr_shows_no_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storages:\n  - {name: R, classname: SqlStorage, configuration: {connection_string: 'postgresql://u:hunter2@h/db'}}\n",
    )
    [spec] = load_storages(path)
    assert "hunter2" not in repr(spec)
    assert "hunter2" not in repr(spec.create())
