"""Check a storage's configuration against its class's ``__init__`` signature."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .envvars import ExpandedText

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class OptionProblem(ValueError):
    """One option is unknown, missing, of the wrong type or of a value the adapter refuses."""

    def __init__(self, option: str | None, problem: str) -> None:
        self.option = option
        super().__init__(problem)


def check_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``options`` fit for ``cls(**options)``, or raise ``OptionProblem``.

    Text that came whole from an environment variable is converted when the annotation
    wants a number or a boolean (``port: ${REDIS_PORT:-6379}``).
    """
    signature = inspect.signature(cls)
    named = {n: p for n, p in signature.parameters.items() if p.kind in _NAMED}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    hints = init_type_hints(cls)
    accepted = ", ".join(named) or "no options"

    checked: dict[str, Any] = {}
    for option, written in options.items():
        if option not in named and not takes_any:
            raise OptionProblem(option, f"unknown option; {cls.__name__} takes: {accepted}")
        annotation = hints.get(option, Any)
        value = _from_environment(written, annotation) if isinstance(written, ExpandedText) else written
        if not _matches(value, annotation):
            raise OptionProblem(
                option,
                f"must be {_describe(annotation)}, not {_describe(type(value))}; fix its value",
            )
        checked[option] = value
    for name, parameter in named.items():
        if parameter.default is inspect.Parameter.empty and name not in checked:
            raise OptionProblem(
                name,
                f"required option is missing; add it under configuration: ({cls.__name__} takes: {accepted})",
            )
    return checked


def init_type_hints(cls: type) -> dict[str, Any]:
    """The annotations of ``cls.__init__``, resolved; empty when they cannot be."""
    try:
        hints: dict[str, Any] = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
        return hints
    except Exception:  # noqa: BLE001 - unresolvable annotations only disable type checks
        return {}


def _from_environment(text: ExpandedText, annotation: Any) -> Any:
    """Read environment text as YAML would read a scalar, unless the option wants text."""
    if _matches(str(text), annotation):
        return str(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return str(text)
    return value if isinstance(value, (int, float, bool)) or value is None else str(text)


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is not None:
        annotation = origin
    if not isinstance(annotation, type):
        return True
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (Sequence, list, tuple):
        return isinstance(value, list)
    if annotation in (Mapping, dict):
        return isinstance(value, dict)
    try:
        return isinstance(value, annotation)
    except TypeError:
        return True


_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    dict: "a mapping",
    list: "a list",
    type(None): "null",
}


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    base = origin or annotation
    if base is None:
        return "null"
    for known, name in _NAMES.items():
        if base is known or (isinstance(base, type) and known in (dict, list) and issubclass(base, known)):
            return name
    if base in (Mapping,):
        return "a mapping"
    if base in (Sequence,):
        return "a list"
    return getattr(base, "__name__", str(base))
