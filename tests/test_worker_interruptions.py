"""Issue #10 with real workers: a time limit that interrupts a store, and threads a task starts itself,
must never leave a connection that answers the next call with another record, or hangs.

Cases:
- prefork -c 1, PostgreSQL: ``soft_time_limit`` fires while 8 MB results are being stored (at swept
  times, and once per round while the server holds the store on a row the test keeps locked);
- gevent -c 8, PostgreSQL: ``time_limit`` (``gevent.Timeout`` in the greenlet) does the same;
- prefork and solo: a task starts 8 threads that share its ``get_storage(name)`` (SQLite, PostgreSQL, MariaDB).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery.result import AsyncResult

from celery_selinon_storage import MissingResultError
from celery_selinon_storage.storages.sql import SqlStorage
from tests.green_queries import with_driver
from tests.interrupt_app import (
    FLOW,
    app,
    big_record,
    read_record,
    record,
    store_big,
    store_record,
    threads_share_storage,
)
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.service]

STORAGE = "Results"
BIG = 8_000_000
ROUNDS = 2
SWEEP_PER_ROUND = 16
AFTER_PER_ROUND = 8
#: How long the interrupted stores and the calls after them may take in all, before the test calls the
#: worker stuck (they take a few seconds when nothing hangs).
BUDGET = 75.0
#: Where a time limit interrupted the driver in the middle of a request (see interrupt_app.interruption_site).
MID_REQUEST = frozenset({"send", "receive", "driver"})
TIME_LIMIT_ERRORS = frozenset({"SoftTimeLimitExceeded", "TimeLimitExceeded", "Timeout"})
INTERRUPTED = re.compile(r"INTERRUPTED (\S+) site=(\w+) error=(\w+)")

THREADS = 8
THREAD_ROUNDS = 20
THREADS_BUDGET = 30.0
SHUTDOWN_WAIT = 20.0


# -- storages, workers and answers -----------------------------------------------------------------


def write_sql_storages(tmp_path: Path, url: str, table: str) -> Path:
    """A storages file with one SqlStorage called ``STORAGE``."""
    path = tmp_path / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: {STORAGE}
    classname: SqlStorage
    configuration: {{connection_string: "{url}", table_name: {table}}}
"""
    )
    return path


@contextlib.contextmanager
def fresh_storage(url: str, table: str) -> Iterator[SqlStorage]:
    """A new SqlStorage of the test process on the worker's table."""
    storage = SqlStorage(url, table_name=table)
    storage.storage_name = STORAGE
    storage.connect()
    try:
        yield storage
    finally:
        storage.disconnect()


def read_back(storage: SqlStorage, task_id: str) -> object:
    """The record stored under ``task_id``, or ``"missing"``."""
    try:
        return storage.retrieve(FLOW, "any", task_id)
    except MissingResultError:
        return "missing"


def drop_table(url: str, table: str) -> None:
    with fresh_storage(url, table) as storage:
        storage.handle().connection.exec_driver_sql(f"DROP TABLE {table}")


def short(value: object) -> object:
    """``value`` with long strings cut, for messages."""
    if isinstance(value, dict):
        return {key: short(item) for key, item in value.items()}
    if isinstance(value, str) and len(value) > 80:
        return f"<{len(value):,} chars>"
    return value


def outcome(result: AsyncResult) -> object:
    """A finished task's return value, ``"Error: message"`` when it failed, else ``"no answer (STATE)"``."""
    meta: dict[str, Any] = app.backend.get_task_meta(result.id)
    if meta["status"] == "SUCCESS":
        return meta["result"]
    if meta["status"] == "FAILURE":
        error = meta["result"]
        return f"{type(error).__name__}: {error}"
    return f"no answer ({meta['status']})"


def settle(results: list[AsyncResult], worker: WorkerProcess, deadline: float) -> list[object]:
    """The outcome of each task once all have finished, the worker has exited, or ``deadline`` passed."""
    waiting = list(results)
    while waiting and time.monotonic() < deadline and worker_running(worker):
        waiting = [result for result in waiting if not result.ready()]
        if waiting:
            time.sleep(0.1)
    return [outcome(result) for result in results]


def worker_running(worker: WorkerProcess) -> bool:
    return worker.process is not None and worker.process.poll() is None


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children (the prefork pool's processes)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def stop_worker(worker: WorkerProcess, sig: int = signal.SIGTERM, wait: float = SHUTDOWN_WAIT) -> str:
    """Send ``sig`` and wait ``wait`` seconds; then kill the worker and its pool processes (a stuck
    prefork child would outlive its parent). Returns how the worker ended."""
    children = child_pids(worker.pid)
    try:
        ended = f"exit status {worker.stop(sig, timeout=wait)}"
    except AssertionError:
        ended = f"warm shutdown did not finish within {wait:.0f}s (killed)"
    for child in children:
        with contextlib.suppress(OSError):
            if b"celery" in Path(f"/proc/{child}/cmdline").read_bytes():
                os.kill(child, signal.SIGKILL)
    return ended


# -- a time limit interrupts 8 MB stores ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How each round interrupts big stores.

    The ``held`` store hits a row the test keeps locked, so it waits for the server's answer until its
    limit fires: always mid-request (in the read). ``sweep`` stores sleep ``delays`` first, so their
    limit fires at times spread over the store: some in the JSON, some in the send, most in the read.
    """

    option: str
    held_limit: float
    sweep_limit: float
    delays: tuple[float, ...]


PREFORK_PLAN = Plan(
    "soft_time_limit",
    held_limit=1.0,
    sweep_limit=0.15,
    delays=tuple(0.10 - 0.06 * k / (SWEEP_PER_ROUND - 1) for k in range(SWEEP_PER_ROUND)),
)
#: Eight at once queue for the storage's lock; the limits fire at times spread over the queue's work.
GEVENT_PLAN = Plan(
    "time_limit",
    held_limit=1.0,
    sweep_limit=0.3,
    delays=tuple(0.3 * k / SWEEP_PER_ROUND for k in range(SWEEP_PER_ROUND)),
)


@contextlib.contextmanager
def row_locked(url: str, table: str, task_id: str) -> Iterator[Callable[[float], bool]]:
    """PostgreSQL: insert a row for ``task_id`` in a transaction of the test's own and keep it open, so
    that a store of that id waits for it; rolled back on exit. Yields ``waited(seconds)``: whether a store
    has been waiting for the row for longer than ``seconds`` (the server's view)."""
    engine = sa.create_engine(SqlStorage(url, table_name=table).url, poolclass=sa.pool.NullPool)
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        " AND query LIKE :pattern AND now() - query_start > make_interval(secs => :seconds)"
    )
    try:
        with engine.connect() as holder, holder.begin() as transaction, engine.connect() as watcher:
            holder.execute(sa.text(f"INSERT INTO {table} (task_id) VALUES (:task_id)"), {"task_id": task_id})

            def waited(seconds: float) -> bool:
                found = watcher.execute(waiting, {"pattern": f"%{table}%", "seconds": seconds}).scalar()
                watcher.rollback()
                return bool(found)

            yield waited
            transaction.rollback()
    finally:
        engine.dispose()


def poll_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Whether ``condition`` came true (polled every 50 ms) before ``deadline``."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Interruptions:
    """What the worker answered, and what the table holds, after time limits cut big stores."""

    worker: WorkerProcess
    queue: str
    url: str
    table: str
    plan: Plan
    deadline: float = field(default_factory=lambda: time.monotonic() + BUDGET)
    big: dict[str, object] = field(default_factory=dict)
    stored: dict[str, object] = field(default_factory=dict)
    read_in_worker: dict[str, object] = field(default_factory=dict)

    def send(self, results: dict[str, AsyncResult], into: dict[str, object]) -> None:
        into.update(zip(results, settle(list(results.values()), self.worker, self.deadline), strict=True))

    def send_sweep(self, number: int) -> None:
        options = {self.plan.option: self.plan.sweep_limit}
        self.send(
            {
                f"big-{number}-{k}": store_big.apply_async(
                    (STORAGE, f"big-{number}-{k}", delay, BIG), queue=self.queue, **options
                )
                for k, delay in enumerate(self.plan.delays)
            },
            self.big,
        )

    def send_held(self, number: int) -> None:
        held = f"held-{number}"
        with row_locked(self.url, self.table, held) as waited:
            options = {self.plan.option: self.plan.held_limit}
            sent = store_big.apply_async((STORAGE, held, 0.0, BIG), queue=self.queue, **options)
            # the row stays locked until the limit has surely fired: the store cannot finish first
            poll_until(lambda: waited(self.plan.held_limit + 0.5), min(self.deadline, time.monotonic() + 30))
        self.send({held: sent}, self.big)

    def run_round(self, number: int) -> None:
        """Swept and held big stores, then small stores, then reading the small records in the worker."""
        self.send_sweep(number)
        self.send_held(number)
        after = [f"after-{number}-{i}" for i in range(AFTER_PER_ROUND)]
        self.send(
            {task_id: store_record.apply_async((STORAGE, task_id), queue=self.queue) for task_id in after},
            self.stored,
        )
        self.send(
            {task_id: read_record.apply_async((STORAGE, task_id), queue=self.queue) for task_id in after},
            self.read_in_worker,
        )

    def problems(self) -> dict[str, dict[str, object]]:
        """Every record that did not come back exactly (read here through a fresh SqlStorage)."""
        found: dict[str, dict[str, object]] = {}
        with fresh_storage(self.url, self.table) as storage:
            for task_id, stored in self.stored.items():
                views = {"store": stored, "worker read": self.read_in_worker[task_id]}
                views["fresh read"] = read_back(storage, task_id)
                if views != {"store": task_id, "worker read": record(task_id), "fresh read": record(task_id)}:
                    found[task_id] = {key: short(value) for key, value in views.items()}
            for task_id, answer in self.big.items():
                kept = read_back(storage, task_id)
                if kept != big_record(task_id, BIG) and (kept != "missing" or answer == task_id):
                    found[task_id] = {"task": short(answer), "fresh read": short(kept)}
        return found

    def sites(self, kind: str) -> Counter[str]:
        """Where each time limit interrupted a big store of ``kind`` (held, big), from the worker's log."""
        return Counter(
            site
            for task_id, site, error in INTERRUPTED.findall(self.worker.output)
            if task_id.startswith(f"{kind}-") and error in TIME_LIMIT_ERRORS
        )


def check_interruptions(run: Interruptions) -> None:
    """Every small record reads back exactly; interrupted big ones are absent or complete; and the
    time limits did land in the middle of the driver's requests (else the test proved nothing)."""
    problems = run.problems()
    held, swept = run.sites("held"), run.sites("big")
    mid_request = sum(held[site] + swept[site] for site in MID_REQUEST)
    summary = (
        f"time limits interrupted {held.total()} of {ROUNDS} held stores, at {dict(held)}, "
        f"and {swept.total()} of {ROUNDS * len(run.plan.delays)} swept stores, at {dict(swept)}"
    )
    assert not problems, f"{summary}\nrecords that did not come back exactly: {problems}"
    assert mid_request, f"{summary}: none mid-request, so the timing missed and nothing was tested"


@pytest.fixture
def pg_table(postgres_url: str, unique: str) -> Iterator[str]:
    """A PostgreSQL table name of the test's own, dropped at the end."""
    yield unique
    with contextlib.suppress(Exception):
        drop_table(postgres_url, unique)


@pytest.mark.parametrize(
    ("pool", "concurrency", "plan"),
    [("prefork", 1, PREFORK_PLAN), ("gevent", 8, GEVENT_PLAN)],
    ids=["prefork-soft_time_limit", "gevent-time_limit"],
)
def test_a_time_limit_mid_store_leaves_the_storage_answering_right(
    pool: str,
    concurrency: int,
    plan: Plan,
    pg_table: str,
    tmp_path: Path,
    queue: str,
    postgres_url: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    # pg8000: where a time limit strikes is told by the Python frames of its I/O (psycopg's is in C)
    storages = write_sql_storages(tmp_path, with_driver(postgres_url, "pg8000"), pg_table)
    worker = workers(
        storages=storages, pool=pool, concurrency=concurrency, queue=queue, app="tests.interrupt_app"
    )
    worker.start().wait_ready()
    run = Interruptions(worker, queue, postgres_url, pg_table, plan)
    try:
        for number in range(ROUNDS):
            run.run_round(number)
    finally:
        stop_worker(worker, signal.SIGKILL, wait=10)
    check_interruptions(run)


# -- threads started by a task share its storage -------------------------------------------------


def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'threads.db'}"
    return str(request.getfixturevalue(f"{backend}_url"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_threads_started_by_a_task_share_its_storage_safely(
    pool: str,
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    queue: str,
    unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    url = database_url(backend, request, tmp_path)
    storages = write_sql_storages(tmp_path, url, unique)
    worker = workers(storages=storages, pool=pool, concurrency=1, queue=queue, app="tests.interrupt_app")
    worker.start().wait_ready()
    try:
        sent = threads_share_storage.apply_async((STORAGE, unique, THREADS, THREAD_ROUNDS), queue=queue)
        [answer] = settle([sent], worker, time.monotonic() + THREADS_BUDGET)
        if not worker_running(worker):
            answer = f"{short(answer)}; the worker exited by itself: {worker.stop(signal.SIGKILL)}"
        shutdown = stop_worker(worker)  # warm shutdown: SIGTERM
    finally:
        stop_worker(worker, signal.SIGKILL, wait=10)  # no-op unless something above failed
    try:
        ids = [f"{unique}-t{n}-r{r}" for n in range(THREADS) for r in range(THREAD_ROUNDS)]
        with fresh_storage(url, unique) as storage:
            found = {task_id: read_back(storage, task_id) for task_id in ids}
        wrong = {task_id: short(value) for task_id, value in found.items() if value != record(task_id)}
    finally:
        if backend != "sqlite":
            drop_table(url, unique)
    assert (answer, shutdown, wrong) == ({"wrong": [], "errors": []}, "exit status 0", {}), (
        f"task answered: {short(answer)}\nshutdown (SIGTERM): {shutdown}\n"
        f"{len(wrong)} of {len(ids)} records read back wrong here: {dict(list(wrong.items())[:5])}"
    )
