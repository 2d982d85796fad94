"""``RedisStorage``: each result is one JSON string under a namespaced key."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from .drivers import require

require("redis", "redis")

import redis  # noqa: E402

from ..options import OptionProblem  # noqa: E402
from .base import ClientStorage  # noqa: E402


class RedisStorage(ClientStorage):
    """Results under ``{key_prefix}{task_id}``, optionally expiring after ``ttl`` seconds.

    One round trip per call (``SET … EX``, ``GET``, ``DEL``). redis-py's client and its connection
    pool are thread-safe, and green under eventlet's and gevent's monkey-patching.
    """

    transient_errors = (redis.ConnectionError, redis.TimeoutError, ConnectionError)

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
        socket_timeout: float | None = 10.0,
        socket_connect_timeout: float | None = 5.0,
        key_prefix: str = "selinon:",
        ttl: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        if charset.replace("-", "").lower() != "utf8":
            raise OptionProblem("charset", f"{charset!r} is not supported; results are stored as UTF-8 JSON")
        if ttl is not None and ttl <= 0:
            raise OptionProblem("ttl", "must be a positive number of seconds, or null for no expiry")
        self.key_prefix = key_prefix
        self.ttl = ttl
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "max_connections": max_connections,
        }
        if url is not None:
            self._url: str | None = url
            self._target = _masked(url)
        else:
            scheme = "rediss" if ssl else "redis"
            self._url = None
            self._target = f"{scheme}://{host}:{port}/{db}"
            self._client_options.update(
                host=host, port=port, db=db, password=password, username=username, ssl=ssl
            )
            if ssl_ca_certs:
                self._client_options["ssl_ca_certs"] = ssl_ca_certs
        self._client: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisStorage({self._target!r}, key_prefix={self.key_prefix!r}, ttl={self.ttl!r})"

    def connect(self) -> None:
        client = (
            redis.Redis.from_url(self._url, **self._client_options)
            if self._url
            else redis.Redis(**self._client_options)
        )
        client.ping()
        self._client = client

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        key = self.key_prefix + task_id
        self.client().set(key, self.dumps(task_id, result), ex=self.ttl)
        return key

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        found = self.client().get(self.key_prefix + task_id)
        if found is None:
            raise self.missing(task_id)
        return json.loads(found)

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        if not self.client().delete(self.key_prefix + task_id):
            raise self.missing(task_id)


def _masked(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
