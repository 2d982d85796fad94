"""Selinon's own storage class paths, served by built-in equivalents on current drivers.

The adapters of Selinon 1.4 (``selinon.storages.*``), of selinonlib and of Selinon 0.x fail on today's
redis-py, SQLAlchemy and pymongo, and selinonlib is no longer installable. An entry that names one of them
gets the built-in's variant that takes the same options and reads and writes the same data (Selinon's
layout), so that workers still on Selinon's adapters and these share one store. Neither Selinon's module
nor selinonlib is imported. To keep a class as it is, name it through a module of your own that imports it
(docs/selinon.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.utils.log import get_logger

from .storages import BUILTIN_STORAGES, require

logger = get_logger("celery_selinon_storage")

_UTF8 = "results are UTF-8 JSON"


@dataclass(frozen=True)
class Served:
    """The built-in that serves one of Selinon's classes: its variant, what it writes, what it ignores."""

    builtin: str
    variant: str
    layout: str
    #: Options of Selinon's class that change nothing here -> why.
    ignored: Mapping[str, str] = field(default_factory=dict)


_REDIS = Served(
    "RedisStorage",
    "SelinonRedisStorage",
    "key = task id, value = the whole record as JSON",
    {
        "charset": _UTF8,
        "errors": "UTF-8 JSON always decodes",
        "connection_pool": "redis-py pools its own connections",
        "unix_socket_path": "Selinon's adapter never used it either; it connects to host and port",
    },
)
_MEMORY = Served(
    "InMemoryStorage",
    "SelinonInMemoryStorage",
    "each process's records in its memory",
    {"echo": "records are not printed", "json": "records are not printed"},
)
_SQL = Served("SqlStorage", "SelinonSqlStorage", "table result", {"encoding": _UTF8})
_MONGO = Served("MongoStorage", "SelinonMongoStorage", "one document per task, found by task_id")
_S3 = Served("S3Storage", "SelinonS3Storage", "object key = task id")
_FILES = Served(
    "FilesystemStorage", "SelinonFilesystemStorage", "{path}/{flow_name}/{task_name}/{task_id}.json"
)

#: (``import:``, ``classname:``) as written in nodes.yml -> what serves it.
SELINON_CLASSES: dict[tuple[str, str], Served] = {
    # Selinon 1.4
    ("selinon.storages.redis", "Redis"): _REDIS,
    ("selinon.storages.memory", "InMemoryStorage"): _MEMORY,
    ("selinon.storages.postgresql", "PostgreSQL"): _SQL,
    ("selinon.storages.mongodb", "MongoDB"): _MONGO,
    ("selinon.storages.s3", "S3"): _S3,
    ("selinon.storages.filesystem", "Filesystem"): _FILES,
    # selinonlib (0.1.0rcN; the snake_case modules are 1.0.0rc1's)
    ("selinonlib.storages.redis", "RedisStorage"): _REDIS,
    ("selinonlib.storages.sqlStorage", "SqlStorage"): _SQL,
    ("selinonlib.storages.sql_storage", "SqlStorage"): _SQL,
    ("selinonlib.storages.mongo", "MongoStorage"): _MONGO,
    ("selinonlib.storages.s3", "S3"): _S3,
    ("selinonlib.storages.inMemoryStorage", "InMemoryStorage"): _MEMORY,
    ("selinonlib.storages.in_memory_storage", "InMemoryStorage"): _MEMORY,
    # Selinon 0.x
    ("selinon.storage.sqlStorage", "SqlStorage"): _SQL,
    ("selinon.storage.redisStorage", "RedisStorage"): _REDIS,
    ("selinon.storage.mongoStorage", "MongoStorage"): _MONGO,
}


def serving_class(module: str, classname: str) -> type | None:
    """The class that serves ``module.classname``, or None when that is not one of Selinon's classes.

    ``MissingDriverError`` (an ``ImportError``) names the extra to install when the driver is missing.
    """
    served = SELINON_CLASSES.get((module, classname))
    if served is None:
        return None
    builtin = BUILTIN_STORAGES[served.builtin]
    if builtin.driver is not None:
        require(builtin.driver, builtin.extra or "all")
    cls: type = getattr(
        importlib.import_module(builtin.module, "celery_selinon_storage.storages"), served.variant
    )
    return cls


def announce(storage: str, module: str, classname: str, configuration: Any) -> None:
    """One INFO line: which built-in serves the entry, in which layout, and which options it ignores."""
    served = SELINON_CLASSES[(module, classname)]
    given = configuration if isinstance(configuration, Mapping) else {}
    ignored = [
        f"{option}={given[option]!r} ({why})" for option, why in served.ignored.items() if option in given
    ]
    logger.info(
        "storage %r: %s.%s is served by the built-in %s in Selinon's data layout (%s)%s",
        storage,
        module,
        classname,
        served.builtin,
        served.layout,
        f"; ignored: {', '.join(ignored)}" if ignored else "",
    )
