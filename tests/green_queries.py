"""Queries that sleep on the SQL server, each in a greenlet of its own, in a fresh eventlet or gevent process.

Each query reads the server's clock when its statement began and again after its sleep. By those spans
the queries were in the server together when the driver lets the hub run while a query waits for its
answer, and one after the other when the driver blocks the hub. The test checks the spans; the benchmark
(``integration/bench_green_drivers.py``) reports the time the queries took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The server's clock at the statement's start, then after the sleep (FROM / WHERE run before the
#: select list, so the second reading follows the sleep).
SLEEPS = {
    "postgresql": "SELECT statement_timestamp(), clock_timestamp() FROM pg_sleep({seconds})",
    "mysql": "SELECT NOW(6), SYSDATE(6) FROM DUAL WHERE SLEEP({seconds}) = 0",
}
PATCH = {
    "eventlet": "import eventlet; eventlet.monkey_patch()",
    "gevent": "from gevent import monkey; monkey.patch_all()",
}
SPAWN = {
    "eventlet": "import eventlet; pool = eventlet.GreenPool(); [pool.spawn(query, s) for s in storages]; pool.waitall()",
    "gevent": "import gevent; gevent.joinall([gevent.spawn(query, s) for s in storages], raise_error=True)",
}
SCRIPT = """\
{patch}
import json, time
from celery_selinon_storage.storages.sql import SqlStorage
storages = [SqlStorage({url!r}, table_name="css_green_queries") for _ in range({queries})]
for storage in storages:
    storage.connect()  # before the greenlets: what is compared is the queries alone
spans = []
def query(storage):
    start, end = storage.handle().connection.exec_driver_sql({sql!r}).one()
    spans.append((start.timestamp(), end.timestamp()))
began = time.monotonic()
{spawn}
elapsed = time.monotonic() - began
for storage in storages:
    storage.disconnect()
print(json.dumps({{"spans": spans, "elapsed": elapsed}}))
"""


@dataclass(frozen=True)
class GreenRun:
    """What one run saw."""

    spans: list[tuple[float, float]]  # each query's start and end by the server's clock, in seconds
    elapsed: float  # seconds from the first greenlet's start to the last one's end, by the client's clock


def with_driver(url: str, driver: str) -> str:
    """``url`` with its scheme's driver replaced: ``postgresql://h/db`` -> ``postgresql+psycopg://h/db``."""
    parts = urlsplit(url)
    return parts._replace(scheme=f"{parts.scheme.split('+')[0]}+{driver}").geturl()


def run_in_greenlets(hub: str, url: str, queries: int = 4, seconds: float = 0.5) -> GreenRun:
    """Run ``queries`` server-side sleeps of ``seconds``, one per greenlet, under ``hub`` in a new process."""
    family = "postgresql" if urlsplit(url).scheme.startswith("postgres") else "mysql"
    code = SCRIPT.format(
        patch=PATCH[hub],
        url=url,
        queries=queries,
        sql=SLEEPS[family].format(seconds=seconds),
        spawn=SPAWN[hub],
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    spans = [(float(start), float(end)) for start, end in found["spans"]]
    assert len(spans) == queries, f"{queries - len(spans)} queries failed:\n{run.stderr}"
    return GreenRun(spans, float(found["elapsed"]))


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that hold one moment (each span is start <= t < end)."""
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
