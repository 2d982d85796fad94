"""The one place where secrets are masked, for anything this package prints, logs or reports.

Two rules, applied by structure rather than by blind text replacement:

* In a URL, the password field of its userinfo and the value of every secret-named query (or fragment)
  parameter become ``***``; the scheme, user name (unless it is the password too), host, port, path and
  other parameters stay as written (``mask_url``).
* In free text (a driver's error message, a repr), a known secret value becomes ``***`` only where it
  stands as a whole token: not inside a longer word (``postgres`` in ``postgresql``) or number (``1`` in
  ``127.0.0.1``); the scheme, host, port and path of any URL in the text are left alone, and the URL is
  then masked as above (``scrub``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

#: What a secret is replaced with.
MASK = "***"

#: Name parts that make an option or URL parameter secret wherever they appear in its name.
SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "signature",
    "access_key",
    "api_key",
    "apikey",
    "private_key",
)

#: Words that make a name secret when they are the whole name or its last ``_`` part (``x_api_key``),
#: but not elsewhere (``key_prefix`` is not a secret).
SECRET_NAME_WORDS = ("pwd", "key")

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: hosts (IPv6 in brackets; Selinon's ``{VAR}`` and our ``${VAR}`` placeholders too), each with an
#: optional numeric port, comma-separated (MongoDB seed lists)
_HOST_PORT = r"(?:\[[0-9A-Fa-f:.%\w-]*\]|[\w.~%${}-]*)(?::\d+)?"
_PLAIN_AUTHORITY = re.compile(f"{_HOST_PORT}(?:,{_HOST_PORT})*")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
_TRAILING_PUNCTUATION = ").,;:!?]}"
_PARAMETER_SEPARATORS = "&;#"


def is_secret_name(name: str) -> bool:
    """Whether an option or URL parameter called ``name`` holds a secret (case, ``-``, camelCase ignored)."""
    normal = _CAMEL_HUMP.sub("_", name.strip()).lower().replace("-", "_")
    if any(part in normal for part in SECRET_NAME_PARTS):
        return True
    last = normal.rsplit("_", 1)[-1]
    return normal in SECRET_NAME_WORDS or last in SECRET_NAME_WORDS


# -- URLs -----------------------------------------------------------------------------------------


@dataclass
class _UrlLayout:
    """Where the parts of one URL are, as ``(start, end)`` offsets into it."""

    #: scheme with ``://``, and host, port and path: never altered by ``scrub``
    address: list[tuple[int, int]] = field(default_factory=list)
    #: the password field and the values of secret-named parameters
    secrets: list[tuple[int, int]] = field(default_factory=list)


def _layout(url: str) -> _UrlLayout:
    """Find the parts of ``url``; odd URLs are read cautiously (more masked, never an error).

    When a password with unencoded ``@``, ``/``, ``?`` or ``#`` makes the URL ambiguous, it is read both
    ways and what either reading takes for a secret is masked (the address is then not protected).
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _UrlLayout(secrets=list(_secret_parameter_values(url, 0)))
    start = scheme.end()
    strict, extended = _userinfo_ends(url, start, _first_of(url, "/?#", start))
    layout = _read_with_userinfo(url, start, strict)
    if extended == strict:
        return layout
    other = _read_with_userinfo(url, start, extended)
    return _UrlLayout(address=[(0, start)], secrets=layout.secrets + other.secrets)


def _read_with_userinfo(url: str, start: int, userinfo_end: int | None) -> _UrlLayout:
    """The layout of ``url`` whose userinfo (if any) runs from ``start`` to ``userinfo_end``."""
    layout = _UrlLayout()
    host_start = start
    if userinfo_end is not None:
        layout.secrets += _password_spans(url, start, userinfo_end)
        host_start = userinfo_end + 1 if url.startswith("@", userinfo_end) else userinfo_end
    layout.address += [(0, start), (host_start, _first_of(url, "?#", host_start))]
    layout.secrets += _secret_parameter_values(url, host_start)
    return layout


def _password_spans(url: str, start: int, end: int) -> list[tuple[int, int]]:
    """The password field of the userinfo ``url[start:end]``, and the user name when it is the same."""
    colon = url.find(":", start, end)
    if colon < 0 or colon + 1 == end:
        return []
    if url[start:colon] == url[colon + 1 : end]:
        return [(start, colon), (colon + 1, end)]
    return [(colon + 1, end)]


def _userinfo_ends(url: str, start: int, end: int) -> tuple[int | None, int | None]:
    """Where the userinfo ends (its ``@``), read as a standard parser does, and read allowing for a
    password with unencoded ``@``, ``/``, ``?`` or ``#``; None without userinfo.

    The authority runs from ``start`` to ``end``. One that is no plain ``host:port`` and holds no ``@``
    is a cut-short ``user:password``: its userinfo ends at ``end``.
    """
    at = url.rfind("@", start, end)
    if at >= 0:
        strict: int | None = at
    else:
        strict = None if _PLAIN_AUTHORITY.fullmatch(url, start, end) else end
    later = [index for index in range(end, len(url)) if url[index] == "@"]
    if not later or (at < 0 and ":" not in url[start:end]):
        return strict, strict
    for candidate in reversed(later):
        host_end = _first_of(url, "/?#", candidate + 1)
        if host_end > candidate + 1 and _PLAIN_AUTHORITY.fullmatch(url, candidate + 1, host_end):
            return strict, candidate
    return strict, strict if at >= 0 else later[-1]


def _secret_parameter_values(url: str, tail: int) -> Iterator[tuple[int, int]]:
    """Spans of the values of secret-named parameters in the query and fragment after ``tail``.

    Items without ``=`` right after such a value are taken as more of it (an unencoded ``&``, ``;`` or
    ``#`` in a password).
    """
    position = _first_of(url, "?#", tail)
    value_start: int | None = None
    while position < len(url):
        start = position + 1
        position = _first_of(url, _PARAMETER_SEPARATORS, start)
        equals = url.find("=", start, position)
        if value_start is not None and equals < 0:
            continue  # more of the secret value
        if value_start is not None:
            yield value_start, start - 1
            value_start = None
        if equals > start and equals + 1 < position and is_secret_name(unquote_plus(url[start:equals])):
            value_start = equals + 1
    if value_start is not None:
        yield value_start, len(url)


def _first_of(text: str, characters: str, start: int) -> int:
    """Offset of the first of ``characters`` in ``text`` from ``start``, or ``len(text)``."""
    found = [index for index in (text.find(c, start) for c in characters) if index >= 0]
    return min(found, default=len(text))


def _replace(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span (overlapping ones merged) replaced by ``MASK``."""
    pieces: list[str] = []
    done = 0
    for start, end in _merged(spans):
        pieces += [text[done:start], MASK]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(span for span in spans if span[1] > span[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def mask_url(url: str) -> str:
    """``url`` with its password and secret-named parameter values replaced by ``***``.

    Scheme, user name (unless it is the password too), host, port, path and the other parameters stay as
    written. Never raises: text that is no URL comes back unchanged, and should reading the URL fail,
    ``scheme://***`` comes back.
    """
    try:
        return _replace(url, _layout(url).secrets)
    except Exception:  # noqa: BLE001 - masking must never be the thing that fails
        scheme = _SCHEME.match(url) if isinstance(url, str) else None
        return (scheme.group(0) if scheme else "") + MASK


def url_secrets(url: str) -> list[str]:
    """The password and secret parameter values written in ``url``, as written and decoded."""
    found: list[str] = []
    try:
        spans = _layout(url).secrets
    except Exception:  # noqa: BLE001
        return [url]
    for start, end in spans:
        written = url[start:end]
        found += [written, unquote(written), unquote_plus(written)]
    return _unique(found)


# -- options --------------------------------------------------------------------------------------


def public_target(adapter: Any) -> str:
    """What may be shown of an adapter: a built-in's repr (its URLs masked by structure), else only its
    class (another class's repr is not trusted)."""
    cls = type(adapter)
    if getattr(cls, "masks_its_repr", False):
        return scrub(repr(adapter), [])  # every URL in it masked by its structure
    return f"{cls.__module__}.{cls.__qualname__}"


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """Every secret in a storage's options: values of secret-named options (nested mappings and lists
    included) and the passwords and secret parameter values of URLs in any text option."""
    found: list[str] = []
    for name, value in options.items():
        _collect(str(name), value, is_secret_name(str(name)), found)
    return _unique(found)


def _collect(name: str, value: Any, secret: bool, found: list[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect(str(key), item, secret or is_secret_name(str(key)), found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(name, item, secret, found)
    elif isinstance(value, str):
        if secret and value.strip():
            found.append(value)
        if "://" in value or "?" in value:
            found += url_secrets(value)
    elif secret and isinstance(value, (int, float)) and not isinstance(value, bool):
        found.append(str(value))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value.strip() and value != MASK))


# -- free text ------------------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret masked where it stands as a whole token, and every URL in it masked.

    A secret inside a longer word or number is left alone (``postgres`` in ``postgresql``, ``1`` in
    ``127.0.0.1``), and so is one that is (a part of) the scheme, host, port or path of a URL; secrets are
    also found percent-encoded and escaped as in a repr or JSON.
    """
    urls = [(match.start(), _url_end(match)) for match in _URL_IN_TEXT.finditer(text)]
    spans: list[tuple[int, int]] = []
    address: list[tuple[int, int]] = []
    for start, end in urls:
        layout = _layout(text[start:end])
        spans += [(start + a, start + b) for a, b in layout.secrets]
        address += [(start + a, start + b) for a, b in layout.address]
    spans += _token_spans(_variants(secrets), text, address)
    return _replace(text, spans)


def _url_end(match: re.Match[str]) -> int:
    """Where a URL found in text ends: closing punctuation of the sentence is not part of it."""
    end = match.end()
    while end > match.start() and match.string[end - 1] in _TRAILING_PUNCTUATION:
        end -= 1
    return end


def _token_spans(secrets: Iterable[str], text: str, address: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where each secret stands as a whole token in ``text``, except wholly inside one ``address`` span."""
    return [
        match.span()
        for secret in secrets
        for match in _token_pattern(secret).finditer(text)
        if not any(start <= match.start() and match.end() <= end for start, end in address)
    ]


def _variants(secrets: Iterable[str]) -> set[str]:
    """Each secret as written, percent-encoded, and escaped as in a repr or a JSON string."""
    found: set[str] = set()
    for written in secrets:
        secret = str(written)
        if not secret.strip() or secret == MASK:
            continue
        found |= {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
        found.add(repr(secret)[1:-1])
    return found


@functools.lru_cache(maxsize=256)
def _token_pattern(secret: str) -> re.Pattern[str]:
    """``secret`` as a pattern that does not match inside a longer word or number."""
    before = after = ""
    if _is_word(secret[0]):
        before = r"(?<!\w)" + (r"(?<!\d\.)" if secret[0].isdigit() else "")
    if _is_word(secret[-1]):
        after = r"(?!\w)" + (r"(?!\.\d)" if secret[-1].isdigit() else "")
    return re.compile(before + re.escape(secret) + after)


def _is_word(character: str) -> bool:
    return character.isalnum() or character == "_"
