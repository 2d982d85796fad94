"""Servers the tests start themselves on free ports: nx-27017 (MongoDB wire protocol) and moto_server (S3)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.args!r} did not listen on {port} within {timeout}s") from None
            time.sleep(0.1)


@contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[int]:
    """Run ``command`` (which listens on ``port``) until the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _tool(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed; run ./scripts/test (it installs the test extras)")
    return found


@contextmanager
def mongo_wire_server(workdir: Path) -> Iterator[str]:
    """nx-27017 on a free port, data in ``workdir``; yields its URI."""
    port = free_port()
    command = [
        _tool("nx-27017"),
        "--db",
        str(workdir / "nx.db"),
        "-p",
        str(port),
        "--log-file",
        str(workdir / "nx.log"),
        "--pid-file",
        str(workdir / "nx.pid"),
    ]
    with running(command, port, workdir / "nx.out"):
        yield f"mongodb://127.0.0.1:{port}"


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto_server on a free port; yields its endpoint URL."""
    port = free_port()
    with running([_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, workdir / "moto.out"):
        yield f"http://127.0.0.1:{port}"
