"""Run calls in helper threads and wait for them at most a given time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


def run_with_deadline(
    target: Callable[[], None],
    seconds: float,
    *,
    name: str,
    on_wait: Callable[[float], None] | None = None,
    every: float = 1.0,
) -> bool:
    """Start ``target`` in a daemon thread; wait at most ``seconds``. Whether it finished in time.

    A call still running then goes on in the background (a hung server cannot hold the caller).
    ``on_wait(waited)`` is called every ``every`` seconds while it runs.
    """
    helper = threading.Thread(target=target, name=name, daemon=True)
    started = time.monotonic()
    helper.start()
    while helper.is_alive():
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            break
        helper.join(min(every, left) if on_wait is not None else left)
        if helper.is_alive() and on_wait is not None and time.monotonic() - started < seconds:
            on_wait(time.monotonic() - started)
    return not helper.is_alive()


def run_side_by_side(targets: Mapping[str, Callable[[], None]], seconds: float, *, name: str) -> list[str]:
    """Start each target in a daemon thread of its own; wait at most ``seconds`` for all of them.

    Returns the keys of those still running then (they go on in the background): one slow call
    does not delay the others.
    """
    helpers = {
        key: threading.Thread(target=target, name=f"{name}-{key}", daemon=True)
        for key, target in targets.items()
    }
    for helper in helpers.values():
        helper.start()
    deadline = time.monotonic() + seconds
    for helper in helpers.values():
        helper.join(max(0.0, deadline - time.monotonic()))
    return [key for key, helper in helpers.items() if helper.is_alive()]
