"""Whether eventlet's or gevent's monkey-patching is active in this process: what decides a driver.

Neither library is ever imported here: a process that has not imported one has not patched anything with it.
"""

from __future__ import annotations

import sys


def eventlet_is_patched() -> bool:
    """Whether eventlet has patched the socket module."""
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    return bool(patcher.is_monkey_patched("socket"))


def gevent_is_patched() -> bool:
    """Whether gevent has patched the socket module."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))
