"""Reading the annotations of an adapter's ``__init__``: the one walker that the option checker and
the JSON Schema share."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

#: Parameters that can be given by name (the options a storages file can set).
NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def init_type_hints(cls: type) -> dict[str, Any]:
    """The annotations of ``cls.__init__``, resolved one by one (worked out once per class).

    Names are looked up where the function was written (through ``functools.wraps`` decorators), then in
    the class that defines ``__init__``. An annotation that cannot be resolved (a name imported only for
    type checkers, say) is left out, and only its own check is lost: never the others.
    """
    return dict(_resolved_hints(cls))


@functools.lru_cache(maxsize=1024)
def _resolved_hints(cls: type) -> dict[str, Any]:
    init = cls.__init__  # type: ignore[misc]
    function = inspect.unwrap(init)
    annotations = getattr(function, "__annotations__", None) or getattr(init, "__annotations__", None)
    if not isinstance(annotations, Mapping):
        return {}
    globalns: dict[str, Any] = getattr(function, "__globals__", {})
    owner = next((c for c in cls.__mro__ if "__init__" in vars(c)), cls)
    class_scope = {**vars(owner), owner.__name__: owner}
    hints: dict[str, Any] = {}
    for name, written in annotations.items():
        resolved = _resolved(name, written, globalns, None)
        if resolved is _UNRESOLVED:
            resolved = _resolved(name, written, globalns, class_scope)
        if resolved is not _UNRESOLVED:
            hints[name] = resolved
    return hints


_UNRESOLVED = object()


def _resolved(name: str, written: Any, globalns: dict[str, Any], localns: dict[str, Any] | None) -> Any:
    """One annotation evaluated as ``typing.get_type_hints`` does it, or ``_UNRESOLVED``."""
    holder = types.SimpleNamespace(__annotations__={name: written})
    try:
        return typing.get_type_hints(holder, globalns=globalns, localns=localns)[name]
    except Exception:  # noqa: BLE001 - NameError, SyntaxError, TypeError...: this option goes unchecked
        return _UNRESOLVED


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
