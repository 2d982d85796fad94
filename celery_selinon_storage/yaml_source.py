"""Safe YAML that remembers where each mapping and key was written, read within fixed limits.

A storages file is refused, in one line, before it can cost much: only a regular file is opened, at most
``MAX_FILE_BYTES`` of it are read, and the parser's events are counted before any node or Python object
is built (``MAX_VALUES`` values and ``MAX_TEXT`` characters with every alias expanded, ``MAX_DEPTH``
levels of nesting).
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigurationError, describe_exception, shortened

_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML_TAG = "tag:yaml.org,2002:"

#: A storages file (or Selinon nodes.yml) larger than this is refused; no more than this is read.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Values a file may hold once every alias is expanded (a "billion laughs" file holds billions).
MAX_VALUES = 100_000
#: Characters of text (keys and values) a file may hold once every alias is expanded.
MAX_TEXT = 8 * 1024 * 1024
#: Collections nested in one another, the top-level mapping being level 1.
MAX_DEPTH = 64
#: A message longer than this has the parts it quotes cut short (a name may be megabytes long).
LONGEST_MESSAGE = 1_000
#: Longest text of a value quoted in a message.
_QUOTED_VALUE = 40

_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class LocatedDict(dict[Any, Any]):
    """A mapping from YAML with the line it starts on and the line of each key."""

    line: int
    key_lines: dict[Any, int]
    #: Keys written more than once, as (key, line written again, line first written).
    duplicates: list[tuple[Any, int, int]]

    def line_of(self, key: Any) -> int:
        """The line of ``key``, or of the mapping itself when the key is absent."""
        return self.key_lines.get(key, self.line)


class LocatedList(list[Any]):
    """A sequence from YAML with the line it starts on and the line of each item."""

    line: int
    item_lines: list[int]


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that notes duplicate keys (the caller reports them in context) and keeps line numbers.

    Safe: only plain YAML types are built; a ``!!python/...`` tag is an error.
    """

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        #: Values and characters of text read so far, each alias counted as a copy of what it names.
        self.values = 0
        self.text = 0
        #: The collections being read, outermost first: (anchor, values and text read before it).
        self.open: list[tuple[str | None, int, int]] = []
        self.open_anchors: set[str] = set()
        #: Anchor -> values and text it stands for (known once its node is read).
        self.sizes: dict[str, tuple[int, int]] = {}

    def get_event(self) -> Any:
        """The parser's next event, counted before the composer makes a node of it."""
        event = super().get_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
        elif isinstance(event, yaml.ScalarEvent):
            self._add(1, len(event.value), event)
            if event.anchor is not None:
                self.sizes[event.anchor] = (1, len(event.value))
        elif isinstance(event, yaml.CollectionStartEvent):
            self._open_collection(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, values, text = self.open.pop()
            if anchor is not None:
                self.open_anchors.discard(anchor)
                self.sizes[anchor] = (self.values - values, self.text - text)
        return event

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        anchor = event.anchor
        if anchor in self.open_anchors:
            raise self._error(
                f"the alias *{anchor} is used inside the collection it names, which would make an endless "
                "structure; remove the alias",
                event,
            )
        values, text = self.sizes.get(anchor or "", (1, 0))  # an unknown anchor: the composer says so
        self._add(values, text, event)

    def _open_collection(self, event: yaml.CollectionStartEvent) -> None:
        if len(self.open) >= MAX_DEPTH:
            raise self._error(
                f"the YAML is nested more than {MAX_DEPTH} levels deep; a storages file needs only a few "
                "levels: flatten it",
                event,
            )
        self.open.append((event.anchor, self.values, self.text))
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self._add(1, 0, event)

    def _add(self, values: int, text: int, event: yaml.Event) -> None:
        self.values += values
        self.text += text
        if self.values > MAX_VALUES:
            raise self._too_much(f"{MAX_VALUES:,} values", event)
        if self.text > MAX_TEXT:
            raise self._too_much(f"{MAX_TEXT:,} characters of text", event)

    def _too_much(self, what: str, event: yaml.Event) -> ConfigurationError:
        return self._error(
            f"the YAML holds more than {what} once its aliases are expanded (each *alias counts as a copy "
            "of what it names); a storages file needs far fewer: remove the aliases that multiply it",
            event,
        )

    def _error(self, problem: str, event: yaml.Event) -> ConfigurationError:
        mark = event.start_mark
        return ConfigurationError(problem, source=self.source, line=mark.line + 1 if mark else None)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The node's value; a value YAML cannot build (a date that does not exist...) names its line."""
        try:
            return super().construct_object(node, deep=deep)
        except (ConfigurationError, yaml.YAMLError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to build a plain value is the file's
            tag = "!!" + node.tag.removeprefix(_YAML_TAG) if node.tag.startswith(_YAML_TAG) else node.tag
            value = repr(shortened(node.value, _QUOTED_VALUE)) if isinstance(node, yaml.ScalarNode) else ""
            raise ConfigurationError(
                f"cannot read the value {value} as {tag} ({describe_exception(exc)}); "
                "fix it, or quote it to keep it as text",
                source=self.source,
                line=_line(node),
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedDict:  # type: ignore[override]
        duplicates = self._duplicate_keys(node)
        self.flatten_mapping(node)
        mapping = LocatedDict()
        mapping.line = _line(node)
        mapping.key_lines = {}
        mapping.duplicates = duplicates
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigurationError(
                    "a mapping key must be a plain scalar; write the key as text",
                    source=self.source,
                    line=_line(key_node),
                )
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = _line(key_node)
        return mapping

    def _duplicate_keys(self, node: yaml.MappingNode) -> list[tuple[Any, int, int]]:
        first_seen: dict[Any, int] = {}
        duplicates = []
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in first_seen:
                duplicates.append((key, _line(key_node), first_seen[key]))
            else:
                first_seen[key] = _line(key_node)
        return duplicates

    def construct_located_sequence(self, node: yaml.SequenceNode) -> LocatedList:
        sequence = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        sequence.line = _line(node)
        sequence.item_lines = [_line(child) for child in node.value]
        return sequence


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_mapping)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_located_sequence)


def duplicate_key(value: Any) -> tuple[Any, int, int] | None:
    """The first key written twice anywhere inside ``value`` (a parsed document or part of one)."""
    if isinstance(value, LocatedDict):
        if value.duplicates:
            return value.duplicates[0]
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = duplicate_key(child)
        if found:
            return found
    return None


def read_yaml_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of ``path``, a regular file of at most ``limit`` bytes of UTF-8, else ``ConfigurationError``.

    Nothing but a regular file is opened (a FIFO would block, a device never ends), and no more than
    ``limit + 1`` bytes are read, whatever size the file claims to have.
    """
    source = str(path)
    try:
        _check_file(os.stat(path), source, limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            _check_file(os.fstat(fd), source, limit)  # the file opened, should the path have changed
            data = _read_at_most(fd, limit + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ConfigurationError(
            "storages file not found; pass the path of an existing YAML file", source=source
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the storages file ({describe_exception(exc)}); check its path and permissions",
            source=source,
        ) from None
    if len(data) > limit:
        raise _too_large(f"holds more than {limit:,} bytes", source, limit)
    return _decoded(data, source)


def _check_file(status: os.stat_result, source: str, limit: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((kind for test, kind in _NOT_REGULAR if test(status.st_mode)), "of an unknown kind")
        raise ConfigurationError(
            f"not a regular file ({kind}); pass the path of the storages YAML file", source=source
        )
    if status.st_size > limit:
        raise _too_large(f"is {status.st_size:,} bytes", source, limit)


def _too_large(what: str, source: str, limit: int) -> ConfigurationError:
    mebibytes = f" ({limit >> 20} MiB)" if limit and not limit % (1 << 20) else ""
    return ConfigurationError(
        f"the file {what} and a storages file may have at most {limit:,} bytes{mebibytes}; "
        "check that this is the right file, or keep the storages in a file of their own",
        source=source,
    )


def _read_at_most(fd: int, count: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _decoded(data: bytes, source: str) -> str:
    """UTF-8 text with universal newlines (as ``Path.read_text`` gives)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8",
            source=source,
            line=data.count(b"\n", 0, exc.start) + 1,
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_yaml_file(path: Path) -> Any:
    """Parse ``path`` as one safe YAML document, raising ``ConfigurationError`` on any problem."""
    source = str(path)
    text = read_yaml_text(path)
    try:
        loader = _LocatingLoader(text, source)
    except yaml.reader.ReaderError as exc:  # the reader checks every character first
        raise _unacceptable_character(exc, text, source) from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        if exc.context_mark and mark and exc.context_mark.line != mark.line:
            problem += f" (it starts on line {exc.context_mark.line + 1})"
        raise ConfigurationError(
            f"invalid YAML: {problem}; fix the syntax (safe YAML only, no Python tags)",
            source=source,
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.reader.ReaderError as exc:
        raise _unacceptable_character(exc, text, source) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"invalid YAML: {exc}; fix the syntax", source=source) from None
    finally:
        loader.dispose()


def _unacceptable_character(exc: yaml.reader.ReaderError, text: str, source: str) -> ConfigurationError:
    """A character YAML allows nowhere, with its line and column."""
    position, code = int(exc.position), int(exc.character)
    column = position - text.rfind("\n", 0, position)
    kind = "control character" if unicodedata.category(chr(code)) == "Cc" else "character"
    escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ConfigurationError(
        f"invalid YAML: {kind} U+{code:04X} in column {column} is not allowed anywhere, not even in a "
        f"comment; remove it (in a double-quoted string write it as {escape})",
        source=source,
        line=text.count("\n", 0, position) + 1,
    )
