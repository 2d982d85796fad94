"""The storages loader, fuzzed: whatever the file holds, only ConfigurationError escapes, in one line."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.specs import StorageSpec, load_storages

KEYS = ["storages", "name", "classname", "import", "configuration", "cache", "connection_string", "echo",
        "table_name", "host", "port", "ttl", "url", "<<", "max_records", "db_name", "bucket", "x"]  # fmt: skip
CLASSES = [
    "SqlStorage",
    "RedisStorage",
    "MongoStorage",
    "S3Storage",
    "InMemoryStorage",
    "Nope",
    "OrderedDict",
]
MODULES = ["selinon.storage", "collections", "tests.recording", "no.such.module", "os"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(CLASSES + MODULES + ["sqlite://", "${HOME}", "${NOPE}", "${X:-1}", "${", "$$"]),
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=20,
)
storage_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=8), st.integers(), st.none()),
        "classname": st.sampled_from(CLASSES),
        "import": st.sampled_from(MODULES),
        "configuration": st.one_of(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=4), scalars),
        "cache": documents,
    },
)
structured = st.fixed_dictionaries({"storages": st.one_of(st.lists(storage_entries, max_size=3), documents)})
raw_text = st.text(
    alphabet=st.sampled_from(list("storages:- name{}[]&*<>!|'\"#%@`\\\n\t ${}:,0123456789abcx")), max_size=200
)


@pytest.fixture(scope="module")
def directory() -> Iterator[Path]:
    """Where the fuzzed files are written, one after the other; removed after the module's tests."""
    with tempfile.TemporaryDirectory(prefix="css-fuzz-") as name:
        yield Path(name)


def load_text(directory: Path, text: str) -> None:
    path = directory / "storages.yml"
    path.write_text(text, encoding="utf-8")
    try:
        specs = load_storages(path, environ={"HOME": "/home/x", "X": "2"})
    except ConfigurationError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return
    assert all(isinstance(spec, StorageSpec) for spec in specs)


#: Examples and deadline from the loaded profile (tests/hypothesis_profiles.py: 1000 under CI, 100 else).
FUZZ = settings(suppress_health_check=list(HealthCheck))


@FUZZ
@given(structured)
def test_structured_documents(directory: Path, document: object) -> None:
    load_text(directory, yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(documents)
def test_arbitrary_documents(directory: Path, document: object) -> None:
    load_text(directory, yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(raw_text)
def test_arbitrary_text(directory: Path, text: str) -> None:
    load_text(directory, text)
