"""SqlStorage through PgBouncer in transaction mode, with both PostgreSQL drivers (issue #13).

A fleet's connections are processes times storages; PgBouncer in transaction mode in front of PostgreSQL
shares a few server sessions among them, handing each transaction (and, outside one, each exchange) to
any of them. A statement prepared on one session and run by name on another runs whatever another client
prepared there under that name: psycopg's prepared statements (after 5 runs) and pg8000's unnamed one
(it parses, describes and executes in three exchanges) both put rows in another storage's table, without
an error. SqlStorage notices the pooler when it connects (the process id it announces is not the server
session's): psycopg then prepares nothing, pg8000 runs each call in a transaction.

The test starts its own PgBouncer (Debian's package; ``scripts/services`` installs it) on a free port in
front of the test PostgreSQL, handing consecutive transactions to different server sessions
(``server_round_robin``), with four storages on four tables at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from celery_selinon_storage.errors import ConfigurationError
from celery_selinon_storage.storages.sql import SqlStorage
from tests.backends import drop_table
from tests.green_queries import with_driver
from tests.own_servers import OwnServer
from tests.services import IN_CI, POSTGRES_URL, require_server

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

#: Calls per storage: well past psycopg's prepare_threshold (5) for each statement.
CALLS = 40


def pgbouncer_program() -> str | None:
    """Where PgBouncer's program is (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def pgbouncer_version() -> tuple[int, ...]:
    """The installed PgBouncer's version, or a failure (a skip outside CI) when it is not installed."""
    program = pgbouncer_program()
    if program is None:
        message = (
            "pgbouncer is not installed; scripts/services installs it (Debian: apt-get install pgbouncer)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    output = subprocess.run([program, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    assert found is not None, output
    return int(found.group(1)), int(found.group(2))


#: PgBouncer tracks protocol-level prepared statements from 1.21 (``max_prepared_statements``); psycopg
#: relies on it from 1.22.
TRACKS_PREPARED_STATEMENTS = (1, 22)


class OwnPgBouncer(OwnServer):
    """PgBouncer on a free port, in transaction mode, in front of one PostgreSQL database (trust auth).

    It refuses to run as root: as root, it runs as the ``postgres`` user, from a directory of its own.
    """

    name = "pgbouncer"

    def __init__(self, log_directory: Path, upstream: str, max_prepared_statements: int) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="css-pgbouncer-")))
        self._remove_directory = weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
        self.log_directory = log_directory
        parts = urlsplit(upstream)
        self.database = parts.path.lstrip("/")
        self._user = "postgres" if os.geteuid() == 0 else None
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": self.directory / "users.txt",
            "pool_mode": "transaction",
            # several server sessions, each transaction to the next one
            "default_pool_size": 4,
            "min_pool_size": 2,
            "server_round_robin": 1,
            "logfile": self.directory / "pgbouncer.log",
            "pidfile": self.directory / "pgbouncer.pid",
        }
        if pgbouncer_version() >= (1, 21):
            settings["max_prepared_statements"] = max_prepared_statements
        upstream_line = (
            f"{self.database} = host={parts.hostname} port={parts.port or 5432} dbname={self.database} "
            f"user={parts.username or 'postgres'}"
        )
        lines = [
            "[databases]",
            upstream_line,
            "",
            "[pgbouncer]",
            *(f"{k} = {v}" for k, v in settings.items()),
        ]
        (self.directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.directory / "users.txt").write_text(f'"{parts.username or "postgres"}" ""\n')
        if self._user:
            for path in (self.directory, *self.directory.iterdir()):
                shutil.chown(path, self._user)

    def fill_pool(self) -> None:
        """Make PgBouncer open all its server sessions (four transactions at once), for it to rotate among."""
        import psycopg

        def hold() -> None:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}"
            ) as c:
                c.execute("SELECT pg_sleep(0.3)")  # in a transaction: the session is this client's meanwhile

        threads = [threading.Thread(target=hold) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    def url(self, driver: str) -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{self.database}"

    def command(self) -> list[str]:
        return [str(pgbouncer_program()), str(self.directory / "pgbouncer.ini")]

    def popen_options(self) -> dict[str, Any]:
        return {"user": self._user}

    def stop(self) -> None:
        super().stop()
        log = self.directory / "pgbouncer.log"
        if log.exists():
            (self.log_directory / "pgbouncer.log").write_bytes(log.read_bytes())
        self._remove_directory()


@pytest.fixture(scope="module")
def version() -> tuple[int, ...]:
    return pgbouncer_version()


@pytest.fixture(scope="module")
def pgbouncer(tmp_path_factory: pytest.TempPathFactory, version: tuple[int, ...]) -> Iterator[OwnPgBouncer]:
    upstream = require_server(POSTGRES_URL, "PostgreSQL")
    # max_prepared_statements = 0: not tracked, as before 1.21 (1.18 here)
    server = OwnPgBouncer(tmp_path_factory.mktemp("pgbouncer"), upstream, max_prepared_statements=0)
    with server:
        server.fill_pool()
        yield server


@pytest.fixture
def tables(postgres_url: str, unique: str) -> Iterator[list[str]]:
    """Four results tables of the test's own, one per storage, dropped at the end."""
    made = [f"{unique}_{index}" for index in range(4)]
    yield made
    for table in made:
        drop_table(postgres_url, table)


def exercise(storage: SqlStorage, calls: int = CALLS) -> None:
    """Store, read back and delete ``calls`` records named after the storage's table, each read checked."""
    for number in range(calls):
        task_id = f"{storage.table_name}-{number}"
        result = {"n": number, "table": storage.table_name}
        storage.store({"n": number}, "flow", "task", task_id, result)
        assert storage.retrieve("flow", "task", task_id) == result
    for number in range(0, calls, 2):
        storage.delete("flow", "task", f"{storage.table_name}-{number}")


def in_threads(storages: list[SqlStorage]) -> list[str]:
    """``exercise`` each storage in a thread of its own, all at once; the errors they raised."""
    errors: list[str] = []

    def run(storage: SqlStorage) -> None:
        try:
            exercise(storage)
        except Exception as exc:  # noqa: BLE001 - the test reports them all
            errors.append(f"{storage.table_name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(storage,)) for storage in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def strays(postgres_url: str, tables: list[str]) -> list[str]:
    """Rows that landed in a table other than their storage's, read on the server directly."""
    found = []
    engine = sa.create_engine(SqlStorage(postgres_url).url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        for table in tables:
            rows = connection.exec_driver_sql(f"SELECT task_id FROM {table}").scalars()
            found += [f"{task_id} in {table}" for task_id in rows if not task_id.startswith(f"{table}-")]
    engine.dispose()
    return found


def storages_through(url: str, tables: list[str], **connect_args: Any) -> list[SqlStorage]:
    """A connected storage on each table, through ``url``."""
    engine_options = {"connect_args": connect_args} if connect_args else None
    made = [SqlStorage(url, table_name=table, engine_options=engine_options) for table in tables]
    for storage in made:
        storage.storage_name = "Results"
        storage.connect()
    return made


def disconnect(storages: list[SqlStorage]) -> None:
    for storage in storages:
        storage.disconnect()


@pytest.mark.parametrize("driver", ["psycopg", "pg8000"])
def test_storages_on_different_tables_through_pgbouncer_each_keep_to_their_own(
    driver: str, pgbouncer: OwnPgBouncer, postgres_url: str, tables: list[str]
) -> None:
    """Four storages, four tables, at once, with the default configuration: each call is whole and its
    rows are in its own table (psycopg prepares nothing, pg8000 runs each call in a transaction)."""
    storages = storages_through(pgbouncer.url(driver), tables)
    try:
        assert [storage.driver for storage in storages] == [driver] * 4
        errors = in_threads(storages)
    finally:
        disconnect(storages)
    assert not errors, errors
    assert not strays(postgres_url, tables)


def test_a_direct_connection_is_not_taken_for_a_pooler(postgres_url: str, tables: list[str]) -> None:
    """Straight to PostgreSQL, nothing changes: psycopg prepares as usual, pg8000 runs in autocommit."""
    [psycopg_storage] = storages_through(with_driver(postgres_url, "psycopg"), tables[:1])
    [pg8000_storage] = storages_through(with_driver(postgres_url, "pg8000"), tables[1:2])
    try:
        assert psycopg_storage.handle().connection.connection.driver_connection.prepare_threshold == 5
        assert pg8000_storage.handle().commit_each is False
    finally:
        disconnect([psycopg_storage, pg8000_storage])


def test_psycopg_told_to_prepare_through_a_pgbouncer_that_does_not_track_fails_in_one_line(
    pgbouncer: OwnPgBouncer, version: tuple[int, ...], tables: list[str], tmp_path: Path
) -> None:
    """``prepare_threshold`` set in connect_args is the user's word: through a PgBouncer that does not track
    prepared statements, the statement prepared on one server session is run by name on another."""
    [storage] = storages_through(pgbouncer.url("psycopg"), tables[:1], prepare_threshold=5)
    try:
        with pytest.raises(ConfigurationError) as caught:
            exercise(storage)
    finally:
        storage.disconnect()
    message = str(caught.value)
    assert message.startswith("storage 'Results', option 'engine_options': the server does not hold the ")
    assert message.endswith(
        "a pooler in transaction mode is in between (PgBouncer before 1.22, or without "
        "max_prepared_statements); set engine_options: {connect_args: {prepare_threshold: null}} in the "
        "storage's configuration"
    )
    assert re.search(r'prepared statement "_pg3_\d+" (does not exist|already exists)', message), message
    if version >= TRACKS_PREPARED_STATEMENTS:  # and through one that tracks them, it works
        tracking = OwnPgBouncer(tmp_path, POSTGRES_URL, max_prepared_statements=100)
        with tracking:
            storages = storages_through(tracking.url("psycopg"), tables, prepare_threshold=5)
            try:
                assert not in_threads(storages)
            finally:
                disconnect(storages)


def test_pgbouncer_hands_consecutive_statements_to_different_server_sessions(
    pgbouncer: OwnPgBouncer, tables: list[str]
) -> None:
    """The premise of the tests above: one storage's statements ran on more than one server session."""
    [storage] = storages_through(pgbouncer.url("psycopg"), tables[:1])
    try:
        pids = {
            storage.handle().connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() for _ in range(8)
        }
    finally:
        storage.disconnect()
    assert len(pids) > 1, f"every statement ran on server session {pids}"
