"""``FilesystemStorage``: one JSON file per task in a directory, in Selinon's file layout."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidRecordError, OptionProblem
from .base import JsonStorage, Record
from .selinon_layout import selinon_json

#: Longest file or directory name, in bytes, on common filesystems (ext4, XFS, APFS, NTFS).
_NAME_MAX = 255

_SUFFIX = ".json"


class FilesystemStorage(JsonStorage):
    """Files ``{path}/{flow_name}/{task_name}/{task_id}.json``, the layout of Selinon's Filesystem adapter,
    so that either reads the other's files; the JSON is written as Selinon writes it (ASCII escapes).

    A write goes to a temporary file beside the record, is flushed to disk, then renamed over it: a reader
    sees the old record or the new one, never part of one, from any thread or process. Each flow name,
    task name and task id must be one file name: no ``/``, not ``.`` or ``..``, at most 255 bytes
    (the task id with ``.json``).
    """

    concurrency_safe = True  # every call is a few system calls on files of its own

    def __init__(self, path: str) -> None:
        if not path.strip():
            raise OptionProblem("path", "must name a directory (made at connect if absent)")
        #: The directory, absolute (relative paths are from the working directory at start-up).
        self.path = Path(path).absolute()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _open(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def _verify(self, handle: Path) -> None:
        if not os.access(handle, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {str(handle)!r} is not writable by this process")

    def _close(self, handle: Any) -> None:
        """Nothing is held open between calls."""

    def locate(self, flow_name: str, task_name: str, task_id: str) -> str:
        """The record's path relative to the directory, or ``InvalidRecordError`` when a part cannot be
        a file name."""
        parts = (("flow name", flow_name, ""), ("task name", task_name, ""), ("task id", task_id, _SUFFIX))
        for what, value, suffix in parts:
            problem = _file_name_problem(value, suffix)
            if problem is not None:
                raise InvalidRecordError(
                    f"storage {self.label!r} refuses {what} {value[:60]!a}: {problem}, and it is a file "
                    "name in this storage's directory; use a name without '/' of at most "
                    f"{_NAME_MAX - len(suffix.encode())} bytes"
                )
        return os.path.join(flow_name, task_name, task_id + _SUFFIX)

    def record(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Record:
        checked = super().record(node_args, flow_name, task_name, task_id, result)
        self.locate(flow_name, task_name, task_id)  # refused before any I/O
        return checked

    def _write(self, record: Record) -> str:
        target = self.handle() / self.locate(record.flow_name, record.task_name, record.task_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".partial")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(selinon_json(record.result).encode("ascii"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return str(target)

    def _read(self, location: str) -> bytes | None:
        root: Path = self.handle()
        try:
            return (root / location).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _remove(self, location: str) -> bool:
        try:
            (self.handle() / location).unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True


class SelinonFilesystemStorage(FilesystemStorage):
    """Selinon's Filesystem adapter's options (``selinon.storages.filesystem.Filesystem``): ``path``
    defaults to the working directory, as Selinon's ``{PWD}``. The layout is the built-in's own."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(path or os.getcwd())


def _file_name_problem(value: str, suffix: str) -> str | None:
    """Why ``value`` (with ``suffix``) cannot be one file name, or None."""
    if value in ("", ".", ".."):
        return "it is empty, '.' or '..'"
    if "/" in value or (os.altsep is not None and os.altsep in value):
        return "it holds a path separator"
    if len((value + suffix).encode()) > _NAME_MAX:
        return f"it has {len(value.encode())} bytes"
    return None
