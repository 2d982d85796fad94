"""``MongoStorage``: one document per task id in a MongoDB collection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import bson.errors
import pymongo
import pymongo.errors
import pymongo.uri_parser

from ..errors import OptionProblem, ResultNotSerializableError, ResultTooLargeError
from .base import JsonStorage, Record
from .selinon_layout import as_int, node_args_data, result_field

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

    #: (client, its collection): what ``_collection`` built for the open client
    _made_collection: tuple[Any, Any] | None = None

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
        """The collection on the open client, built once per client (building one makes a new
        ``Database`` and ``Collection`` with their options: longer than the rest of a call's own work)."""
        client = self.handle()
        made = self._made_collection
        if made is None or made[0] is not client:
            made = (client, client[self.db_name][self.collection_name])
            self._made_collection = made
        return made[1]

    def _write(self, record: Record) -> str:
        document = {
            "_id": record.task_id,
            "flow_name": record.flow_name,
            "task_name": record.task_name,
            "result": record.text,
        }
        with self._bounded(record):
            self._collection().replace_one({"_id": record.task_id}, document, upsert=True)
        return record.task_id

    @contextlib.contextmanager
    def _bounded(self, record: Record) -> Iterator[None]:
        """A document over MongoDB's limit becomes ``ResultTooLargeError``."""
        try:
            yield
        except pymongo.errors.DocumentTooLarge:
            hint = "MongoDB documents hold at most 16 MiB: store less"
            raise ResultTooLargeError(self.label, record.task_id, len(record.data), _MAX_BSON, hint) from None

    def _read(self, task_id: str) -> str | None:
        found = self._collection().find_one({"_id": task_id}, {"result": 1})
        return None if found is None else str(found["result"])

    def _remove(self, task_id: str) -> bool:
        return bool(self._collection().delete_one({"_id": task_id}).deleted_count)


class SelinonMongoStorage(MongoStorage):
    """Selinon's MongoDB adapter on current pymongo: its options, and its data layout, so that workers still
    on Selinon's adapter and this one share the records.

    One document ``{flow_name, node_args, task_name, task_id, result}`` per task, the result as native BSON
    and ``_id`` an ObjectId, found by ``task_id``. Selinon inserts, so a task stored twice by its workers
    has two documents: this adapter reads the newest (the greatest ``_id``), replaces it when it stores
    (never adding a second), and deletes them all. Serves ``selinon.storages.mongodb.MongoDB`` (Selinon
    1.4), ``selinonlib.storages.mongo.MongoStorage`` and Selinon 0.x's ``selinon.storage.mongoStorage``.
    """

    def __init__(
        self, db_name: str, collection_name: str, host: str | None = None, port: int | str = 27017
    ) -> None:
        super().__init__(db_name, collection_name, host=host or "localhost", port=as_int("port", port))

    def __repr__(self) -> str:
        return "Selinon" + super().__repr__()

    def _write(self, record: Record) -> str:
        document = {
            "flow_name": record.flow_name,
            "node_args": node_args_data(record.node_args),
            "task_name": record.task_name,
            "task_id": record.task_id,
            "result": record.result,
        }
        try:
            with self._bounded(record):
                self._collection().find_one_and_replace(
                    {"task_id": record.task_id}, document, sort=_NEWEST_FIRST, upsert=True
                )
        except (bson.errors.InvalidDocument, OverflowError) as exc:
            reason = f"Selinon's layout keeps results as BSON, which cannot hold it ({exc})"
            raise ResultNotSerializableError(self.label, record.task_id, reason) from None
        return record.task_id

    def _read(self, task_id: str) -> Any:
        return self._collection().find_one({"task_id": task_id}, {"_id": 0, "result": 1}, sort=_NEWEST_FIRST)

    def _result_of(self, found: Any, task_id: str) -> Any:
        return result_field(self.label, task_id, found)

    def _remove(self, task_id: str) -> bool:
        return bool(self._collection().delete_many({"task_id": task_id}).deleted_count)


#: The newest of a task's documents first (ObjectIds grow with the time of insertion).
_NEWEST_FIRST = [("_id", pymongo.DESCENDING)]
