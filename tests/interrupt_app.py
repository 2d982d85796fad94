"""The Celery app of the interruption tests: ``celery -A tests.interrupt_app worker``.

Its tasks let a time limit, or threads of their own, hit a storage in the middle of a call. A task that
is interrupted logs where (one ``INTERRUPTED`` line in the worker's output) and lets the exception go on.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from celery.utils.log import get_task_logger

from celery_selinon_storage import MissingResultError, get_storage
from tests.worker_app import make_test_app

app = make_test_app("interrupt_app")
logger = get_task_logger("tests.interrupt_app")

FLOW = "interrupt_flow"

#: Functions of the drivers (pg8000, PyMySQL) and of ``socket.py`` that write to or read from the server.
SEND_FUNCTIONS = frozenset({"_write", "_flush", "_write_bytes", "write", "send", "sendall"})
RECEIVE_FUNCTIONS = frozenset({"_read", "_read_bytes", "_read_packet", "readinto", "recv", "recv_into"})
DRIVER_DIRECTORIES = ("/pg8000/", "/pymysql/")


def record(task_id: str) -> dict[str, str]:
    """The small record every "after" task stores."""
    return {"who": task_id}


def big_record(task_id: str, size: int) -> dict[str, str]:
    """A record of about ``size`` bytes as JSON, naming its task id."""
    return {"who": task_id, "blob": "x" * size}


def interruption_site(error: BaseException) -> str:
    """Where ``error`` was raised, judged by the innermost frame that tells:

    ``send``/``receive`` (writing to or reading from the server's socket), ``driver`` (other driver code,
    between two messages), ``encode`` (making the JSON), ``guard`` (waiting for the storage's lock),
    ``storage`` (other storage code) or ``task`` (outside any storage call, e.g. the task's own sleep).
    """
    frames = traceback.extract_tb(error.__traceback__)
    for depth in range(len(frames) - 1, -1, -1):
        frame = frames[depth]
        path = frame.filename.replace("\\", "/")
        if path.endswith("/socket.py") or any(part in path for part in DRIVER_DIRECTORIES):
            if frame.name in SEND_FUNCTIONS:
                return "send"
            if frame.name in RECEIVE_FUNCTIONS:
                return "receive"
            if not path.endswith("/socket.py"):
                return "driver"
        if path.endswith("/json/encoder.py"):
            return "encode"
        if "/celery_selinon_storage/" in path:
            inner = " ".join(f"{later.filename} {later.name}" for later in frames[depth + 1 :])
            waited = any(word in inner for word in ("semaphore", "linkable", "acquire"))
            return "guard" if waited else "storage"
    return "task"


@contextmanager
def noting_interruptions(task_id: str) -> Iterator[None]:
    """Log where an exception (a time limit is a BaseException under gevent) interrupted the block;
    let it propagate."""
    try:
        yield
    except BaseException as error:
        frames = [
            frame
            for frame in traceback.extract_tb(error.__traceback__)
            if not any(part in frame.filename for part in ("/gevent/", "/billiard/"))
        ]
        path = " > ".join(frame.name for frame in frames[-4:])
        logger.warning(
            "INTERRUPTED %s site=%s error=%s path=%s",
            task_id,
            interruption_site(error),
            type(error).__name__,
            path,
        )
        raise


@app.task(name="interrupt.store_big")
def store_big(storage_name: str, task_id: str, delay: float, size: int) -> str:
    """Sleep ``delay`` seconds, then store a record of about ``size`` bytes under ``task_id``."""
    with noting_interruptions(task_id):
        time.sleep(delay)
        get_storage(storage_name).store(None, FLOW, "store_big", task_id, big_record(task_id, size))
    return task_id


@app.task(name="interrupt.store_record")
def store_record(storage_name: str, task_id: str) -> str:
    """Store ``{'who': task_id}`` under ``task_id``."""
    get_storage(storage_name).store(None, FLOW, "store_record", task_id, record(task_id))
    return task_id


@app.task(name="interrupt.read_record")
def read_record(storage_name: str, task_id: str) -> object:
    """The record stored under ``task_id``, or the string ``"missing"``."""
    try:
        return get_storage(storage_name).retrieve(FLOW, "store_record", task_id)
    except MissingResultError:
        return "missing"


@app.task(name="interrupt.threads_share_storage")
def threads_share_storage(storage_name: str, prefix: str, threads: int, rounds: int) -> dict[str, list[str]]:
    """Start ``threads`` threads that each store and read back their own ids ``rounds`` times on one
    ``get_storage(storage_name)``; join them. Returns the ids read back wrong and the errors raised."""
    storage = get_storage(storage_name)
    wrong: list[str] = []
    errors: list[str] = []

    def work(number: int) -> None:
        try:
            for round_ in range(rounds):
                task_id = f"{prefix}-t{number}-r{round_}"
                storage.store(None, FLOW, "threads", task_id, record(task_id))
                found = storage.retrieve(FLOW, "threads", task_id)
                if found != record(task_id):
                    wrong.append(f"{task_id} -> {found!r}")
        except Exception as error:  # noqa: BLE001 - the task reports it
            errors.append(f"thread {number}: {type(error).__name__}: {error}")

    started = [threading.Thread(target=work, args=(number,)) for number in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return {"wrong": wrong, "errors": errors}
