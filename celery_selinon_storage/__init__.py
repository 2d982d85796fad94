"""Per-process, guarded Selinon storages owned by the Celery worker."""

from __future__ import annotations

from .bootstep import STORAGES_ENV, STORAGES_SETTING, StorageStep, install, storages_option
from .errors import (
    ConfigurationError,
    MissingResultError,
    ResultNotSerializableError,
    ResultTooLargeError,
    StorageClosedError,
    StorageError,
    StorageNotFoundError,
    StoragesNotStartedError,
    StorageUnavailableError,
    WrongProcessError,
)
from .guards import GuardKind
from .lifecycle import ProcessStorages, get_storage, open_storages
from .managed import ManagedStorage
from .specs import StorageSpec, load_storages

__all__ = [
    "STORAGES_ENV",
    "STORAGES_SETTING",
    "ConfigurationError",
    "GuardKind",
    "ManagedStorage",
    "MissingResultError",
    "ProcessStorages",
    "ResultNotSerializableError",
    "ResultTooLargeError",
    "StorageClosedError",
    "StorageError",
    "StorageNotFoundError",
    "StorageSpec",
    "StorageStep",
    "StorageUnavailableError",
    "StoragesNotStartedError",
    "WrongProcessError",
    "get_storage",
    "install",
    "load_storages",
    "open_storages",
    "storages_option",
]
