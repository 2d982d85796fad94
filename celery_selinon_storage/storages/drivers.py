"""Import a backend's driver, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDriverError(ImportError):
    """The driver an adapter needs is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``; if missing, raise with the ``pip install`` that fixes it."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise MissingDriverError(
            f"{module} is not installed; pip install 'celery-selinon-storage[{extra}]'"
        ) from None
    return imported
