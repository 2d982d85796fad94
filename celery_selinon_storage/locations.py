"""Where a part of a storages configuration was written: ``file:line``, or a setting path.

The loader checks one shape of data, whatever it came from; a ``Location`` turns the keys that lead to
the culprit (``("storages", 1, "configuration", "port")``) into what a message names: the line of a
YAML file, or ``selinon_storages[1].configuration.port`` for ``app.conf.selinon_storages``. A key that
is absent is named by what holds it, as a file names the line of the mapping that lacks it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError
from .yaml_source import LocatedDict, LocatedList

#: Keys from the top of the document to a value: mapping keys and list positions.
KeyPath = tuple[Any, ...]


class Location(abc.ABC):
    """How messages about one document say where a value is."""

    def __init__(self, document: Any) -> None:
        self.document = document

    @abc.abstractmethod
    def place(self, path: KeyPath) -> tuple[str, int | None]:
        """The source and line that an error about the value at ``path`` names."""

    def error(
        self,
        problem: str,
        path: KeyPath = (),
        *,
        storage: str | None = None,
        option: str | None = None,
        line: int | None = None,
    ) -> ConfigurationError:
        """The one-line error about the value at ``path`` (``line``: a file's own line, when known)."""
        source, found = self.place(path)
        return ConfigurationError(
            problem, source=source, line=found if line is None else line, storage=storage, option=option
        )

    @abc.abstractmethod
    def mention(self, path: KeyPath) -> str:
        """Where ``path`` is, for the middle of a sentence: ``on line 3``, ``at selinon_storages[0]``."""

    def written(self, path: KeyPath) -> KeyPath:
        """The longest start of ``path`` that is in the document."""
        node = self.document
        for depth, key in enumerate(path):
            if not _holds(node, key):
                return path[:depth]
            node = node[key]
        return path


class FileLocation(Location):
    """A YAML file read by ``yaml_source``: values are named by ``file:line``."""

    def __init__(self, document: Any, source: str) -> None:
        super().__init__(document)
        self.source = source

    def line(self, path: KeyPath) -> int | None:
        """The line of the last key of ``path`` that is written, or of the mapping that lacks the next."""
        if self.document is None:
            return None
        node = self.document
        line: int = getattr(node, "line", 1)
        found = self.written(path)
        for key in found:
            if isinstance(node, LocatedDict):
                line = node.line_of(key)
            elif isinstance(node, LocatedList):
                line = node.item_lines[key]
            node = node[key]
        if len(found) < len(path):
            line = getattr(node, "line", line)
        return line

    def place(self, path: KeyPath) -> tuple[str, int | None]:
        return self.source, self.line(path)

    def mention(self, path: KeyPath) -> str:
        return f"on line {self.line(path)}"


class SettingLocation(Location):
    """A Celery setting holding the storages inline: values are named by their path in it.

    ``setting`` is the setting's name as written (``selinon_storages``, or ``CELERY_SELINON_STORAGES``
    from a Django settings module); ``listed`` when it holds the list itself rather than a mapping with
    a ``storages`` key, so that its paths start at the list.
    """

    def __init__(self, document: Any, setting: str, *, listed: bool = False) -> None:
        super().__init__(document)
        self.setting = setting
        self.listed = listed

    def path_text(self, path: KeyPath) -> str:
        """``selinon_storages[1].configuration.port`` for the written start of ``path``."""
        keys = self.written(path)
        if self.listed and keys[:1] == ("storages",):
            keys = keys[1:]
        text = self.setting
        for key in keys:
            if isinstance(key, int):
                text += f"[{key}]"
            elif isinstance(key, str) and key.isidentifier():
                text += f".{key}"
            else:
                text += f"[{key!r}]"
        return text

    def place(self, path: KeyPath) -> tuple[str, int | None]:
        return self.path_text(path), None

    def mention(self, path: KeyPath) -> str:
        return f"at {self.path_text(path)}"


def _holds(node: Any, key: Any) -> bool:
    """Whether ``node[key]`` is there."""
    if isinstance(node, (list, tuple)):
        return isinstance(key, int) and 0 <= key < len(node)
    try:
        return isinstance(node, Mapping) and key in node
    except TypeError:  # an unhashable key
        return False
