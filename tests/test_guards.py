"""The guard kind follows the worker's pool class, subclasses included."""

from __future__ import annotations

import threading

import pytest
from celery.concurrency import get_implementation

from celery_selinon_storage.guards import GuardKind, make_guard, pool_traits


@pytest.mark.parametrize(
    ("alias", "kind", "children"),
    [
        # prefork and solo run one task at a time, but a task may start threads of its own
        ("prefork", GuardKind.THREAD, True),
        ("solo", GuardKind.THREAD, False),
        ("threads", GuardKind.THREAD, False),
        ("eventlet", GuardKind.EVENTLET, False),
        ("gevent", GuardKind.GEVENT, False),
    ],
)
def test_celery_pools(alias: str, kind: GuardKind, children: bool) -> None:
    pool_cls = get_implementation(alias)
    traits = pool_traits(pool_cls)
    assert traits.guard_kind is kind
    assert traits.in_children is children


def test_a_custom_pool_is_known_by_its_base_class() -> None:
    class MyThreads(get_implementation("threads")):  # type: ignore[misc]
        pass

    class MyPrefork(get_implementation("prefork")):  # type: ignore[misc]
        pass

    assert pool_traits(MyThreads).guard_kind is GuardKind.THREAD
    assert pool_traits(MyPrefork).guard_kind is GuardKind.THREAD and pool_traits(MyPrefork).in_children


def test_an_unknown_pool_gets_a_thread_lock() -> None:
    assert pool_traits(object).guard_kind is GuardKind.THREAD


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
