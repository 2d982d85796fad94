"""The benchmarks' CPU pinning: a real listening process is moved to the server CPU for a run, and every
one of its threads gets its own CPUs back, even when a Ctrl-C comes while they are being given back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.workers import wait_for

ROOT = Path(__file__).resolve().parent.parent

#: A server stand-in: listens on a port the kernel picks, with three threads besides the main one.
LISTENER = """
import socket, sys, threading, time
listener = socket.create_server(("127.0.0.1", 0))
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print(listener.getsockname()[1], flush=True)
time.sleep(600)
"""

#: Pins the listener for a run, reports where everything runs, then gets a SIGINT at the first CPU it
#: gives back (as a Ctrl-C at that moment would).
PINNED_RUN = """
import json, os, signal, sys
import psutil
from integration.cpu_pinning import CpuPinning

port, server_cpu, client_cpu = (int(arg) for arg in sys.argv[1:])
real_setaffinity = os.sched_setaffinity

def interrupted_at_first(pid, cpus, _sent=[]):
    if not _sent:
        _sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)
    real_setaffinity(pid, cpus)

with CpuPinning(server_cpu, client_cpu) as pinning:
    pinned, missed = pinning.pin_servers([port])
    listener = psutil.Process(pinned[0])
    during = {
        "pinned": pinned, "missed": missed, "own": sorted(os.sched_getaffinity(0)),
        "listener": sorted({cpu for t in listener.threads() for cpu in os.sched_getaffinity(t.id)}),
    }
    print(json.dumps(during), flush=True)
    os.sched_setaffinity = interrupted_at_first
"""


@pytest.fixture
def listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        wait_for(lambda: len(psutil.Process(process.pid).threads()) == 4, 10, "the listener's threads")
        yield process, port
    finally:
        process.kill()
        process.communicate()


def test_a_ctrl_c_while_the_cpus_are_given_back_waits_until_every_thread_has_its_own(
    listener: tuple[subprocess.Popen[str], int],
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("pinning needs two CPUs to split between servers and the benchmark")
    process, port = listener
    threads = [thread.id for thread in psutil.Process(process.pid).threads()]
    before = {thread: os.sched_getaffinity(thread) for thread in threads}
    server_cpu, client_cpu = cpus[0], cpus[-1]

    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PINNED_RUN), str(port), str(server_cpu), str(client_cpu)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,  # the run ends by a KeyboardInterrupt
    )  # fmt: skip

    during = json.loads(run.stdout.splitlines()[0])
    assert during == {"pinned": [process.pid], "missed": [], "own": [client_cpu], "listener": [server_cpu]}
    assert "KeyboardInterrupt" in run.stderr, run.stderr  # the Ctrl-C is not lost: it ends the run after
    after = {thread: os.sched_getaffinity(thread) for thread in threads}
    assert after == before, "a thread of the server was left on the server CPU"
