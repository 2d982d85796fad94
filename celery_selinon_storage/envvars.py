"""Environment references in configuration text: this package's ``${VAR}`` and Selinon's ``{VAR}``.

``${VAR}`` and ``${VAR:-default}`` are read in every option (``$$`` is a literal dollar). Selinon's own
adapters read ``{VAR}`` with ``str.format(**os.environ)`` in some of their options (``{{`` and ``}}`` are
literal braces there); those options, when a built-in storage serves an entry that names Selinon's class,
are read the same way (``braces="selinon"``). The built-in storages' own options refuse a ``{VAR}``-shaped
reference instead of taking it literally (``braces="refuse"``); a custom class gets its braces as written
(``braces="literal"``), since it may format them itself, as Selinon's adapters did.

Text that came from the environment is never scanned again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

#: How braces are read: as written, as Selinon's ``str.format(**os.environ)``, or refused when they look
#: like one of Selinon's references.
Braces = Literal["literal", "selinon", "refuse"]

#: ``$$`` is a literal dollar; ``${NAME}`` and ``${NAME:-default}`` are references.
_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
#: The same, and Selinon's: ``{{`` and ``}}`` are braces, ``{field}`` is a reference, a lone brace an error.
_SELINON_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{|\{\{|\}\}|\{(?P<field>[^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What a Selinon reference to an environment variable looks like, outside a ``${...}``: ``{REDIS_HOST}``
#: (upper case, as environment variables are named; ``{tag}`` in a Redis key prefix stays text).
_SELINON_LOOKALIKE = re.compile(r"(?<!\$)\{_*[A-Z][A-Z0-9_]*\}")

#: The options that Selinon 1.4's adapters read with ``str.format(**os.environ)`` (class path -> options).
SELINON_FORMATTED_OPTIONS: Mapping[str, frozenset[str]] = {
    "selinon.storages.redis.Redis": frozenset({"host", "port", "db", "password"}),
    "selinon.storages.mongodb.MongoDB": frozenset({"host", "port", "db_name", "collection_name"}),
    "selinon.storages.postgresql.PostgreSQL": frozenset({"connection_string"}),
    "selinon.storages.s3.S3": frozenset(
        {
            "bucket",
            "location",
            "use_ssl",
            "endpoint_url",
            "aws_access_key_id",
            "aws_secret_access_key",
            "region_name",
        }
    ),
    "selinon.storages.filesystem.Filesystem": frozenset({"path"}),
}


class ExpandedText(str):
    """Text that came (wholly) from an environment variable, so it may stand for a number."""


class InvalidReference(ValueError):
    """A reference is malformed or names an unset variable (the message says which one, by position)."""


def has_reference(text: str) -> bool:
    """Whether ``text`` contains a ``${...}`` reference (or ``$$``) to expand."""
    return "$" in text and _REFERENCE.search(text) is not None


def expand(text: str, environ: Mapping[str, str], *, braces: Braces = "literal") -> str:
    """Replace every reference in ``text``; the result is ``ExpandedText`` when it was one whole reference.

    An error message never quotes the text (it may be a secret written with a stray ``$`` or brace): it
    says which reference is wrong, by position, and what to write instead.
    """
    if braces == "selinon":
        return expand_selinon_format(text, environ)
    if braces == "refuse":
        refuse_selinon_format(text)
    if not has_reference(text):
        return text
    return _Expansion(text, environ, _REFERENCE).run()


def expand_selinon_format(text: str, environ: Mapping[str, str]) -> str:
    """``text`` read as Selinon's adapters read an option (``text.format(**os.environ)``), and ``${...}``.

    One pass over the text as written in the file: ``{NAME}`` and ``${NAME}`` are replaced, ``{{``, ``}}``
    and ``$$`` become ``{``, ``}`` and ``$``; nothing that came from the environment is scanned again.
    Use it, in place of ``expand``, for the options Selinon's adapter formatted
    (``SELINON_FORMATTED_OPTIONS``). Raises ``InvalidReference`` as ``expand`` does.
    """
    if "$" not in text and "{" not in text and "}" not in text:
        return text
    return _Expansion(text, environ, _SELINON_REFERENCE).run()


def refuse_selinon_format(text: str) -> None:
    """Raise ``InvalidReference`` if ``text`` holds a ``{NAME}`` reference of Selinon's form."""
    if "{" not in text:
        return
    outside = _REFERENCE.sub(lambda match: "$" if match.group(0) == "$$" else " ", text)
    if _SELINON_LOOKALIKE.search(outside):
        raise InvalidReference(
            "the value holds a {NAME} reference (Selinon's form), which built-in storages do not read; "
            "write ${NAME} or ${NAME:-default} instead (a literal {NAME} can come from a variable: ${VAR})"
        )


class _Expansion:
    """One pass of ``pattern`` over ``text``, counting references for the messages."""

    def __init__(self, text: str, environ: Mapping[str, str], pattern: re.Pattern[str]) -> None:
        self.text, self.environ, self.pattern = text, environ, pattern
        self.count = sum(1 for match in pattern.finditer(text) if _is_reference(match))
        self.position = 0

    def run(self) -> str:
        expanded = self.pattern.sub(self._replace, self.text)
        whole = self.pattern.fullmatch(self.text)
        if whole is not None and _is_reference(whole):
            return ExpandedText(expanded)
        return expanded

    def _replace(self, match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("$$", "{{", "}}"):
            return token[0]
        if token.startswith("$"):
            self.position += 1
            return self._ours(match.group("body"))
        if match.group("field") is not None:
            self.position += 1
            return self._selinons(match.group("field"))
        raise InvalidReference(
            "a single { or } is not valid where options are read as Selinon read them (str.format); "
            "write {{ or }} for a literal brace"
        )

    def _ours(self, body: str | None) -> str:
        which = self._which("${...}")
        if body is None:
            raise InvalidReference("'${' is not closed; write ${NAME} or $$ for a literal dollar")
        name, has_default, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            raise InvalidReference(
                f"{which} is not valid; write ${{NAME}} or ${{NAME:-default}} (NAME made "
                "of letters, digits and _, not starting with a digit), or $$ for a literal dollar"
            )
        if name in self.environ:
            return self.environ[name]
        if has_default:
            return default
        raise InvalidReference(
            f"{which} names an environment variable that is not set; set the variable, "
            "or write ${NAME:-default} to give a default, or $$ for a literal dollar"
        )

    def _selinons(self, field: str) -> str:
        which = self._which("{...}")
        if _NAME.fullmatch(field):
            if field in self.environ:
                return self.environ[field]
            raise InvalidReference(
                f"{which} names an environment variable that is not set; set the variable, "
                "or write ${NAME:-default} to give a default, or {{ and }} for literal braces"
            )
        try:  # {NAME[0]}, {NAME!r}, {NAME:>9}: what str.format makes of them
            return ("{" + field + "}").format_map(self.environ)
        except KeyError:
            raise InvalidReference(
                f"{which} names an environment variable that is not set; set the variable, "
                "or write ${NAME:-default} to give a default, or {{ and }} for literal braces"
            ) from None
        except Exception:  # noqa: BLE001 - IndexError, ValueError, AttributeError: one line, not the text
            raise InvalidReference(
                f"{which} is not valid; write {{NAME}} or ${{NAME}} (NAME made of letters, digits and _), "
                "or {{ and }} for literal braces"
            ) from None

    def _which(self, kind: str) -> str:
        """Which reference of the text, without quoting it: "the 2nd ${...} reference (of 3)"."""
        if self.count == 1:
            return f"the {kind} reference"
        position = self.position
        suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
        return f"the {position}{suffix} {kind} reference (of {self.count})"


def _is_reference(match: re.Match[str]) -> bool:
    return match.group(0) not in ("$$", "{{", "}}")
