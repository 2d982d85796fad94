"""Selinon's ``StoragePool`` served by the worker's managed storages.

Selinon looks a storage up by name on every call (``StoragePool.get_connected_storage``), builds
its own instances when its config is set (usually at import, in the prefork parent), and guards
``retrieve``/``delete`` with a ``multiprocessing.Lock`` made at import: it blocks an eventlet hub,
serialises threads and is shared by forked children. ``bridge_selinon`` routes the look-up to this
process's managed storages (whenever Selinon's config was set) and drops that lock for them, since
each managed storage carries the guard its pool needs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from selinon import StoragePool

from . import lifecycle
from .managed import ManagedStorage

_selinons_lookup = StoragePool.__dict__["get_connected_storage"].__func__


def _get_connected_storage(cls: type, storage_name: str) -> Any:
    storages = lifecycle.started_storages()
    if storages is None:
        return _selinons_lookup(cls, storage_name)  # no managed storages here: Selinon's own way
    return storages.get(storage_name)


class _PerProcessLocks:
    """Selinon's lock pool, minus the cross-process lock: none for managed storages (they guard
    themselves), a thread lock per storage and per process for Selinon's own instances."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def get_lock(self, storage: Any) -> Any:
        if isinstance(storage, ManagedStorage):
            return contextlib.nullcontext()
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's locks are not ours
                self._pid, self._locks = os.getpid(), {}
            return self._locks.setdefault(id(storage), threading.Lock())


def bridge_selinon() -> None:
    """Make Selinon's ``StoragePool`` use the calling process's managed storages (idempotent)."""
    if getattr(StoragePool, "_celery_selinon_storage_bridged", False):
        return
    StoragePool.get_connected_storage = classmethod(_get_connected_storage)
    StoragePool._storage_pool_locks = _PerProcessLocks()
    StoragePool._celery_selinon_storage_bridged = True
