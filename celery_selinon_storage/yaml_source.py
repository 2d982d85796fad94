"""Safe YAML that remembers where each mapping and key was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigurationError

_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def load_yaml_file(path: Path) -> Any:
    """Parse ``path`` as one safe YAML document, raising ``ConfigurationError`` on any problem."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            "storages file not found; pass the path of an existing YAML file", source=source
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read the storages file ({type(exc).__name__}: {exc}); check its path and permissions",
            source=source,
        ) from None
    loader = _LocatingLoader(text, source)
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
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"invalid YAML: {exc}; fix the syntax", source=source) from None
    finally:
        loader.dispose()
