"""Start and stop real ``celery worker`` processes for tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"\bready\.")


class WorkerProcess:
    """A ``celery -A tests.worker_app worker`` subprocess with its output in a file."""

    def __init__(
        self,
        log_dir: Path,
        *,
        storages: Path | None,
        pool: str,
        concurrency: int = 1,
        queue: str = "celery",
        extra: tuple[str, ...] = (),
        app: str = "tests.worker_app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.output_path = log_dir / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log"
        self.name = f"{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-P", pool, "-c", str(concurrency), "-Q", queue, "-n", self.name,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            *(["--storages", str(storages)] if storages else []), *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "CSS_TEST_QUEUE": queue, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        wait_for(self._ready, timeout, "the worker to be ready", detail=lambda: self.output)
        return self

    def _ready(self) -> bool:
        """Whether the worker has logged that it is ready; fails at once if it has exited."""
        if READY.search(self.output):
            return True
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output}")
        return False

    def run_to_exit(self, timeout: float = 60) -> int:
        """Start and wait for the worker to exit by itself (a start-up error)."""
        self.start()
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"worker did not stop within {timeout}s:\n{self.output}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def wait_for(
    condition: Callable[[], bool], seconds: float, what: str, *, detail: Callable[[], str] | None = None
) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail after ``seconds``.

    ``detail``, if given, is called on failure and its text added to the message (a worker's log, say).
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out waiting for {what} ({seconds} s)" + (f":\n{detail()}" if detail else "")
            )
        time.sleep(0.05)


def inspect_storages(worker: WorkerProcess) -> dict[str, Any]:
    """The worker's reply to ``celery inspect storages`` (run as a real command)."""
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.worker_app", "inspect", "storages", "--json", "-t", "5", "-d", worker.name],
        cwd=ROOT, env=worker.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    replies: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    reply: dict[str, Any] = replies[worker.name]
    return reply
