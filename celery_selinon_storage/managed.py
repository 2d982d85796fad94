"""``ManagedStorage``: one adapter instance, bound to its process, behind its guard."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
import time
import types
from collections.abc import Callable, Generator
from typing import Any, ClassVar, NoReturn, TypeVar

from celery.utils.log import get_logger
from selinon import DataStorage

from . import metrics, state
from .errors import (
    DEFAULT_TRANSIENT_ERRORS,
    StorageClosedError,
    StorageError,
    StorageOwnedError,
    StorageUnavailableError,
    WrongProcessError,
)
from .guards import Guard, GuardKind, make_call_guard, make_guard
from .retry import DEFAULT_RETRY, RetriesExhausted, RetryPolicy
from .secrets import public_target
from .storages.base import JsonStorage

T = TypeVar("T")

logger = get_logger("celery_selinon_storage")

#: Operations that are counted (``inspect storages`` and the shutdown summary report them). An adapter's
#: own methods are counted too, each under its name (see ``ManagedStorage.__getattr__``).
OPERATIONS = ("store", "retrieve", "delete", "store_error")

#: The operation that counts calls of adapter methods not defined on its class (made up by ``__getattr__``)
#: or private ones: their names are not a bounded set.
OTHER_OPERATION = "other"


def is_concurrency_safe(adapter: DataStorage) -> bool:
    """Whether the adapter declares that several threads or greenlets may call one instance at once."""
    return bool(getattr(adapter, "concurrency_safe", False))


class OperationStats:
    """Calls, errors and total seconds of one operation in one process."""

    __slots__ = ("calls", "errors", "retries", "seconds", "timeouts")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.retries = 0
        self.timeouts = 0
        self.seconds = 0.0

    def as_dict(self) -> dict[str, float]:
        """Counts and mean latency, for reports."""
        mean_ms = 1000 * self.seconds / self.calls if self.calls else 0.0
        return {
            "calls": self.calls,
            "errors": self.errors,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "mean_ms": round(mean_ms, 3),
        }


class ManagedStorage(DataStorage):  # type: ignore[misc]
    """A ``DataStorage`` that forwards to one adapter, in the process that made it, under its guard.

    Connecting happens once (at start or, if the server was down then, on first use); calls after
    ``close`` or from another process are refused. Hashable by identity, as Selinon needs.

    It also stands for the adapter in task code written for Selinon: the adapter's own methods and
    attributes are reached through it (``__getattr__``), and ``isinstance(storage, AdapterClass)`` holds
    (``__class__``). docs/selinon-adapters.md says how and what that costs.
    """

    #: Attributes of the managed storage itself; setting any other name sets it on the adapter.
    _OWN_ATTRIBUTES: ClassVar[frozenset[str]] = frozenset(
        {
            "name",
            "adapter",
            "retry",
            "concurrency_safe",
            "guard_kind",
            "pid",
            "stats",
            "_call_guard",
            "_lifecycle_guard",
            "_closed",
            "_methods",
            "_stats_lock",
        }
    )

    def __init__(
        self, name: str, adapter: DataStorage, guard_kind: GuardKind, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.name = name
        self.adapter = adapter
        self.retry = retry
        if isinstance(adapter, JsonStorage):
            adapter.wait_timeout = retry.try_timeout
        self.concurrency_safe = is_concurrency_safe(adapter)
        self.guard_kind = GuardKind.NONE if self.concurrency_safe else guard_kind
        # Connections must not cross a fork: remember the creating process and refuse others.
        self.pid = os.getpid()
        self._call_guard: Guard = make_call_guard(self.guard_kind)
        # connect/disconnect are serialised even for concurrency-safe adapters, and even where tasks
        # never overlap: start-up connects from a helper thread (see ProcessStorages.connect_all).
        self._lifecycle_guard: Guard = make_guard(
            GuardKind.THREAD if guard_kind is GuardKind.NONE else guard_kind
        )
        self._closed = False
        self.stats = {operation: OperationStats() for operation in OPERATIONS}
        self._stats_lock = threading.Lock()  # adds an adapter method's stats (never held across a switch)
        self._methods: dict[str, AdapterMethod] = {}

    def __repr__(self) -> str:
        return (
            f"<ManagedStorage {self.name!r} {type(self.adapter).__name__} "
            f"guard={self.guard_kind.value} pid={self.pid}>"
        )

    __hash__ = object.__hash__

    def __del__(self) -> None:
        """Closing is the owner's job (``shut_down``), never the garbage collector's."""

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect the adapter unless it is connected already."""
        self._check_usable()
        with self._lifecycle_guard:
            if not self.adapter.is_connected():
                self.adapter.connect()

    def is_connected(self) -> bool:
        """Whether the adapter says it is connected."""
        return bool(self.adapter.is_connected())

    def disconnect(self) -> None:
        """Refused: the worker disconnects its storages once, at shutdown, after the last task."""
        raise self._owned("disconnect")

    def close(self) -> None:
        """Refused, like ``disconnect``."""
        raise self._owned("close")

    def shut_down(self, timeout: float | None = None) -> bool:
        """The owner's close: disconnect and refuse further calls. Waits for a running call
        (``timeout`` bounds the wait).

        Returns False when the wait timed out; the adapter is then disconnected anyway (cold shutdown).
        """
        if self._closed:
            return True
        self._closed = True
        if not state.is_this_process(self.pid):
            return True  # this process only holds a copy; the owner closes the original
        # the order of every path that holds both: call guard, then lifecycle guard
        got_call = _acquire(self._call_guard, timeout)
        got_lifecycle = _acquire(self._lifecycle_guard, timeout)
        try:
            if self.adapter.is_connected():
                self.adapter.disconnect()
        finally:
            if got_lifecycle:
                self._lifecycle_guard.release()
            if got_call:
                self._call_guard.release()
        return got_call and got_lifecycle

    @property
    def closed(self) -> bool:
        """Whether ``shut_down`` has been called."""
        return self._closed

    # -- DataStorage -------------------------------------------------------------------------

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Any:
        """Store ``result`` for ``task_id``; returns the adapter's record id."""
        return self._call("store", self.adapter.store, node_args, flow_name, task_name, task_id, result)

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        """The result stored for ``task_id``."""
        return self._call("retrieve", self.adapter.retrieve, flow_name, task_name, task_id)

    def delete(self, flow_name: str, task_name: str, task_id: str) -> Any:
        """Delete the result stored for ``task_id``."""
        return self._call("delete", self.adapter.delete, flow_name, task_name, task_id)

    def store_error(self, node_args: Any, flow_name: str, task_name: str, task_id: str, exc_info: Any) -> Any:
        """Record a task's failure."""
        return self._call(
            "store_error", self.adapter.store_error, node_args, flow_name, task_name, task_id, exc_info
        )

    # -- the adapter's own methods and attributes --------------------------------------------
    # Reached only when normal look-up fails: store, retrieve and the rest never pass through here.

    def __getattr__(self, name: str) -> Any:
        """The adapter's method (called under the guard) or attribute (read under the guard)."""
        adapter = self.__dict__.get("adapter")
        if adapter is None or name.startswith("__"):
            raise AttributeError(name)
        method = self._methods.get(name)
        if method is not None:
            return method
        try:
            found = inspect.getattr_static(adapter, name)
        except AttributeError:
            if not hasattr(type(adapter), "__getattr__"):
                raise AttributeError(
                    f"storage {self.name!r} ({type(adapter).__name__}) has no attribute {name!r}"
                ) from None
            found = None  # the adapter makes it up: read it as the adapter answers
        if isinstance(found, (staticmethod, classmethod)) or inspect.isfunction(found):
            method = AdapterMethod(self, name, name if _counted_by_name(adapter, name) else OTHER_OPERATION)
            self._methods[name] = method
            return method
        value = self._read_attribute(name)
        if inspect.ismethod(value) and value.__self__ is adapter:  # a method the adapter made up
            return AdapterMethod(self, name, OTHER_OPERATION)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        """Set on the managed storage its own attributes; any other name on the adapter, under the guard."""
        if name in self._OWN_ATTRIBUTES or hasattr(type(self), name) or "adapter" not in self.__dict__:
            object.__setattr__(self, name, value)
            return
        self._methods.pop(name, None)  # looked up afresh: the name may no longer be a method
        with self._holding():
            if isinstance(value, AdapterMethod) and value.storage is self and value.name == name:
                # what reading the name gave back (a test's monkeypatch undoing itself): the adapter's own
                vars(self.adapter).pop(name, None)
            else:
                setattr(self.adapter, name, value)

    def __delattr__(self, name: str) -> None:
        """Like ``__setattr__``: delete on the adapter what is not the managed storage's own."""
        if name in self._OWN_ATTRIBUTES or hasattr(type(self), name):
            object.__delattr__(self, name)
            return
        self._methods.pop(name, None)
        with self._holding():
            delattr(self.adapter, name)

    def __dir__(self) -> list[str]:
        adapter = self.__dict__.get("adapter")
        names = set(super().__dir__())
        if adapter is not None:
            names.update(name for name in dir(adapter) if not name.startswith("__"))
        return sorted(names)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """The adapter's class: ``isinstance(storage, AdapterClass)`` holds, as it did under Selinon.

        ``type(storage)`` is still ``ManagedStorage``, and so is ``isinstance(storage, ManagedStorage)``.
        """
        adapter = self.__dict__.get("adapter")
        return type(self) if adapter is None else type(adapter)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(
            f"storage {self.name!r} cannot be copied or pickled: it is a live connection of process "
            f"{self.pid}; pass its name and call get_storage() where it is used"
        )

    def call_adapter(self, operation: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the adapter's method ``name`` once, under the guard, counted as ``operation``.

        Not retried (the wrapper cannot know whether the method may run twice): the adapter's own errors
        reach the caller as they are. A generator it returns runs each step under the guard too.
        """
        self._check_usable()
        stats = self._stats_for(operation)
        started = time.perf_counter()
        try:
            result = self._attempt_once(functools.partial(getattr(self.adapter, name), *args, **kwargs))
        except StorageBusyError as busy:
            stats.errors += 1
            stats.timeouts += 1
            raise StorageUnavailableError(
                f"storage {self.name!r} is unavailable ({busy}); {name}() did not start, "
                "so the call is safe to retry"
            ) from busy
        except BaseException:
            stats.errors += 1
            raise
        finally:
            self._count(operation, stats, time.perf_counter() - started)
        if inspect.isgenerator(result):
            return self._guarded_steps(result)
        return result

    def _attempt_once(self, call: Callable[[], T]) -> T:
        """``call()`` of an adapter method, under the guard, connecting first if need be.

        The connection is dropped only after a failure that may have struck mid-exchange: an interruption
        (a time limit, a killed greenlet) or an error the adapter calls transient. Any other error is the
        adapter's answer (a missing row, a refused value), and its connection stays.
        """
        if not self._call_guard.acquire(timeout=self.retry.try_timeout):
            raise self._busy()
        try:
            if not self.adapter.is_connected():
                self.connect()
            return call()
        except (StorageError, StorageBusyError):
            raise  # this storage's refusal, or another storage's, reached from inside the call
        except Exception as error:
            if self._is_transient(error):
                self._drop_connection()
            raise
        except BaseException:
            self._drop_connection()
            raise
        finally:
            self._call_guard.release()

    def _read_attribute(self, name: str) -> Any:
        self._check_usable()
        with self._holding():
            if not self.adapter.is_connected():
                self.connect()  # as Selinon's get_connected_storage did before handing the adapter out
            return getattr(self.adapter, name)

    @contextlib.contextmanager
    def _holding(self) -> Generator[None]:
        """Under the call guard, in this process, or ``StorageUnavailableError`` after a try's wait."""
        self._check_usable()
        if not self._call_guard.acquire(timeout=self.retry.try_timeout):
            raise StorageUnavailableError(
                f"storage {self.name!r} stayed busy for {self.retry.try_timeout:g} s "
                "(another call holds it); safe to retry"
            )
        try:
            yield
        finally:
            self._call_guard.release()

    def _guarded_steps(self, steps: types.GeneratorType[Any, Any, Any]) -> Generator[Any, Any, Any]:
        """``steps``, each advanced under the guard (an adapter's generator uses its connection lazily)."""
        sent = None
        try:
            while True:
                self._check_usable()
                try:
                    item = self._attempt_once(functools.partial(steps.send, sent))
                except StopIteration as stop:
                    return stop.value
                except StorageBusyError as busy:
                    raise StorageUnavailableError(
                        f"storage {self.name!r} is unavailable ({busy}) for the next step of a generator"
                    ) from busy
                sent = yield item
        finally:
            if steps.gi_frame is not None:  # left before the end: let it clean up, under the guard
                with self._call_guard:
                    steps.close()

    def _stats_for(self, operation: str) -> OperationStats:
        stats = self.stats.get(operation)
        if stats is None:
            with self._stats_lock:
                stats = self.stats.get(operation)
                if stats is None:
                    stats = OperationStats()
                    # a new dict: a report iterating the old one is not disturbed
                    self.stats = {**self.stats, operation: stats}
        return stats

    # -- internals ---------------------------------------------------------------------------

    def _owned(self, method: str) -> StorageOwnedError:
        return StorageOwnedError(
            f"storage {self.name!r} is managed by the worker, which connects it at start and disconnects it "
            f"once at shutdown; do not call {method}() on it (it stays connected for the next call)"
        )

    def _check_usable(self) -> None:
        if not state.is_this_process(self.pid):
            raise WrongProcessError(
                f"storage {self.name!r} was created in process {self.pid} and used in process {os.getpid()}; "
                "connections must not cross a fork: call get_storage() in the process that uses it"
            )
        if self._closed:
            raise StorageClosedError(
                f"storage {self.name!r} is closed (its worker process is shutting down); "
                "use it only from tasks or inside open_storages()"
            )

    def _call(self, operation: str, method: Callable[..., T], *args: Any) -> T:
        if self._closed or self.pid != state.this_pid:
            self._check_usable()
        stats = self.stats[operation]
        started = time.perf_counter()
        try:
            # the first try is made here, the retries (rare) by the policy: no closure on the hot path
            return self._attempt(method, args)
        except Exception as error:
            if not self._is_transient(error):
                stats.errors += 1
                raise
            return self._retry(operation, stats, method, args, error=error, started=started)
        except BaseException:
            stats.errors += 1
            raise
        finally:
            self._count(operation, stats, time.perf_counter() - started)

    def _retry(
        self,
        operation: str,
        stats: OperationStats,
        method: Callable[..., T],
        args: tuple[Any, ...],
        *,
        error: Exception,
        started: float,
    ) -> T:
        """The retries of a call whose first try failed with the transient ``error``."""
        try:
            return self.retry.retry_after(
                error,
                started,
                lambda: self._attempt(method, args),
                self._is_transient,
                lambda failures, error, delay: self._on_retry(operation, failures, error, delay),
            )
        except RetriesExhausted as exhausted:
            stats.errors += 1
            cause = exhausted.__cause__
            timed_out = exhausted.out_of_time or is_timeout(cause)
            stats.timeouts += timed_out
            within = f", timeout {self.retry.timeout:g} s" if timed_out else ""
            raise StorageUnavailableError(
                f"storage {self.name!r} is unavailable ({type(cause).__name__} on {operation}, "
                f"{exhausted.attempts} attempts{within}); the call is safe to retry"
            ) from cause
        except BaseException:
            stats.errors += 1
            raise

    def _busy(self) -> StorageBusyError:
        return StorageBusyError(
            f"storage {self.name!r} stayed busy for {self.retry.try_timeout:g} s (another call holds it)"
        )

    def _attempt(self, method: Callable[..., T], args: tuple[Any, ...]) -> T:
        # Under the call guard from connect to failure: an adapter's one connection is never made,
        # used or dropped while another thread or greenlet is using it. Waiting for the guard counts
        # as waiting on the server: a call stuck on a frozen server holds it.
        # (a concurrency-safe adapter's guard is a no-op: not called)
        guard = None if self.concurrency_safe else self._call_guard
        if guard is not None and not guard.acquire(timeout=self.retry.try_timeout):
            raise self._busy()
        try:
            if not self.adapter.is_connected():
                self.connect()  # the server was down at start, or dropped us: connect on use
            return method(*args)
        except StorageError:
            raise  # refused or missing, reported by the adapter before or after a whole exchange
        except BaseException:
            # Anything else may have struck mid-exchange (a lost server, a time limit, a killed
            # greenlet): the connection's state is unknown, so it is never used again.
            self._drop_connection()
            raise
        finally:
            if guard is not None:
                guard.release()

    def _count(self, operation: str, stats: OperationStats, seconds: float) -> None:
        """One ended call of ``operation``, in the process's counts and the metrics."""
        stats.calls += 1
        stats.seconds += seconds
        if metrics.recording:
            metrics.record_call(self.name, operation, stats, seconds)

    def _on_retry(self, operation: str, failures: int, error: BaseException, delay: float) -> None:
        self.stats[operation].retries += 1
        metrics.record_retry(self.name, operation)
        logger.warning(
            "storage %r (%s): %s failed with %s, attempt %d of %d; retrying in %.3f s",
            self.name,
            public_target(self.adapter),
            operation,
            type(error).__name__,
            failures,
            self.retry.attempts,
            delay,
        )

    def _is_transient(self, error: BaseException) -> bool:
        if isinstance(error, StorageBusyError):
            return True
        judge = getattr(self.adapter, "is_transient", None)
        if judge is not None:
            return bool(judge(error))
        # read at each failure: an adapter may learn its driver's errors only when it connects
        return isinstance(error, tuple(getattr(self.adapter, "transient_errors", DEFAULT_TRANSIENT_ERRORS)))

    def _drop_connection(self) -> None:
        """After a failed call: forget the connection, so that the next call makes a new one.

        Only for an adapter with one connection: a concurrency-safe one pools its connections, discards
        a broken one by itself, and may be in use by other threads right now.
        """
        if self.concurrency_safe:
            return
        with self._lifecycle_guard, contextlib.suppress(Exception):
            self.adapter.disconnect()


class AdapterMethod:
    """An adapter's own method reached through its managed storage: each call runs under the guard."""

    __slots__ = ("__name__", "name", "operation", "storage")

    def __init__(self, storage: ManagedStorage, name: str, operation: str) -> None:
        self.storage, self.name, self.operation = storage, name, operation
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.storage.call_adapter(self.operation, self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<method {self.name} of {self.storage!r}>"


def _counted_by_name(adapter: DataStorage, name: str) -> bool:
    """Whether calls of the adapter's method ``name`` get counts of their own: a public method its class
    defines (a bounded set of names, fixed by the code)."""
    return not name.startswith("_") and any(name in vars(cls) for cls in type(adapter).__mro__)


class StorageBusyError(TimeoutError):
    """A try waited its whole share of the timeout for another call of the same storage to end."""


def is_timeout(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it wraps) is a driver's or the OS's timeout."""
    for _ in range(8):  # a chain is short; a cycle is not followed for ever
        if error is None:
            return False
        if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
            return True
        error = error.__cause__ or error.__context__
    return False


def _acquire(guard: Guard, timeout: float | None) -> bool:
    return guard.acquire() if timeout is None else guard.acquire(timeout=timeout)
