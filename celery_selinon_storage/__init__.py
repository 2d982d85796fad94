"""Per-process, guarded Selinon storages owned by the Celery worker.

What users call: ``install`` (or ``StorageStep``), ``get_storage``, ``open_storages``, the errors and
the built-in adapters. Everything else stays importable from its module and is not part of the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bootstep import StorageStep, install
from .errors import (
    ConfigurationError,
    InvalidRecordError,
    MissingResultError,
    ResultNotSerializableError,
    ResultTooLargeError,
    StorageClosedError,
    StorageError,
    StorageNotFoundError,
    StorageOwnedError,
    StoragesNotStartedError,
    StorageUnavailableError,
    WrongProcessError,
)
from .lifecycle import get_storage, open_storages
from .selinon_alias import offer_builtins_to_selinon
from .storages import BUILTIN_STORAGES, builtin_storage_class

__all__ = [
    "ConfigurationError",
    "InvalidRecordError",
    "MissingResultError",
    "ResultNotSerializableError",
    "ResultTooLargeError",
    "StorageClosedError",
    "StorageError",
    "StorageNotFoundError",
    "StorageOwnedError",
    "StorageStep",
    "StorageUnavailableError",
    "StoragesNotStartedError",
    "WrongProcessError",
    "get_storage",
    "install",
    "open_storages",
]

# The seed's form, `import: selinon.storage` + `classname: RedisStorage`, also in Selinon's own loader.
offer_builtins_to_selinon()


# The adapters: type checkers see the registry module's; at run time each is imported on first use.
if TYPE_CHECKING:
    from .storages import *  # noqa: F403
else:

    def __getattr__(name: str) -> Any:
        """The built-in adapters, imported on first use (each needs its driver)."""
        if name in BUILTIN_STORAGES:
            return builtin_storage_class(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
