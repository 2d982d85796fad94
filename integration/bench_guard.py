"""What the guard costs when nothing contends for it: prefork and solo now hold a re-entrant thread
lock around every call (a task may start threads), where they held none before.

The same ManagedStorage calls (store then retrieve of a ~1 KB record) run with the thread lock and with
no lock, alternating in short batches in one process (who goes first flips every round), on SQLite
(the demo's storage, the fastest real backend here) and on the in-memory adapter (no I/O at all, so the
lock's share is as large as it can be). Prints ops/s and the ratio locked/unlocked.

python -m integration.bench_guard [--rounds 8] [--calls 2000]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.storages.base import JsonStorage
from celery_selinon_storage.storages.memory import InMemoryStorage
from celery_selinon_storage.storages.sql import SqlStorage

RECORD = {"url": "https://example.com/" + "a" * 40, "items": [{"id": i, "score": i * 1.5} for i in range(20)]}


class UnsafeMemory(InMemoryStorage):
    """The in-memory adapter without its concurrency-safe flag, so that the guard applies."""

    concurrency_safe = False


def managed(adapter: JsonStorage, guard: GuardKind) -> ManagedStorage:
    storage = ManagedStorage("bench", adapter, guard)
    storage.connect()
    return storage


def run_batch(storage: ManagedStorage, calls: int, offset: int) -> float:
    """Seconds for ``calls`` store+retrieve pairs."""
    gc.collect()
    started = time.perf_counter()
    for i in range(calls):
        task_id = f"id-{(offset + i) % 500}"
        storage.store(None, "flow", "task", task_id, RECORD)
        storage.retrieve("flow", "task", task_id)
    return time.perf_counter() - started


def compare(name: str, make: Callable[[str], JsonStorage], rounds: int, calls: int) -> None:
    # each side its own database: two connections to one SQLite file run at different speeds
    locked = managed(make("locked"), GuardKind.THREAD)
    unlocked = managed(make("unlocked"), GuardKind.NONE)
    seconds = {"thread lock": 0.0, "no lock": 0.0}
    for round_ in range(rounds):
        order = [("thread lock", locked), ("no lock", unlocked)]
        for label, storage in order if round_ % 2 == 0 else reversed(order):
            seconds[label] += run_batch(storage, calls, round_ * calls)
    total = 2 * rounds * calls
    rates = {label: total / spent for label, spent in seconds.items()}
    ratio = rates["thread lock"] / rates["no lock"]
    print(
        f"| {name} | {rates['thread lock']:,.0f} | {rates['no lock']:,.0f} | {ratio:.3f} |",
        flush=True,
    )
    for storage in (locked, unlocked):
        storage.shut_down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print("| adapter | ops/s with the thread lock | ops/s with no lock | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        compare(
            "SqlStorage on SQLite",
            lambda side: SqlStorage(f"sqlite:///{Path(directory) / side}.sqlite3"),
            args.rounds,
            args.calls,
        )
    compare("in-memory, no I/O", lambda side: UnsafeMemory(), args.rounds, args.calls * 10)


if __name__ == "__main__":
    main()
