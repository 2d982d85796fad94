"""The lock that keeps two tasks of one process out of an adapter at once, chosen by pool."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
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
    #: its own: a thread lock (``CallGuard`` around a ``threading.Lock``; uncontended, well under a
    #: microsecond).
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
    """A new plain lock of ``kind`` (around connect and disconnect; calls take ``make_call_guard``)."""
    if kind is GuardKind.NONE:
        return _NoGuard()
    if kind is GuardKind.THREAD:
        return threading.RLock()
    if kind is GuardKind.EVENTLET:
        from eventlet.semaphore import Semaphore as EventletSemaphore

        return EventletSemaphore(1)  # type: ignore[no-any-return]
    from gevent.lock import Semaphore as GeventSemaphore

    return GeventSemaphore(1)  # type: ignore[no-any-return]


# -- the call guard: nested calls between storages without deadlock -------------------------------------


class CallGuard:
    """The lock around one storage's calls, safe for adapters that call other storages.

    An adapter may call a storage from inside its own call (Selinon's fabric8 adapters do: an S3
    ``store_error`` writes to PostgreSQL, a PostgreSQL ``retrieve`` reads S3). With a plain lock per storage,
    two tasks doing so in opposite directions each hold one lock and wait for the other's for ever. Here:

    - a task may take a guard it holds again (nested calls into the same storage);
    - a task that already uses a guard and must wait for another is a *nested waiter*. When the task that
      runs in the guard it wants is itself waiting for it, directly or through other parked tasks (the
      process's wait-for graph), waiting would never end: it **borrows** the guard instead, and uses the
      storage while the holder stays parked where it called out;
    - a parked task does not move on (nor give up on its timeout) until what was borrowed from it is
      back, so at any moment at most one task runs inside each storage.

    The common case, a guard that no one holds, is two attribute writes and a non-blocking acquire. A task
    that holds no guard waits on the lock itself, as a plain lock would.
    """

    __slots__ = ("__weakref__", "_lock", "_me", "_world", "borrowers", "depth", "holder")

    def __init__(self, kind: GuardKind) -> None:
        if kind is GuardKind.NONE:
            raise ValueError("a concurrency-safe storage takes no call guard")
        self._world = _world(kind)
        self._lock: Any = _primitive(kind)
        self._me = self._world.me
        #: The task that took the lock (its thread id, or its greenlet), and how many times.
        self.holder: Any = None
        self.depth = 0
        #: Tasks using the storage while the holder is parked, latest last (the one that may run).
        self.borrowers: list[Any] = []
        self._world.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the guard; False when ``timeout`` seconds passed first (-1: no limit)."""
        me = self._me()
        if self.holder == me:
            self.depth += 1
            return True
        if self._lock.acquire(False):
            self.holder, self.depth = me, 1
            return True
        if not blocking:
            return False
        return self._world.acquire_contended(self, me, None if timeout < 0 else timeout)

    def release(self) -> None:
        """Give the guard back (the holder's, or a borrower's)."""
        if self.borrowers:  # only the task that runs releases: the latest borrower
            self._world.give_back(self, self._me())
            return
        if self.depth > 1:
            self.depth -= 1
            return
        if not self.depth:
            raise RuntimeError("release of a call guard that is not held")
        self.depth, self.holder = 0, None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def top(self) -> Any:
        """The one task that may run inside the storage now (None: none, or one that is taking the lock)."""
        return self.borrowers[-1] if self.borrowers else self.holder

    def used_by(self, task: Any) -> bool:
        """Whether ``task`` holds or borrows this guard."""
        return self.holder == task or task in self.borrowers


class _WantsNothing:
    """What a parked task waits for once it only waits for its borrowed guards to come back."""

    def top(self) -> Any:
        return None


_WANTS_NOTHING: Any = _WantsNothing()

#: First and longest wait between two looks at the wait-for graph, for a nested waiter (seconds).
_FIRST_POLL = 0.0005
_LAST_POLL = 0.01


class _World:
    """The call guards of one kind in this process, and which task waits for which."""

    def __init__(self, kind: GuardKind) -> None:
        self._guards: weakref.WeakSet[CallGuard] = weakref.WeakSet()
        # Held only for bookkeeping, never across a wait or a switch: a plain lock serves green tasks too.
        self._mutex = threading.Lock()
        #: Nested waiters (task -> the guard it waits for). A task in here runs no adapter code.
        self._waiting: dict[Any, CallGuard | _WantsNothing] = {}
        green = kind is not GuardKind.THREAD
        if green:
            import greenlet

            self.me: Callable[[], Any] = greenlet.getcurrent
        else:
            self.me = threading.get_ident
        self._sleep = _green_sleep(kind) if green else time.sleep
        self._timed = _green_timed_acquire if green else _thread_timed_acquire

    def add(self, guard: CallGuard) -> None:
        with self._mutex:
            self._guards.add(guard)

    def acquire_contended(self, guard: CallGuard, me: Any, timeout: float | None) -> bool:
        """``guard`` is taken by another task: wait for it, or borrow it when waiting would never end."""
        with self._mutex:
            nested = any(other.used_by(me) for other in self._guards)
        if not nested:  # a task that uses no guard cannot close a cycle: wait on the lock itself
            if not self._timed(guard._lock, timeout):
                return False
            guard.holder, guard.depth = me, 1
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._acquire_nested(guard, me, deadline)

    def _acquire_nested(self, guard: CallGuard, me: Any, deadline: float | None) -> bool:
        delay = _FIRST_POLL
        try:
            while True:
                with self._mutex:
                    runnable = self._may_run(me)
                    if runnable and self._take(guard, me):
                        self._waiting.pop(me, None)
                        return True
                    if runnable and deadline is not None and time.monotonic() >= deadline:
                        self._waiting.pop(me, None)
                        return False
                    self._waiting[me] = guard
                    wait_on_lock = runnable and guard.holder != me
                if wait_on_lock and self._timed(guard._lock, delay):
                    with self._mutex:
                        guard.holder, guard.depth = me, 1
                    continue  # ours now, unless a borrower came meanwhile: look again at once
                if not wait_on_lock:
                    self._sleep(delay)
                delay = min(2 * delay, _LAST_POLL)
        except BaseException:
            # Interrupted while parked (a time limit, a killed greenlet): the task unwinds through its
            # adapters' code, so it may do so only once what was borrowed from it is back.
            self._wait_until_runnable(me)
            with self._mutex:
                if guard.holder == me:  # taken in an earlier turn: not the caller's
                    guard.holder, guard.depth = None, 0
                    guard._lock.release()
            raise

    def _wait_until_runnable(self, me: Any) -> None:
        """Park ``me`` until nothing it uses is borrowed; it no longer wants a guard, and further
        interruptions of the wait are held back (the first one is being raised)."""
        delay = _FIRST_POLL
        while True:
            with self._mutex:
                if self._may_run(me):
                    self._waiting.pop(me, None)
                    return
                self._waiting[me] = _WANTS_NOTHING
            with contextlib.suppress(BaseException):
                self._sleep(delay)
            delay = min(2 * delay, _LAST_POLL)

    def _take(self, guard: CallGuard, me: Any) -> bool:
        """Under the mutex, for a task that may run: take ``guard`` if that needs no wait."""
        if guard.holder == me:  # taken while parked
            return True
        if guard._lock.acquire(False):
            guard.holder, guard.depth = me, 1
            return True
        top = guard.top()
        if top is not None and (top == me or self._waits_for(top, me)):
            guard.borrowers.append(me)  # top == me: a borrower calling the storage again
            return True
        return False

    def _may_run(self, task: Any) -> bool:
        """Whether nothing ``task`` uses is borrowed from it now."""
        return all(guard.top() == task for guard in self._guards if guard.used_by(task))

    def _waits_for(self, start: Any, me: Any) -> bool:
        """Whether ``start`` cannot run again before ``me`` does: it waits, directly or through other
        waiting tasks, for a guard ``me`` runs in or for a guard borrowed from it."""
        seen: set[Any] = set()
        todo = [start]
        while todo:
            task = todo.pop()
            if task == me:
                return True
            if task in seen or task not in self._waiting:
                continue  # a task that runs waits for no one
            seen.add(task)
            target = self._waiting[task].top()
            if target is not None and target != task:
                todo.append(target)
            todo.extend(guard.top() for guard in self._guards if guard.used_by(task) and guard.top() != task)
        return False

    def give_back(self, guard: CallGuard, me: Any) -> None:
        with self._mutex:
            if not guard.borrowers or guard.borrowers[-1] != me:
                raise RuntimeError("release of a call guard that this task does not hold")
            guard.borrowers.pop()


_worlds: dict[GuardKind, _World] = {}


def _world(kind: GuardKind) -> _World:
    world = _worlds.get(kind)
    if world is None:
        world = _worlds.setdefault(kind, _World(kind))
    return world


def _forget_worlds() -> None:
    """In a forked child: the parent's guards and tasks are not this process's."""
    _worlds.clear()


os.register_at_fork(after_in_child=_forget_worlds)


def _primitive(kind: GuardKind) -> Any:
    if kind is GuardKind.THREAD:
        return threading.Lock()
    return make_guard(kind)


def _thread_timed_acquire(lock: Any, timeout: float | None) -> bool:
    return bool(lock.acquire(True, -1 if timeout is None else timeout))


def _green_timed_acquire(lock: Any, timeout: float | None) -> bool:
    return bool(lock.acquire(True, timeout))


def _green_sleep(kind: GuardKind) -> Callable[[float], Any]:
    if kind is GuardKind.EVENTLET:
        import eventlet

        return eventlet.sleep  # type: ignore[no-any-return]
    import gevent

    return gevent.sleep  # type: ignore[no-any-return]


def make_call_guard(kind: GuardKind) -> Guard:
    """The guard around one storage's calls: ``CallGuard``, or no lock for a concurrency-safe adapter."""
    return _NoGuard() if kind is GuardKind.NONE else CallGuard(kind)
