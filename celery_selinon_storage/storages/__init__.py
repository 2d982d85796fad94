"""The built-in adapters; each driver is imported only when its adapter is used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .memory import InMemoryStorage
    from .mongo import MongoStorage
    from .redis import RedisStorage
    from .s3 import S3Storage
    from .sql import SqlStorage

#: Class name -> module (relative to this package) that defines it.
BUILTIN_STORAGES: dict[str, str] = {
    "InMemoryStorage": ".memory",
    "SqlStorage": ".sql",
    "RedisStorage": ".redis",
    "MongoStorage": ".mongo",
    "S3Storage": ".s3",
}

__all__ = [
    "BUILTIN_STORAGES",
    "InMemoryStorage",
    "MongoStorage",
    "RedisStorage",
    "S3Storage",
    "SqlStorage",
    "builtin_storage_class",
]


def builtin_storage_class(name: str) -> type:
    """Import and return the built-in adapter class called ``name``."""
    module = importlib.import_module(BUILTIN_STORAGES[name], __name__)
    cls: type = getattr(module, name)
    return cls


def __getattr__(name: str) -> Any:
    if name in BUILTIN_STORAGES:
        return builtin_storage_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
