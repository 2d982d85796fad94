"""Server sessions a SQL storage dropped while a statement was on its way, ended before its next call.

Dropping a connection does not stop what the server was sent: a statement waiting on a row lock runs
once the lock goes, after the call that sent it has raised "unavailable, safe to retry", and after later
calls have read the record. So the storage keeps the identity of each server session it dropped
mid-statement and, on its next connection, ends those sessions and waits until they are gone: the
statement then ran before the call ended, or never.

A session is known by more than its number, so that a number the server has since given to another
session is never ended: PostgreSQL by backend pid and start time (``pg_terminate_backend(pid, timeout)``,
which its own role may call), MariaDB/MySQL by thread id and client address (``KILL CONNECTION``, then
the process list until it is gone). Behind a connection pooler the session the client sees is not the
server's, so nothing is recorded there (the pooler closes a server session whose client left mid-statement).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

#: A server session: its number and what else tells it from a later one with the same number.
SessionKey = tuple[int, str]

_WHO_AM_I = {
    "postgresql": "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "mysql": "SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
}
_STILL_THERE = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND backend_start::text = %s",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s AND HOST = %s",
}
#: PostgreSQL's waits until the backend has exited (false, with a warning, for one that is gone)
_END_POSTGRESQL = (
    "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity WHERE pid = %s AND backend_start::text = %s"
)


def _family(dialect: str) -> str | None:
    if dialect == "postgresql":
        return dialect
    return "mysql" if dialect in ("mysql", "mariadb") else None  # SQLite: ran in this thread, or not


def server_session(dialect: str, connection: Any) -> SessionKey | None:
    """Who the session of ``connection`` (SQLAlchemy's) is on the server; None where none is to end."""
    family = _family(dialect)
    if family is None:
        return None
    try:
        number, detail = connection.exec_driver_sql(_WHO_AM_I[family]).one()
    except sa.exc.DBAPIError:
        # a server that speaks the protocol without these views (a PostgreSQL-compatible database):
        # its dropped sessions cannot be ended, as behind a pooler
        return None
    return int(number), str(detail)


def end_sessions(connection: Any, dialect: str, sessions: list[SessionKey], seconds: float) -> None:
    """End each of ``sessions`` and wait until it is gone, within ``seconds`` in all.

    Raises ``ConnectionError`` (transient: the storage connects again on its next try) when one outlives
    the wait; the sessions are then still to end.
    """
    family = _family(dialect)
    deadline = time.monotonic() + seconds
    for number, detail in sessions:
        if family == "postgresql":
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            connection.exec_driver_sql(_END_POSTGRESQL, (wait_ms, number, detail)).all()
        elif family == "mysql" and _still_there(connection, family, number, detail):
            connection.exec_driver_sql(
                f"KILL CONNECTION {int(number)}"
            )  # marks it: it ends at its next check
        while _still_there(connection, family, number, detail):
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"the server session {number} of a call that gave up is still running after "
                    f"{seconds:g} s; it must end before any new statement, so that the call's statement "
                    "cannot run late"
                )
            time.sleep(0.005)


def _still_there(connection: Any, family: str | None, number: int, detail: str) -> bool:
    if family is None:
        return False
    return bool(connection.exec_driver_sql(_STILL_THERE[family], (number, detail)).scalar())
