"""How a storage call rides out a server that dropped it: bounded retries with backoff.

Every built-in adapter's ``store``, ``retrieve`` and ``delete`` is idempotent by task id (an upsert,
a read, a delete), so repeating one after a lost connection is safe.
"""

from __future__ import annotations

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
    """Every try failed with a transient error; ``__cause__`` is the last one."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"{attempts} attempts failed")


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries of a call while it fails with a transient error."""

    attempts: int = 3
    backoff: FullJitterBackoff = field(default_factory=FullJitterBackoff)

    def call(
        self,
        do: Callable[[], T],
        is_transient: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """``do()``; after a transient failure, wait and try again.

        ``on_retry(failures, error, delay)`` is told of each retry before its wait.
        """
        failures = 0
        while True:
            try:
                return do()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                if failures >= self.attempts:
                    raise RetriesExhausted(failures) from exc
                delay = self.backoff.compute(failures)
                if on_retry is not None:
                    on_retry(failures, exc, delay)
                time.sleep(delay)  # green under eventlet and gevent


#: What a storage gets when its entry has no ``retry:`` key.
DEFAULT_RETRY = RetryPolicy()


#: The ``retry:`` keys of a storage entry, with their bounds (``attempts`` is a whole number).
RETRY_BOUNDS: dict[str, tuple[float, float]] = {
    "attempts": (1, 20),
    "backoff": (0, 60),
    "max_backoff": (0, 60),
}


def retry_policy(settings: Mapping[str, Any] | None) -> RetryPolicy:
    """The policy a storage entry's ``retry:`` mapping asks for (None: the default), or ``OptionProblem``."""
    if settings is None:
        return DEFAULT_RETRY
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
    return RetryPolicy(attempts=int(settings.get("attempts", DEFAULT_RETRY.attempts)), backoff=backoff)
