"""How long N server-side sleeps take in N greenlets, per SQL driver and hub: the cost of a driver that blocks.

Each run starts a fresh process that patches the hub, connects N storages, then runs one
``pg_sleep``/``SLEEP`` query per greenlet. The ratio is the wall time over one query's sleep: about 1 when
the driver lets the hub run while a query waits (the queries overlap), about N when it blocks the hub.
``tests/test_storages_on_servers.py`` proves the same split without timing, by the server's own clock.

python -m integration.bench_green_drivers [--queries 4] [--seconds 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from tests.green_queries import most_at_once, run_in_greenlets, with_driver
from tests.services import MARIADB_URL, POSTGRES_URL

#: (hub, server URL, driver)
CASES = [
    ("eventlet", POSTGRES_URL, "pg8000"),
    ("gevent", POSTGRES_URL, "pg8000"),
    ("eventlet", POSTGRES_URL, "psycopg"),
    ("gevent", POSTGRES_URL, "psycopg"),
    ("eventlet", MARIADB_URL, "pymysql"),
    ("gevent", MARIADB_URL, "pymysql"),
]


def measure(hub: str, url: str, queries: int, seconds: float, rounds: int) -> tuple[float, int]:
    """The median wall time of ``rounds`` runs, and the fewest queries the server held at once in any."""
    runs = [run_in_greenlets(hub, url, queries, seconds) for _ in range(rounds)]
    return statistics.median(run.elapsed for run in runs), min(most_at_once(run.spans) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4, help="greenlets, one query each")
    parser.add_argument("--seconds", type=float, default=0.5, help="each query's sleep on the server")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"| driver | hub | {args.queries} queries of {args.seconds} s (median) | ratio to one query | at once |"
    )
    print("|---|---|---|---|---|")
    for hub, url, driver in CASES:
        elapsed, at_once = measure(hub, with_driver(url, driver), args.queries, args.seconds, args.rounds)
        print(
            f"| {driver} | {hub} | {elapsed:.2f} s | {elapsed / args.seconds:.2f} | {at_once} |", flush=True
        )


if __name__ == "__main__":
    main()
