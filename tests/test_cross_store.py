"""A storage that calls another storage from inside its own call never deadlocks, under any pool's guard.

fabric8's ``AmazonS3.store_error`` writes to ``BayesianPostgres``; its Postgres adapters read S3 from inside
``retrieve``. ``ForwardingSqlStorage`` (tests/custom_adapters.py) does the same on real SQLite: its ``store``
holds its own guard, waits ``pause`` seconds, then stores a copy in the other storage. Two tasks storing
into A (forwarding to B) and B (forwarding to A) at once each hold one guard and need the other's: with one
plain lock per storage both wait until their timeout. They must both succeed, well within it.

The green guards run in a fresh, monkey-patched process, as under a worker's eventlet or gevent pool.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from celery_selinon_storage import get_storage, managed, open_storages
from celery_selinon_storage.guards import CallGuard, GuardKind, make_guard
from tests.custom_adapters import FORWARDED_FLOW
from tests.workers import ROOT, WorkerProcess, wait_for

#: Seconds each storage holds its guard before it forwards; its ``timeout:`` (3 tries of 2 s each).
PAUSE = 0.3
TIMEOUT = 6.0
TRY_TIMEOUT = TIMEOUT / 3

Spawn = Callable[[list[Callable[[], None]]], None]


def write_storages(directory: Path, pause: float = PAUSE, timeout: float = TIMEOUT) -> Path:
    """Storages A and B, each a SQLite file, each forwarding a copy of what it stores to the other."""
    path = directory / "storages.yml"
    entries = []
    for name, other in (("A", "B"), ("B", "A")):
        entries.append(
            f"  - name: {name}\n    import: tests.custom_adapters\n    classname: ForwardingSqlStorage\n"
            f"    timeout: {timeout}\n"
            f"    configuration: {{forward_to: {other}, pause: {pause}, "
            f"connection_string: 'sqlite:///{directory / name}.sqlite3'}}\n"
        )
    path.write_text("storages:\n" + "".join(entries))
    return path


def cross_store(storages_file: Path, guard: GuardKind, spawn: Spawn) -> dict[str, Any]:
    """Store into A and into B side by side; what each call did, how long it all took, and what was kept."""
    outcomes: dict[str, str] = {}

    def store(name: str) -> None:
        try:
            get_storage(name).store(None, "flow", "Task", f"task-{name}", {"by": name})
            outcomes[name] = "ok"
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcomes[name] = f"{type(exc).__name__}: {exc}"

    with open_storages(storages_file, guard_kind=guard):
        began = time.monotonic()
        spawn([partial(store, "A"), partial(store, "B")])
        elapsed = time.monotonic() - began
        kept = {}
        if set(outcomes.values()) == {"ok"}:
            for name, other in (("A", "B"), ("B", "A")):
                kept[name] = {
                    "own": get_storage(name).retrieve("flow", "Task", f"task-{name}"),
                    "copy": get_storage(name).retrieve(FORWARDED_FLOW, "Task", f"task-{other}"),
                }
    return {"outcomes": outcomes, "elapsed": elapsed, "kept": kept}


def check_both_completed_while_holding_their_own(run: dict[str, Any]) -> None:
    assert run["outcomes"] == {"A": "ok", "B": "ok"}, run
    assert run["elapsed"] < TRY_TIMEOUT, f"the calls waited for a timeout: {run}"
    kept = run["kept"]
    assert kept["A"]["own"]["result"] == {"by": "A"} and kept["B"]["own"]["result"] == {"by": "B"}
    assert kept["A"]["copy"] == {"copy_of": {"by": "B"}, "from": "B"}
    assert kept["B"]["copy"] == {"copy_of": {"by": "A"}, "from": "A"}
    (a_began, a_ended), (b_began, b_ended) = kept["A"]["own"]["held"], kept["B"]["own"]["held"]
    assert max(a_began, b_began) + PAUSE <= min(a_ended, b_ended), (
        "the two stores did not both hold their own storage while forwarding: the test proved nothing"
    )


def threads(calls: list[Callable[[], None]]) -> None:
    started = [threading.Thread(target=call) for call in calls]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()


def test_two_threads_storing_across_two_storages_both_complete(tmp_path: Path) -> None:
    run = cross_store(write_storages(tmp_path), GuardKind.THREAD, threads)
    check_both_completed_while_holding_their_own(run)


def test_with_a_plain_lock_per_storage_the_same_calls_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproducer of the issue: with the guard of before (one re-entrant lock per storage) each call
    waits for the other's storage until its timeout; one at least fails. So the test above does meet the
    deadlock."""
    monkeypatch.setattr(managed, "make_call_guard", make_guard)
    run = cross_store(write_storages(tmp_path, timeout=1.5), GuardKind.THREAD, threads)
    failed = [outcome for outcome in run["outcomes"].values() if outcome != "ok"]
    assert failed and all("StorageUnavailableError" in f and "StorageBusyError" in f for f in failed), run
    assert run["elapsed"] >= 1.5 / 3, run  # at least one try's wait for a guard that never came


GREEN_SCRIPT = """\
{patch}
import json, sys
from pathlib import Path
from celery_selinon_storage.guards import GuardKind
from tests.test_cross_store import cross_store, nested_stress, {spawn}
run = cross_store(Path(sys.argv[1]), GuardKind.{kind}, {spawn})
stress = nested_stress(GuardKind.{kind}, {spawn})
print(json.dumps({{"run": run, "stress": stress}}))
"""
PATCH = {
    "eventlet": "import eventlet; eventlet.monkey_patch()",
    "gevent": "from gevent import monkey; monkey.patch_all()",
}


def gevent_spawn(calls: list[Callable[[], None]]) -> None:
    import gevent

    gevent.joinall([gevent.spawn(call) for call in calls], raise_error=True)


def eventlet_spawn(calls: list[Callable[[], None]]) -> None:
    import eventlet

    pool = eventlet.GreenPool()
    for call in calls:
        pool.spawn(call)
    pool.waitall()


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_two_greenlets_storing_across_two_storages_both_complete(pool: str, tmp_path: Path) -> None:
    script = GREEN_SCRIPT.format(patch=PATCH[pool], kind=pool.upper(), spawn=f"{pool}_spawn")
    done = subprocess.run(
        [sys.executable, "-c", script, str(write_storages(tmp_path))],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    check_both_completed_while_holding_their_own(report["run"])
    check_stress(report["stress"])


# -- many tasks, random nested calls -------------------------------------------------------------------


def nested_stress(kind: GuardKind, spawn: Spawn, tasks: int = 6, rounds: int = 25) -> dict[str, Any]:
    """``tasks`` tasks each make ``rounds`` chains of nested calls into three guarded "storages", in random
    order (a storage may come again in a chain: a call into its own storage). Counts, for each storage,
    the most tasks that ever *ran* inside it at once (a task parked at its call-out does not run), and the
    waits that gave up."""
    guards = [CallGuard(kind) for _ in range(3)]
    mutex = threading.Lock()
    running: list[set[int]] = [set() for _ in guards]
    most = [0, 0, 0]
    timeouts = [0]
    sleep = _sleeper(kind)

    def task(number: int) -> None:
        chance = random.Random(number)
        for _ in range(rounds):
            chain = [chance.randrange(len(guards)) for _ in range(chance.randint(1, 4))]
            held: list[int] = []
            for index in chain:
                with mutex:  # about to call out: no longer running in what it holds
                    for each in held:
                        running[each].discard(number)
                if not guards[index].acquire(timeout=TRY_TIMEOUT):
                    timeouts[0] += 1
                    break
                held.append(index)
                with mutex:
                    for each in held:
                        running[each].add(number)
                        most[each] = max(most[each], len(running[each]))
                sleep(chance.random() * 0.002)
            with mutex:
                for each in held:
                    running[each].discard(number)
            for index in reversed(held):
                guards[index].release()

    began = time.monotonic()
    spawn([partial(task, number) for number in range(tasks)])
    return {
        "most_running": most,
        "timeouts": timeouts[0],
        "elapsed": time.monotonic() - began,
        "left_held": [guard.holder is not None or bool(guard.borrowers) for guard in guards],
    }


def _sleeper(kind: GuardKind) -> Callable[[float], Any]:
    if kind is GuardKind.GEVENT:
        import gevent

        return gevent.sleep  # type: ignore[no-any-return]
    if kind is GuardKind.EVENTLET:
        import eventlet

        return eventlet.sleep  # type: ignore[no-any-return]
    return time.sleep


def check_stress(stress: dict[str, Any]) -> None:
    assert stress["timeouts"] == 0, f"a nested call waited for its timeout: {stress}"
    assert stress["most_running"] == [1, 1, 1], f"two tasks ran inside one storage at once: {stress}"
    assert stress["left_held"] == [False, False, False], stress


def test_many_threads_nesting_calls_at_random_neither_deadlock_nor_overlap() -> None:
    check_stress(nested_stress(GuardKind.THREAD, threads))


# -- a real worker ----------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.service
def test_a_threads_worker_completes_tasks_storing_across_two_storages(
    tmp_path: Path, queue: str, redis_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    from tests.worker_app import store_in, task_failures, task_states

    storages_file = write_storages(tmp_path)
    worker = workers(storages=storages_file, pool="threads", concurrency=4, queue=queue).start()
    worker.wait_ready()
    sent = [store_in.apply_async(([name],), queue=queue) for _ in range(3) for name in ("A", "B")]
    ids = [result.id for result in sent]
    wait_for(
        lambda: all(state in ("SUCCESS", "FAILURE") for state in task_states(ids)),
        60,
        "the tasks to finish",
        detail=lambda: worker.output,
    )
    assert task_failures(ids) == [], worker.output
    assert worker.stop() == 0, worker.output

    spans = []
    with open_storages(storages_file):
        for result, name in zip(sent, ("A", "B") * 3, strict=True):
            other = "B" if name == "A" else "A"
            record = get_storage(name).retrieve("test_flow", "store_in", result.id)
            assert get_storage(other).retrieve(FORWARDED_FLOW, "store_in", result.id)["from"] == name
            spans.append((name, *record["held"]))
    # at least once a store into A and one into B held their storage at the same time while forwarding
    assert any(
        max(a[1], b[1]) + PAUSE <= min(a[2], b[2]) for a in spans if a[0] == "A" for b in spans if b[0] == "B"
    ), spans


class Interrupted(Exception):
    """Raised by a signal handler in the main thread, as Celery's soft time limit is under prefork."""


def test_a_task_interrupted_while_parked_unwinds_only_once_its_storage_is_given_back() -> None:
    """The main thread (task 1) holds A and waits for B; task 2 holds B and borrows A. A time limit strikes
    task 1 while task 2 runs in A: task 1 must not unwind through A's adapter code before task 2 is out of A."""
    a, b = CallGuard(GuardKind.THREAD), CallGuard(GuardKind.THREAD)
    times: dict[str, float] = {}

    def task2() -> None:
        with b:
            time.sleep(0.1)  # task 1 waits for B meanwhile, holding A
            assert a.acquire(timeout=5)
            times["task 2 in A"] = time.monotonic()
            time.sleep(0.4)
            times["task 2 out of A"] = time.monotonic()
            a.release()

    def time_limit(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, time_limit)
    a.acquire()
    other = threading.Thread(target=task2)
    other.start()
    try:
        time.sleep(0.05)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # strikes while task 2 is in A
        with pytest.raises(Interrupted):
            b.acquire(timeout=5)
        times["task 1 unwinds"] = time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        a.release()
        other.join()
    assert times["task 2 in A"] < times["task 2 out of A"] <= times["task 1 unwinds"], times
    assert a.holder is None and b.holder is None and not a.borrowers
