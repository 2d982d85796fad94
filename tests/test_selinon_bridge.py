"""The bridge gives Selinon per-process lock pools and routes its storage look-ups to managed storages."""

from __future__ import annotations

import threading
from pathlib import Path

from selinon import StoragePool, SystemState

from celery_selinon_storage import open_storages
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.selinon_bridge import ProcessLockPool, bridge_selinon


def test_selinon_lock_pools_are_replaced_by_process_local_ones() -> None:
    bridge_selinon()
    for pool in (
        StoragePool._storage_pool_locks,
        SystemState._node_state_cache_lock,
        SystemState._throttle_lock_pool,
    ):
        assert isinstance(pool, ProcessLockPool)


def test_equal_names_share_one_lock_and_managed_storages_take_none(tmp_path: Path) -> None:
    pool = ProcessLockPool()
    first, second = "".join(["flo", "w1"]), "".join(["fl", "ow1"])  # equal, not identical
    assert first is not second
    assert pool.get_lock(first) is pool.get_lock(second)
    assert isinstance(pool.get_lock(first), type(threading.Lock()))
    path = tmp_path / "storages.yml"
    path.write_text("storages:\n  - name: Memory\n    classname: InMemoryStorage\n")
    with open_storages(path) as storages:
        memory = storages.get("Memory")
        assert isinstance(memory, ManagedStorage)
        lock = pool.get_lock(memory)
        with lock, lock:  # a no-op context, re-entrant
            pass
        assert StoragePool.get_connected_storage("Memory") is memory
