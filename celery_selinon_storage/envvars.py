"""``${VAR}`` and ``${VAR:-default}`` references in configuration text."""

from __future__ import annotations

import re
from collections.abc import Mapping

#: ``$$`` is a literal dollar; ``${NAME}`` and ``${NAME:-default}`` are references.
_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpandedText(str):
    """Text that came (wholly) from an environment variable, so it may stand for a number."""


class InvalidReference(ValueError):
    """A reference is malformed or names an unset variable (the message says which one, by position)."""


def has_reference(text: str) -> bool:
    """Whether ``text`` contains anything to expand."""
    return "$" in text and _REFERENCE.search(text) is not None


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace every reference in ``text``; the result is ``ExpandedText`` when it was one whole reference.

    An error message never quotes the text (it may be a secret written with a stray ``$``): it says which
    reference is wrong, by position, and what to write instead.
    """
    count = sum(1 for match in _REFERENCE.finditer(text) if match.group(0) != "$$")
    position = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal position
        if match.group(0) == "$$":
            return "$"
        position += 1
        body = match.group("body")
        if body is None:
            raise InvalidReference("'${' is not closed; write ${NAME} or $$ for a literal dollar")
        name, has_default, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            raise InvalidReference(
                f"{_which(position, count)} is not valid; write ${{NAME}} or ${{NAME:-default}} (NAME made "
                "of letters, digits and _, not starting with a digit), or $$ for a literal dollar"
            )
        if name in environ:
            return environ[name]
        if has_default:
            return default
        raise InvalidReference(
            f"{_which(position, count)} names an environment variable that is not set; set the variable, "
            "or write ${NAME:-default} to give a default, or $$ for a literal dollar"
        )

    expanded = _REFERENCE.sub(replace, text)
    if _REFERENCE.fullmatch(text) and text != "$$":
        return ExpandedText(expanded)
    return expanded


def _which(position: int, count: int) -> str:
    """Which reference of the text, without quoting it: "the ${...} reference (of 3)"."""
    if count == 1:
        return "the ${...} reference"
    suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
    return f"the {position}{suffix} ${{...}} reference (of {count})"
