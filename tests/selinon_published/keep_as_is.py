"""A project's own module that imports Selinon's classes: naming them through it keeps them as they are
(docs/selinon.md, "Keeping a class as it is")."""

from selinon.storages.memory import InMemoryStorage
from selinon.storages.redis import Redis

__all__ = ["InMemoryStorage", "Redis"]
