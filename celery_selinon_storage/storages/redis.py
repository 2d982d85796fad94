"""``RedisStorage``: each result is one JSON string under a namespaced key."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..secrets import mask_url
from .base import JsonStorage, Record, require_positive, require_utf8
from .json_text import from_json
from .selinon_layout import as_int, result_field, selinon_json, selinon_record


class RedisStorage(JsonStorage):
    """Results under ``{key_prefix}{task_id}``, optionally expiring after ``ttl`` seconds.

    One round trip per call (``SET … EX``, ``GET``, ``DEL``). redis-py's client and its connection
    pool are thread-safe, and green under eventlet's and gevent's monkey-patching.
    """

    concurrency_safe = True
    transient_errors = (redis.ConnectionError, redis.TimeoutError, ConnectionError)
    # redis-py reports a wrong password or a missing ACL permission as a ConnectionError
    permanent_errors = (redis.AuthenticationError, redis.exceptions.AuthorizationError)

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        charset: str = "utf-8",
        url: str | None = None,
        ssl: bool = False,
        ssl_ca_certs: str | None = None,
        socket_timeout: float | None = None,
        socket_connect_timeout: float | None = None,
        key_prefix: str = "selinon:",
        ttl: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        require_utf8("charset", charset)
        require_positive("ttl", ttl, "number of seconds")
        self.key_prefix = key_prefix
        self.ttl = ttl
        self._timeouts = (socket_timeout, socket_connect_timeout)
        self._client_options: dict[str, Any] = {
            "max_connections": max_connections,
            # one retry layer, ours: redis-py's own (3 retries by default, also of a wrong password)
            # would multiply the attempts the storage's retry: policy allows
            "retry": Retry(NoBackoff(), 0),
        }
        self._url = url
        if url is not None:
            self._target = mask_url(url)
        else:
            self._target = f"{'rediss' if ssl else 'redis'}://{host}:{port}/{db}"
            self._client_options.update(
                host=host, port=port, db=db, password=password, username=username, ssl=ssl
            )
            if ssl_ca_certs:
                self._client_options["ssl_ca_certs"] = ssl_ca_certs

    def __repr__(self) -> str:
        return f"RedisStorage({self._target!r}, key_prefix={self.key_prefix!r}, ttl={self.ttl!r})"

    def _open(self) -> redis.Redis:
        socket_timeout, connect_timeout = self._timeouts
        # None: each wait gets the try's share of the storage's timeout
        options = {
            **self._client_options,
            "socket_timeout": socket_timeout or self.wait_timeout,
            "socket_connect_timeout": connect_timeout or self.wait_timeout,
        }
        if options["max_connections"] is None:
            if self._url:
                return redis.Redis.from_url(self._url, **options)
            return redis.Redis(**options)
        # A capped pool that blocks: a caller beyond the cap waits (a try's share of the timeout) for a
        # connection to come back, where redis-py's default pool would fail it at once.
        pool_options = {**options, "timeout": self.wait_timeout}
        if pool_options.pop("ssl", False):
            pool_options["connection_class"] = redis.SSLConnection
        pool = (
            redis.BlockingConnectionPool.from_url(self._url, **pool_options)
            if self._url
            else redis.BlockingConnectionPool(**pool_options)  # type: ignore[no-untyped-call]
        )
        return redis.Redis(connection_pool=pool, retry=options["retry"])

    def _verify(self, handle: redis.Redis) -> None:
        handle.ping()

    def _write(self, record: Record) -> str:
        key = self.key_prefix + record.task_id
        self.handle().set(key, record.data, ex=self.ttl)
        return key

    def _read(self, task_id: str) -> bytes | None:
        found: bytes | None = self.handle().get(self.key_prefix + task_id)
        return found

    def _remove(self, task_id: str) -> bool:
        return bool(self.handle().delete(self.key_prefix + task_id))


class SelinonRedisStorage(RedisStorage):
    """Selinon's Redis adapter on current redis-py: its options, and its data layout, so that workers still
    on Selinon's adapter and this one share the records.

    The record is Selinon's: JSON ``{node_args, flow_name, task_name, task_id, result}`` under the bare task
    id, no expiry. Serves ``selinon.storages.redis.Redis`` (Selinon 1.4),
    ``selinonlib.storages.redis.RedisStorage`` and Selinon 0.x's
    ``selinon.storage.redisStorage.RedisStorage``.
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | str = 6379,
        db: int | str = 0,
        password: str | None = None,
        socket_timeout: float | None = None,
        connection_pool: Any = None,
        charset: str | None = None,
        errors: str | None = None,
        unix_socket_path: str | None = None,
    ) -> None:
        super().__init__(
            host=host or "localhost",
            port=as_int("port", port),
            db=as_int("db", db),
            password=password,
            socket_timeout=socket_timeout,
            charset=charset or "utf-8",
            key_prefix="",
        )

    def __repr__(self) -> str:
        return f"SelinonRedisStorage({self._target!r})"

    def _write(self, record: Record) -> str:
        self.handle().set(record.task_id, selinon_json(selinon_record(record)))
        return record.task_id

    def _result_of(self, found: Any, task_id: str) -> Any:
        return result_field(self.label, task_id, from_json(found))
