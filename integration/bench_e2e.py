"""End to end: the same task keeping a ~1 KB result through a managed storage vs Celery's own backend.

Both on the same Redis server, in real workers (prefork and threads), in alternating rounds; then the
guard's cost (threads pool, a concurrency-safe storage with and without the guard) and the start-up
time the bootstep adds. Prints a table; --chart FILE writes a PNG.

python -m integration.bench_e2e [--tasks 2000] [--rounds 3] [--chart integration/results/bench_e2e.png]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from integration import charts

ROOT = Path(__file__).resolve().parent.parent
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
READY = re.compile(r"\bready\.")


def storages_file(directory: Path, prefix: str) -> Path:
    path = directory / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: Results
    classname: RedisStorage
    configuration: {{url: "{REDIS}/12", key_prefix: "{prefix}:"}}
  - name: Guarded
    classname: GuardedRedisStorage
    import: integration.bench_app
    configuration: {{url: "{REDIS}/12", key_prefix: "{prefix}:"}}
  - name: Scratch
    classname: InMemoryStorage
  - name: Sqlite
    classname: SqlStorage
    configuration: {{connection_string: "sqlite:///{directory}/bench.sqlite3"}}
"""
    )
    return path


def start_worker(
    pool: str,
    concurrency: int,
    queue: str,
    storages: Path | None,
    *,
    app: str = "integration.bench_app",
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], float]:
    """A worker of ``app`` and the seconds it took to say it is ready."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
               "-Q", queue, "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    if storages:
        command += ["--storages", str(storages)]
    started = time.perf_counter()
    with log.open("wb") as output:
        worker = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENCH_QUEUE": queue, **(env or {})},
        )
    while not READY.search(log.read_text(errors="replace")):
        if worker.poll() is not None:
            raise SystemExit(f"worker failed:\n{log.read_text()}")
        time.sleep(0.01)
    return worker, time.perf_counter() - started


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)


def run_tasks(send: Callable[[], str], key: Callable[[str], str], client: redis.Redis, tasks: int) -> float:
    """Tasks per second from the first send until every result exists."""
    started = time.perf_counter()
    keys = [key(send()) for _ in range(tasks)]
    pending = keys
    deadline = time.perf_counter() + 120
    while pending:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{len(pending)} results never appeared: a task failed (see the worker log)")
        # tasks finish about in order: look at the next few hundred only, so that polling stays cheap
        # (the client shares the two cores with the worker)
        window = pending[:200]
        found = client.exists(*window)
        if found == len(window):
            pending = pending[len(window) :]
            continue
        time.sleep(0.02)
        pipe = client.pipeline(transaction=False)
        for name in window:
            pipe.exists(name)
        done = pipe.execute()
        pending = [name for name, exists in zip(window, done, strict=True) if not exists] + pending[
            len(window) :
        ]
    return tasks / (time.perf_counter() - started)


def throughput(pool: str, concurrency: int, tasks: int, rounds: int, workdir: Path) -> dict[str, float]:
    from integration.bench_app import backend, managed, raw

    queue, prefix = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    worker, _ = start_worker(pool, concurrency, queue, storages_file(workdir, prefix))
    storage_db, backend_db = redis.Redis.from_url(f"{REDIS}/12"), redis.Redis.from_url(f"{REDIS}/11")
    variants: dict[str, tuple[Callable[[], str], Callable[[str], str], redis.Redis]] = {
        "raw": (lambda: raw.apply_async((prefix,), queue=queue).id, lambda i: f"{prefix}:{i}", storage_db),
        "managed": (
            lambda: managed.apply_async(("Results",), queue=queue).id,
            lambda i: f"{prefix}:{i}",
            storage_db,
        ),
        "guarded": (
            lambda: managed.apply_async(("Guarded",), queue=queue).id,
            lambda i: f"{prefix}:{i}",
            storage_db,
        ),
        "backend": (
            lambda: backend.apply_async(queue=queue).id,
            lambda i: f"celery-task-meta-{i}",
            backend_db,
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for variant in variants.values():  # warm-up, not counted
            run_tasks(*variant, tasks=max(50, tasks // 10))
        for round_number in range(rounds):
            order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
            for name in order:
                rates[name].append(run_tasks(*variants[name], tasks=tasks))
    finally:
        stop(worker)
        for client, pattern in ((storage_db, f"{prefix}:*"), (backend_db, "celery-task-meta-*")):
            for batch in _chunks(list(client.scan_iter(pattern, count=1000)), 1000):
                client.delete(*batch)
    return {name: statistics.median(values) for name, values in rates.items()}


def _chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def startup(workdir: Path, repeats: int) -> dict[str, float]:
    """Median seconds to "ready." with and without the storages file (4 storages)."""
    storages = storages_file(workdir, "startup")
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(repeats):
        for name, path in (("without", None), ("with", storages)):
            worker, seconds = start_worker("prefork", 2, f"bench-{uuid.uuid4().hex[:8]}", path)
            stop(worker)
            times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chart", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        for pool, concurrency in (("prefork", 2), ("threads", 4)):
            results[pool] = throughput(pool, concurrency, args.tasks, args.rounds, workdir)
        boot = startup(workdir, repeats=3)

    print(
        "| pool | managed storage | Celery result backend | managed / backend | bare adapter | managed / bare | forced lock | forced lock / managed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pool, r in results.items():
        print(
            f"| {pool} | {r['managed']:,.0f} | {r['backend']:,.0f} | {r['managed'] / r['backend']:.2f} "
            f"| {r['raw']:,.0f} | {r['managed'] / r['raw']:.3f} | {r['guarded']:,.0f} | {r['guarded'] / r['managed']:.3f} |"
        )
    print("(tasks/s, median of the rounds; RedisStorage in all storage columns)")
    added = boot["with"] - boot["without"]
    print(f"\nworker start-up to ready (prefork -c 2, median of 3): {boot['without']:.2f} s without storages, "
          f"{boot['with']:.2f} s with 4 storages (Redis, SQLite, in memory, guarded Redis): +{added * 1000:.0f} ms")  # fmt: skip
    if args.chart:
        chart(results, args.chart)
        print(f"chart: {args.chart}")


def chart(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "backend": "Celery result backend",
        "raw": "bare adapter",
        "managed": "managed storage",
        "guarded": "managed, forced lock",
    }
    figure, axes = plt.subplots(figsize=(8, 4.2))
    width = 0.2
    for index, (variant, label) in enumerate(labels.items()):
        values = [results[pool][variant] for pool in results]
        positions = [p + (index - 1.5) * width for p in range(len(results))]
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks(range(len(results)), [f"{pool}" for pool in results])
    axes.set_ylabel("tasks/s (higher is better)")
    axes.set_title("~1 KB result per task, same Redis server")
    axes.legend(loc="lower right", fontsize=8)
    charts.save(figure, path)


if __name__ == "__main__":
    main()
