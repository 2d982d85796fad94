"""How a storage call rides out a server that dropped it: bounded retries with backoff, in a deadline.

Every built-in adapter's ``store``, ``retrieve`` and ``delete`` is idempotent by task id (an upsert,
a read, a delete), so repeating one after a lost connection is safe.

A call has ``timeout`` seconds in all, retries and reconnects included. Each try gets an equal share,
``timeout / attempts``: the built-in adapters give that share to their driver as its connect, read and
lock-wait timeout, and a new try starts only while a whole share is left.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import OptionProblem

T = TypeVar("T")


@dataclass(frozen=True)
class FullJitterBackoff:
    """Delay before the next try: uniform in ``[0, min(cap, base * 2**(failures - 1))]``."""

    base: float = 0.1
    cap: float = 2.0

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed tries."""
        return random.uniform(0, min(self.cap, self.base * 2 ** min(failures - 1, 64)))


class RetriesExhausted(Exception):
    """Every try failed with a transient error, or no time was left for another; ``__cause__`` is the
    last error."""

    def __init__(self, attempts: int, out_of_time: bool = False) -> None:
        self.attempts = attempts
        self.out_of_time = out_of_time
        super().__init__(f"{attempts} attempts failed")


#: Seconds a storage call may take in all when its entry has no ``timeout:`` key.
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries of a call while it fails with a transient error, within ``timeout``."""

    attempts: int = 3
    backoff: FullJitterBackoff = field(default_factory=FullJitterBackoff)
    timeout: float = DEFAULT_TIMEOUT

    @functools.cached_property
    def try_timeout(self) -> float:
        """Seconds one try may wait on the server: an equal share of the call's ``timeout``."""
        return self.timeout / self.attempts

    def call(
        self,
        do: Callable[[], T],
        is_transient: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """``do()``; after a transient failure, wait and try again.

        ``on_retry(failures, error, delay)`` is told of each retry before its wait. A retry starts only
        if a whole try still fits before the deadline (the wait is shortened to make it fit).
        """
        started = time.perf_counter()
        try:
            return do()
        except Exception as exc:
            if not is_transient(exc):
                raise
            return self.retry_after(exc, started, do, is_transient, on_retry)

    def retry_after(
        self,
        first_error: Exception,
        started: float,
        do: Callable[[], T],
        is_transient: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """The rest of ``call`` after a first try, begun at ``started`` (``time.perf_counter``), failed
        with the transient ``first_error``: callers on a hot path make that first try themselves."""
        deadline = started + self.timeout
        failures = 0
        error = first_error
        while True:
            failures += 1
            if failures >= self.attempts:
                raise RetriesExhausted(failures) from error
            spare = deadline - time.perf_counter() - self.try_timeout
            if spare < 0:
                raise RetriesExhausted(failures, out_of_time=True) from error
            delay = min(self.backoff.compute(failures), spare)
            if on_retry is not None:
                on_retry(failures, error, delay)
            time.sleep(delay)  # green under eventlet and gevent
            try:
                return do()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                error = exc


#: What a storage gets when its entry has no ``retry:`` key.
DEFAULT_RETRY = RetryPolicy()


#: The ``retry:`` keys of a storage entry, with their bounds (``attempts`` is a whole number).
RETRY_BOUNDS: dict[str, tuple[float, float]] = {
    "attempts": (1, 20),
    "backoff": (0, 60),
    "max_backoff": (0, 60),
}


#: Bounds of a storage entry's ``timeout:`` in seconds.
TIMEOUT_BOUNDS: tuple[float, float] = (0.1, 3600.0)


def retry_policy(settings: Mapping[str, Any] | None, timeout: Any = None) -> RetryPolicy:
    """The policy a storage entry's ``retry:`` mapping and ``timeout:`` ask for (None: the defaults),
    or ``OptionProblem``."""
    if timeout is not None:
        low, high = TIMEOUT_BOUNDS
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if not (number and math.isfinite(timeout) and low <= timeout <= high):
            raise OptionProblem("timeout", f"must be seconds from {low:g} to {high:g}; fix its value")
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if settings is None:
        return RetryPolicy(timeout=timeout)
    for key, value in settings.items():
        if key not in RETRY_BOUNDS:
            raise OptionProblem(
                f"retry.{key}", f"unknown retry option; 'retry:' takes: {', '.join(RETRY_BOUNDS)}"
            )
        low, high = RETRY_BOUNDS[key]
        whole = key == "attempts"
        number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and low <= value <= high):
            kind = "a whole number" if whole else "seconds"
            raise OptionProblem(f"retry.{key}", f"must be {kind} from {low:g} to {high:g}; fix its value")
    default = DEFAULT_RETRY.backoff
    backoff = FullJitterBackoff(
        float(settings.get("backoff", default.base)), float(settings.get("max_backoff", default.cap))
    )
    attempts = int(settings.get("attempts", DEFAULT_RETRY.attempts))
    return RetryPolicy(attempts=attempts, backoff=backoff, timeout=timeout)
