"""psycopg 3 connections whose every wait for the server ends by a deadline.

psycopg runs each exchange with the server (the connect, a query) as a generator that says what it waits
for, driven by a wait loop that polls the socket and wakes at least every 0.1 s. psycopg has no read
timeout, and libpq's ``connect_timeout`` counts whole seconds, at least 2. The connection class below
puts the storage's own bound on each exchange: once it has passed, the exchange ends with
``ServerWaitTimeout`` (an ``OperationalError``) and the connection is closed, its state mid-exchange
being unknown. Closing finishes libpq's connection, which closes its socket whoever still refers to it.

The bound of a query is psycopg's own where its wait loop takes one (``Connection.wait(timeout=)``, in C,
in recent 3.3 releases); else, and for the connect, each wake-up of the loop checks it (``_until``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Generator
from typing import Any, ClassVar, TypeVar, cast

import psycopg

T = TypeVar("T")

#: What psycopg's wait loop raises when the ``timeout`` it was given has passed (None before it took one).
_PSYCOPG_WAIT_TIMEOUT: type[Exception] | None = getattr(psycopg.errors, "_WaitTimeout", None)

#: Whether ``Connection.wait`` takes a ``timeout`` (then psycopg bounds each query's wait itself).
WAIT_TAKES_TIMEOUT = (
    _PSYCOPG_WAIT_TIMEOUT is not None and "timeout" in inspect.signature(psycopg.Connection.wait).parameters
)


class ServerWaitTimeout(psycopg.OperationalError):
    """The server did not answer within a wait's share of the storage's timeout; the connection is closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose connect and each exchange end within ``wait_seconds``."""

    #: set on the subclass made for each bound (``connection_class``)
    wait_seconds: ClassVar[float] = 10.0

    @classmethod
    def _connect_gen(cls, conninfo: str = "", *args: Any, **kwargs: Any) -> Any:
        connecting = super()._connect_gen(conninfo, *args, **kwargs)
        return _until(connecting, cls.wait_seconds, "complete the connection")

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one exchange, as psycopg does, within ``wait_seconds``."""
        if not WAIT_TAKES_TIMEOUT:
            try:
                return super().wait(_until(gen, self.wait_seconds, "answer"), *args, **kwargs)
            except ServerWaitTimeout:
                self.close()
                raise
        asked = kwargs.get("timeout")
        if asked is not None and asked < self.wait_seconds:
            return super().wait(gen, *args, **kwargs)  # the caller's bound, and its timeout error
        try:
            return super().wait(gen, *args, **{**kwargs, "timeout": self.wait_seconds})
        except cast(type[Exception], _PSYCOPG_WAIT_TIMEOUT):
            self.close()
            raise _timeout("answer", self.wait_seconds) from None


@functools.cache
def connection_class(seconds: float) -> type[DeadlineConnection]:
    """The connection class whose waits each end within ``seconds`` (one class per bound, made once)."""
    made = type(f"DeadlineConnection_{seconds:g}s", (DeadlineConnection,), {"wait_seconds": seconds})
    return cast(type[DeadlineConnection], made)


def _until(gen: Generator[Any, Any, T], seconds: float, what: str) -> Generator[Any, Any, T]:
    """``gen``, driven through, ended with ``ServerWaitTimeout`` once ``seconds`` have passed.

    The wait loop resumes the generator when the socket is ready or every 0.1 s; each resumption past the
    deadline ends it (and closes ``gen``, so that a connection being made is let go at once).
    """
    deadline = time.monotonic() + seconds
    try:
        state = next(gen)
        while True:
            ready = yield state
            state = gen.send(ready)
            if time.monotonic() >= deadline:
                gen.close()
                raise _timeout(what, seconds)
    except StopIteration as done:
        result: T = done.value
        return result


def _timeout(what: str, seconds: float) -> ServerWaitTimeout:
    return ServerWaitTimeout(f"the server did not {what} within {seconds:g} s")
