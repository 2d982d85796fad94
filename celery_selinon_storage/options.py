"""Check a storage's configuration against its class's ``__init__`` signature."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .envvars import ExpandedText
from .errors import OptionProblem
from .typehints import NAMED_KINDS, base_type, init_type_hints, members


def check_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``options`` fit for ``cls(**options)``, or raise ``OptionProblem``.

    Text that came whole from an environment variable is converted when the annotation
    wants a number or a boolean (``port: ${REDIS_PORT:-6379}``).
    """
    signature = inspect.signature(cls)
    named = {n: p for n, p in signature.parameters.items() if p.kind in NAMED_KINDS}
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


def _from_environment(text: ExpandedText, annotation: Any) -> Any:
    """Read environment text as YAML would read a scalar, unless the option wants text."""
    if _matches(str(text), annotation):
        return str(text)
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # not a scalar YAML can read (2024-02-30): text
        return str(text)
    return value if isinstance(value, (int, float, bool)) or value is None else str(text)


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return True
    alternatives = members(annotation)
    if len(alternatives) > 1:
        return any(_matches(value, member) for member in alternatives)
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    annotation = base_type(annotation)
    if annotation is type(None):
        return value is None
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
    alternatives = members(annotation)
    if len(alternatives) > 1:
        return " or ".join(_describe(member) for member in alternatives)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    base = base_type(annotation)
    for known, name in _NAMES.items():
        if base is known or (isinstance(base, type) and known in (dict, list) and issubclass(base, known)):
            return name
    if base in (Mapping,):
        return "a mapping"
    if base in (Sequence,):
        return "a list"
    return getattr(base, "__name__", str(base))
