"""How a storage call rides out a server that dropped it: bounded retries with backoff.

Every built-in adapter's ``store``, ``retrieve`` and ``delete`` is idempotent by task id (an upsert,
a read, a delete), so repeating one after a lost connection is safe.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ExponentialBackoff:
    """Delay before the next try: ``base * 2**(failures - 1)``, at most ``cap``, with full jitter."""

    base: float = 0.1
    cap: float = 2.0

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed tries."""
        return random.uniform(0, min(self.cap, self.base * 2 ** (failures - 1)))


class RetriesExhausted(Exception):
    """Every try failed with a transient error; ``__cause__`` is the last one."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"{attempts} attempts failed")


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries of a call while it fails with a transient error."""

    attempts: int = 3
    backoff: ExponentialBackoff = field(default_factory=ExponentialBackoff)

    def call(self, do: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        """``do()``; after a transient failure, wait and try again."""
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
                time.sleep(self.backoff.compute(failures))  # green under eventlet and gevent


#: What a storage gets when its entry has no ``retry:`` key.
DEFAULT_RETRY = RetryPolicy()
