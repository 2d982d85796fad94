"""The registry of built-in adapters; each driver is imported only when its adapter is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import MissingDriverError

#: The options of a storage on a server at ``url``, its records kept apart under ``namespace``.
OptionsFor = Callable[[str, str], dict[str, Any]]


@dataclass(frozen=True)
class Builtin:
    """A built-in adapter: the module that defines it, the driver it needs and the extra that installs it."""

    module: str
    driver: str | None = None
    extra: str | None = None
    #: Kind of server (``postgresql``, ``redis``, ...) -> the options of a storage on one such server,
    #: its records under a namespace (a table, a key prefix, a collection, a bucket). The contract tests
    #: run every built-in adapter on every kind of server named here.
    servers: Mapping[str, OptionsFor] = field(default_factory=dict)


def _sql(url: str, namespace: str) -> dict[str, Any]:
    return {"connection_string": url, "table_name": namespace}


#: Class name -> where it lives and what it needs. The JSON Schema, the ``[extras]`` of pyproject.toml
#: (a test compares them) and the contract tests follow from this table.
BUILTIN_STORAGES: dict[str, Builtin] = {
    "InMemoryStorage": Builtin(".memory", servers={"memory": lambda url, namespace: {}}),
    "SqlStorage": Builtin(
        ".sql",
        driver="sqlalchemy",
        extra="sql",
        servers={"sqlite": _sql, "postgresql": _sql, "mariadb": _sql},
    ),
    "RedisStorage": Builtin(
        ".redis",
        driver="redis",
        extra="redis",
        servers={"redis": lambda url, namespace: {"url": url, "key_prefix": f"{namespace}:", "ttl": 600}},
    ),
    "MongoStorage": Builtin(
        ".mongo",
        driver="pymongo",
        extra="mongo",
        servers={
            "mongo": lambda url, namespace: {"uri": url, "db_name": "css_tests", "collection_name": namespace}
        },
    ),
    "FilesystemStorage": Builtin(
        ".filesystem", servers={"filesystem": lambda url, namespace: {"path": f"{url}/{namespace}"}}
    ),
    "S3Storage": Builtin(
        ".s3",
        driver="boto3",
        extra="s3",
        servers={
            "s3": lambda url, namespace: {
                "endpoint_url": url,
                "bucket": namespace,
                "region_name": "eu-central-1",
                "use_ssl": url.startswith("https:"),
            }
        },
    ),
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


# What type checkers see of the adapters (a test keeps these equal to the registry above); at run time
# each is imported on first use, by __getattr__, with its driver.
if TYPE_CHECKING:
    from .filesystem import FilesystemStorage as FilesystemStorage
    from .memory import InMemoryStorage as InMemoryStorage
    from .mongo import MongoStorage as MongoStorage
    from .redis import RedisStorage as RedisStorage
    from .s3 import S3Storage as S3Storage
    from .sql import SqlStorage as SqlStorage
else:  # hidden from type checkers, so that a misspelt import is an error there

    def __getattr__(name: str) -> Any:
        """``import: celery_selinon_storage.storages`` in a Selinon nodes.yml: Selinon looks the class up
        on this module."""
        if name in BUILTIN_STORAGES:
            return builtin_storage_class(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
