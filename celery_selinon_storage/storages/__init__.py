"""The registry of built-in adapters; each driver is imported only when its adapter is used."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MissingDriverError


@dataclass(frozen=True)
class Builtin:
    """A built-in adapter: the module that defines it, the driver it needs and the extra that installs it."""

    module: str
    driver: str | None = None
    extra: str | None = None


#: Class name -> where it lives and what it needs. The JSON Schema, the ``[extras]`` of pyproject.toml
#: (a test compares them) and the contract tests follow from this table.
BUILTIN_STORAGES: dict[str, Builtin] = {
    "InMemoryStorage": Builtin(".memory"),
    "SqlStorage": Builtin(".sql", driver="sqlalchemy", extra="sql"),
    "RedisStorage": Builtin(".redis", driver="redis", extra="redis"),
    "MongoStorage": Builtin(".mongo", driver="pymongo", extra="mongo"),
    "S3Storage": Builtin(".s3", driver="boto3", extra="s3"),
}


def builtin_storage_class(name: str) -> type:
    """Import and return the built-in adapter class called ``name``, or ``MissingDriverError``."""
    builtin = BUILTIN_STORAGES[name]
    if builtin.driver is not None:
        require(builtin.driver, builtin.extra or "all")
    module = importlib.import_module(builtin.module, __name__)
    cls: type = getattr(module, name)
    return cls


def require(driver: str, extra: str) -> None:
    """Import ``driver``; if it is missing, say which ``pip install`` adds it."""
    try:
        importlib.import_module(driver)
    except ImportError:
        raise MissingDriverError(
            f"{driver} is not installed; pip install 'celery-selinon-storage[{extra}]'"
        ) from None


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt import is an error there

    def __getattr__(name: str) -> Any:
        """``import: celery_selinon_storage.storages`` in a Selinon nodes.yml: Selinon looks the class up
        on this module."""
        if name in BUILTIN_STORAGES:
            return builtin_storage_class(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
