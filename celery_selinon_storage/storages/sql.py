"""``SqlStorage``: results as JSON rows in one table (PostgreSQL, MariaDB/MySQL, SQLite).

SQLAlchemy 2 supplies the URL handling, the dialect, the table and the SQL text of each statement,
compiled once at connect. The calls themselves run that SQL on one held DBAPI connection in
autocommit mode: one round trip per store, retrieve or delete, as fast as the plain driver.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from .drivers import require

require("sqlalchemy", "sql")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.dialects import mysql, postgresql, sqlite  # noqa: E402

from ..errors import ResultTooLargeError  # noqa: E402
from ..options import OptionProblem  # noqa: E402
from .base import JsonStorage, to_json  # noqa: E402

#: SQLAlchemy 2 no longer accepts the ``postgres://`` scheme that Selinon's docs write.
_SCHEME_ALIASES = {"postgres": "postgresql"}

#: Driver used when the URL names none. Pure-Python drivers: their sockets are made green by
#: eventlet's and gevent's monkey-patching, so a query never blocks the hub (psycopg's C wait
#: only knows gevent; mysqlclient knows neither).
DEFAULT_DRIVERS = {"postgresql": "pg8000", "mysql": "pymysql", "mariadb": "pymysql"}

_COLUMNS = ("task_id", "flow_name", "task_name", "node_args", "result")

#: SQLSTATEs of a server that is there but cannot serve a session now: connection exceptions (class
#: 08), shutting down or terminated by an administrator, crashed, starting up or recovering, too many
#: connections. pg8000 reports them as plain database errors, so the code is what tells.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")

#: Bytes of SQL around the values of an upsert, rounded up (for the max_allowed_packet check).
_STATEMENT_OVERHEAD = 1024


class SqlStorage(JsonStorage):
    """One row per task id (the primary key), the result in the dialect's JSON type (JSONB on PostgreSQL).

    Holds one connection per instance, so the worker's guard serialises its callers.
    """

    def __init__(
        self,
        connection_string: str,
        encoding: str = "utf-8",
        echo: bool = False,
        table_name: str = "selinon_results",
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        if encoding.replace("-", "").lower() != "utf8":
            raise OptionProblem(
                "encoding", f"{encoding!r} is not supported; results are stored as UTF-8 JSON"
            )
        self.url = _database_url(connection_string)
        self.echo = echo
        self.table_name = table_name
        self.engine_options = dict(engine_options or {})
        self._engine: Any = None
        self._connection: Any = None  # SQLAlchemy's, kept for DDL and closing
        self._cursor: Any = None  # the DBAPI cursor every call uses
        self._statements: _Statements | None = None
        self._lost_connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self._max_statement_bytes: int | None = None  # MariaDB/MySQL: max_allowed_packet

    def is_transient(self, error: BaseException) -> bool:
        """A lost or refused connection, or a server that cannot take sessions now (safe to retry)."""
        lost: tuple[type[BaseException], ...] = (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            *self._lost_connection_errors,
        )
        return isinstance(error, lost) or _sqlstate(error).startswith(_UNAVAILABLE_SQLSTATES)

    def __repr__(self) -> str:
        # render_as_string masks the password by default
        return f"SqlStorage({self.url.render_as_string()!r}, table_name={self.table_name!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        options = {"poolclass": sa.pool.NullPool, **self.engine_options}  # the connection is held, not pooled
        engine = sa.create_engine(self.url, echo=self.echo, **options)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            table = _results_table(self.table_name, engine.dialect.name)
            _create_table(connection, table)
            self._statements = _Statements.compile(table, engine.dialect)
            if engine.dialect.name in ("mysql", "mariadb"):
                limit: Any = connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
                self._max_statement_bytes = int(limit)
            driver_connection: Any = connection.connection.driver_connection
            self._cursor = driver_connection.cursor()
        except BaseException:
            connection.close()
            engine.dispose()
            raise
        dbapi = engine.dialect.loaded_dbapi
        # OSError: pg8000 lets a socket timeout out unwrapped, and the socket is useless after it
        self._lost_connection_errors = (dbapi.OperationalError, dbapi.InterfaceError, OSError)
        self._engine, self._connection = engine, connection

    def is_connected(self) -> bool:
        return self._connection is not None

    def disconnect(self) -> None:
        connection, engine = self._connection, self._engine
        self._connection = self._engine = self._cursor = self._statements = None
        if connection is not None:
            with contextlib.suppress(Exception):  # a connection the server dropped cannot close cleanly
                connection.close()
        if engine is not None:
            engine.dispose()

    # -- DataStorage -------------------------------------------------------------------------

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        row = (task_id, flow_name, task_name, _node_args_json(node_args), self.dumps(task_id, result))
        if self._max_statement_bytes is not None:
            self._check_size(task_id, row)
        self._execute("upsert", row)
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        found = self._execute("select", (task_id,)).fetchone()
        if found is None:
            raise self.missing(task_id)
        return json.loads(found[0])

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        if self._execute("delete", (task_id,)).rowcount == 0:
            raise self.missing(task_id)

    # -- internals ---------------------------------------------------------------------------

    def _check_size(self, task_id: str, row: tuple[str, ...]) -> None:
        limit = self._max_statement_bytes or 0
        size = sum(len(value.encode()) for value in row) + _STATEMENT_OVERHEAD
        if size > limit:
            raise ResultTooLargeError(
                self.label, task_id, size, limit, "raise the server's max_allowed_packet or store less"
            )

    def _execute(self, name: str, values: tuple[Any, ...]) -> Any:
        statements, cursor = self._statements, self._cursor
        if statements is None:
            raise self.not_connected()
        sql, arguments = statements.bind(name, values)
        try:
            cursor.execute(sql, arguments)
        except self._lost_connection_errors:
            self.disconnect()  # the next call connects again
            raise
        return cursor


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
    json_cast = postgresql.JSONB() if dialect == "postgresql" else None
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
            index_elements=[table.c.task_id], set_={**updates, "updated_at": sa.func.now()}
        )
    if dialect in ("mysql", "mariadb"):
        insert = mysql.insert(table).values(values)
        updates = {column: insert.inserted[column] for column in changed}
        return insert.on_duplicate_key_update({**updates, "updated_at": sa.func.now()})
    raise OptionProblem(
        "connection_string",
        f"SqlStorage has no upsert for SQL dialect {dialect!r}; use PostgreSQL, MariaDB/MySQL or SQLite",
    )


def _result_as_text(table: sa.Table, dialect: str) -> Any:
    # JSONB comes back decoded by some drivers and not others: ask for text and decode it here.
    return sa.cast(table.c.result, sa.Text()) if dialect == "postgresql" else table.c.result


def _database_url(connection_string: str) -> Any:
    """The URL with its default driver filled in; its driver must be importable."""
    try:
        url = sa.engine.make_url(connection_string)
    except sa.exc.ArgumentError:
        raise OptionProblem(
            "connection_string", "is not a database URL; write dialect[+driver]://user:password@host/database"
        ) from None
    dialect = _SCHEME_ALIASES.get(url.get_backend_name(), url.get_backend_name())
    driver = url.get_driver_name() if "+" in url.drivername else DEFAULT_DRIVERS.get(dialect)
    url = url.set(drivername=f"{dialect}+{driver}" if driver else dialect)
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


def _sqlstate(error: BaseException) -> str:
    """The SQLSTATE of a driver's error (pg8000 and psycopg), or "" when it carries none."""
    driver_error = getattr(error, "orig", None) or error
    code = getattr(driver_error, "sqlstate", None)
    if code is None and driver_error.args and isinstance(driver_error.args[0], dict):
        code = driver_error.args[0].get("C")  # pg8000: the server's error fields
    return code if isinstance(code, str) else ""


def _results_table(name: str, dialect: str) -> sa.Table:
    # SQLite's JSON is text: a column typed "JSON" would get NUMERIC affinity and turn "12" into 12.
    json_type: Any = {"postgresql": postgresql.JSONB(), "sqlite": sa.Text()}.get(dialect, sa.JSON())
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("task_id", sa.String(255), primary_key=True),
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
        if not sa.inspect(connection).has_table(table.name):
            raise


def _node_args_json(node_args: Any) -> str:
    """Node arguments are informational: kept as JSON when they are JSON, else as their text."""
    if node_args is None:
        return "null"
    try:
        return to_json(node_args)
    except (TypeError, ValueError):
        return to_json(repr(node_args))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and the writer of several worker processes proceed together.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
