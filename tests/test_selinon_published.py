"""Issue #12: the nodes.yml files of published Selinon deployments, run unchanged.

Each file in tests/selinon_published/ is a real deployment's nodes.yml (header: source, commit, the hosts
and credentials changed to reach the test servers). Reproducers: they fail today (see the README there).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from selinon import DataStorage, StoragePool

from celery_selinon_storage import open_storages
from celery_selinon_storage.__main__ import main

pytestmark = pytest.mark.service

PUBLISHED = Path(__file__).with_name("selinon_published")
FILES = sorted(PUBLISHED.glob("*.yml"))

#: The node arguments the published adapters key their records by (thoth's by package name, the Travis ones by
#: organization, repo and build).
NODE_ARGS = {"package_name": "selinon", "organization": "selinon", "repo": "selinon", "build": 1}


def environment(s3_endpoint: str, unique: str) -> dict[str, str]:
    """The variables the published files (and the adapters they name) expect, pointing at the test servers."""
    return {
        # thoth-station/selinon-worker: thoth.worker.storages expands these at connect
        "THOTH_CEPH_BUCKET": unique,
        "THOTH_CEPH_BUCKET_PREFIX": f"{unique}/",
        "THOTH_CEPH_KEY_ID": "testing",
        "THOTH_CEPH_SECRET_KEY": "testing",
        "THOTH_S3_ENDPOINT_URL": s3_endpoint,
        # fabric8-analytics-worker: f8a_worker.storages expands these when built; F8A_UNCLOUDED_MODE makes
        # its S3 adapters take S3_ENDPOINT_URL
        "POSTGRESQL_USER": "postgres",
        "POSTGRESQL_PASSWORD": "postgres",
        "PGBOUNCER_SERVICE_HOST": "127.0.0.1",
        "POSTGRESQL_DATABASE": "test",
        "DEPLOYMENT_PREFIX": unique,
        "WORKER_ADMINISTRATION_REGION": "api",
        "F8A_UNCLOUDED_MODE": "1",
        "S3_ENDPOINT_URL": s3_endpoint,
        # boto3's own chain, for adapters given no keys
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture(params=FILES, ids=lambda path: path.stem)
def published(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    postgres_url: str,
    mongo_uri: str,
    s3_endpoint: str,
    unique: str,
) -> Path:
    """The published file in tmp_path, its placeholders replaced by this session's MongoDB and S3."""
    source: Path = request.param
    mongo = urlsplit(mongo_uri)
    text = (
        source.read_text()
        .replace("__MONGO_HOST__", mongo.hostname or "127.0.0.1")
        .replace("__MONGO_PORT__", str(mongo.port or 27017))
        .replace("__S3_ENDPOINT__", s3_endpoint)
    )
    for name, value in environment(s3_endpoint, unique).items():
        monkeypatch.setenv(name, value)
    path = tmp_path / source.name
    path.write_text(text)
    return path


def storage_names(path: Path) -> list[str]:
    """The storages the file declares, read with plain YAML (not with the loader under test)."""
    document = yaml.safe_load(path.read_text())
    return [entry["name"] for entry in document["storages"]]


def test_check_without_connecting_accepts_the_file(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["check", str(published), "--no-connect"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == storage_names(published)


def test_check_connects_to_every_storage(published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", str(published), "--json"])
    out, err = capsys.readouterr()
    assert out, err  # no report: the file was refused
    report = json.loads(out)
    failed = {entry["name"]: entry["error"] for entry in report["storages"] if not entry["ok"]}
    assert (status, failed) == (0, {}), "\n".join(f"{name}: {error}" for name, error in failed.items())
    assert [entry["name"] for entry in report["storages"]] == storage_names(published)


def test_every_storage_stores_and_reads_back_a_record(published: Path) -> None:
    failures: dict[str, str] = {}
    with open_storages(published) as storages:
        for name in storage_names(published):
            problem = round_trip(storages.get(name), name)
            if problem:
                failures[name] = problem
    assert failures == {}, "\n".join(f"{name}: {problem}" for name, problem in failures.items())


def round_trip(storage: Any, name: str) -> str | None:
    """Store a record through ``storage`` and read it back; what went wrong, or None."""
    task_id = f"css-published-{uuid.uuid4().hex}"
    result = {"storage": name, "values": [1, 2.5, "čaj", None, True]}
    try:
        storage.store(NODE_ARGS, "published_flow", "PublishedTask", task_id, result)
        got = storage.retrieve("published_flow", "PublishedTask", task_id)
    except Exception as exc:  # noqa: BLE001 - each storage's failure is reported, the others still run
        return f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):  # Selinon's adapters set no TTL: leave nothing in shared servers
        storage.delete("published_flow", "PublishedTask", task_id)
    return None if got == result else f"read back {got!r}"


class PublishedStyleStorage(DataStorage):  # type: ignore[misc]
    """A stand-in shaped like the published custom adapters (README): a client attribute made at connect
    (thoth's ``.ceph``, fabric8's ``.session``) and an extra query method their tasks call."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.ceph: dict[str, Any] | None = None

    def connect(self) -> None:
        self.ceph = {}

    def is_connected(self) -> bool:
        return self.ceph is not None

    def disconnect(self) -> None:
        self.ceph = None

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        assert self.ceph is not None
        self.ceph[node_args["package_name"]] = result
        return str(node_args["package_name"])

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        raise NotImplementedError("records are keyed by package name, as in thoth's ProjectInfoStore")

    def retrieve_project_info(self, package_name: str) -> Any:
        assert self.ceph is not None
        return self.ceph[package_name]


def test_tasks_reach_a_custom_adapters_own_methods_and_attributes(tmp_path: Path) -> None:
    """thoth's tasks call ``StoragePool.get_connected_storage("ProjectInfoStore").retrieve_project_info(...)``;
    fabric8's read ``.session`` and check ``isinstance(self.storage, BayesianPostgres)``."""
    path = tmp_path / "nodes.yml"
    path.write_text(
        "storages:\n  - name: ProjectInfoStore\n    classname: PublishedStyleStorage\n"
        f"    import: {__name__}\n    configuration: {{bucket: '{{THOTH_CEPH_BUCKET}}'}}\n"
    )
    with open_storages(path):
        storage = StoragePool.get_connected_storage("ProjectInfoStore")
        storage.store(NODE_ARGS, "pypi_project", "ProjectInfoTask", "task-1", {"version": "1.4.0"})
        assert storage.retrieve_project_info("selinon") == {"version": "1.4.0"}
        assert storage.ceph == {"selinon": {"version": "1.4.0"}}
        assert isinstance(storage, PublishedStyleStorage)
