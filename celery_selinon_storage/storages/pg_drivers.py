"""Which driver a PostgreSQL storage uses, and libpq's URL options made into pg8000's.

psycopg 3 (libpq, in C) is the default: it is the fastest. Its waits for the server run in C, or through
gevent's ``select`` once gevent has patched it, so they are green under gevent; under eventlet they would
hold the hub for the whole query. So where eventlet's monkey-patching is active when a storage connects,
the default is pg8000, whose pure-Python sockets eventlet makes green. A driver named in the URL
(``postgresql+pg8000://``, ``postgresql+psycopg://``) is always the one used.

pg8000 does not read libpq's URL options (Selinon's nodes.yml files write ``?sslmode=disable``): the ones
it can honour are translated here (TLS as ``sslmode`` asks, ``options``, ``connect_timeout``,
``client_encoding=utf8``); any other is refused, naming the option.

Behind a connection pooler in transaction mode, a statement may be run on another server session than the
one it was prepared on: found when connecting, and avoided (``behind_pooler``, ``keep_to_one_session``).
"""

from __future__ import annotations

import importlib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.utils.log import get_logger

from ..errors import OptionProblem
from .green_patching import eventlet_is_patched

logger = get_logger("celery_selinon_storage")

PSYCOPG = "psycopg"
PG8000 = "pg8000"

#: libpq's connection parameters (PostgreSQL 17, "Parameter Key Words"), for telling a libpq option that
#: pg8000 cannot honour from a name that is nobody's option.
LIBPQ_PARAMETERS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth",
        "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode", "requiressl",
        "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
        "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
        "target_session_attrs", "load_balance_hosts",
    }
)  # fmt: skip

#: URL options pg8000 takes as they are (its own keyword arguments).
_PG8000_OWN = frozenset({"user", "password", "host", "port", "database", "application_name", "replication",
                         "unix_sock"})  # fmt: skip

#: URL options translated for pg8000 here.
_TRANSLATED = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "options", "connect_timeout",
     "client_encoding", "gssencmode"}
)  # fmt: skip

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: Where libpq looks for the certificate authority when the URL names none.
_DEFAULT_ROOT_CERT = Path("~/.postgresql/root.crt")

_told: set[str] = set()


def default_driver() -> str:
    """The driver for a PostgreSQL URL that names none, in this process now.

    pg8000 under eventlet's monkey-patching, else psycopg; pg8000 too when psycopg cannot be imported
    (said once, at INFO).
    """
    if eventlet_is_patched():
        return PG8000
    try:
        importlib.import_module(PSYCOPG)
    except ImportError as exc:
        _say_once(
            "no-psycopg",
            "PostgreSQL storages use pg8000: psycopg cannot be imported (%s); "
            "pip install 'celery-selinon-storage[sql]' for psycopg, the faster driver",
            exc,
        )
        return PG8000
    return PSYCOPG


def warn_if_blocking(driver: str, storage: str) -> None:
    """psycopg named in the URL under eventlet: used as asked, with one warning per process and storage."""
    if driver == PSYCOPG and eventlet_is_patched():
        _say_once(
            f"psycopg-eventlet-{storage}",
            "storage %r: its URL names psycopg, which holds eventlet's hub while it waits for the server; "
            "write postgresql:// (pg8000 under eventlet) or postgresql+pg8000:// to keep the hub running",
            storage,
            warning=True,
        )


def _say_once(key: str, message: str, *args: Any, warning: bool = False) -> None:
    if key in _told:
        return
    _told.add(key)
    (logger.warning if warning else logger.info)(message, *args)


# -- libpq's URL options for pg8000 -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsPlan:
    """Whether and how a pg8000 connection asks for TLS, as libpq's ``sslmode`` says."""

    context: ssl.SSLContext
    #: refuse a server that does not offer TLS (require, verify-ca, verify-full); else go on in plain text
    required: bool
    mode: str


@dataclass(frozen=True)
class Pg8000Options:
    """The libpq options of a URL, as pg8000 takes them."""

    #: the URL's options read here (taken out of the URL before pg8000 sees it)
    handled: tuple[str, ...] = ()
    #: None: plain text (``sslmode=disable``)
    tls: TlsPlan | None = None
    #: PostgreSQL start-up parameters (libpq's ``options``)
    startup_params: dict[str, str] = field(default_factory=dict)
    #: seconds the connect and the start-up may take, when the URL says
    connect_timeout: float | None = None


def pg8000_options(query: Mapping[str, str | tuple[str, ...]]) -> Pg8000Options:
    """The URL's query options as pg8000 takes them, or ``OptionProblem`` naming one it cannot honour."""
    values: dict[str, str] = {}
    for name, value in query.items():
        if not isinstance(value, str):
            raise OptionProblem("connection_string", f"gives the URL option {name!r} more than once")
        if name not in _TRANSLATED and name not in _PG8000_OWN:
            raise OptionProblem("connection_string", _unsupported(name))
        values[name] = value
    handled = tuple(name for name in values if name in _TRANSLATED)
    _check_client_encoding(values.get("client_encoding"))
    if values.get("gssencmode", "disable") not in ("disable", "prefer"):
        raise OptionProblem(
            "connection_string",
            "pg8000 has no GSSAPI encryption: gssencmode=require cannot be honoured; remove it from the URL, "
            "or name psycopg (postgresql+psycopg://)",
        )
    startup = {"options": values["options"]} if "options" in values else {}
    return Pg8000Options(handled, _tls_plan(values), startup, _connect_timeout(values.get("connect_timeout")))


def _unsupported(name: str) -> str:
    if name in LIBPQ_PARAMETERS:
        return (
            f"the libpq option {name!r} has no pg8000 equivalent; remove it from the URL, or name psycopg "
            "(postgresql+psycopg://), which takes every libpq option (pg8000 is used under eventlet, or "
            "when the URL names it)"
        )
    return f"{name!r} is neither a libpq option nor one of pg8000's; remove it from the URL"


def _check_client_encoding(value: str | None) -> None:
    if value is not None and value.replace("-", "").replace("_", "").lower() not in ("utf8", "unicode"):
        raise OptionProblem(
            "connection_string",
            f"client_encoding={value} is not supported: pg8000 talks UTF8, and results are stored as "
            "UTF-8 JSON; remove it from the URL",
        )


def _connect_timeout(value: str | None) -> float | None:
    """libpq's ``connect_timeout``: seconds; zero or less means none of its own."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise OptionProblem(
            "connection_string", f"connect_timeout={value} is not a number of seconds"
        ) from None
    return seconds if seconds > 0 else None


def _tls_plan(values: Mapping[str, str]) -> TlsPlan | None:
    mode = values.get("sslmode", "prefer")  # libpq's default
    if mode not in SSLMODES:
        raise OptionProblem("connection_string", f"sslmode={mode} is not one of {', '.join(SSLMODES)}")
    if mode == "disable":
        return None
    root_cert = values.get("sslrootcert")
    if root_cert is None and _DEFAULT_ROOT_CERT.expanduser().is_file():
        root_cert = str(_DEFAULT_ROOT_CERT.expanduser())
    if mode == "require" and root_cert is not None:
        mode = "verify-ca"  # as libpq does when it has a certificate authority
    if mode in ("verify-ca", "verify-full"):
        if root_cert is None:
            raise OptionProblem(
                "connection_string",
                f"sslmode={mode} needs the certificate authority of the server's certificate, and "
                f"{_DEFAULT_ROOT_CERT} does not exist; add sslrootcert=/path/to/ca.crt "
                "(or sslrootcert=system) to the URL",
            )
        context = _context(lambda: ssl.create_default_context(cafile=_cafile(root_cert)), "sslrootcert")
        context.check_hostname = mode == "verify-full"
    else:  # allow, prefer, require: encrypted, the server's certificate unchecked (as libpq)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if "sslcert" in values or "sslkey" in values:
        certificate = values.get("sslcert", "")
        _context(
            lambda: context.load_cert_chain(
                certificate, values.get("sslkey"), password=values.get("sslpassword")
            ),
            "sslcert",
        )
    # allow: libpq tries plain text first and TLS if refused; pg8000 cannot, so TLS when offered (prefer)
    return TlsPlan(context, required=mode not in ("allow", "prefer"), mode=mode)


def _cafile(root_cert: str) -> str | None:
    return None if root_cert == "system" else root_cert


def _context(make: Any, option: str) -> Any:
    """``make()``; a file that cannot be read or used is one line naming the option (never its password)."""
    try:
        return make()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise OptionProblem(
            "connection_string",
            f"the file of the URL option {option} cannot be used ({reason}); fix the path",
        ) from None


# -- connecting pg8000 --------------------------------------------------------------------------------

#: PostgreSQL's SSLRequest: length 8, code 80877103.
_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def connect_pg8000(dbapi: Any, cargs: Any, cparams: Mapping[str, Any], libpq: Pg8000Options) -> Any:
    """A pg8000 connection over a TCP socket made here, TLS as ``libpq`` says, the socket closed here if
    the connection fails.

    When the server accepts but does not answer, pg8000's start-up times out and leaves its socket to the
    garbage collector: the server would keep a half-open session until the collector runs. The connect
    and the start-up are bounded by ``connect_timeout`` when the URL gives one; every later wait by
    pg8000's ``timeout``.
    """
    params = dict(cparams)
    timeout = params.get("timeout")
    startup = min((s for s in (timeout, libpq.connect_timeout) if s is not None), default=None)
    if libpq.startup_params:
        params["startup_params"] = {**libpq.startup_params, **params.get("startup_params", {})}
    host = str(params.get("host", "localhost"))
    if "ssl_context" in params or params.get("unix_sock") or params.get("sock") or host.startswith("/"):
        # pg8000 connects by itself: a socket or an ssl_context given in connect_args, or a Unix socket
        # (where libpq never uses TLS either)
        if params.get("unix_sock"):
            params.setdefault("ssl_context", False)
        connection = dbapi.Connection(*cargs, **{**params, "timeout": startup})
    else:
        port = params.get("port", 5432)
        try:
            sock = socket.create_connection((host, port), startup)
        except OSError as exc:  # as pg8000 reports it, so that SQLAlchemy wraps it as its other errors
            message = f"Can't create a connection to host {host} and port {port} ({exc.strerror or exc})"
            raise dbapi.InterfaceError(message) from exc
        try:
            sock = _negotiate_tls(sock, libpq.tls, host, dbapi)
            connection = dbapi.Connection(*cargs, **{**params, "sock": sock, "ssl_context": False})
        except BaseException:
            sock.close()
            raise
    connection._usock.settimeout(timeout)  # after the start-up: each later wait
    return connection


def _negotiate_tls(sock: socket.socket, plan: TlsPlan | None, host: str, dbapi: Any) -> socket.socket:
    """Ask the server for TLS when ``plan`` says, as libpq does: the socket to speak PostgreSQL over."""
    if plan is None:
        return sock
    sock.sendall(_SSL_REQUEST)
    answer = sock.recv(1)
    if answer == b"S":
        return plan.context.wrap_socket(sock, server_hostname=host)
    if answer == b"N" and not plan.required:
        return sock
    if answer == b"N":
        raise dbapi.InterfaceError(f"the server does not offer TLS, and sslmode={plan.mode} requires it")
    raise dbapi.InterfaceError(f"the server answered the TLS request with {answer!r}")


# -- connection poolers -------------------------------------------------------------------------------


def behind_pooler(driver: str, connection: Any) -> bool:
    """Whether a connection pooler (PgBouncer, ...) stands between the connection and PostgreSQL.

    PostgreSQL announces its server process's id when a connection starts (BackendKeyData); a pooler
    announces an id of its own, since it may hand the client's statements to any of its server sessions.
    Asked with one statement in one exchange, which any pooler keeps on one session.
    """
    if driver == PG8000:
        key = connection._backend_key_data  # the process id, then the cancel secret
        announced = int.from_bytes(key[:4], "big", signed=True) if key else None
        rows = connection.execute_simple("SELECT pg_backend_pid()").rows
    else:
        announced = connection.info.backend_pid
        connection.autocommit = True  # the statement alone, no BEGIN before it
        try:
            rows = connection.execute("SELECT pg_backend_pid()").fetchall()
        finally:
            connection.autocommit = False
    return not rows or rows[0][0] != announced


def keep_to_one_session(driver: str, connection: Any, storage: str, connect_args: Mapping[str, Any]) -> None:
    """Behind a pooler, keep each exchange's messages on one server session (said once per storage).

    A pooler in transaction mode hands each transaction, and outside one each exchange, to any of its
    sessions: a statement prepared on one session may be run by name on another, where another client
    prepared another statement under that name (rows land in another storage's table, silently).
    """
    if driver == PSYCOPG and "prepare_threshold" in connect_args:
        what = "psycopg prepares statements as its connect_args' prepare_threshold says"
    elif driver == PSYCOPG:
        connection.prepare_threshold = None
        what = (
            "psycopg prepares no statements (set connect_args' prepare_threshold when the pooler tracks "
            "them, PgBouncer 1.22 or later with max_prepared_statements)"
        )
    else:
        what = "pg8000 runs each call in a transaction of its own (it sends a statement in three exchanges)"
    _say_once(
        f"pooler-{storage}",
        "storage %r: a connection pooler answers for PostgreSQL (its process id is not the server "
        "session's), so %s",
        storage,
        what,
    )
