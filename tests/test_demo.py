"""The README's first command (the demo) does the main job with no server, under every pool, and stops at
once, showing the worker's last log lines, when the worker dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.workers import ROOT

pytestmark = pytest.mark.worker

#: Storages are started once per process that runs tasks: each prefork child, else the worker itself.
PROCESSES_WITH_STORAGES = {"prefork": 2, "threads": 1, "solo": 1, "gevent": 1, "eventlet": 1}
DEMO = [sys.executable, "-m", "integration.demo.run"]


@pytest.mark.parametrize("pool", list(PROCESSES_WITH_STORAGES))
def test_the_demo_runs_tasks_and_selinon_flows_with_no_server(pool: str) -> None:
    run = subprocess.run(
        [*DEMO, "--pool", pool, "--tasks", "12", "--flows", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12/12 results stored, 0 wrong" in run.stdout
    assert "4/4 flows finished, 0 wrong; worker exit status 0" in run.stdout
    assert run.stdout.count("storages started in process") == PROCESSES_WITH_STORAGES[pool]
    assert run.stdout.count("storages closed in process") == PROCESSES_WITH_STORAGES[pool]


def test_a_worker_that_dies_at_start_fails_the_demo_at_once_with_its_last_log_lines() -> None:
    started = time.monotonic()
    run = subprocess.run(
        [*DEMO, "--pool", "solo", "--", "--storages", "/nonexistent/storages.yml"],  # the last one counts
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    seconds = time.monotonic() - started
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        "demo FAILED: the worker exited with status 78 while the demo waited for the worker to be ready"
        in run.stderr
    )
    assert "the worker's last " in run.stderr
    assert (
        "  | celery-selinon-storage: error: /nonexistent/storages.yml: storages file not found; pass the path of an existing YAML file"
        in run.stderr
    )
    assert seconds < 30, f"the demo took {seconds:.1f} s to notice"  # it used to wait 60 s


def test_a_worker_killed_while_tasks_run_fails_the_demo_at_once_with_its_last_log_lines() -> None:
    with subprocess.Popen(
        [*DEMO, "--pool", "solo", "--tasks", "40", "--flows", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        worker_pid = None
        for line in demo.stdout:
            if found := re.match(r"worker started \(pid (\d+)\)", line):
                worker_pid = int(found.group(1))
            if line.startswith("sent 40 tasks and 10 Selinon flows"):
                break  # the flows alone take over a second: the demo is waiting for the worker
        assert worker_pid is not None
        os.kill(worker_pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, stderr = demo.communicate(timeout=60)
        finally:
            demo.kill()
        seconds = time.monotonic() - killed
    assert demo.returncode == 1, stderr
    assert (
        f"demo FAILED: the worker exited with status -{signal.SIGKILL.value} while the demo waited" in stderr
    )
    assert re.search(r"^  \| \[.*INFO/MainProcess\]", stderr, re.MULTILINE)  # its log lines, as written
    assert seconds < 10, f"the demo took {seconds:.1f} s to notice"
