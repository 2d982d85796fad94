"""``SqlStorage``: results as JSON rows in one table, through SQLAlchemy 2 Core."""

from __future__ import annotations

import json
from typing import Any

from .drivers import require

require("sqlalchemy", "sql")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.dialects import mysql, postgresql, sqlite  # noqa: E402

from ..options import OptionProblem  # noqa: E402
from .base import JsonStorage  # noqa: E402

#: SQLAlchemy 2 no longer accepts the ``postgres://`` scheme that Selinon's docs write.
_SCHEME_ALIASES = {"postgres": "postgresql"}

#: Driver used when the URL names none. Pure-Python drivers: their sockets are made green by
#: eventlet's and gevent's monkey-patching, so a query never blocks the hub (psycopg's C wait
#: only knows gevent; mysqlclient knows neither).
DEFAULT_DRIVERS = {"postgresql": "pg8000", "mysql": "pymysql", "mariadb": "pymysql"}


class SqlStorage(JsonStorage):
    """One row per task id (``task_id`` unique), the result in the dialect's JSON type (JSONB on PostgreSQL).

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
        self._connection: Any = None
        self._table: Any = None

    def __repr__(self) -> str:
        # render_as_string masks the password by default
        return f"SqlStorage({self.url.render_as_string()!r}, table_name={self.table_name!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self._engine is None:
            self._engine = sa.create_engine(
                self.url, echo=self.echo, json_serializer=_strict_json, **self.engine_options
            )
            if self._engine.dialect.name == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._table = _results_table(self.table_name, self._engine.dialect.name)
        self._connection = self._engine.connect()
        self._create_table()

    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    def disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- DataStorage -------------------------------------------------------------------------

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        self.dumps(task_id, result)  # refuse what cannot be JSON before touching the database
        row = {
            "task_id": task_id,
            "flow_name": flow_name,
            "task_name": task_name,
            "node_args": _jsonable_or_text(node_args),
            "result": result,
        }
        self._execute(self._upsert(row), row)
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        table = self._table
        found = self._execute(sa.select(table.c.result).where(table.c.task_id == task_id)).first()
        if found is None:
            raise self.missing(task_id)
        return found[0]

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        table = self._table
        if self._execute(table.delete().where(table.c.task_id == task_id)).rowcount == 0:
            raise self.missing(task_id)

    # -- internals ---------------------------------------------------------------------------

    def _execute(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        connection = self._connection
        if connection is None:
            raise ConnectionError(f"storage {self.label!r} is not connected")
        try:
            result = connection.execute(statement, params) if params else connection.execute(statement)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        return result

    def _upsert(self, row: dict[str, Any]) -> Any:
        table = self._table
        dialect = self._engine.dialect.name
        changes = {key: value for key, value in row.items() if key != "task_id"}
        if dialect in ("postgresql", "sqlite"):
            module = postgresql if dialect == "postgresql" else sqlite
            insert = module.insert(table)
            return insert.on_conflict_do_update(
                index_elements=[table.c.task_id], set_={k: insert.excluded[k] for k in changes}
            )
        if dialect in ("mysql", "mariadb"):
            insert = mysql.insert(table)
            return insert.on_duplicate_key_update({k: insert.inserted[k] for k in changes})
        raise NotImplementedError(f"storage {self.label!r}: no upsert for SQL dialect {dialect!r}")

    def _create_table(self) -> None:
        """Create the table if absent; another process creating it at the same moment is fine."""
        try:
            self._table.create(self._connection, checkfirst=True)
            self._connection.commit()
        except sa.exc.DBAPIError:
            self._connection.rollback()
            if not sa.inspect(self._connection).has_table(self.table_name):
                raise


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


def _results_table(name: str, dialect: str) -> Any:
    json_type = postgresql.JSONB() if dialect == "postgresql" else sa.JSON()
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("flow_name", sa.String(255)),
        sa.Column("task_name", sa.String(255)),
        sa.Column("node_args", json_type),
        sa.Column("result", json_type),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
        ),
    )


def _strict_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _jsonable_or_text(value: Any) -> Any:
    """Node arguments are informational: keep them as JSON when they are, else as their text."""
    try:
        _strict_json(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and the writer of several worker processes proceed together.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
