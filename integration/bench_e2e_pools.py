"""End to end, per pool: worker throughput when each task keeps its small result through a managed storage
(on PostgreSQL, on Redis) or through Celery's own result backend on the same server instead.

One worker per pool (prefork -c 2, threads -c 4, gevent -c 16) runs every variant: the task names where
its result goes (see ``bench_e2e_app``). Variants alternate in rounds, in a new order each round; each
figure is the median of the rounds, in tasks per second from the first send until every result exists.
The managed PostgreSQL storage runs on psycopg 3 (``postgresql+psycopg://``) and on the default URL's
driver, when that is another.

python -m integration.bench_e2e_pools [--pools prefork,threads,gevent] [--tasks 400] [--rounds 3]
    [--json integration/results/bench_e2e_pools.json] [--chart docs/benchmarks-e2e-pools.png]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from celery_selinon_storage.storages.sql import SqlStorage
from integration import charts
from integration.bench_e2e import start_worker, stop

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/bench")
POOLS = {"prefork": 2, "threads": 4, "gevent": 16}


@dataclass
class Variant:
    """One way of keeping the result: how to send its task, and which of some task ids are done."""

    name: str
    send: Callable[[], str]
    done: Callable[[list[str]], set[str]]


def storages_file(directory: Path, prefix: str, table: str) -> tuple[Path, dict[str, str]]:
    """The storages YAML, and the PostgreSQL storages' names with the driver each runs on."""
    default_driver = SqlStorage(POSTGRES).url.get_driver_name()
    postgres = {"PostgresPsycopg": "psycopg"}
    if default_driver != "psycopg":
        postgres["PostgresDefault"] = default_driver
    entries = [
        f"""  - name: Redis
    classname: RedisStorage
    configuration: {{url: "{REDIS}/12", key_prefix: "{prefix}:"}}"""
    ]
    for name, driver in postgres.items():
        url = POSTGRES.replace("://", f"+{driver}://", 1)
        entries.append(f"""  - name: {name}
    classname: SqlStorage
    configuration: {{connection_string: "{url}", table_name: "{table}"}}""")
    path = directory / "storages.yml"
    path.write_text("storages:\n" + "\n".join(entries) + "\n")
    return path, postgres


def wait_for_results(variant: Variant, tasks: int, timeout: float = 300) -> float:
    """Send ``tasks`` tasks; tasks per second until every one's result exists."""
    started = time.perf_counter()
    pending = [variant.send() for _ in range(tasks)]
    deadline = started + timeout
    while pending:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{variant.name}: {len(pending)} results never appeared (see the worker log)")
        # tasks finish about in order: look at the next few hundred only, so that polling stays cheap
        # (the client shares the two cores with the worker)
        window = pending[:200]
        found = variant.done(window)
        pending = [task_id for task_id in window if task_id not in found] + pending[len(window) :]
        if pending and len(found) < len(window):
            time.sleep(0.02)
    return tasks / (time.perf_counter() - started)


def variants(queue: str, run: Run, postgres: dict[str, str]) -> list[Variant]:
    from integration.bench_e2e_app import managed, to_database_backend, to_redis_backend

    def sender(task: Any, *args: str) -> Callable[[], str]:
        return lambda: str(task.apply_async(args, queue=queue).id)

    storage_db, backend_db = redis.Redis.from_url(f"{REDIS}/12"), redis.Redis.from_url(f"{REDIS}/11")
    storage_db.ping()  # connected now, so that the connections counted before the worker starts hold them
    backend_db.ping()
    database = psycopg.connect(POSTGRES, autocommit=True)

    def redis_keys(client: redis.Redis, key: Callable[[str], str]) -> Callable[[list[str]], set[str]]:
        def done(ids: list[str]) -> set[str]:
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.exists(key(task_id))
            return {task_id for task_id, exists in zip(ids, pipe.execute(), strict=True) if exists}

        return done

    def rows(sql: str) -> Callable[[list[str]], set[str]]:
        def done(ids: list[str]) -> set[str]:
            return {row[0] for row in database.execute(sql, (ids,)).fetchall()}

        return done

    result = [
        Variant("managed RedisStorage", sender(managed, "Redis"),
                redis_keys(storage_db, lambda i: f"{run.tag}:{i}")),
        Variant("Celery redis:// backend", sender(to_redis_backend),
                redis_keys(backend_db, lambda i: f"celery-task-meta-{i}")),
        Variant("Celery db+postgresql:// backend", sender(to_database_backend),
                rows(f"SELECT task_id FROM {run.celery_tables}_taskmeta WHERE task_id = ANY(%s) AND status = 'SUCCESS'")),
    ]  # fmt: skip
    for name, driver in postgres.items():
        result.append(
            Variant(f"managed SqlStorage on PostgreSQL ({driver})", sender(managed, name),
                    rows(f"SELECT task_id FROM {run.table} WHERE task_id = ANY(%s)"))
        )  # fmt: skip
    return result


@dataclass
class Run:
    """Names of one run's keys and tables."""

    tag: str
    #: the workers' queues (their bindings stay in the broker's Redis database until removed)
    queues: list[str] = field(default_factory=list)

    @property
    def table(self) -> str:
        return f"e2e_{self.tag}"

    @property
    def celery_tables(self) -> str:
        return f"celery_e2e_{self.tag}"


def connections() -> dict[str, int]:
    """Connections now open to the benchmark's PostgreSQL database and to each Redis database it uses."""
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        found: Any = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    client = redis.Redis.from_url(REDIS)
    by_db = [int(entry.get("db", -1)) for entry in client.client_list()]
    client.close()
    counts = {"PostgreSQL": int(found[0])}
    counts["Redis (RedisStorage's db)"] = by_db.count(12)
    counts["Redis (Celery backend's db)"] = by_db.count(11)
    return counts


def throughput(pool: str, tasks: int, rounds: int, run: Run, workdir: Path) -> dict[str, float]:
    """Median tasks/s of each variant in one worker of ``pool``, and the connections the worker held
    after its warm-up (its process's storages and result backends, idle)."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    run.queues.append(queue)
    storages, postgres = storages_file(workdir, run.tag, run.table)
    all_variants = variants(queue, run, postgres)
    before = connections()
    worker, _ = start_worker(pool, POOLS[pool], queue, storages, app="integration.bench_e2e_app")
    rates: dict[str, list[float]] = {}
    try:
        for variant in all_variants:  # warm-up, not counted
            wait_for_results(variant, max(20, tasks // 10))
        held = {f"{where} connections held": now - before[where] for where, now in connections().items()}
        shuffle = random.Random(tasks).shuffle
        for _ in range(rounds):
            order = list(all_variants)
            shuffle(order)
            for variant in order:
                rates.setdefault(variant.name, []).append(wait_for_results(variant, tasks))
    finally:
        stop(worker)
    return {**{name: statistics.median(values) for name, values in rates.items()}, **held}


def cleanup(run: Run) -> None:
    storage_db, backend_db = redis.Redis.from_url(f"{REDIS}/12"), redis.Redis.from_url(f"{REDIS}/11")
    broker = redis.Redis.from_url(f"{REDIS}/10")
    for queue in run.queues:
        broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for client, pattern in ((storage_db, f"{run.tag}:*"), (backend_db, "celery-task-meta-*")):
        keys = list(client.scan_iter(pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        for name in (run.table, f"{run.celery_tables}_taskmeta", f"{run.celery_tables}_groupmeta"):
            connection.execute(f"DROP TABLE IF EXISTS {name}")  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pools", default="prefork,threads,gevent")
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--chart", type=Path)
    parser.add_argument(
        "--replot", type=Path, nargs="+", help="draw --chart from --json files, measuring nothing"
    )
    args = parser.parse_args()
    if args.replot:
        runs = [json.loads(path.read_text()) for path in args.replot]
        chart({pool: rates for run in runs for pool, rates in run["pools"].items()}, args.chart)
        return
    results: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {args.tasks} tasks a round, median of {args.rounds} rounds (tasks/s)"
    )
    run = Run(uuid.uuid4().hex[:8])
    # the app module reads this when imported, here as in the worker
    os.environ["BENCH_CELERY_TABLES"] = run.celery_tables
    try:
        with tempfile.TemporaryDirectory() as directory:
            for pool in args.pools.split(","):
                label = f"{pool} -c {POOLS[pool]}"
                results[label] = throughput(pool, args.tasks, args.rounds, run, Path(directory))
                print(
                    f"{label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in results[label].items()), flush=True
                )
    finally:
        cleanup(run)
    print_table(results)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tasks": args.tasks,
                                         "rounds": args.rounds, "pools": results}, indent=1) + "\n")  # fmt: skip
    if args.chart:
        chart(results, args.chart)


def print_table(results: dict[str, dict[str, float]]) -> None:
    """Throughput per pool and variant with the two ratios, then the connections each worker held."""
    names = variant_names(results)
    print(
        "| pool | "
        + " | ".join(names)
        + " | managed PostgreSQL (psycopg) / Celery db | managed Redis / Celery redis |"
    )
    print("|---|" + "---|" * (len(names) + 2))
    for pool, rates in results.items():
        pg = rates["managed SqlStorage on PostgreSQL (psycopg)"] / rates["Celery db+postgresql:// backend"]
        rd = rates["managed RedisStorage"] / rates["Celery redis:// backend"]
        print(f"| {pool} | " + " | ".join(f"{rates[n]:,.0f}" for n in names) + f" | {pg:.2f} | {rd:.2f} |")
    held = [name for name in next(iter(results.values())) if name.endswith("connections held")]
    print("\n| pool | " + " | ".join(held) + " |")
    print("|---|" + "---|" * len(held))
    for pool, rates in results.items():
        print(f"| {pool} | " + " | ".join(f"{rates[n]:.0f}" for n in held) + " |")  # fmt: skip


def variant_names(results: dict[str, dict[str, float]]) -> list[str]:
    """The variants' names, storages first, in one order for every pool."""
    first = next(iter(results.values()))
    return sorted(
        (name for name in first if not name.endswith("connections held")),
        key=lambda n: (n.startswith("Celery"), n),
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = variant_names(results)
    figure, axes = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        positions = [p + (index - (len(names) - 1) / 2) * width for p in range(len(results))]
        bars = axes.bar(positions, [results[pool][name] for pool in results], width, label=name)
        axes.bar_label(bars, fmt="%.0f", fontsize=7)
    axes.set_xticks(range(len(results)), list(results))
    axes.set_ylabel("tasks/s (higher is better)")
    axes.set_title("One ~200-byte result per task: managed storage vs Celery's result backend, same servers")
    axes.set_ylim(0, 1.3 * max(max(rates.values()) for rates in results.values()))  # room for the legend
    axes.legend(fontsize=7, loc="upper right", ncol=2)
    charts.save(figure, path)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
