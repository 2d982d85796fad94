"""The lock that keeps two tasks of one process out of an adapter at once, chosen by pool."""

from __future__ import annotations

import contextlib
import enum
import sys
import threading
from dataclasses import dataclass
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

    #: An adapter that declares itself safe for concurrent use (``concurrency_safe``): no lock at all.
    NONE = "none"
    #: Tasks in OS threads (threads pool), and prefork and solo, where a task may start threads of
    #: its own: a ``threading.RLock`` (uncontended, it costs well under a microsecond).
    THREAD = "thread"
    #: Tasks in eventlet greenthreads: a lock that yields to the hub instead of blocking it.
    EVENTLET = "eventlet"
    #: Tasks in gevent greenlets: likewise.
    GEVENT = "gevent"


@dataclass(frozen=True)
class PoolTraits:
    """What the storages need to know about a worker's pool."""

    #: The lock that keeps two tasks (or a task's own threads) out of one adapter at once.
    guard_kind: GuardKind
    #: Tasks run in forked children (prefork): storages belong in the children, never the parent.
    in_children: bool


#: Pool class (module, name) -> traits. The modules are looked up in ``sys.modules`` only: a pool
#: that subclasses one of them has imported it already, and importing eventlet or gevent here
#: for nothing would be a side effect.
_POOLS = (
    ("celery.concurrency.eventlet", "TaskPool", PoolTraits(GuardKind.EVENTLET, in_children=False)),
    ("celery.concurrency.gevent", "TaskPool", PoolTraits(GuardKind.GEVENT, in_children=False)),
    ("celery.concurrency.thread", "TaskPool", PoolTraits(GuardKind.THREAD, in_children=False)),
    ("celery.concurrency.prefork", "TaskPool", PoolTraits(GuardKind.THREAD, in_children=True)),
    ("celery.concurrency.solo", "TaskPool", PoolTraits(GuardKind.THREAD, in_children=False)),
)


def pool_traits(pool_cls: type) -> PoolTraits:
    """The traits of a worker's pool class (subclasses of Celery's pools count as those pools).

    An unknown pool runs tasks in this process and gets ``THREAD``: correct for anything that runs
    tasks in threads, and cheap.
    """
    for module_name, class_name, traits in _POOLS:
        base = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(base, type) and issubclass(pool_cls, base):
            return traits
    return PoolTraits(GuardKind.THREAD, in_children=False)


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
        return threading.RLock()
    if kind is GuardKind.EVENTLET:
        from eventlet.semaphore import Semaphore as EventletSemaphore

        return EventletSemaphore(1)  # type: ignore[no-any-return]
    from gevent.lock import Semaphore as GeventSemaphore

    return GeventSemaphore(1)  # type: ignore[no-any-return]
