"""Every bad storages file in ``tests/bad_yaml`` gets its exact one-line message, in-process and from a real worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.specs import load_storages
from tests.workers import WorkerProcess

CORPUS = Path(__file__).parent / "bad_yaml"
SQL_OPTIONS = "connection_string, encoding, echo, table_name, engine_options"

#: file -> (line, storage, option, message after "file:line: ")
EXPECTED: dict[str, tuple[int | None, str | None, str | None, str]] = {
    "missing.yml": (None, None, None, "storages file not found; pass the path of an existing YAML file"),
    "empty.yml": (None, None, None, "the file is empty; it needs a top-level 'storages:' list"),
    "syntax.yml": (
        7,
        None,
        None,
        "invalid YAML: while scanning a quoted scalar found unexpected end of stream (it starts on line 5); "
        "fix the syntax (safe YAML only, no Python tags)",
    ),
    "top_level_list.yml": (1, None, None, "the top level must be a mapping with a 'storages:' list"),
    "no_storages_key.yml": (1, None, None, "there is no top-level 'storages:' list; add one"),
    "seed_s3_copy_paste.yml": (
        7,
        "MyMongoStorage",
        "db_name",
        "storage 'MyMongoStorage', option 'db_name': unknown option; S3Storage takes: bucket, bucket_name, "
        "endpoint_url, region_name, aws_access_key_id, aws_secret_access_key, aws_session_token, location, use_ssl, "
        "key_prefix, create_bucket, connect_timeout, read_timeout, max_pool_connections",
    ),
    "storages_not_list.yml": (
        1,
        None,
        None,
        "'storages:' must be a non-empty list of storages (each with name, classname, configuration)",
    ),
    "missing_name.yml": (2, None, None, "a storage needs a 'name:' (non-empty text)"),
    "duplicate_name.yml": (
        4,
        "Results",
        None,
        "storage 'Results': the name is used twice (first on line 2); storage names must be unique",
    ),
    "unknown_entry_key.yml": (
        3,
        "Results",
        None,
        "storage 'Results': unknown key 'clasname'; a storage takes: name, classname, import, configuration, cache, retry, timeout",
    ),
    "unknown_class.yml": (
        3,
        "Results",
        None,
        "storage 'Results': class 'SqlStorag' is not a built-in storage (built-ins: InMemoryStorage, SqlStorage, RedisStorage, MongoStorage, FilesystemStorage, S3Storage); "
        "fix 'classname:' or set 'import:' to the module that defines it",
    ),
    "module_not_importable.yml": (
        4,
        "Results",
        None,
        "storage 'Results': module 'myproject.no_such_module' cannot be imported "
        "(ModuleNotFoundError: No module named 'myproject'); fix 'import:' or install the package that provides it",
    ),
    "not_a_data_storage.yml": (
        3,
        "Results",
        None,
        "storage 'Results': 'OrderedDict' is not a subclass of selinon.DataStorage; "
        "a storage class must implement it",
    ),
    "configuration_not_mapping.yml": (
        4,
        "Results",
        None,
        "storage 'Results': 'configuration:' must be a mapping of option: value",
    ),
    "unknown_option.yml": (
        5,
        "Results",
        "conection_string",
        f"storage 'Results', option 'conection_string': unknown option; SqlStorage takes: {SQL_OPTIONS}",
    ),
    "missing_required_option.yml": (
        5,
        "Results",
        "connection_string",
        "storage 'Results', option 'connection_string': required option is missing; "
        f"add it under configuration: (SqlStorage takes: {SQL_OPTIONS})",
    ),
    "unknown_sql_dialect.yml": (
        5,
        "Results",
        "connection_string",
        "storage 'Results', option 'connection_string': SQLAlchemy has no dialect 'postgress'; fix the URL's scheme",
    ),
    "wrong_type.yml": (
        6,
        "Results",
        "echo",
        "storage 'Results', option 'echo': must be true or false, not text; fix its value",
    ),
    "unset_environment_variable.yml": (
        5,
        "Results",
        "connection_string",
        # the variable's name is not echoed: text that looks like a reference may be part of a password
        "storage 'Results', option 'connection_string': the ${...} reference names an environment variable "
        "that is not set; set the variable, or write ${NAME:-default} to give a default, or $$ for a literal dollar",
    ),
    "python_tag.yml": (
        5,
        None,
        None,
        "invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'; fix the syntax (safe YAML only, no Python tags)",
    ),
    "seed_redis_duplicate_key.yml": (
        12,
        "MyRedisStorage",
        "host",
        "storage 'MyRedisStorage', option 'host': the option is written twice in one mapping "
        "(first on line 7); keep only one of them",
    ),
    "alias_bomb.yml": (
        11,
        None,
        None,
        "the YAML holds more than 100,000 values once its aliases are expanded (each *alias counts as a copy "
        "of what it names); a storages file needs far fewer: remove the aliases that multiply it",
    ),
    "deep_nesting.yml": (
        5,
        None,
        None,
        "the YAML is nested more than 64 levels deep; a storages file needs only a few levels: flatten it",
    ),
    "recursive_alias.yml": (
        5,
        None,
        None,
        "the alias *self is used inside the collection it names, which would make an endless structure; "
        "remove the alias",
    ),
    "control_character.yml": (
        3,
        None,
        None,
        "invalid YAML: control character U+0001 in column 28 is not allowed anywhere, not even in a comment; "
        "remove it (in a double-quoted string write it as \\x01)",
    ),
    "invalid_timestamp.yml": (
        5,
        None,
        None,
        "cannot read the value '2024-02-30' as !!timestamp (ValueError: day is out of range for month); "
        "fix it, or quote it to keep it as text",
    ),
    "lone_surrogate_name.yml": (
        2,
        "Results \ud83d",
        None,
        "storage 'Results \\ud83d': the name must be printable text (no control characters or lone "
        "surrogates); rename the storage",
    ),
    "abstract_class.yml": (
        3,
        "Results",
        None,
        "storage 'Results': 'JsonStorage' is an abstract class (it does not implement __init__, _open, _read, "
        "_remove, _write); "
        "name a class that implements them, such as a built-in storage",
    ),
    "custom_init_raises.yml": (
        3,
        "Legacy",
        None,
        "storage 'Legacy': tests.custom_adapters.EnvironmentUrlStorage could not be built "
        "(KeyError: 'CSS_TEST_UNSET_STORAGE_HOST'); fix its configuration or the environment it reads",
    ),
}


def expected_message(name: str) -> str:
    line, _, _, text = EXPECTED[name]
    where = f"{CORPUS / name}" + (f":{line}" if line else "")
    return f"{where}: {text}"


def test_the_corpus_and_the_table_agree() -> None:
    files = {path.name for path in CORPUS.glob("*.yml")} | {"missing.yml"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_is_one_exact_line_with_its_culprit(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSS_TEST_UNSET_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError) as caught:
        load_storages(CORPUS / name)
    line, storage, option, _ = EXPECTED[name]
    assert str(caught.value) == expected_message(name)
    assert "\n" not in str(caught.value)
    assert (caught.value.source, caught.value.line) == (str(CORPUS / name), line)
    assert (caught.value.storage, caught.value.option) == (storage, option)


@pytest.mark.worker
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_worker_refuses_bad_file_with_one_line_and_no_traceback(
    name: str, tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(storages=CORPUS / name, pool="solo", env={"CSS_TEST_UNSET_PASSWORD": ""})
    worker.env.pop("CSS_TEST_UNSET_PASSWORD")
    status = worker.run_to_exit(timeout=60)
    assert status == 78, worker.output
    assert "Traceback" not in worker.output
    errors = [line for line in worker.output.splitlines() if "celery-selinon-storage" in line]
    assert errors == [f"celery-selinon-storage: error: {expected_message(name)}"], worker.output
