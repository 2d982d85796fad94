"""Check a storage's configuration against its class's ``__init__`` signature.

The checker refuses only what the constructor cannot take, and hands every value on as YAML gave it
(as Selinon did), with one exception: text that stands for a number, given to an option whose annotation
wants a number and not text (``port: '5432'``, ``timeout: 1e3`` which YAML 1.1 reads as text, or
``port: ${REDIS_PORT}``), becomes that number. Environment text that is one whole ``${...}`` reference
also becomes a boolean or null where the annotation asks for one.
"""

from __future__ import annotations

import enum
import inspect
import os
import re
import typing
from collections.abc import Iterator, Mapping, MutableSet, Sequence
from collections.abc import Set as AbstractSet
from pathlib import PurePath
from typing import Any

import yaml

from .envvars import ExpandedText
from .errors import OptionProblem
from .typehints import NAMED_KINDS, base_type, init_type_hints, members

#: A number as YAML 1.2 writes it (PyYAML, a YAML 1.1 reader, reads ``1e3`` as text); ASCII digits only.
_INTEGER = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
#: Longer text is not read as a number (Python refuses to read integers of over 4300 digits).
_LONGEST_NUMBER = 1000

#: Annotations that a list stands for (YAML has no tuple or set).
_LIST_LIKE = (Sequence, list, tuple)
_SET_LIKE = (AbstractSet, MutableSet, set, frozenset)

#: How many of an Enum's values a message lists.
_SHOWN_MEMBERS = 8


def check_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``options`` fit for ``cls(**options)``, or raise ``OptionProblem``."""
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
        if option in named and named[option].default is None:
            annotation = _or_none(annotation)
        checked[option] = _fitted(option, written, annotation)
    for name, parameter in named.items():
        if parameter.default is inspect.Parameter.empty and name not in checked:
            raise OptionProblem(
                name,
                f"required option is missing; add it under configuration: ({cls.__name__} takes: {accepted})",
            )
    return checked


def _or_none(annotation: Any) -> Any:
    """``annotation | None``: PEP 484's first rule, still written by adapters (``port: int = None``)."""
    try:
        return typing.Optional[annotation]  # noqa: UP045 - works for any annotation, unlike `|`
    except TypeError:  # not an annotation typing understands: left unchecked anyway
        return annotation


def _fitted(option: str, written: Any, annotation: Any) -> Any:
    """The first reading of ``written`` that the annotation takes, or ``OptionProblem``."""
    for value in _readings(written):
        if _matches(value, annotation):
            return value
    given = "text" if isinstance(written, str) else _describe(type(written))
    raise OptionProblem(
        option, f"must be {_describe(annotation)}, not {given}; {_advice(written, annotation)}"
    )


def _readings(written: Any) -> Iterator[Any]:
    """What ``written`` can stand for, most literal first: itself, then the number its text writes;
    environment text also as YAML reads a scalar (a boolean, null)."""
    if not isinstance(written, str):
        yield written
        return
    text = str(written)
    yield text
    if isinstance(written, ExpandedText):
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, RecursionError):  # not a scalar YAML can read (2024-02-30)
            value = text
        if isinstance(value, (int, float, bool)) or value is None:
            yield value
    if len(text) <= _LONGEST_NUMBER and _INTEGER.fullmatch(text):
        yield int(text)
    elif len(text) <= _LONGEST_NUMBER and _FLOAT.fullmatch(text):
        yield float(text)


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
    return _is_instance(value, annotation)


def _is_instance(value: Any, annotation: type) -> bool:
    """Whether ``value``, as YAML gives it, is what a parameter annotated with the class takes."""
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _LIST_LIKE:
        return isinstance(value, list)
    if annotation in _SET_LIKE:
        return isinstance(value, (list, set, frozenset))
    if annotation in (Mapping, dict):
        return isinstance(value, dict)
    if issubclass(annotation, enum.Enum):
        return _names_member(value, annotation)
    if issubclass(annotation, (PurePath, os.PathLike)) and isinstance(value, str):
        return True  # handed on as text, as Selinon did: the constructor makes its Path
    try:
        return isinstance(value, annotation)
    except TypeError:
        return True


def _names_member(value: Any, annotation: type[enum.Enum]) -> bool:
    """Whether ``value`` is a member of the Enum, a member's value or a member's name."""
    if isinstance(value, annotation) or (isinstance(value, str) and value in annotation.__members__):
        return True
    if isinstance(value, (list, dict)):
        return False
    try:
        annotation(value)
    except Exception:  # noqa: BLE001 - ValueError, or whatever a custom _missing_ raises
        return False
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
        return " or ".join(dict.fromkeys(_describe(member) for member in alternatives))
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    base = base_type(annotation)
    for known, name in _NAMES.items():
        if base is known or (isinstance(base, type) and known in (dict, list) and issubclass(base, known)):
            return name
    if base in (Mapping,):
        return "a mapping"
    if base in _LIST_LIKE or base in _SET_LIKE:
        return "a list"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        values = [repr(member.value) for member in base][:_SHOWN_MEMBERS]
        more = ", ..." if len(base) > _SHOWN_MEMBERS else ""
        return f"one of {', '.join(values)}{more} (or a member's name)"
    if isinstance(base, type) and issubclass(base, (PurePath, os.PathLike)):
        return "a path (text)"
    return getattr(base, "__name__", str(base))


def _advice(written: Any, annotation: Any) -> str:
    """What to do about a value of the wrong type; never quotes it (it may be a secret)."""
    if isinstance(written, (int, float)) and _matches(str(written), annotation):
        return "put the value in quotes to give it as text"
    return "fix its value"
