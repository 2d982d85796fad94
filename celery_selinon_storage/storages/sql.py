"""``SqlStorage``: results as JSON rows in one table (PostgreSQL, MariaDB/MySQL, SQLite).

SQLAlchemy 2 supplies the URL handling, the dialect, the table and the SQL text of each statement,
compiled once at connect. The calls themselves run that SQL on one held DBAPI connection in
autocommit mode: one round trip per store, retrieve or delete, as fast as the plain driver (pg8000 behind
a connection pooler: each call in a transaction of its own, see ``pg_drivers``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import socket
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..errors import (
    ConfigurationError,
    InvalidRecordError,
    OptionProblem,
    ResultNotSerializableError,
    ResultTooLargeError,
)
from ..secrets import mask_url
from . import abandoned_sessions, mysql_drivers, pg_drivers
from .base import CHECK_NOTES, JsonStorage, Record, require_utf8
from .json_text import to_json

#: SQLAlchemy 2 no longer accepts the ``postgres://`` scheme that Selinon's docs write.
_SCHEME_ALIASES = {"postgres": "postgresql"}

#: The driver for a URL that names none is chosen when the storage connects, from what the process runs:
#: PostgreSQL psycopg unless eventlet's monkey-patching is active (``pg_drivers``), MariaDB/MySQL
#: mysqlclient where installed and no green monkey-patching is active, else PyMySQL (``mysql_drivers``).
_DRIVER_CHOICE = {
    "postgresql": pg_drivers.default_driver,
    "mysql": mysql_drivers.default_driver,
    "mariadb": mysql_drivers.default_driver,
}

_COLUMNS = ("task_id", "flow_name", "task_name", "node_args", "result")

#: SQLSTATEs of a server that is there but cannot serve a session now: connection exceptions (class
#: 08), shutting down or terminated by an administrator, crashed, starting up or recovering, too many
#: connections. pg8000 reports them as plain database errors, so the code is what tells.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")

#: SQLSTATE classes that no retry can fix: authorization (28), unknown database (3D), syntax or
#: privilege (42), data (22), integrity (23), unsupported feature (0A).
_PERMANENT_SQLSTATES = ("28", "3D", "42", "22", "23", "0A")

#: SQLSTATEs of a prepared statement the server does not hold (26000), or holds from another client
#: (42P05): psycopg prepares the statements it runs often, and a pooler in transaction mode hands each
#: transaction to any server session. The storage never names a statement itself.
_LOST_PREPARED_STATEMENT = frozenset({"26000", "42P05"})

#: MySQL/MariaDB error numbers that no retry can fix: access denied (1044, 1045, 1142, 1143, 1227,
#: 1698), unknown database (1049), packet too large (1153, 1301).
_PERMANENT_MYSQL_ERRORS = frozenset({1044, 1045, 1049, 1142, 1143, 1153, 1227, 1301, 1698})

#: Bytes of SQL around the values of an upsert, rounded up (for the max_allowed_packet check).
_STATEMENT_OVERHEAD = 1024

#: Bytes that MySQL's string escaping doubles (backslash, quotes, NUL, newline, return, Ctrl-Z).
_ESCAPED_BYTES = (b"\\", b"'", b'"', b"\0", b"\n", b"\r", b"\x1a")

#: A JSON ``\u0000`` escape (an odd run of backslashes before ``u0000``): PostgreSQL's JSONB refuses it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

#: MySQL task id column: binary, so that ids compare byte for byte (no case, accent or pad folding).
_MYSQL_TASK_ID = mysql.VARBINARY(1020)


@dataclass
class _Session:
    """One open connection and what its calls need."""

    engine: Any
    connection: Any  # SQLAlchemy's, kept for DDL and closing
    dialect: str
    cursor: Any = None  # the DBAPI cursor every call uses
    driver_connection: Any = None  # the DBAPI connection of that cursor
    statements: _Statements | None = None
    max_statement_bytes: int | None = None  # MariaDB/MySQL: max_allowed_packet
    #: PostgreSQL: a table made by version 0.1 keeps results in JSONB, which rewrites numbers
    legacy_jsonb: bool = False
    #: pg8000 behind a connection pooler: each call is a transaction of its own, committed
    commit_each: bool = False
    #: PostgreSQL behind a connection pooler (PgBouncer): the session seen is not the server's
    behind_pooler: bool = False
    #: the server's id of this session, to end it if it is dropped mid-statement (see abandoned_sessions)
    server_session: abandoned_sessions.SessionKey | None = None
    #: a statement was sent and its answer not yet read
    in_exchange: bool = False


class SqlStorage(JsonStorage):
    """One row per task id (the primary key), the result in the dialect's JSON type, kept as written.

    Holds one connection per instance, so the worker's guard serialises its callers. Task ids compare
    byte for byte on every dialect (MySQL: a binary column).
    """

    #: Who made a results table whose results are JSONB (for messages).
    jsonb_origin = "made by version 0.1"

    def __init__(
        self,
        connection_string: str,
        encoding: str = "utf-8",
        echo: bool = False,
        table_name: str = "selinon_results",
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        require_utf8("encoding", encoding)
        #: the URL with the driver in use: the open connection's, else the one a connect would choose now
        self.url = _database_url(connection_string)
        self._driver_named = "+" in sa.engine.make_url(connection_string).drivername
        self.echo = echo
        self.table_name = table_name
        self.engine_options = dict(engine_options or {})
        self._lost_connection_errors: tuple[type[BaseException], ...] = (OSError,)
        #: server sessions dropped mid-statement, ended before the next connection's first statement
        self._abandoned_sessions: list[abandoned_sessions.SessionKey] = []

    def _table(self, dialect: str, jsonb: bool = False) -> sa.Table:
        """The results table (JSONB results: a table made by version 0.1)."""
        return _results_table(self.table_name, dialect, jsonb)

    def is_transient(self, error: BaseException) -> bool:
        """A lost or refused connection, or a server that cannot take sessions now (safe to retry)."""
        code = _error_code(error)
        if isinstance(code, int):
            if code in _PERMANENT_MYSQL_ERRORS:
                return False
        elif code.startswith(_PERMANENT_SQLSTATES):
            return False
        elif code.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        lost: tuple[type[BaseException], ...] = (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            *self._lost_connection_errors,
        )
        return isinstance(error, lost)

    def __repr__(self) -> str:
        target = mask_url(self.url.render_as_string(hide_password=False))
        return f"SqlStorage({target!r}, table_name={self.table_name!r})"

    @property
    def driver(self) -> str:
        """The DBAPI driver, as SQLAlchemy names it (``psycopg``, ``pg8000``, ``pymysql``, ``pysqlite``):
        the open connection's, else the one a connect would use now."""
        if self._handle is not None:
            return str(self._handle.engine.dialect.driver)
        return str(self._url_now().get_driver_name())

    # -- connection --------------------------------------------------------------------------

    def _url_now(self) -> Any:
        """The URL to connect with now: a PostgreSQL URL that names no driver gets the runtime's."""
        choose = _DRIVER_CHOICE.get(self.url.get_backend_name())
        if self._driver_named or choose is None:
            return self.url
        return self.url.set(drivername=f"{self.url.get_backend_name()}+{choose()}")

    def _open(self) -> _Session:
        self.url = url = self._url_now()
        driver = url.get_driver_name()
        options = {"poolclass": sa.pool.NullPool, **self.engine_options}  # the connection is held, not pooled
        options = _with_driver_timeouts(url, options, self.wait_timeout)
        libpq = pg_drivers.Pg8000Options()
        if driver == pg_drivers.PG8000:
            try:
                libpq = pg_drivers.pg8000_options(url.query)
            except OptionProblem as problem:  # a URL option that only psycopg takes, under eventlet
                raise ConfigurationError(str(problem), storage=self.label, option=problem.option) from None
            url = url.difference_update_query(libpq.handled)
        pg_drivers.warn_if_blocking(driver, self.label)
        engine = sa.create_engine(url, echo=self.echo, **options)
        connector = _Connector(driver, self.label, libpq, self.wait_timeout)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        elif driver in (pg_drivers.PG8000, pg_drivers.PSYCOPG):
            sa.event.listen(engine, "do_connect", connector)
        try:
            connection = engine.connect()
            commit_each = connector.behind_pooler and driver == pg_drivers.PG8000
            if not commit_each:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            engine.dispose()
            raise
        dbapi = engine.dialect.loaded_dbapi
        # OSError: pg8000 lets a socket timeout out unwrapped, and the socket is useless after it
        self._lost_connection_errors = (dbapi.OperationalError, dbapi.InterfaceError, OSError)
        return _Session(
            engine,
            connection,
            engine.dialect.name,
            commit_each=commit_each,
            behind_pooler=connector.behind_pooler,
        )

    def _verify(self, handle: _Session) -> None:
        if self._abandoned_sessions:
            abandoned_sessions.end_sessions(
                handle.connection, handle.dialect, self._abandoned_sessions, self.wait_timeout
            )
            self._abandoned_sessions.clear()
        notes = CHECK_NOTES.get()
        if notes is not None and not sa.inspect(handle.connection).has_table(self.table_name):
            notes.append(f"table {self.table_name} does not exist (the worker creates it at start)")
            return
        _create_table(handle.connection, self._table(handle.dialect))
        if handle.dialect == "postgresql":
            handle.legacy_jsonb = _result_column_type(handle.connection, self.table_name) == "jsonb"
        table = self._table(handle.dialect, jsonb=handle.legacy_jsonb)
        handle.statements = _Statements.compile(table, handle.connection.dialect)
        if handle.dialect in ("mysql", "mariadb"):
            _refuse_folding_task_ids(handle.connection, self.table_name, self.label)
            limit: Any = handle.connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
            handle.max_statement_bytes = int(limit)
        if not handle.behind_pooler:
            handle.server_session = abandoned_sessions.server_session(handle.dialect, handle.connection)
        if handle.commit_each:
            handle.connection.commit()
        handle.driver_connection = handle.connection.connection.driver_connection
        handle.cursor = handle.driver_connection.cursor()

    def _close(self, handle: _Session) -> None:
        # Invalidate, not close: closing returns the connection to SQLAlchemy's pool, which first
        # resets it (a rollback), and on a connection interrupted mid-exchange the reset fails and
        # leaves the socket open. Invalidating closes the driver's connection without a word to the
        # server; in autocommit there is nothing to roll back.
        if handle.in_exchange and handle.server_session is not None:
            self._abandoned_sessions.append(handle.server_session)
        driver_connection = handle.connection.connection.driver_connection
        raw_socket = _driver_socket(driver_connection)
        try:
            handle.connection.invalidate()
        finally:
            with contextlib.suppress(Exception):  # already closed by the invalidation, usually
                driver_connection.close()
            handle.engine.dispose()
            if raw_socket is not None:
                # A traceback of an interrupted call can keep the driver's socket file alive, and with
                # it the connection, with the server mid-statement and holding its locks. Shutting the
                # socket down ends the connection whoever still refers to it.
                with contextlib.suppress(OSError):
                    raw_socket.shutdown(socket.SHUT_RDWR)

    # -- records -----------------------------------------------------------------------------

    def _write(self, record: Record) -> str:
        session: _Session = self.handle()
        node_args = _node_args_json(record.node_args)
        if session.legacy_jsonb:
            self._check_jsonb(record)
            if _JSON_NUL.search(node_args):
                node_args = to_json(ascii(record.node_args))
        row = (record.task_id, record.flow_name, record.task_name, node_args, record.text)
        if session.max_statement_bytes is not None:
            self._check_size(session.max_statement_bytes, record, node_args)
        self._execute(session, "upsert", row)
        return record.task_id

    def _read(self, task_id: str) -> str | None:
        session: _Session = self.handle()
        found = self._execute(session, "select", (task_id,)).fetchone()
        return None if found is None else str(found[0])

    def _remove(self, task_id: str) -> bool:
        session: _Session = self.handle()
        return bool(self._execute(session, "delete", (task_id,)).rowcount)

    def _check_jsonb(self, record: Record) -> None:
        """A table made by version 0.1 keeps results in JSONB, which cannot hold U+0000 and rewrites
        1e16 as the integer 10000000000000000: refuse what it would not give back exactly."""
        problem = None
        if _JSON_NUL.search(record.text):
            problem = "it holds the character U+0000"
        elif (number := _large_float(record.result)) is not None:
            problem = f"it holds the float {number!r}, which JSONB gives back as an integer"
        if problem is not None:
            raise ResultNotSerializableError(
                self.label,
                record.task_id,
                f"{problem}, and table {self.table_name!r} keeps results in JSONB ({self.jsonb_origin}); "
                f"migrate it once with: ALTER TABLE {self.table_name} ALTER COLUMN result TYPE json "
                "USING result::text::json",
            )

    def _check_size(self, limit: int, record: Record, node_args: str) -> None:
        """MariaDB/MySQL drop a connection whose statement exceeds max_allowed_packet: refuse it first."""
        texts = (record.task_id, record.flow_name, record.task_name, node_args)
        encoded = [record.data, *(text.encode() for text in texts)]
        raw = sum(len(value) for value in encoded)
        if _STATEMENT_OVERHEAD + 2 * raw <= limit:
            return  # escaping at most doubles a value: no need to count the escapes
        size = (
            _STATEMENT_OVERHEAD + raw + sum(value.count(byte) for value in encoded for byte in _ESCAPED_BYTES)
        )
        if size > limit:
            raise ResultTooLargeError(
                self.label, record.task_id, size, limit, "raise the server's max_allowed_packet or store less"
            )

    def _execute(self, session: _Session, name: str, values: tuple[Any, ...]) -> Any:
        statements = session.statements
        assert statements is not None  # compiled when the connection was verified
        sql, arguments = statements.bind(name, values)
        session.in_exchange = True
        try:
            session.cursor.execute(sql, arguments)
            if session.commit_each:
                session.driver_connection.commit()
            session.in_exchange = False
        except Exception as exc:
            if _error_code(exc) in _LOST_PREPARED_STATEMENT:
                self.disconnect()  # psycopg's list of what it prepared is wrong: start afresh
                raise self._pooler_error(exc) from exc
            raise
        return session.cursor

    def _pooler_error(self, exc: BaseException) -> ConfigurationError:
        said = (str(exc).splitlines() or [type(exc).__name__])[0]
        return ConfigurationError(
            f"the server does not hold the statements psycopg prepared ({said}): a pooler in transaction "
            "mode is in between (PgBouncer before 1.22, or without max_prepared_statements); "
            "set engine_options: {connect_args: {prepare_threshold: null}} in the storage's configuration",
            storage=self.label,
            option="engine_options",
        )


class SelinonSqlStorage(SqlStorage):
    """Selinon's PostgreSQL adapter on SQLAlchemy 2: its options, and its table, so that workers still on
    Selinon's adapter and this one share the records.

    Table ``result``: ``id`` from sequence ``result_id``, ``flow_name`` and ``task_name`` VARCHAR(128),
    ``task_id`` VARCHAR(255) UNIQUE, ``result`` and ``node_args`` JSONB; created if absent (the database
    must exist). Selinon inserts (storing a task id twice fails there); this adapter upserts by task id.
    PostgreSQL only, as Selinon's. Serves ``selinon.storages.postgresql.PostgreSQL`` (Selinon 1.4),
    selinonlib's ``SqlStorage`` and Selinon 0.x's ``selinon.storage.sqlStorage.SqlStorage``.
    """

    jsonb_origin = "Selinon's layout"

    def __init__(self, connection_string: str, encoding: str = "utf-8", echo: bool = False) -> None:
        super().__init__(connection_string, encoding, echo, table_name="result")
        if self.url.get_backend_name() != "postgresql":
            raise OptionProblem(
                "connection_string",
                "Selinon's table keeps results in JSONB, so this class serves PostgreSQL only; for another "
                "database write classname: SqlStorage (the built-in) instead",
            )

    def __repr__(self) -> str:
        return "Selinon" + super().__repr__()

    def _table(self, dialect: str, jsonb: bool = False) -> sa.Table:
        return sa.Table(
            self.table_name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, sa.Sequence("result_id"), primary_key=True),
            sa.Column("flow_name", sa.String(_SELINON_NAME_LENGTH)),
            sa.Column("task_name", sa.String(_SELINON_NAME_LENGTH)),
            sa.Column("task_id", sa.String(255), unique=True),
            sa.Column("result", postgresql.JSONB()),
            sa.Column("node_args", postgresql.JSONB()),
        )

    def record(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Record:
        checked = super().record(node_args, flow_name, task_name, task_id, result)
        for what, name in (("flow name", flow_name), ("task name", task_name)):
            if len(name) > _SELINON_NAME_LENGTH:
                raise InvalidRecordError(
                    f"storage {self.label!r} refuses {what} {name[:40]!a}...: Selinon's table holds names of "
                    f"at most {_SELINON_NAME_LENGTH} characters; use a shorter name"
                )
        return checked


#: Longest flow or task name in Selinon's table.
_SELINON_NAME_LENGTH = 128


@dataclass(frozen=True)
class _Statements:
    """SQL text of each operation, compiled once for one dialect, and how to order its parameters."""

    sql: dict[str, str]
    #: per statement, the positions in its value tuple of the driver's parameters (positional styles),
    #: or None where they are in value order already
    order: dict[str, tuple[int, ...] | None]
    #: per statement, the parameter names in value-tuple order (named styles)
    names: dict[str, tuple[str, ...]]
    positional: bool

    @classmethod
    def compile(cls, table: sa.Table, dialect: Any) -> _Statements:
        statements = {
            "upsert": (_upsert(table, dialect.name), _COLUMNS),
            "select": (
                sa.select(_result_as_text(table, dialect.name)).where(
                    table.c.task_id == sa.bindparam("task_id")
                ),
                ("task_id",),
            ),
            "delete": (table.delete().where(table.c.task_id == sa.bindparam("task_id")), ("task_id",)),
        }
        if dialect.paramstyle == "pyformat":
            # psycopg, PyMySQL and mysqlclient take "%s" with a tuple as well as "%(name)s" with a dict;
            # a tuple is cheaper to build and to bind on every call
            dialect = copy.copy(dialect)
            dialect.paramstyle, dialect.positional = "format", True
        sql: dict[str, str] = {}
        order: dict[str, tuple[int, ...] | None] = {}
        names: dict[str, tuple[str, ...]] = {}
        for name, (statement, value_names) in statements.items():
            compiled = statement.compile(dialect=dialect)
            sql[name] = compiled.string
            names[name] = value_names
            if compiled.positional:
                positions = tuple(value_names.index(bind) for bind in compiled.positiontup or ())
                order[name] = None if positions == tuple(range(len(value_names))) else positions
        return cls(sql=sql, order=order, names=names, positional=bool(dialect.positional))

    def bind(self, name: str, values: tuple[Any, ...]) -> tuple[str, Any]:
        """The SQL and the driver's parameters for ``values`` (in the statement's value order)."""
        if not self.positional:
            return self.sql[name], dict(zip(self.names[name], values, strict=True))
        order = self.order[name]
        return self.sql[name], values if order is None else tuple(values[i] for i in order)


def _upsert(table: sa.Table, dialect: str) -> Any:
    json_cast = table.c.result.type if dialect == "postgresql" else None
    values = {
        column: sa.cast(sa.bindparam(column, type_=sa.Text()), json_cast)
        if json_cast is not None and column in ("node_args", "result")
        else sa.bindparam(column, type_=sa.Text())
        for column in _COLUMNS
    }
    changed = [column for column in _COLUMNS if column != "task_id"]
    if dialect in ("postgresql", "sqlite"):
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(values)
        updates = {column: insert.excluded[column] for column in changed}
        return insert.on_conflict_do_update(
            index_elements=[table.c.task_id], set_={**updates, **_stamp(table)}
        )
    if dialect in ("mysql", "mariadb"):
        insert = mysql.insert(table).values(values)
        updates = {column: insert.inserted[column] for column in changed}
        return insert.on_duplicate_key_update({**updates, **_stamp(table)})
    raise OptionProblem(
        "connection_string",
        f"SqlStorage has no upsert for SQL dialect {dialect!r}; use PostgreSQL, MariaDB/MySQL or SQLite",
    )


def _stamp(table: sa.Table) -> dict[str, Any]:
    """What an upsert sets besides the record: the time of the change, where the table keeps it."""
    return {"updated_at": sa.func.now()} if "updated_at" in table.c else {}


def _result_as_text(table: sa.Table, dialect: str) -> Any:
    # JSON comes back decoded by some drivers and not others: ask for text and decode it here.
    return sa.cast(table.c.result, sa.Text()) if dialect == "postgresql" else table.c.result


def _database_url(connection_string: str) -> Any:
    """The URL with its default driver filled in; its driver must be importable and take its options."""
    try:
        url = sa.engine.make_url(connection_string)
    except sa.exc.ArgumentError:
        raise OptionProblem(
            "connection_string", "is not a database URL; write dialect[+driver]://user:password@host/database"
        ) from None
    dialect = _SCHEME_ALIASES.get(url.get_backend_name(), url.get_backend_name())
    if "+" in url.drivername:
        driver: str | None = url.get_driver_name()
    else:
        choose = _DRIVER_CHOICE.get(dialect)
        driver = None if choose is None else choose()
    url = url.set(drivername=f"{dialect}+{driver}" if driver else dialect)
    if driver == pg_drivers.PG8000:
        pg_drivers.pg8000_options(url.query)  # refuses a libpq option it cannot honour, now
    try:
        url.get_dialect().import_dbapi()
    except sa.exc.NoSuchModuleError:
        raise OptionProblem(
            "connection_string", f"SQLAlchemy has no dialect {url.drivername!r}; fix the URL's scheme"
        ) from None
    except ImportError as exc:
        raise OptionProblem(
            "connection_string",
            f"the driver for {url.drivername!r} is not installed ({exc.name}); "
            "pip install 'celery-selinon-storage[sql]' or install the driver the URL names",
        ) from None
    return url


def _error_code(error: BaseException) -> str | int:
    """The SQLSTATE of a PostgreSQL driver's error (pg8000, psycopg), the error number of a MySQL
    driver's (PyMySQL, mysqlclient), or "" when it carries neither."""
    driver_error = getattr(error, "orig", None) or error
    code = getattr(driver_error, "sqlstate", None)
    if code is None and driver_error.args:
        first = driver_error.args[0]
        if isinstance(first, dict):
            code = first.get("C")  # pg8000: the server's error fields
        elif isinstance(first, int) and not isinstance(first, bool):
            return first  # MySQL drivers: (errno, message)
    return code if isinstance(code, str) else ""


def _results_table(name: str, dialect: str, jsonb: bool = False) -> sa.Table:
    # PostgreSQL: json keeps the text as written (JSONB would give 1e16 back as 10000000000000000).
    # SQLite's JSON is text: a column typed "JSON" would get NUMERIC affinity and turn "12" into 12.
    postgres_json = postgresql.JSONB() if jsonb else postgresql.JSON()
    json_type: Any = {"postgresql": postgres_json, "sqlite": sa.Text()}.get(dialect, sa.JSON())
    task_id: Any = _MYSQL_TASK_ID if dialect in ("mysql", "mariadb") else sa.String(255)
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("task_id", task_id, primary_key=True),
        sa.Column("flow_name", sa.String(255)),
        sa.Column("task_name", sa.String(255)),
        sa.Column("node_args", json_type),
        sa.Column("result", json_type),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


def _create_table(connection: Any, table: sa.Table) -> None:
    """Create the table if absent; another process creating it at the same moment is fine."""
    try:
        table.create(connection, checkfirst=True)
    except sa.exc.DBAPIError:
        if connection.in_transaction():  # one the failed statement aborted (pg8000 behind a pooler)
            connection.rollback()
        if not sa.inspect(connection).has_table(table.name):
            raise


def _result_column_type(connection: Any, table: str) -> str:
    """The type of the result column of a PostgreSQL table (``json``, or ``jsonb`` when made by 0.1)."""
    found = connection.exec_driver_sql(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s AND column_name = 'result'",
        (table,),
    ).scalar()
    return str(found or "").lower()


def _large_float(value: Any) -> float | None:
    """The first float in ``value`` that JSON writes with a positive exponent (1e16 and beyond)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and abs(item) >= 1e16 and math.isfinite(item):
            return item
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return None


def _refuse_folding_task_ids(connection: Any, table: str, storage: str) -> None:
    """A table made by version 0.1 has a case- and accent-insensitive task id: refuse it, with the fix."""
    found = connection.exec_driver_sql(
        "SELECT DATA_TYPE, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'task_id'",
        (table,),
    ).first()
    if found is None or str(found[0]).lower() == "varbinary":
        return
    raise ConfigurationError(
        f"table {table!r} compares task ids without regard to case or accents (column task_id is "
        f"{found[0]} {found[1]}), so different tasks could share a record; migrate it once with: "
        f"ALTER TABLE {table} MODIFY task_id VARBINARY(1020) NOT NULL",
        storage=storage,
    )


def _driver_socket(driver_connection: Any) -> socket.socket | None:
    """The TCP socket of a pure-Python driver's connection (pg8000: ``_usock``, PyMySQL: ``_sock``);
    None for the others. psycopg's ``close`` finishes libpq's connection, which closes its socket
    whatever still refers to the Python object (a traceback, say); sqlite3 has no socket."""
    for attribute in ("_usock", "_sock"):
        candidate = getattr(driver_connection, attribute, None)
        if isinstance(candidate, socket.socket):
            return candidate
    return None


def _node_args_json(node_args: Any) -> str:
    """Node arguments are informational: kept as JSON when they are JSON, else as their text."""
    if node_args is None:
        return "null"
    try:
        text = to_json(node_args)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return to_json(ascii(node_args))
    return text


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and the writer of several worker processes proceed together.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


class _Connector:
    """SQLAlchemy's ``do_connect`` hook for PostgreSQL: the driver's connection made here, bounded by the
    storage's waits and told whether a connection pooler answered (``pg_drivers.behind_pooler``)."""

    def __init__(self, driver: str, storage: str, libpq: pg_drivers.Pg8000Options, seconds: float) -> None:
        self.driver = driver
        self.storage = storage
        self.libpq = libpq
        self.seconds = seconds
        self.behind_pooler = False

    def __call__(self, dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if self.driver == pg_drivers.PG8000:
            connection = pg_drivers.connect_pg8000(dialect.loaded_dbapi, cargs, cparams, self.libpq)
        else:
            from . import psycopg_deadlines

            connection = psycopg_deadlines.connection_class(self.seconds).connect(*cargs, **cparams)
        try:
            self.behind_pooler = pg_drivers.behind_pooler(self.driver, connection)
            if self.behind_pooler:
                pg_drivers.keep_to_one_session(self.driver, connection, self.storage, cparams)
        except BaseException:
            connection.close()
            raise
        return connection


#: Each driver's own timeouts, as connect arguments, for waits of ``seconds`` each.
_DRIVER_TIMEOUTS: dict[str, Any] = {
    # every socket operation, the connect included
    "pg8000": lambda seconds: {"timeout": seconds},
    # libpq counts whole seconds, and at least 2: the connection class bounds every wait to the 0.1 s
    "psycopg": lambda seconds: {"connect_timeout": max(2, math.ceil(seconds))},
    # the TCP connect, then every read (the handshake included) and write
    "pymysql": lambda seconds: {
        "connect_timeout": seconds,
        "read_timeout": seconds,
        "write_timeout": seconds,
    },
    # the C client's connect, read and write timeouts: whole seconds, at least 1
    "mysqldb": lambda seconds: {
        "connect_timeout": max(1, math.ceil(seconds)),
        "read_timeout": max(1, math.ceil(seconds)),
        "write_timeout": max(1, math.ceil(seconds)),
    },
    # how long to wait for another connection's lock (SQLite's busy timeout)
    "pysqlite": lambda seconds: {"timeout": seconds},
}


def _with_driver_timeouts(url: sa.URL, options: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``options`` with the driver's timeouts added, for each wait the user did not set."""
    timeouts = _DRIVER_TIMEOUTS.get(url.get_driver_name())
    if timeouts is None:
        return options
    return {**options, "connect_args": {**timeouts(seconds), **options.get("connect_args", {})}}
