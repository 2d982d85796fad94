"""RedisStorage's ``max_connections`` caps the pool: callers beyond it wait for a free connection."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.storages.redis import RedisStorage

pytestmark = pytest.mark.service


def test_more_threads_than_max_connections_all_store_and_read_back(redis_url: str, unique: str) -> None:
    storage = ManagedStorage(
        "Results", RedisStorage(url=redis_url, key_prefix=f"{unique}:", max_connections=2), GuardKind.THREAD
    )
    storage.connect()
    failures: list[BaseException] = []
    read_back: dict[str, Any] = {}

    def work(thread: int) -> None:
        try:
            for n in range(50):
                task_id = f"t{thread}-{n}"
                storage.store({}, "flow", "task", task_id, {"n": n, "thread": thread})
                read_back[task_id] = storage.retrieve("flow", "task", task_id)
        except BaseException as error:  # noqa: BLE001 - every failure is reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = storage.adapter.handle()
    try:
        assert failures == []
        assert len(read_back) == 400
        assert all(value == {"n": int(key.split("-")[1]), "thread": int(key[1:].split("-")[0])}
                   for key, value in read_back.items())  # fmt: skip
        assert len(client.connection_pool._connections) <= 2
    finally:
        for key in client.scan_iter(f"{unique}:*"):
            client.delete(key)
        storage.shut_down()


@pytest.mark.parametrize("ssl", [False, True])
def test_a_capped_pool_keeps_the_options_given_as_fields(ssl: bool) -> None:
    adapter = RedisStorage(host="127.0.0.1", port=6379, db=3, password="pw", ssl=ssl, max_connections=4)
    client = adapter._open()
    pool: Any = client.connection_pool
    assert pool.max_connections == 4
    assert pool.timeout == adapter.wait_timeout
    assert pool.connection_class is (redis.SSLConnection if ssl else redis.Connection)
    assert {key: pool.connection_kwargs[key] for key in ("host", "port", "db", "password")} == {
        "host": "127.0.0.1",
        "port": 6379,
        "db": 3,
        "password": "pw",
    }
    client.close()
