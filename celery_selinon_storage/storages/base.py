"""The template every built-in adapter follows.

``JsonStorage`` does the work that is the same everywhere: it checks task ids and names and encodes
the result *before* any I/O, turns "nothing there" into ``MissingResultError``, records errors, and
connects as open, verify, close-on-failure. An adapter supplies the backend's part: ``_open``,
``_verify``, ``_close`` for its connection (a "handle"), and ``_write``, ``_read``, ``_remove`` for
one record.
"""

from __future__ import annotations

import abc
import contextlib
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypeVar

from selinon import DataStorage

from ..errors import (
    DEFAULT_TRANSIENT_ERRORS,
    InvalidRecordError,
    MissingResultError,
    OptionProblem,
    ResultNotSerializableError,
    StorageError,
)
from ..retry import DEFAULT_RETRY
from .json_text import from_json, to_json

T = TypeVar("T")
R = TypeVar("R")
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: Longest task id, flow name or task name, in characters, on every backend (SQL columns hold 255).
MAX_KEY_LENGTH = 255

#: Characters no id or name may hold: C0 controls (NUL, CR, LF, ...) and DEL.
_CONTROL = frozenset(chr(code) for code in (*range(0x20), 0x7F))

#: Set, to a list, while ``check`` connects a storage: its ``connect`` must then change nothing on the
#: server (no DDL); what the worker would create at start and is missing (a table) is noted in the list.
CHECK_NOTES: ContextVar[list[str] | None] = ContextVar("CHECK_NOTES", default=None)


class Record(NamedTuple):
    """One checked record, ready to write: its keys and its result as JSON text and UTF-8 bytes.

    A named tuple: one is made for every store, and a tuple is built faster than a frozen dataclass.
    """

    task_id: str
    flow_name: str
    task_name: str
    node_args: Any
    result: Any
    text: str
    data: bytes


_new_tuple = tuple.__new__


class JsonStorage(DataStorage):  # type: ignore[misc]
    """Base of the built-in adapters: results are JSON documents keyed by task id."""

    #: True when one instance may be called by several threads or greenlets at once.
    concurrency_safe: ClassVar[bool] = False

    #: The repr shows no secret (URLs masked by structure): logs and ``check`` may show it.
    masks_its_repr: ClassVar[bool] = True

    #: Errors that mean the server cannot be reached now: the same call may succeed later.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = DEFAULT_TRANSIENT_ERRORS
    #: Errors among those that no retry can fix (a wrong password, a missing permission).
    permanent_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    #: The storage's name from the YAML; set by the lifecycle, used in messages.
    storage_name: str = ""

    #: Seconds one wait on the server may take (connect, handshake, read, write, a lock), unless an
    #: option of the adapter's says otherwise: the share of one try in the storage's ``timeout:``, set
    #: by ``ManagedStorage``. Adapters read it when they connect.
    wait_timeout: float = DEFAULT_RETRY.try_timeout

    #: The open connection (or client), None while disconnected.
    _handle: Any = None

    #: Whether the class keeps ``locate`` and ``_result_of`` as they are here (set for each subclass).
    _keyed_by_task_id: ClassVar[bool] = True
    _stored_as_json: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._keyed_by_task_id = cls.locate is JsonStorage.locate
        cls._stored_as_json = cls._result_of is JsonStorage._result_of

    def __del__(self) -> None:
        """Disconnecting is the lifecycle's job, never the garbage collector's."""

    @property
    def label(self) -> str:
        """The name to use in messages."""
        return self.storage_name or type(self).__name__

    def is_transient(self, error: BaseException) -> bool:
        """Whether a call that failed with ``error`` may succeed if tried again."""
        return isinstance(error, self.transient_errors) and not isinstance(error, self.permanent_errors)

    # -- connection template ------------------------------------------------------------------

    def connect(self) -> None:
        """Open a connection and check that the server answers; on any failure close what was opened."""
        if self._handle is not None:
            return
        handle = self._open()
        try:
            self._verify(handle)
        except BaseException:
            with contextlib.suppress(Exception):
                self._close(handle)
            raise
        self._handle = handle

    def is_connected(self) -> bool:
        return self._handle is not None

    def disconnect(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._close(handle)

    def handle(self) -> Any:
        """The open connection, or the "not connected" error."""
        if self._handle is None:
            raise ConnectionError(f"storage {self.label!r} is not connected")
        return self._handle

    @abc.abstractmethod
    def _open(self) -> Any:
        """A new connection (or client) to the backend."""
        raise NotImplementedError

    def _verify(self, handle: Any) -> None:
        """Check that the server answers (and prepare what the calls need); raise if it does not."""

    def _close(self, handle: Any) -> None:
        """Close a connection made by ``_open``."""
        handle.close()

    # -- record template ----------------------------------------------------------------------

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Any:
        """Store ``result`` under ``task_id`` (replacing any earlier one); returns the record's id."""
        record = self.record(node_args, flow_name, task_name, task_id, result)
        return self._exchange(self._write, record)

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        """The result stored under ``task_id``, or ``MissingResultError``."""
        self.check_keys(task_id, flow_name, task_name)
        # the layout hooks are called only where a layout overrides them: each call is measurable
        # next to a fast server's answer (docs/benchmarks-vs-plain.md)
        key = task_id if self._keyed_by_task_id else self.locate(flow_name, task_name, task_id)
        found = self._exchange(self._read, key)
        if found is None:
            raise MissingResultError(self.label, task_id)
        return from_json(found) if self._stored_as_json else self._result_of(found, task_id)

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        """Delete the record of ``task_id``, or ``MissingResultError`` when there is none."""
        self.check_keys(task_id, flow_name, task_name)
        key = task_id if self._keyed_by_task_id else self.locate(flow_name, task_name, task_id)
        if not self._exchange(self._remove, key):
            raise MissingResultError(self.label, task_id)

    def store_error(
        self, node_args: Any, flow_name: str, task_name: str, task_id: str, exc_info: ExcInfo
    ) -> Any:
        """Record the failure (type, message, traceback text) in place of a result."""
        return self.store(node_args, flow_name, task_name, task_id, {"error": error_record(exc_info)})

    def _exchange(self, io: Callable[[T], R], argument: T) -> R:
        """One exchange with the server. One that fails part-way leaves the connection in an unknown
        state (a lost server, a time limit, a killed greenlet), so a single connection is discarded;
        the next call opens a new one. Pooled clients discard their broken connections themselves."""
        try:
            return io(argument)
        except StorageError:
            raise  # refused before anything was sent, or a whole exchange that found nothing
        except BaseException:
            if not self.concurrency_safe:
                with contextlib.suppress(Exception):
                    self.disconnect()
            raise

    @abc.abstractmethod
    def _write(self, record: Record) -> Any:
        """Write ``record`` (an upsert by task id); returns the record's id in the backend."""
        raise NotImplementedError

    @abc.abstractmethod
    def _read(self, task_id: str) -> Any:
        """The stored JSON of ``task_id`` (or what ``_result_of`` reads), or None."""
        raise NotImplementedError

    @abc.abstractmethod
    def _remove(self, task_id: str) -> bool:
        """Delete the record of ``task_id``; whether there was one."""
        raise NotImplementedError

    # -- layout hooks: where a record is and how its result is read back -------------------------

    def locate(self, flow_name: str, task_name: str, task_id: str) -> str:
        """What ``_read`` and ``_remove`` get: the task id, unless a layout keys records by names too."""
        return task_id

    def _result_of(self, found: Any, task_id: str) -> Any:
        """The result in what ``_read`` found for ``task_id``: JSON text, unless a layout says otherwise."""
        return from_json(found)

    # -- checks before any I/O ----------------------------------------------------------------

    def record(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Record:
        """The checked, encoded record, or ``InvalidRecordError``; nothing is sent before this."""
        self.check_keys(task_id, flow_name, task_name)
        text = self.dumps(task_id, result)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ResultNotSerializableError(
                self.label, task_id, f"it holds text that is not valid Unicode ({_position(exc)})"
            ) from None
        # tuple.__new__ skips the named tuple's generated __new__: one Python call less on every store
        return _new_tuple(Record, (task_id, flow_name, task_name, node_args, result, text, data))

    def check_keys(self, task_id: Any, flow_name: Any, task_name: Any) -> None:
        """Ids and names are text of at most 255 characters, with no control characters."""
        if (
            type(task_id) is str
            and type(flow_name) is str
            and type(task_name) is str
            and 0 < len(task_id) <= MAX_KEY_LENGTH
            and len(flow_name) <= MAX_KEY_LENGTH
            and len(task_name) <= MAX_KEY_LENGTH
            # printable: no control character, no lone surrogate (nor other characters that are fine,
            # such as a no-break space: those take the exact checks below)
            and task_id.isprintable()
            and flow_name.isprintable()
            and task_name.isprintable()
        ):
            return  # the common case, checked in C; otherwise find which key is refused, and why
        for what, value in (("task id", task_id), ("flow name", flow_name), ("task name", task_name)):
            problem = _key_problem(value)
            if problem is None and what == "task id" and not value:
                problem = "it is empty"
            if problem is not None:
                raise InvalidRecordError(
                    f"storage {self.label!r} refuses {what} {_shown(value)}: {problem}; "
                    f"use text of at most {MAX_KEY_LENGTH} characters without control characters"
                )

    def dumps(self, task_id: str, value: Any) -> str:
        """``value`` as strict JSON text, or ``ResultNotSerializableError``."""
        try:
            return to_json(value)
        except RecursionError:
            reason = "it is nested too deeply for JSON"
        except (TypeError, ValueError) as exc:
            reason = str(exc)
        raise ResultNotSerializableError(self.label, task_id, reason)


def _key_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"it is {type(value).__name__}, not text"
    if len(value) > MAX_KEY_LENGTH:
        return f"it has {len(value)} characters"
    if not _CONTROL.isdisjoint(value):
        return "it holds a control character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it is not valid Unicode ({_position(exc)})"
    return None


def _shown(value: Any) -> str:
    """A short, printable rendering of a refused id or name (never the whole of a long one)."""
    shown = ascii(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _position(error: UnicodeEncodeError) -> str:
    return f"lone surrogate U+{ord(error.object[error.start]):04X} at character {error.start}"


def require_utf8(option: str, value: str) -> None:
    """Results are UTF-8 JSON: an ``encoding``/``charset`` option may only say so."""
    if value.replace("-", "").replace("_", "").lower() != "utf8":
        raise OptionProblem(option, f"{value!r} is not supported; results are stored as UTF-8 JSON")


def require_positive(option: str, value: float | None, what: str) -> None:
    """A number option that must be above zero when given."""
    if value is not None and value <= 0:
        raise OptionProblem(option, f"must be a positive {what}, or null")


def error_record(exc_info: ExcInfo) -> dict[str, str]:
    """A JSON-ready description of an exception."""
    exc_type, exc, tb = exc_info
    return {
        "type": f"{exc_type.__module__}.{exc_type.__qualname__}",
        "message": _storable(str(exc)),
        "traceback": _storable("".join(traceback.format_exception(exc_type, exc, tb))),
    }


def _storable(text: str) -> str:
    """Error text as valid Unicode (a lone surrogate in a message must not make the record unstorable)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
