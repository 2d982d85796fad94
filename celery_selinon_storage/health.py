"""Connect to each storage of a file and say whether it answers: the ``check`` command's work."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .background import run_with_deadline
from .secrets import public_target, scrub, secret_values
from .specs import StorageSpec

#: Say that a storage is slow to answer every this many seconds.
PROGRESS_EVERY = 1.0


@dataclass(frozen=True)
class StorageHealth:
    """The outcome of connecting to one storage."""

    name: str
    classname: str
    target: str
    ok: bool
    error: str | None
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return asdict(self)


def check_storage(spec: StorageSpec, timeout: float, on_slow: Callable[[str, float], None]) -> StorageHealth:
    """Build the storage, connect it (at most ``timeout`` seconds), disconnect it."""
    secrets = secret_values(spec.options)
    adapter = spec.create()
    # scrubbed again: the secrets of this spec, as whole tokens, wherever they might stand
    target = scrub(public_target(adapter), secrets)
    outcome: list[BaseException | None] = []

    def connect() -> None:
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
    latency_ms = 1000 * (time.perf_counter() - started)
    if not outcome:
        error: str | None = f"no answer within {timeout:g} s"
    elif outcome[0] is not None:
        error = _masked_error("", outcome[0], secrets)
    else:
        error = None
        try:
            adapter.disconnect()
        except Exception as exc:  # noqa: BLE001
            error = _masked_error("disconnect failed: ", exc, secrets)
    return StorageHealth(spec.name, spec.cls.__name__, target, error is None, error, round(latency_ms, 1))


def _masked_error(prefix: str, exc: BaseException, secrets: list[str]) -> str:
    """One line naming the exception, its driver text with every secret masked."""
    return scrub(f"{prefix}{type(exc).__name__}: {' '.join(str(exc).split())}", secrets)


def check_storages(
    specs: Sequence[StorageSpec], timeout: float, on_slow: Callable[[str, float], None]
) -> list[StorageHealth]:
    """``check_storage`` for each, in file order."""
    return [check_storage(spec, timeout, on_slow) for spec in specs]
