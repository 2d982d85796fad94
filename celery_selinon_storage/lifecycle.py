"""The lifecycle of a process's storages, top to bottom: load, create, guard, connect, close.

Each worker process owns one ``ProcessStorages``: prefork children build theirs after the fork,
the other pools build one in the main process. ``get_storage`` hands out the calling process's
instances and refuses anything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from celery.utils.log import get_logger

from . import state
from .background import run_side_by_side
from .errors import (
    StorageNotFoundError,
    StoragesAlreadyStartedError,
    StoragesNotStartedError,
    describe_exception,
)
from .guards import GuardKind
from .managed import ManagedStorage
from .secrets import public_target, scrub, secret_values
from .selinon_bridge import bridge_selinon
from .specs import StorageSpec, load_storages

logger = get_logger("celery_selinon_storage")

#: How long start-up waits for connections before it lets the process take tasks. Prefork kills a
#: child whose ``worker_process_init`` handlers run past ~4 s, so this stays well below that.
DEFAULT_CONNECT_BUDGET = 2.0


class ProcessStorages:
    """The storages of one process: a guarded instance per spec, connected at start, closed once."""

    def __init__(self, specs: Sequence[StorageSpec], guard_kind: GuardKind) -> None:
        self.pid = os.getpid()
        self.guard_kind = guard_kind
        self.storages: dict[str, ManagedStorage] = {
            spec.name: ManagedStorage(spec.name, spec.create(), guard_kind, spec.retry) for spec in specs
        }

    def connect_all(self, budget: float = DEFAULT_CONNECT_BUDGET) -> None:
        """Connect every storage, side by side, waiting at most ``budget`` seconds.

        Each connects in a helper thread of its own, so that a server that does not answer delays
        neither the process past the budget nor the other storages. A storage still connecting then
        finishes in the background (a task that needs it waits for it, within its timeout), and one
        that fails connects on first use.
        """
        connects = {
            name: partial(self._connect_each, name, storage) for name, storage in self.storages.items()
        }
        waiting = run_side_by_side(connects, budget, name="storage-connect")
        if waiting:
            logger.warning(
                "storages still connecting after %.1fs, continuing in the background: %s",
                budget,
                ", ".join(waiting),
            )

    def _connect_each(self, name: str, storage: ManagedStorage) -> None:
        try:
            storage.connect()
        except Exception as exc:  # noqa: BLE001 - a down server must not stop the worker
            logger.warning(
                "storage %s could not connect at start (%s); it will connect on first use; target %s: %s",
                name,
                type(exc).__name__,
                public_target(storage.adapter),
                scrub(describe_exception(exc), secret_values(getattr(storage.adapter, "__dict__", {}))),
            )

    def get(self, name: str) -> ManagedStorage:
        """The storage called ``name``."""
        try:
            return self.storages[name]
        except KeyError:
            raise StorageNotFoundError(
                f"no storage named {name!r} in this process; the storages are: {', '.join(self.storages)}"
            ) from None

    def close(self, timeout: float | None = None) -> None:
        """Disconnect every storage once, side by side.

        With ``timeout``, do not wait longer for a running call. However long a server takes to say
        goodbye, closing ends within the longest of the storages' own timeouts (a disconnect still
        running then goes on in the background).
        """
        closes = {
            name: partial(self._close_one, name, storage, timeout)
            for name, storage in self.storages.items()
            if not storage.closed
        }
        longest = max((storage.retry.timeout for storage in self.storages.values()), default=0.0)
        bound = longest if timeout is None else timeout + longest
        for name in run_side_by_side(closes, bound, name="storage-close"):
            logger.warning(
                "storage %s: still disconnecting after %.1fs; left to finish in the background", name, bound
            )
        logger.info("storages closed in process %d: %s", self.pid, self.summary())

    @staticmethod
    def _close_one(name: str, storage: ManagedStorage, timeout: float | None) -> None:
        try:
            if not storage.shut_down(timeout):
                logger.warning("storage %s: a call was still running; disconnected anyway", name)
        except Exception as exc:  # noqa: BLE001 - keep closing the others
            logger.warning("storage %s failed to disconnect: %s", name, type(exc).__name__)

    def report(self) -> dict[str, Any]:
        """This process's storages as ``celery inspect storages`` shows them."""
        return {
            "pid": self.pid,
            "storages": {
                name: {
                    "class": type(storage.adapter).__name__,
                    "guard": storage.guard_kind.value,
                    "timeout": storage.retry.timeout,
                    "attempts": storage.retry.attempts,
                    "connected": not storage.closed and storage.is_connected(),
                    "operations": {operation: stats.as_dict() for operation, stats in storage.stats.items()},
                }
                for name, storage in self.storages.items()
            },
        }

    def summary(self) -> str:
        """One line: per storage, the count of each operation called."""
        parts = []
        for name, storage in self.storages.items():
            counts = ", ".join(
                f"{stats.calls} {operation}" for operation, stats in storage.stats.items() if stats.calls
            )
            parts.append(f"{name} ({counts or 'unused'})")
        return "; ".join(parts)

    def describe(self) -> str:
        """One line for the start-up log: name, class and guard of each storage."""
        return ", ".join(
            f"{name} ({type(s.adapter).__name__}, guard={s.guard_kind.value})"
            for name, s in self.storages.items()
        )


def start_process_storages(
    specs: Sequence[StorageSpec], guard_kind: GuardKind, budget: float = DEFAULT_CONNECT_BUDGET
) -> ProcessStorages:
    """Create and connect this process's storages and make them what ``get_storage`` returns."""
    if state.current() is not None:
        raise StoragesAlreadyStartedError(
            f"storages were already started in process {os.getpid()}; stop them before starting again"
        )
    storages = ProcessStorages(specs, guard_kind)
    state.set_current(storages)
    storages.connect_all(budget)
    logger.info("storages started in process %d: %s", storages.pid, storages.describe())
    return storages


def stop_process_storages(timeout: float | None = None) -> None:
    """Close this process's storages (no-op when there are none)."""
    storages = state.take_current()
    if storages is not None:
        storages.close(timeout)


def current_storages() -> ProcessStorages:
    """This process's storages, or ``StoragesNotStartedError`` saying why there are none."""
    storages = state.current()
    if storages is not None:
        return storages
    reason = state.failure()
    if reason is not None:
        raise StoragesNotStartedError(f"storages failed to start in process {os.getpid()}: {reason}")
    raise StoragesNotStartedError(
        f"storages are not started in process {os.getpid()}; run the worker with --storages FILE "
        "(after install(app)), or wrap the code in open_storages(FILE)"
    )


def get_storage(name: str) -> ManagedStorage:
    """The calling process's instance of the storage called ``name``."""
    return current_storages().get(name)


@contextmanager
def open_storages(
    source: str | os.PathLike[str] | Sequence[StorageSpec],
    guard_kind: GuardKind = GuardKind.THREAD,
    environ: Mapping[str, str] | None = None,
) -> Iterator[ProcessStorages]:
    """Start storages outside a worker (scripts, tests, shells) and close them on exit.

    Selinon's ``StoragePool`` in this process uses them too.
    """
    bridge_selinon()
    specs = load_storages(Path(source), environ) if isinstance(source, (str, os.PathLike)) else source
    storages = start_process_storages(specs, guard_kind)
    try:
        yield storages
    finally:
        stop_process_storages()
