"""Connect to each storage and say whether it answers: the ``check`` command's work.

A check changes nothing on a server: a storage's connect runs with ``CHECK_NOTES`` set, so what the
worker would create at start (an SQL table) is reported missing rather than created, unless the caller
asks for it (``create_tables``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .background import run_with_deadline
from .errors import describe_exception
from .secrets import public_target, scrub, secret_values
from .specs import StorageSpec
from .storages.base import CHECK_NOTES

#: Say that a storage is slow to answer every this many seconds.
PROGRESS_EVERY = 1.0

#: What the connect column says of each outcome.
CONNECTED = "ok"
FAILED = "failed"
TIMED_OUT = "timed out"
NOT_TRIED = "not tried"


@dataclass(frozen=True)
class StorageHealth:
    """One storage as ``check`` reports it: what it is, and how connecting to it went."""

    name: str
    classname: str
    target: str
    #: False only when connecting was tried and did not succeed.
    ok: bool
    #: ``ok``, ``failed``, ``timed out`` or ``not tried``.
    connect: str
    error: str | None
    #: What is missing but would be created by the worker at start (a table), and similar remarks.
    notes: tuple[str, ...]
    #: Time to connect, or None when not tried.
    latency_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        found = asdict(self)
        found["notes"] = list(self.notes)
        return found


def describe_storage(spec: StorageSpec) -> StorageHealth:
    """The storage without connecting to it (building one does no I/O)."""
    return StorageHealth(
        spec.name, spec.cls.__name__, _target(spec, spec.create()), True, NOT_TRIED, None, (), None
    )


def check_storage(
    spec: StorageSpec,
    timeout: float,
    on_slow: Callable[[str, float], None],
    *,
    create_tables: bool = False,
) -> StorageHealth:
    """Build the storage, connect it (at most ``timeout`` seconds), disconnect it.

    Without ``create_tables`` the connect changes nothing on the server, and a missing table is a note.
    """
    secrets = secret_values(spec.options)
    adapter = spec.create()
    outcome: list[BaseException | None] = []
    notes: list[str] = []

    def connect() -> None:  # runs in a thread of its own: the context variable is set there
        CHECK_NOTES.set(None if create_tables else notes)
        try:
            adapter.connect()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            outcome.append(exc)

    started = time.perf_counter()
    run_with_deadline(
        connect,
        timeout,
        name=f"check-{spec.name}",
        on_wait=lambda waited: on_slow(spec.name, waited),
        every=PROGRESS_EVERY,
    )
    latency_ms = round(1000 * (time.perf_counter() - started), 1)
    connected, error = CONNECTED, None
    if not outcome:
        connected, error = TIMED_OUT, f"no answer within {timeout:g} s"
    elif outcome[0] is not None:
        connected, error = FAILED, scrub(describe_exception(outcome[0]), secrets)
    else:
        try:
            adapter.disconnect()
        except Exception as exc:  # noqa: BLE001
            connected, error = FAILED, scrub(f"disconnect failed: {describe_exception(exc)}", secrets)
    return StorageHealth(
        spec.name,
        spec.cls.__name__,
        _target(spec, adapter),
        error is None,
        connected,
        error,
        tuple(scrub(note, secrets) for note in notes),
        latency_ms,
    )


def check_storages(
    specs: Sequence[StorageSpec],
    timeout: float,
    on_slow: Callable[[str, float], None],
    *,
    connect: bool = True,
    create_tables: bool = False,
) -> list[StorageHealth]:
    """``check_storage`` for each, in the configuration's order (``describe_storage`` without ``connect``)."""
    if not connect:
        return [describe_storage(spec) for spec in specs]
    return [check_storage(spec, timeout, on_slow, create_tables=create_tables) for spec in specs]


def _target(spec: StorageSpec, adapter: Any) -> str:
    """What may be shown of the adapter, scrubbed again: the secrets of this spec, as whole tokens,
    wherever they might stand."""
    return scrub(public_target(adapter), secret_values(spec.options))
