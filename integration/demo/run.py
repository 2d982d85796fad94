"""The main job with no server: a real worker runs tasks and Selinon flows; every result is checked.

python -m integration.demo.run [--pool prefork] [--tasks 40] [--flows 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
READY = re.compile(r"\bready\.")
LIFECYCLE = re.compile(r"storages (started|closed) in process .*")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pool", default="prefork", choices=["prefork", "threads", "solo", "eventlet", "gevent"]
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--flows", type=int, default=10)
    args = parser.parse_args()

    demo_dir = Path(tempfile.mkdtemp(prefix="css-demo-"))
    os.environ["DEMO_DIR"] = str(demo_dir)
    from selinon import run_flow

    from integration.demo.app import app, square  # reads DEMO_DIR

    log_path = demo_dir / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "integration.demo.app", "worker",
        "--storages", str(HERE / "nodes.yml"), "-P", args.pool, "-c", str(args.concurrency),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    print(f"$ {' '.join(command[1:])}")
    with log_path.open("w") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: READY.search(log_path.read_text()) is not None, 60, "the worker to start", log_path)
        ids = [square.delay(n).id for n in range(args.tasks)]
        dispatchers = [run_flow("squares", {"n": n}) for n in range(args.flows)]
        sent = f"sent {len(ids)} tasks and {len(dispatchers)} Selinon flows"
        print(f"{sent} to a real {args.pool} worker (pid {worker.pid})")
        stored = _wait_for_results(ids, log_path)
        reports = _wait_for_flows(dispatchers)
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(60)

    log_text = log_path.read_text()
    for line in LIFECYCLE.finditer(log_text):
        print("worker:", line.group(0))
    by_pid = Counter(record["pid"] for record in stored.values())
    for pid, count in sorted(by_pid.items()):
        print(f"process {pid}: stored and read back {count} results")
    wrong = [i for i, r in stored.items() if r["square"] != r["n"] ** 2]
    print(f"{len(stored)}/{len(ids)} results stored, {len(wrong)} wrong")
    flows_wrong = [r for r in reports if r["value"] != r["n"] ** 2 + 1]
    for report in reports[:3]:
        chain = f"Square -> Increment -> Report = {report['value']}"
        print(f"flow squares(n={report['n']}): {chain}, in processes {report['pids']}")
    finished = f"{len(reports)}/{len(dispatchers)} flows finished, {len(flows_wrong)} wrong"
    print(f"{finished}; worker exit status {status}")
    app.close()
    ok = len(stored) == len(ids) and not wrong and len(reports) == len(dispatchers) and not flows_wrong
    ok = ok and status == 0 and "Traceback" not in log_text
    if ok:
        shutil.rmtree(demo_dir)
    else:
        print(f"FAILED; worker log: {log_path}")
    return 0 if ok else 1


def _wait_for_flows(dispatchers: list[Any]) -> list[dict[str, Any]]:
    """Wait for every flow, then read each flow's final result (Report's) through the storages file."""
    from celery_selinon_storage import open_storages

    finished = [dispatcher.get(timeout=120)["finished_nodes"]["Report"][0] for dispatcher in dispatchers]
    with open_storages(HERE / "nodes.yml") as storages:
        return [storages.get("Results").retrieve("squares", "Report", task_id) for task_id in finished]


def _wait_for_results(ids: list[str], log_path: Path) -> dict[str, dict[str, int]]:
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

        _wait_for(all_stored, 120, "every result", log_path)
    return stored


def _wait_for(done: object, seconds: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; worker log: {log_path}")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
