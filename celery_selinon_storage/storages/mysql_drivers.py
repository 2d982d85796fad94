"""Which driver a MariaDB/MySQL URL that names none gets: mysqlclient where it can run, else PyMySQL.

mysqlclient (``MySQLdb``, on the MariaDB/MySQL C client) is the faster (docs/benchmarks-vs-plain.md), but
its waits are in C, where neither eventlet's nor gevent's hub can switch: under their monkey-patching a
query would stop every greenlet of the process. PyMySQL is pure Python, so their patched sockets make it
green. mysqlclient has no binary wheel on PyPI for Linux (it builds against the client library's headers,
Debian's ``libmariadb-dev``), so it is an extra of its own, ``[mysqlclient]``, and PyMySQL the fallback.
"""

from __future__ import annotations

import importlib.util

from .green_patching import eventlet_is_patched, gevent_is_patched

MYSQLCLIENT = "mysqldb"
PYMYSQL = "pymysql"


def default_driver() -> str:
    """The driver for a MariaDB/MySQL URL that names none, in this process now."""
    if eventlet_is_patched() or gevent_is_patched():
        return PYMYSQL
    return MYSQLCLIENT if importlib.util.find_spec("MySQLdb") is not None else PYMYSQL
