"""``S3Storage``: one JSON object per task id in an S3 bucket (AWS, MinIO, any S3 API)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import urllib3.exceptions

from ..errors import InvalidRecordError, OptionProblem, ResultNotSerializableError
from ..secrets import mask_url
from .base import JsonStorage, Record
from .json_text import from_json
from .selinon_layout import selinon_json

T = TypeVar("T")
R = TypeVar("R")

#: The longest object key S3 accepts, in bytes.
_MAX_KEY_BYTES = 1024

#: The most user metadata (names and values) S3 keeps with an object, in bytes.
_MAX_METADATA_BYTES = 2048

#: S3 refuses a LocationConstraint for its default region: the bucket is created without one there.
_DEFAULT_REGION = "us-east-1"

#: botocore logs request headers, the access key id among them, at DEBUG: these loggers are kept at
#: INFO unless the user set a level for them.
_CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer")


class S3Storage(JsonStorage):
    """Objects at ``{key_prefix}{task_id}.json`` (content type ``application/json``), flow and task
    names as object metadata. The bucket is created at connect if absent, in any region.

    One request per store and retrieve; delete asks first whether the object exists (S3 deletes
    missing keys silently). boto3 clients are thread-safe.
    """

    concurrency_safe = True
    # botocore's network errors: connect errors and timeouts, a connection closed mid-reply, a read
    # timeout (the last two are HTTPClientErrors; the plain HTTPClientError is unwrapped, see _unwrapped)
    transient_errors = (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ResponseStreamingError,
        # a connection lost while the body is read comes through botocore unwrapped
        urllib3.exceptions.ProtocolError,
        ConnectionError,
    )

    def __init__(
        self,
        *,
        bucket: str | None = None,
        bucket_name: str | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        location: str | None = None,
        use_ssl: bool = True,
        key_prefix: str = "selinon/",
        create_bucket: bool = True,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_pool_connections: int = 10,
    ) -> None:
        if endpoint_url is not None and urlsplit(endpoint_url).username is not None:
            raise OptionProblem(
                "endpoint_url",
                "holds credentials; put them in aws_access_key_id and aws_secret_access_key instead",
            )
        if bool(bucket) == bool(bucket_name):
            raise OptionProblem(
                "bucket", "give the bucket's name once, as bucket: (bucket_name: is its alias)"
            )
        self.bucket = bucket or bucket_name or ""
        self.endpoint_url = endpoint_url
        self.region_name = region_name or location
        self.location = location or region_name
        self.key_prefix = key_prefix
        self.create_bucket = create_bucket
        self._client_options: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": self.region_name,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
            "use_ssl": use_ssl,
        }
        self._timeouts = (connect_timeout, read_timeout)
        self._max_pool_connections = max_pool_connections

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self.bucket!r}, endpoint_url={mask_url(self.endpoint_url or '') or None!r}, "
            f"region_name={self.region_name!r})"
        )

    def key(self, task_id: str) -> str:
        """The object key of ``task_id`` (S3 keys hold at most 1,024 bytes of UTF-8)."""
        key = f"{self.key_prefix}{task_id}.json"
        if len(key.encode()) > _MAX_KEY_BYTES:
            raise InvalidRecordError(
                f"storage {self.label!r} refuses task id {task_id[:40]!a}...: its object key would be "
                f"{len(key.encode()):,} bytes and S3 keys hold at most {_MAX_KEY_BYTES:,}; use a shorter id "
                "or key_prefix"
            )
        return key

    def _open(self) -> Any:
        connect_timeout, read_timeout = self._timeouts
        config = botocore.config.Config(
            # None: each wait gets the try's share of the storage's timeout
            connect_timeout=connect_timeout or self.wait_timeout,
            read_timeout=read_timeout or self.wait_timeout,
            max_pool_connections=self._max_pool_connections,
            # one retry layer, ours (the storage's retry: policy), not botocore's under it
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        client = boto3.session.Session().client("s3", config=config, **self._client_options)
        # botocore asks for "100 Continue" before a body and waits up to 1 s for it, on top of the
        # read timeout; a result is small enough to send at once
        client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        return client

    def _verify(self, handle: Any) -> None:
        with _unwrapped():
            if self.create_bucket:
                self._ensure_bucket(handle)
            else:
                handle.head_bucket(Bucket=self.bucket)

    def _exchange(self, io: Callable[[T], R], argument: T) -> R:
        with _unwrapped():
            return super()._exchange(io, argument)

    def _write(self, record: Record) -> str:
        key = self.key(record.task_id)
        self.handle().put_object(
            Bucket=self.bucket,
            Key=key,
            Body=record.data,
            ContentType="application/json",
            Metadata=_names_metadata(record.flow_name, record.task_name),
        )
        return key

    def _read(self, task_id: str) -> bytes | None:
        client = self.handle()
        try:
            found = client.get_object(Bucket=self.bucket, Key=self.key(task_id))
        except client.exceptions.NoSuchKey:
            return None
        body: bytes = found["Body"].read()
        return body

    def _remove(self, task_id: str) -> bool:
        client = self.handle()
        key = self.key(task_id)
        try:
            client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def _ensure_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            if _status(exc) != 404:
                raise
        options: dict[str, Any] = {"Bucket": self.bucket}
        if self.location and self.location != _DEFAULT_REGION:
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.location}
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # another process was first
            client.create_bucket(**options)


def _status(error: botocore.exceptions.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _names_metadata(flow_name: str, task_name: str) -> dict[str, str]:
    """Flow and task names as object metadata: percent-encoded UTF-8 (S3 metadata is ASCII), and left
    out when they would pass S3's 2 KB limit on user metadata (they are informational)."""
    metadata = {"flow-name": quote(flow_name), "task-name": quote(task_name)}
    size = sum(len(key) + len(value) for key, value in metadata.items())
    return metadata if size <= _MAX_METADATA_BYTES else {}


@contextlib.contextmanager
def _unwrapped() -> Iterator[None]:
    """botocore wraps any unexpected exception of a request, a time limit included, in a plain
    ``HTTPClientError``: raise the original, so that a soft time limit stays a time limit and a bug
    is not taken for a network error."""
    try:
        yield
    except botocore.exceptions.HTTPClientError as wrapper:
        original = wrapper.kwargs.get("error")
        if type(wrapper) is botocore.exceptions.HTTPClientError and isinstance(original, BaseException):
            raise original from None
        raise


def _quiet_chatty_loggers() -> None:
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class SelinonS3Storage(S3Storage):
    """Selinon 1.4's S3 adapter on current boto3: its options, and its data layout, so that workers still on
    Selinon's adapter and this one share the objects.

    The object key is the bare task id. With ``serialize_json`` the body is the result as JSON (Selinon's
    encoding); without it, the result is stored as given and must be bytes, as in Selinon. A missing bucket
    is created in ``location`` (in us-east-1 too, which Selinon's adapter could not do). Serves
    ``selinon.storages.s3.S3`` and selinonlib's ``S3`` (the same without ``serialize_json``).
    """

    def __init__(
        self,
        *,
        bucket: str,
        location: str | None = None,
        endpoint_url: str | None = None,
        use_ssl: bool | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        region_name: str | None = None,
        serialize_json: bool = False,
    ) -> None:
        super().__init__(
            bucket=bucket,
            location=location,
            endpoint_url=endpoint_url,
            use_ssl=True if use_ssl is None else use_ssl,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            region_name=region_name,
            key_prefix="",
        )
        self.serialize_json = serialize_json

    def __repr__(self) -> str:
        return "Selinon" + super().__repr__()[:-1] + f", serialize_json={self.serialize_json!r})"

    def key(self, task_id: str) -> str:
        return task_id  # at most 255 characters (checked before), so within S3's 1,024 bytes

    def record(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> Record:
        if self.serialize_json:
            checked = super().record(node_args, flow_name, task_name, task_id, result)
            return checked._replace(data=selinon_json(result).encode("ascii"))
        self.check_keys(task_id, flow_name, task_name)
        if not isinstance(result, (bytes, bytearray, memoryview)):
            raise ResultNotSerializableError(
                self.label,
                task_id,
                f"it is {type(result).__name__}, and without serialize_json Selinon's S3 layout stores bytes "
                "as given; return bytes, or set serialize_json: true (every worker of the store at once)",
            )
        return Record(task_id, flow_name, task_name, node_args, result, "", bytes(result))

    def _write(self, record: Record) -> str:
        self.handle().put_object(Bucket=self.bucket, Key=self.key(record.task_id), Body=record.data)
        return record.task_id

    def _result_of(self, found: Any, task_id: str) -> Any:
        return from_json(found) if self.serialize_json else found


_quiet_chatty_loggers()  # at import: the prefork parent imports adapters when it checks the file
