"""The seed's form (``import: selinon.storage`` + ``RedisStorage``) in one nodes.yml read by Selinon's own
``Config.set_config_yaml`` and by the worker, in this process and in real workers running a Selinon flow."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import selinon
import selinon.storage
from selinon import Config, StoragePool, run_flow

from celery_selinon_storage import ConfigurationError, open_storages, selinon_alias
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.selinon_alias import offer_builtins_to_selinon
from celery_selinon_storage.selinon_bridge import bridge_selinon
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages import BUILTIN_STORAGES
from celery_selinon_storage.storages.memory import InMemoryStorage
from celery_selinon_storage.storages.redis import RedisStorage
from tests.selinon_app.app import HERE, app
from tests.workers import WorkerProcess, wait_for

FLOWS = str(HERE / "flows.yml")

#: tests/selinon_app/nodes.yml.in with the storage written as the seed (and the README) write it: the
#: host from the environment in this package's form, the port quoted as Selinon's custom-storage docs do.
SEED_NODES = """\
global:
  default_task_queue: "@QUEUE@"
  default_dispatcher_queue: "@QUEUE@"
tasks:
  - name: Start
    import: tests.selinon_app.tasks
    storage: Results
  - name: Double
    import: tests.selinon_app.tasks
    storage: Results
  - name: AddOne
    import: tests.selinon_app.tasks
    storage: Results
flows:
  - chain
storages:
  - name: Results
    import: selinon.storage
    classname: RedisStorage
    configuration:
      host: ${CSS_SEED_REDIS_HOST}
      port: '@PORT@'
      db: @DB@
      charset: utf-8
      key_prefix: "@PREFIX@:"
      ttl: 600
flow-definitions:
  - name: chain
    edges:
      - from:
        to: Start
      - from: Start
        to: Double
      - from: Double
        to: AddOne
"""


@pytest.fixture
def seed_nodes(
    tmp_path: Path, redis_url: str, unique: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The seed-form nodes.yml on the test Redis; ``CSS_SEED_REDIS_HOST`` set in this process."""
    address = urlsplit(redis_url)
    monkeypatch.setenv("CSS_SEED_REDIS_HOST", str(address.hostname))
    path = tmp_path / "nodes.yml"
    path.write_text(
        SEED_NODES.replace("@QUEUE@", queue)
        .replace("@PORT@", str(address.port or 6379))
        .replace("@DB@", address.path.strip("/") or "0")
        .replace("@PREFIX@", unique)
    )
    return path


def test_selinons_own_loader_reads_the_seed_form_after_bridge_selinon(seed_nodes: Path) -> None:
    bridge_selinon()
    Config.set_config_yaml(str(seed_nodes), [FLOWS])
    selinons = Config.storage_mapping["Results"]
    assert isinstance(selinons, RedisStorage) and type(selinons).__module__ == "selinon.storage"
    assert not selinons.is_connected()
    [spec] = load_storages(seed_nodes)
    assert spec.cls is RedisStorage and isinstance(spec.options["port"], int)
    assert repr(selinons) == repr(spec.create())  # built from the same file, read the same way


def test_without_the_offer_selinons_loader_fails_on_the_same_file(
    seed_nodes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(vars(selinon.storage), "__getattr__")
    with pytest.raises(ImportError, match=r"cannot import name 'RedisStorage' from 'selinon\.storage'"):
        Config.set_config_yaml(str(seed_nodes), [FLOWS])


def test_the_offer_is_idempotent_lazy_and_leaves_selinons_names_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = vars(selinon.storage)["__getattr__"]
    offer_builtins_to_selinon()
    assert vars(selinon.storage)["__getattr__"] is before
    assert selinon.storage.Storage.__module__ == "selinon.storage"  # Selinon's own class, untouched
    assert {name for name in BUILTIN_STORAGES if hasattr(selinon.storage, name)} == set(BUILTIN_STORAGES)
    assert selinon.storage.InMemoryStorage is selinon.storage.InMemoryStorage  # one class per name
    assert issubclass(selinon.storage.InMemoryStorage, InMemoryStorage)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchStorage'"):
        _ = selinon.storage.NoSuchStorage


def test_selinons_instance_reads_its_configuration_as_the_loader_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selinon.storage import RedisStorage as SelinonsRedisStorage  # as Selinon's config does

    monkeypatch.setenv("CSS_SEED_HOST", "cache.internal")
    built = SelinonsRedisStorage(host="${CSS_SEED_HOST}", port="6380")
    assert repr(built) == repr(RedisStorage(host="cache.internal", port=6380))
    with pytest.raises(ConfigurationError) as caught:
        SelinonsRedisStorage(port=[6379])
    assert str(caught.value) == (
        "selinon.storage.RedisStorage: option 'port': must be an integer, not a list; fix its value"
    )


def test_with_the_bridge_selinons_look_ups_get_the_managed_storage_and_its_own_is_never_connected(
    seed_nodes: Path,
) -> None:
    Config.set_config_yaml(str(seed_nodes), [FLOWS])
    selinons = Config.storage_mapping["Results"]
    with open_storages(seed_nodes) as storages:
        managed = storages.get("Results")
        assert isinstance(managed, ManagedStorage)
        assert StoragePool.get_connected_storage("Results") is managed
        StoragePool.set({"n": 1}, "chain", "Start", "seed-task-1", {"value": 1})
        assert StoragePool.retrieve("chain", "Start", "seed-task-1") == {"value": 1}
    assert not selinons.is_connected()


@pytest.mark.worker
@pytest.mark.service
def test_a_prefork_worker_runs_selinon_flows_from_the_seed_form_file(
    seed_nodes: Path,
    queue: str,
    unique: str,
    redis_url: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    host = urlsplit(redis_url).hostname
    env = {"CSS_TEST_NODES": str(seed_nodes), "CSS_SEED_REDIS_HOST": str(host)}
    worker = workers(
        storages=seed_nodes,
        pool="prefork",
        concurrency=2,
        queue=queue,
        app="tests.selinon_app.app",
        env=env,
    ).start()
    worker.wait_ready()

    if Config.celery_app is not app:
        Config.set_celery_app(app)
    Config.set_config_yaml(str(seed_nodes), [FLOWS])
    dispatchers = [run_flow("chain", {"n": n}) for n in range(4)]

    def states() -> list[str]:
        return [str(app.backend.get_task_meta(d.id)["status"]) for d in dispatchers]

    wait_for(
        lambda: all(state in ("SUCCESS", "FAILURE") for state in states()),
        120,
        "every flow to finish",
        detail=lambda: f"{states()}\n{worker.output}",
    )
    assert states() == ["SUCCESS"] * len(dispatchers), worker.output
    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert "Traceback" not in worker.output, worker.output
    assert "Results" in worker.output  # the worker started the storage from the same file

    client = redis.Redis.from_url(redis_url)
    try:
        stored = list(client.scan_iter(match=f"{unique}:*"))
    finally:
        client.close()
    assert len(stored) == 3 * len(dispatchers)  # Start, Double and AddOne of every flow, by the built-in


def test_without_such_a_module_in_selinon_one_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = "selinon.storage_of_a_later_selinon"
    monkeypatch.setattr(selinon_alias, "SELINON_MODULE", absent)
    monkeypatch.setitem(sys.modules, absent, None)  # not importable; the registration is undone with the test
    monkeypatch.setattr(selinon, absent.rpartition(".")[2], None, raising=False)
    offer_builtins_to_selinon()
    namespace: dict[str, object] = {}
    exec(f"from {absent} import InMemoryStorage", namespace)  # what Selinon's generated config runs
    assert issubclass(namespace["InMemoryStorage"], InMemoryStorage)  # type: ignore[arg-type]
