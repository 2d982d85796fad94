"""Reading the annotations of an adapter's ``__init__``: the one walker that the option checker and
the JSON Schema share."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

#: Parameters that can be given by name (the options a storages file can set).
NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def init_type_hints(cls: type) -> dict[str, Any]:
    """The annotations of ``cls.__init__``, resolved one by one; one that cannot be resolved (a name
    imported only for type checkers, say) is left out, and only its own check is lost."""
    init = cls.__init__  # type: ignore[misc]
    try:
        resolved: dict[str, Any] = typing.get_type_hints(init)
        return resolved
    except Exception:  # noqa: BLE001 - resolve what can be resolved, below
        pass
    hints: dict[str, Any] = {}
    for name, written in getattr(init, "__annotations__", {}).items():
        one = types.SimpleNamespace(__annotations__={name: written})
        try:
            hints.update(typing.get_type_hints(one, globalns=getattr(init, "__globals__", None)))
        except Exception:  # noqa: BLE001 - unresolvable: no check for this option
            continue
    return hints


def members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (``X | None``, ``Optional[X]``), or the annotation alone."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(member for arg in typing.get_args(annotation) for member in members(arg))
    return (annotation,)


def base_type(annotation: Any) -> Any:
    """``list`` for ``list[int]``, ``dict`` for ``dict[str, Any]``, the annotation itself otherwise."""
    if annotation is None:
        return type(None)
    return typing.get_origin(annotation) or annotation
