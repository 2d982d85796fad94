"""The README's first command (the demo) does the main job with no server: tasks and Selinon flows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workers import ROOT


@pytest.mark.worker
def test_the_demo_runs_tasks_and_selinon_flows_with_no_server() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "integration.demo.run", "--tasks", "12", "--flows", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12/12 results stored, 0 wrong" in run.stdout
    assert "4/4 flows finished, 0 wrong; worker exit status 0" in run.stdout
    assert run.stdout.count("storages started in process") == 2  # one per prefork child
    assert run.stdout.count("storages closed in process") == 2
