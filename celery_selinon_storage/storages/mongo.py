"""``MongoStorage``: one document per task id in a MongoDB collection."""

from __future__ import annotations

import json
from typing import Any

from .drivers import require

require("pymongo", "mongo")

import pymongo  # noqa: E402
import pymongo.errors  # noqa: E402
import pymongo.uri_parser  # noqa: E402

from ..errors import ResultTooLargeError  # noqa: E402
from ..options import OptionProblem  # noqa: E402
from .base import JsonStorage  # noqa: E402

_MAX_BSON = 16 * 1024 * 1024


class MongoStorage(JsonStorage):
    """Documents ``{_id: task_id, flow_name, task_name, result}``; ``_id`` is the unique index.

    The result is kept as JSON text so that anything JSON can hold round-trips exactly (integers
    beyond 64 bits, keys with ``.`` or ``$``), within MongoDB's 16 MB document limit. One round trip
    per call. ``MongoClient`` is thread-safe and pools its connections.
    """

    concurrency_safe = True
    transient_errors = (pymongo.errors.ConnectionFailure, ConnectionError)

    def __init__(
        self,
        db_name: str,
        collection_name: str,
        *,
        host: str = "localhost",
        port: int = 27017,
        uri: str | None = None,
        username: str | None = None,
        password: str | None = None,
        auth_source: str | None = None,
        tls: bool = False,
        server_selection_timeout_ms: int = 5000,
        max_pool_size: int = 100,
    ) -> None:
        if not db_name or not collection_name:
            raise OptionProblem("db_name" if not db_name else "collection_name", "must not be empty")
        self.db_name = db_name
        self.collection_name = collection_name
        self._client_options: dict[str, Any] = {
            "serverSelectionTimeoutMS": server_selection_timeout_ms,
            "maxPoolSize": max_pool_size,
            "tls": tls,
        }
        if username is not None:
            self._client_options.update(username=username, password=password)
        if auth_source is not None:
            self._client_options["authSource"] = auth_source
        if uri is not None:
            try:
                parsed = pymongo.uri_parser.parse_uri(uri)
            except Exception:  # noqa: BLE001 - the driver's message may quote the URI, password included
                raise OptionProblem(
                    "uri", "is not a MongoDB URI; write mongodb://user:password@host:port/"
                ) from None
            self._target = "mongodb://" + ",".join(f"{h}:{p}" for h, p in parsed["nodelist"])
            self._hosts: str | list[str] = uri
        else:
            self._target = f"mongodb://{host}:{port}"
            self._hosts = f"{host}:{port}"
        self._client: Any = None
        self._collection: Any = None

    def __repr__(self) -> str:
        return (
            f"MongoStorage({self._target!r}, db_name={self.db_name!r}, "
            f"collection_name={self.collection_name!r})"
        )

    def connect(self) -> None:
        client: Any = pymongo.MongoClient(self._hosts, **self._client_options)
        try:
            client.admin.command("ping")
        except BaseException:
            client.close()
            raise
        self._client = client
        self._collection = client[self.db_name][self.collection_name]

    def is_connected(self) -> bool:
        return self._client is not None

    def disconnect(self) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            client.close()

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        text = self.dumps(task_id, result)
        document = {"_id": task_id, "flow_name": flow_name, "task_name": task_name, "result": text}
        try:
            self._connected().replace_one({"_id": task_id}, document, upsert=True)
        except pymongo.errors.DocumentTooLarge:
            hint = "MongoDB documents hold at most 16 MiB: store less"
            raise ResultTooLargeError(self.label, task_id, len(text.encode()), _MAX_BSON, hint) from None
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        found = self._connected().find_one({"_id": task_id}, {"result": 1})
        if found is None:
            raise self.missing(task_id)
        return json.loads(found["result"])

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        if self._connected().delete_one({"_id": task_id}).deleted_count == 0:
            raise self.missing(task_id)

    def _connected(self) -> Any:
        if self._collection is None:
            raise self.not_connected()
        return self._collection
