"""A storage whose server is down: the worker starts, logs it without secrets, and tasks fail cleanly."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.worker_app import store_in
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.service]

PASSWORD = "s3cret-Pw-4711"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_down_server_is_logged_without_its_password_and_the_worker_keeps_serving(
    pool: str, tmp_path: Path, redis_url: str, queue: str, workers: Callable[..., WorkerProcess]
) -> None:
    storages = tmp_path / "storages.yml"
    storages.write_text(
        "storages:\n"
        "  - name: Down\n    classname: SqlStorage\n"
        f"    configuration: {{connection_string: 'postgres://app:{PASSWORD}@127.0.0.1:1/app'}}\n"
        "  - name: Scratch\n    classname: InMemoryStorage\n"
    )
    worker = workers(storages=storages, pool=pool, concurrency=2, queue=queue).start().wait_ready()
    failed = store_in.apply_async((["Down"],), queue=queue)
    with pytest.raises(
        Exception,
        match=r"storage 'Down' is unavailable \((OperationalError|InterfaceError) on store, 3 attempts\); the call is safe to retry",
    ):
        failed.get(timeout=60)
    assert store_in.apply_async((["Scratch"],), queue=queue).get(timeout=60)
    assert worker.stop(signal.SIGTERM) == 0
    # psycopg (the default) says OperationalError, pg8000 InterfaceError
    assert re.search(
        r"storage Down could not connect at start \((OperationalError|InterfaceError)\); it will connect on "
        r"first use",
        worker.output,
    )
    assert PASSWORD not in worker.output
    assert PASSWORD not in repr(failed.result)
