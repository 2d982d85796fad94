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
    """A reference is malformed or names an unset variable (message says which)."""


def has_reference(text: str) -> bool:
    """Whether ``text`` contains anything to expand."""
    return "$" in text and _REFERENCE.search(text) is not None


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace every reference in ``text``; the result is ``ExpandedText`` when it was one whole reference."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        body = match.group("body")
        if body is None:
            raise InvalidReference("'${' is not closed; write ${NAME} or $$ for a literal dollar")
        name, has_default, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            raise InvalidReference(
                f"'${{{body}}}' is not a valid reference; write ${{NAME}} or ${{NAME:-default}}"
            )
        if name in environ:
            return environ[name]
        if has_default:
            return default
        raise InvalidReference(
            f"environment variable {name} is not set; set it or write ${{{name}:-default}}"
        )

    expanded = _REFERENCE.sub(replace, text)
    if _REFERENCE.fullmatch(text) and text != "$$":
        return ExpandedText(expanded)
    return expanded
