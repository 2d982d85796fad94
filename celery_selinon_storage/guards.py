"""The lock that keeps two tasks of one process out of an adapter at once, chosen by pool."""

from __future__ import annotations

import contextlib
import enum
import sys
import threading
from types import TracebackType
from typing import Any, Protocol


class Guard(Protocol):
    """A lock: what ``ManagedStorage`` holds around each call of an adapter that is not concurrency-safe."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> Any: ...


class GuardKind(enum.Enum):
    """How tasks in one worker process can overlap, and so which lock they need."""

    #: One task at a time per process (prefork children, solo): no lock at all.
    NONE = "none"
    #: Tasks in OS threads (threads pool): a ``threading.Lock``.
    THREAD = "thread"
    #: Tasks in eventlet greenthreads: a lock that yields to the hub instead of blocking it.
    EVENTLET = "eventlet"
    #: Tasks in gevent greenlets: likewise.
    GEVENT = "gevent"


#: Pool class (module, name) -> kind. The modules are looked up in ``sys.modules`` only: a pool
#: that subclasses one of them has imported it already, and importing eventlet or gevent here
#: for nothing would be a side effect.
_POOLS = (
    ("celery.concurrency.eventlet", "TaskPool", GuardKind.EVENTLET),
    ("celery.concurrency.gevent", "TaskPool", GuardKind.GEVENT),
    ("celery.concurrency.thread", "TaskPool", GuardKind.THREAD),
    ("celery.concurrency.prefork", "TaskPool", GuardKind.NONE),
    ("celery.concurrency.solo", "TaskPool", GuardKind.NONE),
)


def guard_kind_for_pool(pool_cls: type) -> GuardKind:
    """The guard kind for a worker's pool class (subclasses of Celery's pools count as those pools).

    An unknown pool gets ``THREAD``: correct for anything that runs tasks in threads, and cheap.
    """
    for module_name, class_name, kind in _POOLS:
        base = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(base, type) and issubclass(pool_cls, base):
            return kind
    return GuardKind.THREAD


def uses_child_processes(pool_cls: type) -> bool:
    """Whether tasks run in forked children (prefork), so storages belong in the children."""
    prefork = sys.modules.get("celery.concurrency.prefork")
    base = getattr(prefork, "TaskPool", None)
    return isinstance(base, type) and issubclass(pool_cls, base)


class _NoGuard(contextlib.nullcontext[None]):
    """A lock that is never contended: the process runs one task at a time."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        return None


def make_guard(kind: GuardKind) -> Guard:
    """A new lock of ``kind``."""
    if kind is GuardKind.NONE:
        return _NoGuard()
    if kind is GuardKind.THREAD:
        return threading.Lock()
    if kind is GuardKind.EVENTLET:
        from eventlet.semaphore import Semaphore as EventletSemaphore

        return EventletSemaphore(1)  # type: ignore[no-any-return]
    from gevent.lock import Semaphore as GeventSemaphore

    return GeventSemaphore(1)  # type: ignore[no-any-return]
