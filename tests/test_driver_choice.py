"""Which driver a PostgreSQL or MariaDB storage uses, and what it takes from the URL (issue #13).

* The driver follows the runtime when the storage connects: psycopg under prefork, solo, threads and gevent,
  pg8000 where eventlet's monkey-patching is active; for MariaDB mysqlclient where no green monkey-patching
  is active, else PyMySQL; in real workers and in scripts that call ``open_storages``; a driver named in
  the URL is always used.
* libpq's URL options (``?sslmode=...``, as Selinon's published nodes.yml files write) work with both
  drivers, on a PostgreSQL of the test's own that speaks TLS; what pg8000 cannot honour is one line.
* A call that overruns its deadline lets its connection go at once, with either driver: the server is not
  left with a session that nobody will read.

The workers import this module (``--include``) for its one task, which reports the storage's driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_selinon_storage import get_storage
from celery_selinon_storage.errors import ConfigurationError, OptionProblem, StorageUnavailableError
from celery_selinon_storage.guards import GuardKind
from celery_selinon_storage.managed import ManagedStorage
from celery_selinon_storage.retry import RetryPolicy
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages import psycopg_deadlines
from celery_selinon_storage.storages.sql import SqlStorage
from tests.backends import drop_table
from tests.green_queries import with_driver
from tests.own_servers import OwnPostgres
from tests.worker_app import app
from tests.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]

#: The module of each driver's connection class (psycopg's: the one that bounds every wait).
CONNECTION_MODULES = {
    "psycopg": "celery_selinon_storage.storages.psycopg_deadlines",
    "pg8000": "pg8000.legacy",
    "mysqldb": "MySQLdb.connections",
    "pymysql": "pymysql.connections",
}


@app.task(name="tests.storage_driver")
def storage_driver(storage_name: str) -> list[str]:
    """Store through the named storage; its driver and the module of its live connection's class."""
    storage = get_storage(storage_name)
    storage.store(None, "driver_choice", "storage_driver", uuid.uuid4().hex, {"ok": True})
    adapter = storage.adapter
    connection = adapter.handle().connection.connection.driver_connection
    return [adapter.driver, type(connection).__module__]


def selinon_url(postgres_url: str) -> str:
    """The test PostgreSQL's URL written the way Selinon's published nodes.yml files write it."""
    return postgres_url.replace("postgresql://", "postgres://", 1) + "?sslmode=disable"


def write_storages(tmp_path: Path, url: str, table: str, mariadb_url: str | None = None) -> Path:
    path = tmp_path / "storages.yml"
    text = f"""\
storages:
  - name: Results
    classname: SqlStorage
    configuration: {{connection_string: "{url}", table_name: {table}}}
"""
    if mariadb_url is not None:
        text += f"""\
  - name: MariaResults
    classname: SqlStorage
    configuration: {{connection_string: "{mariadb_url}", table_name: {table}}}
"""
    path.write_text(text)
    return path


@pytest.fixture
def table(postgres_url: str, unique: str) -> Iterator[str]:
    """A results table of the test's own, dropped at the end."""
    yield unique
    drop_table(postgres_url, unique)


# -- real workers ---------------------------------------------------------------------------------

POOLS = [
    pytest.param("prefork", 1, ("psycopg", "mysqldb"), id="prefork"),
    pytest.param("solo", 1, ("psycopg", "mysqldb"), id="solo"),
    pytest.param("threads", 2, ("psycopg", "mysqldb"), id="threads"),
    pytest.param("gevent", 2, ("psycopg", "pymysql"), id="gevent"),
    pytest.param("eventlet", 2, ("pg8000", "pymysql"), id="eventlet"),
]


@pytest.mark.worker
@pytest.mark.parametrize(("pool", "concurrency", "driver"), POOLS)
def test_a_worker_connects_its_sql_storages_with_the_drivers_of_its_pool(
    pool: str, concurrency: int, driver: tuple[str, str], postgres_url: str, mariadb_server_url: str, table: str,
    tmp_path: Path, queue: str, workers: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    storages = write_storages(tmp_path, selinon_url(postgres_url), table, mariadb_server_url)
    worker = workers(
        storages=storages, pool=pool, concurrency=concurrency, queue=queue,
        extra=("--include", "tests.test_driver_choice"),
    ).start().wait_ready()  # fmt: skip
    try:
        reported = [
            storage_driver.apply_async((name,), queue=queue).get(timeout=60)
            for name in ("Results", "MariaResults")
        ]
        assert worker.stop() == 0, worker.output
        assert reported == [[name, CONNECTION_MODULES[name]] for name in driver], worker.output
    finally:
        drop_table(mariadb_server_url, table)


# -- scripts that call open_storages --------------------------------------------------------------

PATCHES = {
    "none": "",
    "eventlet": "import eventlet; eventlet.monkey_patch()",
    "gevent": "from gevent import monkey; monkey.patch_all()",
    "no psycopg": "import sys; sys.modules['psycopg'] = None  # as if it were not installed",
    "no mysqlclient": "import sys; sys.modules['MySQLdb'] = None  # as if it were not installed",
}
SCRIPT = """\
{patch}
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from celery_selinon_storage import get_storage, open_storages
with open_storages({path!r}):
    storage = get_storage("Results")
    storage.store(None, "f", "t", "script", {{"ok": True}})
    print(json.dumps(storage.adapter.driver))
"""


def run_script(patch: str, storages: Path) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(patch=PATCHES[patch], path=str(storages))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("patch", "driver_named", "expected"),
    [
        ("eventlet", None, "pg8000"),
        ("gevent", None, "psycopg"),
        ("none", None, "psycopg"),
        ("none", "pg8000", "pg8000"),
        ("eventlet", "psycopg", "psycopg"),
        ("no psycopg", None, "pg8000"),
    ],
)
def test_open_storages_in_a_script_chooses_by_the_patching_and_respects_a_named_driver(
    patch: str, driver_named: str | None, expected: str, postgres_url: str, table: str, tmp_path: Path
) -> None:
    url = selinon_url(postgres_url)
    if driver_named:
        url = with_driver(url, driver_named).replace("postgres+", "postgresql+", 1)
    run = run_script(patch, write_storages(tmp_path, url, table))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == expected, run.stderr
    if patch == "eventlet" and driver_named == "psycopg":
        assert (
            "WARNING storage 'Results': its URL names psycopg, which holds eventlet's hub while it waits for "
            "the server; write postgresql:// (pg8000 under eventlet) or postgresql+pg8000:// to keep the hub "
            "running"
        ) in run.stderr
    if patch == "no psycopg":
        said = [line for line in run.stderr.splitlines() if "psycopg cannot be imported" in line]
        assert said == [
            "INFO PostgreSQL storages use pg8000: psycopg cannot be imported (import of psycopg halted; None in "
            "sys.modules); pip install 'celery-selinon-storage[sql]' for psycopg, the faster driver"
        ], run.stderr


@pytest.mark.parametrize(
    ("patch", "driver_named", "expected"),
    [
        ("none", None, "mysqldb"),
        ("eventlet", None, "pymysql"),
        ("gevent", None, "pymysql"),
        ("no mysqlclient", None, "pymysql"),
        ("none", "pymysql", "pymysql"),
    ],
)
def test_open_storages_chooses_mysqlclient_unless_a_green_patching_is_active(
    patch: str, driver_named: str | None, expected: str, mariadb_server_url: str, unique: str, tmp_path: Path
) -> None:
    url = with_driver(mariadb_server_url, driver_named) if driver_named else mariadb_server_url
    try:
        run = run_script(patch, write_storages(tmp_path, url, unique))
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.splitlines()[-1]) == expected, run.stderr
    finally:
        drop_table(mariadb_server_url, unique)


# -- libpq's URL options, with both drivers ------------------------------------------------------

DRIVERS = ["psycopg", "pg8000"]


class TlsPostgres(OwnPostgres):
    """A PostgreSQL of the test's own with TLS on: its certificate, for ``localhost`` only, is signed by a
    certificate authority made for the test (``ca_cert``)."""

    name = "postgres-tls"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.ca_cert = directory / "ca.crt"
        self._make_certificates(directory)

    def _make_certificates(self, directory: Path) -> None:
        def openssl(*arguments: str) -> None:
            subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "2", "-subj", "/CN=css-test-ca")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=localhost")  # fmt: skip
        (directory / "san.ext").write_text("subjectAltName=DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
        for name in ("server.crt", "server.key"):  # the server wants its key its own and private
            target = self.directory / name
            shutil.copy(directory / name, target)
            target.chmod(0o600)
            if self._user:
                shutil.chown(target, self._user)

    def command(self) -> list[str]:
        return [*super().command(), "-c", "ssl=on", "-c", f"ssl_cert_file={self.directory / 'server.crt'}",
                "-c", f"ssl_key_file={self.directory / 'server.key'}"]  # fmt: skip


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    server = TlsPostgres(tmp_path_factory.mktemp("postgres-tls"))
    with server:
        yield server


def encrypted(storage: SqlStorage) -> bool:
    """Whether the storage's session with the server is encrypted, as the server sees it."""
    return bool(
        storage.handle()
        .connection.exec_driver_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .scalar()
    )


def connected_storage(url: str) -> SqlStorage:
    storage = SqlStorage(url, table_name=f"css{uuid.uuid4().hex[:12]}")
    storage.connect()
    return storage


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("host", "options", "is_encrypted"),
    [
        ("127.0.0.1", "sslmode=disable", False),
        # libpq tries plain text first; pg8000 cannot fall back, so it takes TLS when offered (as prefer)
        ("127.0.0.1", "sslmode=allow", {"psycopg": False, "pg8000": True}),
        ("127.0.0.1", "sslmode=prefer", True),
        ("127.0.0.1", "", True),  # libpq's default is prefer
        ("127.0.0.1", "sslmode=require", True),
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={ca}", True),
        ("localhost", "sslmode=verify-full&sslrootcert={ca}", True),
    ],
)
def test_sslmode_is_honoured_by_both_drivers(
    driver: str, host: str, options: str, is_encrypted: bool | dict[str, bool], tls_postgres: TlsPostgres
) -> None:
    query = options.format(ca=tls_postgres.ca_cert)
    url = f"postgresql+{driver}://postgres@{host}:{tls_postgres.port}/postgres" + (
        f"?{query}" if query else ""
    )
    storage = connected_storage(url)
    try:
        assert storage.driver == driver
        storage.store(None, "f", "t", "tls", {"ok": True})
        assert storage.retrieve("f", "t", "tls") == {"ok": True}
        assert encrypted(storage) is (
            is_encrypted[driver] if isinstance(is_encrypted, dict) else is_encrypted
        )
        storage.handle().connection.exec_driver_sql(f"DROP TABLE {storage.table_name}")
    finally:
        storage.disconnect()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_certificate_for_another_host_fails_verify_full_with_both_drivers(
    driver: str, tls_postgres: TlsPostgres
) -> None:
    """The certificate names localhost: verify-full to 127.0.0.1 must fail (verify-ca to it passes above)."""
    url = (
        f"postgresql+{driver}://postgres@127.0.0.1:{tls_postgres.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={tls_postgres.ca_cert}"
    )
    with pytest.raises(Exception) as caught:  # each driver words it its own way
        connected_storage(url)
    text = str(caught.value)
    assert ("127.0.0.1" in text and "certificate" in text) or "does not match host name" in text, text


@pytest.mark.parametrize("driver", DRIVERS)
def test_sslmode_require_refuses_a_server_without_tls_with_both_drivers(
    driver: str, postgres_url: str
) -> None:
    storage = SqlStorage(with_driver(postgres_url, driver) + "?sslmode=require")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        storage.connect()
    expected = {
        "psycopg": "server does not support SSL, but SSL was required",
        "pg8000": "the server does not offer TLS, and sslmode=require requires it",
    }[driver]
    assert expected in str(caught.value)


def test_a_libpq_option_pg8000_cannot_honour_is_one_line_naming_it(tmp_path: Path) -> None:
    url = "postgresql+pg8000://postgres@127.0.0.1:5432/test?sslmode=disable&target_session_attrs=read-write"
    path = write_storages(tmp_path, url, "results")
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path)
    assert str(caught.value) == (
        f"{path}:4: storage 'Results', option 'connection_string': the libpq option 'target_session_attrs' "
        "has no pg8000 equivalent; remove it from the URL, or name psycopg (postgresql+psycopg://), which "
        "takes every libpq option (pg8000 is used under eventlet, or when the URL names it)"
    )
    psycopg_url = url.replace("+pg8000", "+psycopg")
    assert SqlStorage(psycopg_url).driver == "psycopg"  # libpq reads it: nothing to refuse


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=on", "sslmode=on is not one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("sslmode=verify-full", "sslmode=verify-full needs the certificate authority of the server's "
         "certificate, and ~/.postgresql/root.crt does not exist; add sslrootcert=/path/to/ca.crt "
         "(or sslrootcert=system) to the URL"),
        ("sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt", "the file of the URL option sslrootcert cannot "
         "be used (No such file or directory); fix the path"),
        ("connect_timeout=soon", "connect_timeout=soon is not a number of seconds"),
        ("client_encoding=latin1", "client_encoding=latin1 is not supported: pg8000 talks UTF8, and results "
         "are stored as UTF-8 JSON; remove it from the URL"),
        ("pool_size=5", "'pool_size' is neither a libpq option nor one of pg8000's; remove it from the URL"),
    ],
)  # fmt: skip
def test_pg8000_refuses_what_it_cannot_honour_in_one_line(
    query: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    with pytest.raises(OptionProblem) as caught:
        SqlStorage(f"postgresql+pg8000://postgres@127.0.0.1:5432/test?{query}")
    assert (caught.value.option, str(caught.value)) == ("connection_string", message)


def test_pg8000_takes_libpq_options_and_connect_timeout(postgres_url: str) -> None:
    url = with_driver(postgres_url, "pg8000") + (
        "?sslmode=disable&application_name=css-driver-choice&connect_timeout=5"
        "&options=-c%20statement_timeout%3D4321&client_encoding=UTF8"
    )
    storage = connected_storage(url)
    try:
        found = storage.handle().connection.exec_driver_sql(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')"
        )
        assert tuple(found.one()) == ("css-driver-choice", "4321ms")
    finally:
        storage.disconnect()


# -- a call that overruns its deadline lets its connection go -------------------------------------


class Relay:
    """A TCP relay in front of PostgreSQL that the test can make stop answering (``hold``), and that sees
    when the client lets a connection go."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.holding = threading.Event()
        self.client_gone: list[float] = []  # when each client connection ended, by time.monotonic()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.holding.is_set():
                    target.sendall(data)
        if from_client:
            self.client_gone.append(time.monotonic())
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize(
    ("driver", "psycopg_bounds_the_wait"),
    [("psycopg", True), ("psycopg", False), ("pg8000", False)],
    ids=["psycopg", "psycopg-each-wake-up", "pg8000"],
)
def test_a_call_past_its_deadline_lets_its_connection_go_at_once(
    driver: str, psycopg_bounds_the_wait: bool, postgres_url: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg-each-wake-up: the bound a psycopg without ``Connection.wait(timeout=)`` gets (``_until``)."""
    if driver == "psycopg":
        assert psycopg_deadlines.WAIT_TAKES_TIMEOUT, "this psycopg does not bound a wait itself: upgrade it"
        monkeypatch.setattr(psycopg_deadlines, "WAIT_TAKES_TIMEOUT", psycopg_bounds_the_wait)
    relay = Relay(("127.0.0.1", 5432))
    url = with_driver(postgres_url, driver).replace(":5432/", f":{relay.port}/", 1)
    adapter = SqlStorage(url, table_name=table)
    storage = ManagedStorage("Results", adapter, GuardKind.THREAD, RetryPolicy(attempts=1, timeout=1.0))
    try:
        storage.connect()
        storage.store(None, "f", "t", "before", {"n": 1})
        relay.holding.set()
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            storage.store(None, "f", "t", "held", {"n": 2})
        ended = time.monotonic()
        assert ended - started < 2, f"the call took {ended - started:.1f} s with a deadline of 1 s"
        # the error and its traceback are still alive here: the connection must be gone all the same
        deadline = ended + 2  # the relay's thread notices within a poll; the slack is for a loaded machine
        while not relay.client_gone and time.monotonic() < deadline:
            time.sleep(0.02)
        assert relay.client_gone, f"{driver}: the interrupted connection was still open 2 s after the call"
        assert storage.stats["store"].timeouts == 1, repr(caught.value.__cause__)
        if driver == "psycopg":
            assert repr(caught.value.__cause__) == (
                "ServerWaitTimeout('the server did not answer within 1 s')"
            ), "the bound that ended the call was not the storage's"
        relay.holding.clear()
        storage.store(None, "f", "t", "after", {"n": 3})  # a new connection, through the relay
        assert storage.retrieve("f", "t", "after") == {"n": 3}
    finally:
        storage.shut_down(timeout=10)
        relay.close()


def test_the_psycopg_deadline_is_the_storages_to_the_tenth_of_a_second_not_libpqs_two_seconds(
    postgres_url: str, table: str
) -> None:
    """libpq's connect_timeout is whole seconds and at least 2: a try's share of 0.5 s must still hold."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog) and never answers
        port = silent.getsockname()[1]
        url = with_driver(postgres_url, "psycopg").replace(":5432/", f":{port}/", 1)
        storage = ManagedStorage(
            "Results",
            SqlStorage(url, table_name=table),
            GuardKind.THREAD,
            RetryPolicy(attempts=2, timeout=1.0),
        )
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            storage.store(None, "f", "t", "silent", {"n": 1})
        took = time.monotonic() - started
        storage.shut_down(timeout=5)
    # libpq's own bound would take 2 s for one try; the slack is for a loaded machine
    assert took < 1.9, f"two tries of 0.5 s took {took:.2f} s"
    assert "timeout 1 s" in str(caught.value)
    assert "ServerWaitTimeout) the server did not complete the connection within 0.5 s" in repr(
        caught.value.__cause__
    )


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq reads PG* variables: none of the machine's may change what the tests connect to."""
    for name in [name for name in os.environ if name.startswith("PG")]:
        monkeypatch.delenv(name)
