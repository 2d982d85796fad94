"""``MongoStorage``: one document per task id in a MongoDB collection."""

from __future__ import annotations

from typing import Any

import pymongo
import pymongo.errors
import pymongo.uri_parser

from ..errors import OptionProblem, ResultTooLargeError
from .base import JsonStorage, Record

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
        server_selection_timeout_ms: int | None = None,
        max_pool_size: int = 100,
    ) -> None:
        if not db_name or not collection_name:
            raise OptionProblem("db_name" if not db_name else "collection_name", "must not be empty")
        self.db_name = db_name
        self.collection_name = collection_name
        self._server_selection_timeout_ms = server_selection_timeout_ms
        self._client_options: dict[str, Any] = {
            "maxPoolSize": max_pool_size,
            "tls": tls,
            # one retry layer, ours (the storage's retry: policy), not the driver's under it
            "retryWrites": False,
            "retryReads": False,
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

    def __repr__(self) -> str:
        return (
            f"MongoStorage({self._target!r}, db_name={self.db_name!r}, "
            f"collection_name={self.collection_name!r})"
        )

    def _open(self) -> Any:
        # each wait (server selection, connect, a reply) gets the try's share of the storage's timeout,
        # unless server_selection_timeout_ms says otherwise for all of them
        wait_ms = self._server_selection_timeout_ms or max(1, round(self.wait_timeout * 1000))
        return pymongo.MongoClient(
            self._hosts,
            serverSelectionTimeoutMS=wait_ms,
            connectTimeoutMS=wait_ms,
            socketTimeoutMS=wait_ms,
            **self._client_options,
        )

    def _verify(self, handle: Any) -> None:
        handle.admin.command("ping")

    def _collection(self) -> Any:
        return self.handle()[self.db_name][self.collection_name]

    def _write(self, record: Record) -> str:
        document = {
            "_id": record.task_id,
            "flow_name": record.flow_name,
            "task_name": record.task_name,
            "result": record.text,
        }
        try:
            self._collection().replace_one({"_id": record.task_id}, document, upsert=True)
        except pymongo.errors.DocumentTooLarge:
            hint = "MongoDB documents hold at most 16 MiB: store less"
            raise ResultTooLargeError(self.label, record.task_id, len(record.data), _MAX_BSON, hint) from None
        return record.task_id

    def _read(self, task_id: str) -> str | None:
        found = self._collection().find_one({"_id": task_id}, {"result": 1})
        return None if found is None else str(found["result"])

    def _remove(self, task_id: str) -> bool:
        return bool(self._collection().delete_one({"_id": task_id}).deleted_count)
