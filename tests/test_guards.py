"""The guard kind follows the worker's pool class, subclasses included."""

from __future__ import annotations

import threading

import pytest
from celery.concurrency import get_implementation

from celery_selinon_storage.guards import GuardKind, guard_kind_for_pool, make_guard, uses_child_processes


@pytest.mark.parametrize(
    ("alias", "kind", "children"),
    [
        ("prefork", GuardKind.NONE, True),
        ("solo", GuardKind.NONE, False),
        ("threads", GuardKind.THREAD, False),
        ("eventlet", GuardKind.EVENTLET, False),
        ("gevent", GuardKind.GEVENT, False),
    ],
)
def test_celery_pools(alias: str, kind: GuardKind, children: bool) -> None:
    pool_cls = get_implementation(alias)
    assert guard_kind_for_pool(pool_cls) is kind
    assert uses_child_processes(pool_cls) is children


def test_a_custom_pool_is_known_by_its_base_class() -> None:
    class MyThreads(get_implementation("threads")):  # type: ignore[misc]
        pass

    class MyPrefork(get_implementation("prefork")):  # type: ignore[misc]
        pass

    assert guard_kind_for_pool(MyThreads) is GuardKind.THREAD
    assert guard_kind_for_pool(MyPrefork) is GuardKind.NONE and uses_child_processes(MyPrefork)


def test_an_unknown_pool_gets_a_thread_lock() -> None:
    assert guard_kind_for_pool(object) is GuardKind.THREAD


def test_the_thread_guard_excludes_a_second_thread() -> None:
    guard = make_guard(GuardKind.THREAD)
    with guard:
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(guard.acquire(timeout=0.05)))
        thread.start()
        thread.join()
    assert result == [False]


def test_green_guards_are_the_hubs_own_locks() -> None:
    from eventlet.semaphore import Semaphore as EventletSemaphore
    from gevent.lock import Semaphore as GeventSemaphore

    assert isinstance(make_guard(GuardKind.EVENTLET), EventletSemaphore)
    assert isinstance(make_guard(GuardKind.GEVENT), GeventSemaphore)


def test_no_guard_never_blocks() -> None:
    guard = make_guard(GuardKind.NONE)
    with guard, guard:
        assert guard.acquire(timeout=0)
