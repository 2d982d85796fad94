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
    """SafeLoader that refuses duplicate keys and keeps line numbers.

    Safe: only plain YAML types are built; a ``!!python/...`` tag is an error.
    """

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedDict:  # type: ignore[override]
        self._refuse_duplicate_keys(node)
        self.flatten_mapping(node)
        mapping = LocatedDict()
        mapping.line = _line(node)
        mapping.key_lines = {}
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

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first_seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in first_seen:
                raise ConfigurationError(
                    f"key {key!r} is written twice in one mapping (first on line {first_seen[key]}); "
                    "keep only one of them",
                    source=self.source,
                    line=_line(key_node),
                )
            first_seen[key] = _line(key_node)

    def construct_located_sequence(self, node: yaml.SequenceNode) -> LocatedList:
        sequence = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        sequence.line = _line(node)
        sequence.item_lines = [_line(child) for child in node.value]
        return sequence


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_mapping)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_located_sequence)


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
        raise ConfigurationError(
            f"invalid YAML: {problem}; fix the syntax (safe YAML only, no Python tags)",
            source=source,
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"invalid YAML: {exc}; fix the syntax", source=source) from None
    finally:
        loader.dispose()
