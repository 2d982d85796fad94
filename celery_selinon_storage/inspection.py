"""``celery inspect storages``: each worker process's storages, call counts and latencies.

Remote-control commands run in the worker's main process, even under prefork, where the storages
live in the children. So each child writes its report to a file of its own in a directory the
parent made before forking (every half second while it changes); the command reads them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery.worker.control import inspect_command

from . import state

#: How often a prefork child refreshes its report.
REPORT_EVERY = 0.5


class ChildReports:
    """The directory where prefork children leave their reports for the parent."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="celery-selinon-storage-"))

    def start_writer(self) -> None:
        """In a child: keep this process's report fresh until the process exits."""
        threading.Thread(target=self._write_while_running, name="storages-report", daemon=True).start()

    def write(self, report: str) -> None:
        """Write this process's report (atomically: the parent never reads half a file)."""
        path = self.directory / f"{os.getpid()}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(report, encoding="utf-8")
        os.replace(partial, path)

    def remove(self) -> None:
        """In a child that exits: its report goes with it."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{os.getpid()}.json").unlink()

    def read(self) -> list[dict[str, Any]]:
        """The reports of the children that are alive, by pid."""
        reports = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if _alive(int(report["pid"])):
                reports.append(report)
        return reports

    def close(self) -> None:
        """In the parent, at shutdown."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write_while_running(self) -> None:
        last = ""
        while True:
            storages = state.current()
            if storages is None:
                return
            current = json.dumps(storages.report())
            if current != last:
                self.write(current)
                last = current
            time.sleep(REPORT_EVERY)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_report() -> dict[str, Any]:
    """What this worker reports: one entry per process that holds storages."""
    plan = state.plan()
    if plan is not None:
        return {"processes": plan.reports.read()}
    storages = state.current()
    return {"processes": [storages.report()] if storages is not None else []}


def storages(worker_state: Any, **kwargs: Any) -> dict[str, Any]:
    """Storages of each worker process: class, guard, connection, calls, errors, mean latency."""
    return worker_report()


def register_inspect_command() -> None:
    """Add ``celery inspect storages`` to this process's remote-control commands (idempotent)."""
    inspect_command(name="storages")(storages)
