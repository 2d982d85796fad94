"""The main job with no server: a real worker runs tasks and Selinon flows; every result is checked.

python -m integration.demo.run [--pool prefork] [--concurrency 2] [--tasks 40] [--flows 10] [-- OPTION ...]

Options after ``--`` go to ``celery worker`` as they are. If the worker exits before the demo is done,
the demo stops at once with the worker's last log lines and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
READY = re.compile(r"\bready\.")
LIFECYCLE = re.compile(r"storages (started|closed) in process .*")
POOLS = ["prefork", "threads", "solo", "eventlet", "gevent"]
#: The pools that need a library of their own, each installed by the extra of the same name.
GREEN_POOLS = ("eventlet", "gevent")
#: How many of the worker's last log lines a failure shows.
LAST_LINES = 20


class DemoFailed(Exception):
    """The demo cannot go on; the message says why, and the worker's last log lines follow it."""


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows when piped
    args, worker_args = _parse_args(sys.argv[1:])
    if args.pool in GREEN_POOLS and importlib.util.find_spec(args.pool) is None:
        print(
            f"demo: the {args.pool} pool needs {args.pool}, which is not installed; run "
            f"./scripts/demo --pool {args.pool} (it installs it) or pip install "
            f"'celery-selinon-storage[{args.pool}]'",
            file=sys.stderr,
        )
        return 2

    demo_dir = Path(tempfile.mkdtemp(prefix="css-demo-"))
    os.environ["DEMO_DIR"] = str(demo_dir)
    from selinon import run_flow

    from integration.demo.app import app, square  # reads DEMO_DIR

    log_path = demo_dir / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "integration.demo.app", "worker",
        "--storages", str(HERE / "nodes.yml"), "-P", args.pool, "-c", str(args.concurrency),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat", *worker_args,
    ]  # fmt: skip
    print(f"$ {' '.join(command[1:])}")
    with log_path.open("w") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    print(f"worker started (pid {worker.pid}); its log: {log_path}")
    watch = WorkerWatch(worker, log_path)
    try:
        watch.wait_for(lambda: READY.search(log_path.read_text()) is not None, 60, "the worker to be ready")
        ids = [square.delay(n).id for n in range(args.tasks)]
        dispatchers = [run_flow("squares", {"n": n}) for n in range(args.flows)]
        print(f"sent {len(ids)} tasks and {len(dispatchers)} Selinon flows to a real {args.pool} worker")
        stored = _wait_for_results(ids, watch)
        reports = _wait_for_flows(dispatchers, watch)
    except DemoFailed as failure:
        print(f"demo FAILED: {failure}", file=sys.stderr)
        print(watch.last_lines(), file=sys.stderr)
        return 1
    finally:
        status = watch.stop()
    app.close()

    for line in LIFECYCLE.finditer(watch.log()):
        print("worker:", line.group(0))
    if _report(stored, len(ids), reports, len(dispatchers), status) and "Traceback" not in watch.log():
        shutil.rmtree(demo_dir)
        return 0
    print("demo FAILED: see above", file=sys.stderr)
    print(watch.last_lines(), file=sys.stderr)
    return 1


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The demo's own options, and those after ``--`` for the worker."""
    own, worker = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--pool", default="prefork", choices=POOLS)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--flows", type=int, default=10)
    return parser.parse_args(own), worker


def _report(
    stored: dict[str, dict[str, int]], sent: int, reports: list[dict[str, Any]], flows: int, status: int
) -> bool:
    """Print what the worker did; whether every result and flow is there and right, and it exited 0."""
    by_pid = Counter(record["pid"] for record in stored.values())
    for pid, count in sorted(by_pid.items()):
        print(f"process {pid}: stored and read back {count} results")
    wrong = [i for i, r in stored.items() if r["square"] != r["n"] ** 2]
    print(f"{len(stored)}/{sent} results stored, {len(wrong)} wrong")
    flows_wrong = [r for r in reports if r["value"] != r["n"] ** 2 + 1]
    for report in reports[:3]:
        chain = f"Square -> Increment -> Report = {report['value']}"
        print(f"flow squares(n={report['n']}): {chain}, in processes {report['pids']}")
    print(f"{len(reports)}/{flows} flows finished, {len(flows_wrong)} wrong; worker exit status {status}")
    return len(stored) == sent and not wrong and len(reports) == flows and not flows_wrong and status == 0


class WorkerWatch:
    """The demo's worker process: waits that end as soon as it exits, and its last log lines."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def wait_for(self, done: Callable[[], bool], seconds: float, what: str) -> None:
        """Poll ``done`` until it holds; ``DemoFailed`` when the worker exits or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while not done():
            status = self.process.poll()
            if status is not None:
                raise DemoFailed(f"the worker exited with status {status} while the demo waited for {what}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {seconds:g} s waiting for {what}")
            time.sleep(0.1)

    def stop(self) -> int:
        """Warm shutdown (SIGTERM); the worker's exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log(self) -> str:
        """The worker's whole log so far."""
        return self.log_path.read_text(errors="replace")

    def last_lines(self) -> str:
        """The last lines of the worker's log, headed by its path."""
        with self.log_path.open(errors="replace") as log:
            tail = deque(log, maxlen=LAST_LINES)
        body = "".join(f"  | {line}" for line in tail).rstrip("\n") or "  | (the log is empty)"
        return f"the worker's last {len(tail)} log lines ({self.log_path}):\n{body}"


def _wait_for_flows(dispatchers: list[Any], watch: WorkerWatch) -> list[dict[str, Any]]:
    """Wait for every flow, then read each flow's final result (Report's) through the storages file."""
    from celery_selinon_storage import open_storages

    watch.wait_for(lambda: all(d.ready() for d in dispatchers), 120, "every flow to finish")
    finished = [dispatcher.get(timeout=10)["finished_nodes"]["Report"][0] for dispatcher in dispatchers]
    with open_storages(HERE / "nodes.yml") as storages:
        return [storages.get("Results").retrieve("squares", "Report", task_id) for task_id in finished]


def _wait_for_results(ids: list[str], watch: WorkerWatch) -> dict[str, dict[str, int]]:
    """Read every result back through the same storages file, outside the worker."""
    from celery_selinon_storage import MissingResultError, open_storages

    stored: dict[str, dict[str, int]] = {}
    with open_storages(HERE / "nodes.yml") as storages:
        results = storages.get("Results")

        def all_stored() -> bool:
            for task_id in ids:
                if task_id not in stored:
                    try:
                        stored[task_id] = results.retrieve("demo", "square", task_id)
                    except MissingResultError:
                        return False
            return True

        watch.wait_for(all_stored, 120, "every result")
    return stored


if __name__ == "__main__":
    sys.exit(main())
