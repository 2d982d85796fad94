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

Tracing into a storage (``global: trace: - storage: {name, method}`` in nodes.yml) is bound by Selinon's
generated config to Selinon's own instance, ``functools.partial(StorageClass.method, instance)``; the
bridge sends each such trace call to the managed instance of the same storage instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from selinon import Config, DataStorage, StoragePool, SystemState
from selinon.trace import Trace

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


class StorageTrace:
    """A storage trace function of Selinon's, sent to the managed instance of its storage when there is one.

    Without managed storages in the process it calls Selinon's own instance, as Selinon does.
    """

    def __init__(self, selinons: functools.partial[Any], method: str) -> None:
        self.selinons = selinons
        self.method = method
        self._storage_name = _name_in_config(selinons.args[0])

    def __call__(self, event: int, details: dict[str, Any]) -> Any:
        storages = state.current()
        if storages is None:
            return self.selinons(event, details)
        name = self._storage_name or _name_in_config(self.selinons.args[0])
        if name is None:  # an instance Selinon's current config no longer has
            return self.selinons(event, details)
        return getattr(storages.get(name), self.method)(event, details)

    def __repr__(self) -> str:
        return f"<trace to the managed storage {self._storage_name!r}, method {self.method!r}>"


def managed_trace(trace_func: Callable[..., Any]) -> Callable[..., Any]:
    """``trace_func`` as it should run: a storage trace (``partial(StorageClass.method, instance)`` of a
    storage Selinon made) becomes a ``StorageTrace``; any other function stays as it is."""
    if not (
        isinstance(trace_func, functools.partial)
        and len(trace_func.args) == 1
        and not trace_func.keywords
        and isinstance(trace_func.args[0], DataStorage)
        and not isinstance(trace_func.args[0], ManagedStorage)
    ):
        return trace_func
    return StorageTrace(trace_func, _method_name(type(trace_func.args[0]), trace_func.func))


def _method_name(cls: type, function: Any) -> str:
    """The name under which ``cls`` has ``function`` (what nodes.yml gave as ``method``)."""
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if value is function or getattr(value, "__func__", None) is function:
                return name
    return str(getattr(function, "__name__", "trace"))


def _name_in_config(instance: Any) -> str | None:
    for name, storage in getattr(Config, "storage_mapping", {}).items():
        if storage is instance:
            return str(name)
    return None


_selinons_trace_by_func = Trace.__dict__["trace_by_func"].__func__


def _trace_by_func(cls: type, func: Callable[..., Any]) -> None:
    _selinons_trace_by_func(cls, managed_trace(func))


def bridge_selinon() -> None:
    """Make Selinon's ``StoragePool`` use the calling process's managed storages (idempotent), and its
    storage tracing too (trace functions set before and after this call)."""
    # trace functions Selinon's config set since the last call (the patched trace_by_func routes later ones)
    Trace._trace_functions[:] = [managed_trace(func) for func in Trace._trace_functions]
    if getattr(StoragePool, "_celery_selinon_storage_bridged", False):
        return
    StoragePool.get_connected_storage = classmethod(_get_connected_storage)
    StoragePool._storage_pool_locks = ProcessLockPool()
    SystemState._node_state_cache_lock = ProcessLockPool()
    SystemState._throttle_lock_pool = ProcessLockPool()
    Trace.trace_by_func = classmethod(_trace_by_func)
    StoragePool._celery_selinon_storage_bridged = True
