"""Find the secret values in a storage's options, to keep them out of anything printed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

_MASK = "***"

#: Option names whose values are secrets.
_SECRET_NAME = re.compile(r"password|secret|token|access_key|credential", re.IGNORECASE)


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """Values of secret-named options, and passwords inside URL-valued options."""
    found: list[str] = []
    for name, value in options.items():
        if not isinstance(value, str) or not value:
            continue
        if _SECRET_NAME.search(name):
            found.append(value)
        elif "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            if password:
                found.append(password)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (structurally, not by search)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:{_MASK}@{hostport}").geturl()
