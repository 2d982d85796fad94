"""The exceptions this package raises, each one line and naming its culprit."""

from __future__ import annotations

from selinon import SelinonMissingDataException

#: Errors that mean "the server cannot be reached now, try again" for an adapter that names none of its own.
DEFAULT_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)

#: Longest text of an exception quoted in a message.
_QUOTED_EXCEPTION = 200


def printable(text: str) -> str:
    """``text`` with each character that is not printable written as its escape (``\\x1b``, ``\\ud83d``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one printable line, the message cut short when long.

    A driver's error wrapped by a library (SQLAlchemy's ``orig``) is described by the driver's own
    text, without the wrapper's statement, parameters and links; a PostgreSQL server's error fields
    (pg8000 gives them as a dict) become ``SQLSTATE message``, a MySQL driver's ``(errno, message)``
    becomes ``errno message``.
    """
    try:
        message = " ".join(_driver_text(exc).split())
    except Exception:  # noqa: BLE001 - an exception whose text cannot be made is still named
        message = ""
    message = shortened(printable(message), _QUOTED_EXCEPTION)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _driver_text(exc: BaseException) -> str:
    """The readable text of ``exc``, or of the driver's error it wraps."""
    wrapped = getattr(exc, "orig", None)
    if isinstance(wrapped, BaseException) and wrapped is not exc:
        exc = wrapped
    args = exc.args
    if len(args) == 1 and isinstance(args[0], dict) and isinstance(args[0].get("M"), str):
        fields = args[0]  # a PostgreSQL server's error: C is the SQLSTATE, M the message
        return f"{fields.get('C') or ''} {fields['M']}".strip()
    if len(args) == 2 and type(args[0]) is int and isinstance(args[1], str) and not isinstance(exc, OSError):
        return f"{args[0]} {args[1]}"  # MySQL drivers: (error number, message)
    text = str(exc)
    if text.startswith("connection failed: ") and " failed: " in text[len("connection failed: ") :]:
        # libpq (psycopg): "connection failed: connection to server at "h", port p failed: FATAL: ...";
        # the target is shown beside the error, the server's own words are what is new
        return text.rsplit(" failed: ", 1)[1]
    return text


def shortened(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and ``...``."""
    return text if len(text) <= limit else text[:limit] + "..."


class StorageError(Exception):
    """Base class of every error raised by celery-selinon-storage."""


class ConfigurationError(StorageError):
    """A storages file (or a storage's configuration) is wrong.

    The message is one line: ``file:line: storage 'name', option 'key': what is wrong; what to do``.
    The parts are also kept as attributes so callers need not parse the text.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        storage: str | None = None,
        option: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.storage = storage
        self.option = option
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source if self.line is None else f"{self.source}:{self.line}"
            where += ": "
        subject = []
        if self.storage is not None:
            subject.append(f"storage {self.storage!r}")
        if self.option is not None:
            subject.append(f"option {self.option!r}")
        about = ", ".join(subject) + ": " if subject else ""
        return " ".join(f"{where}{about}{self.problem}".split())


class StorageNotFoundError(StorageError, LookupError):
    """``get_storage`` was asked for a name that this process does not have."""


class StoragesNotStartedError(StorageError):
    """Storages were used in a process where they were not started."""


class StoragesAlreadyStartedError(StorageError):
    """Storages were started a second time in one process."""


class OptionProblem(ValueError):
    """One option is unknown, missing, of the wrong type or of a value the adapter refuses.

    Raised by adapters and the option checker; the loader turns it into a ``ConfigurationError``
    that says where the option is written.
    """

    def __init__(self, option: str | None, problem: str) -> None:
        self.option = option
        super().__init__(problem)


class MissingDriverError(ImportError):
    """The driver a built-in adapter needs is not installed."""


class StorageClosedError(StorageError):
    """A storage was used after its process closed it (worker shutdown)."""


class WrongProcessError(StorageError):
    """A storage instance was used in a process other than the one that created it."""


class StorageUnavailableError(StorageError):
    """The storage's server could not be reached; the call is safe to retry."""


class StorageOwnedError(StorageError):
    """Task code tried to connect, disconnect or close a storage that the worker manages."""


class InvalidRecordError(StorageError, ValueError):
    """A task id, name or result that cannot be stored; refused before any I/O, nothing was written."""


class MissingResultError(StorageError, SelinonMissingDataException):
    """No record exists for the task id asked for."""

    def __init__(self, storage: str, task_id: str) -> None:
        self.storage = storage
        self.task_id = task_id
        super().__init__(f"storage {storage!r} has no record for task id {task_id!r}")


class ResultTooLargeError(InvalidRecordError):
    """A task result is larger than the backend accepts; nothing was stored."""

    def __init__(self, storage: str, task_id: str, size: int, limit: int, hint: str) -> None:
        self.storage = storage
        self.task_id = task_id
        self.size = size
        self.limit = limit
        super().__init__(
            f"storage {storage!r} cannot store the result of task id {task_id!r}: it is {size:,} bytes "
            f"as JSON and the server accepts at most {limit:,}; {hint}"
        )


class ResultNotSerializableError(InvalidRecordError, TypeError):
    """A task result cannot be written as JSON; nothing was stored."""

    def __init__(self, storage: str, task_id: str, reason: str) -> None:
        self.storage = storage
        self.task_id = task_id
        super().__init__(
            f"storage {storage!r} cannot store the result of task id {task_id!r}: {reason}; "
            "return JSON types (dict, list, str, int, float, bool, None)"
        )
