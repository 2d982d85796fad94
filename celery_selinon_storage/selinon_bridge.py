"""Selinon's ``StoragePool`` served by the worker's managed storages.

Selinon looks a storage up by name on every call (``StoragePool.get_connected_storage``) and builds
its own instances when its config is set (usually at import, in the prefork parent). Its lock pools
(``StoragePool`` around ``retrieve``/``delete``, ``SystemState`` around its node-state cache and
throttling) hold ``multiprocessing.Lock`` objects made at import, held across network calls: under
eventlet or gevent a greenlet that waits for one blocks the whole hub, so the worker deadlocks as
soon as two greenlets meet there; the locks also serialise threads and are shared by forked children.
``bridge_selinon`` routes the look-up to this process's managed storages (whenever Selinon's config
was set) and gives Selinon lock pools of this process's own: thread locks, which eventlet's and
gevent's monkey-patching make green, and no lock at all around a managed storage, which carries the
guard its pool needs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from selinon import StoragePool, SystemState

from . import state
from .managed import ManagedStorage

_selinons_lookup = StoragePool.__dict__["get_connected_storage"].__func__


def _get_connected_storage(cls: type, storage_name: str) -> Any:
    storages = state.current()
    if storages is None:
        return _selinons_lookup(cls, storage_name)  # no managed storages here: Selinon's own way
    return storages.get(storage_name)


class ProcessLockPool:
    """Stands in for Selinon's ``LockPool``: one lock per id, made in and for the calling process."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._locks: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get_lock(self, lock_id: Any) -> Any:
        """The lock for ``lock_id`` (a flow or node name, or a storage); none for a managed storage."""
        if isinstance(lock_id, ManagedStorage):
            return contextlib.nullcontext()
        if not state.is_this_process(self._pid):  # forked: the parent's locks are not this process's
            self._pid, self._locks, self._lock = os.getpid(), {}, threading.Lock()
        with self._lock:
            lock = self._locks.get(lock_id)
            if lock is None:
                # made at call time, so under eventlet and gevent it is their green lock
                lock = self._locks[lock_id] = threading.Lock()
            return lock


def bridge_selinon() -> None:
    """Make Selinon's ``StoragePool`` use the calling process's managed storages (idempotent)."""
    if getattr(StoragePool, "_celery_selinon_storage_bridged", False):
        return
    StoragePool.get_connected_storage = classmethod(_get_connected_storage)
    StoragePool._storage_pool_locks = ProcessLockPool()
    SystemState._node_state_cache_lock = ProcessLockPool()
    SystemState._throttle_lock_pool = ProcessLockPool()
    StoragePool._celery_selinon_storage_bridged = True
