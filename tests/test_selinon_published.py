"""Issue #12: the nodes.yml files of published Selinon deployments, run unchanged.

Each file in tests/selinon_published/ is a real deployment's nodes.yml (header: source, commit, the hosts
and credentials changed to reach the test servers). Entries naming Selinon's own classes are served by the
built-ins' variants (docs/selinon.md); the custom adapters they name are the stand-ins in
tests/selinon_published/adapters/. The README there says what failed before #12.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from selinon import DataStorage, StoragePool

from celery_selinon_storage import open_storages
from celery_selinon_storage.__main__ import main
from celery_selinon_storage.selinon_classes import SELINON_CLASSES
from tests.selinon_published.standin_s3 import client, ensure_bucket
from tests.selinon_published.worker_app import ADAPTERS, NODE_ARGS, round_trip, round_trips
from tests.workers import ROOT, WorkerProcess

pytestmark = pytest.mark.service

PUBLISHED = Path(__file__).with_name("selinon_published")
FILES = sorted(PUBLISHED.glob("*.yml"))

#: Buckets a published file's deployment must have had: selinon/demo-worker's TravisLogsStorage keeps
#: Selinon's own S3 class as its base, which cannot create a bucket in us-east-1 (it sends that region as
#: the LocationConstraint, and S3 refuses it).
EXISTING_BUCKETS = {"selinon__demo-worker__demo_worker_config_nodes": ["travis"]}

#: The pools each file runs under, with their concurrency.
POOLS = {"prefork": 2, "threads": 4, "gevent": 8}


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
    monkeypatch.syspath_prepend(str(ADAPTERS))  # the stand-ins for the custom adapters the files name
    for bucket in EXISTING_BUCKETS.get(source.stem, []):
        ensure_bucket(client(s3_endpoint, "testing", "testing", None), bucket)
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
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "TARGET", "TIME", "CONNECT"]
    assert [row.split()[0] for row in rows] == storage_names(published)
    assert all(row.endswith("not tried") for row in rows)


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


@pytest.mark.worker
def test_every_storage_stores_and_reads_back_in_real_workers_of_each_pool(
    published: Path, unique: str, workers: Callable[..., WorkerProcess]
) -> None:
    """A worker of each pool at once, on a queue of its own; each stores and reads back through every entry."""
    started = {
        pool: workers(
            storages=published,
            pool=pool,
            concurrency=concurrency,
            queue=f"{unique}-{pool}",
            app="tests.selinon_published.worker_app",
            env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ADAPTERS}"},
        ).start()
        for pool, concurrency in POOLS.items()
    }
    names = storage_names(published)
    for pool, worker in started.items():
        worker.wait_ready()
        failures = round_trips.apply_async((names,), queue=f"{unique}-{pool}").get(timeout=60)
        assert (pool, failures) == (pool, {})
    for pool, worker in started.items():
        assert worker.stop() == 0, worker.output
        for name, (module, classname) in selinon_entries(published).items():
            assert f"storage {name!r}: {module}.{classname} is served by the built-in" in worker.output, pool
        assert "could not connect" not in worker.output, worker.output


def selinon_entries(path: Path) -> dict[str, tuple[str, str]]:
    """The entries that name one of Selinon's own classes: name -> (import, classname)."""
    document = yaml.safe_load(path.read_text())
    entries = {
        entry["name"]: (entry["import"], entry.get("classname", entry["name"]))
        for entry in document["storages"]
    }
    return {name: path for name, path in entries.items() if path in SELINON_CLASSES}


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
