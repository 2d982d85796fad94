"""Three kinds of secret run through start-up, failing connections, tasks, shutdown and the health check:
none appears in any log line, repr, exception message or printed output."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_selinon_storage.specs import load_storages
from tests.own_servers import OwnRedis
from tests.servers import free_port
from tests.worker_app import store_in
from tests.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.worker, pytest.mark.service]

REDIS_PASSWORD = "redis-Secret-4821"
SQL_PASSWORD = "sql-Secret-9377"
S3_SECRET = "s3-Secret-5519"
SECRETS = (REDIS_PASSWORD, SQL_PASSWORD, S3_SECRET)


def test_no_secret_reaches_any_output(
    tmp_path: Path, redis_url: str, postgres_url: str, s3_endpoint: str, queue: str, unique: str,
    workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    redis_server = OwnRedis(tmp_path)
    port, down_port = redis_server.port, free_port()
    sql_url = postgres_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{SQL_PASSWORD}@"
    )  # trust auth
    storages = tmp_path / "storages.yml"
    storages.write_text(
        f"""\
storages:
  - name: Redis
    classname: RedisStorage
    configuration: {{port: {port}, password: "{REDIS_PASSWORD}", key_prefix: "{unique}:"}}
  - name: RedisDown
    classname: RedisStorage
    configuration: {{url: "redis://:{REDIS_PASSWORD}@127.0.0.1:{down_port}/0", socket_connect_timeout: 0.5}}
    retry: {{attempts: 2, backoff: 0.01}}
  - name: Sql
    classname: SqlStorage
    configuration: {{connection_string: "{sql_url}", table_name: {unique}}}
  - name: SqlDown
    classname: SqlStorage
    configuration: {{connection_string: "postgresql://app:{SQL_PASSWORD}@127.0.0.1:{down_port}/app"}}
    retry: {{attempts: 2, backoff: 0.01}}
  - name: S3
    classname: S3Storage
    configuration: {{bucket: {unique}, endpoint_url: "{s3_endpoint}", use_ssl: false, aws_access_key_id: test, aws_secret_access_key: "{S3_SECRET}"}}
  - name: S3Down
    classname: S3Storage
    configuration: {{bucket: b, endpoint_url: "http://127.0.0.1:{down_port}", use_ssl: false, aws_access_key_id: test, aws_secret_access_key: "{S3_SECRET}", connect_timeout: 0.5}}
    retry: {{attempts: 2, backoff: 0.01}}
"""
    )
    seen: list[str] = [repr(spec) for spec in load_storages(storages)]
    seen += [repr(spec.create()) for spec in load_storages(storages)]
    with redis_server:
        subprocess.run(
            ["redis-cli", "-p", str(port), "CONFIG", "SET", "requirepass", REDIS_PASSWORD],
            check=True,
            capture_output=True,
        )
        check = subprocess.run(
            [sys.executable, "-m", "celery_selinon_storage", "check", str(storages), "--timeout", "5"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        seen += [check.stdout, check.stderr]
        connect = [line.split("  ")[-1] for line in check.stdout.splitlines()[1:]]
        assert (
            check.returncode == 1 and [cell.split(":")[0].split(";")[0] for cell in connect].count("ok") == 3
        )
        assert [cell.split(":")[0] for cell in connect].count("failed") == 3

        worker = workers(storages=storages, pool="prefork", concurrency=2, queue=queue).start().wait_ready()
        good = store_in.apply_async((["Redis", "Sql", "S3"],), queue=queue)
        assert good.get(timeout=60)
        for down in ("RedisDown", "SqlDown", "S3Down"):
            failed = store_in.apply_async(([down],), queue=queue)
            with pytest.raises(Exception, match=f"storage '{down}' is unavailable") as caught:
                failed.get(timeout=60)
            seen += [str(caught.value), repr(caught.value), str(failed.traceback)]
        assert worker.stop(signal.SIGTERM) == 0
        seen.append(worker.output)
    assert "storages closed in process" in worker.output
    leaks = [
        (secret, text[max(0, text.find(secret) - 80) : text.find(secret) + 20])
        for text in seen
        for secret in SECRETS
        if secret in text
    ]
    assert not leaks, leaks
