"""``S3Storage``: one JSON object per task id in an S3 bucket (AWS, MinIO, any S3 API)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from .drivers import require

require("boto3", "s3")

import boto3  # noqa: E402
import botocore.config  # noqa: E402
import botocore.exceptions  # noqa: E402

from ..options import OptionProblem  # noqa: E402
from .base import ClientStorage  # noqa: E402

#: S3 refuses a LocationConstraint for its default region: the bucket is created without one there.
_DEFAULT_REGION = "us-east-1"


class S3Storage(ClientStorage):
    """Objects at ``{key_prefix}{task_id}.json`` (content type ``application/json``), flow and task
    names as object metadata. The bucket is created at connect if absent, in any region.

    One request per store and retrieve; delete asks first whether the object exists (S3 deletes
    missing keys silently). boto3 clients are thread-safe.
    """

    transient_errors = (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
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
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_pool_connections: int = 10,
    ) -> None:
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
            "config": botocore.config.Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max_pool_connections,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        }
        self._client: Any = None

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r}, "
            f"region_name={self.region_name!r})"
        )

    def key(self, task_id: str) -> str:
        """The object key of ``task_id``."""
        return f"{self.key_prefix}{task_id}.json"

    def connect(self) -> None:
        client = boto3.session.Session().client("s3", **self._client_options)
        try:
            if self.create_bucket:
                self._ensure_bucket(client)
            else:
                client.head_bucket(Bucket=self.bucket)
        except BaseException:
            client.close()
            raise
        self._client = client

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        body = self.dumps(task_id, result).encode()
        key = self.key(task_id)
        self.client().put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            Metadata={"flow-name": flow_name, "task-name": task_name},
        )
        return key

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        client = self.client()
        try:
            found = client.get_object(Bucket=self.bucket, Key=self.key(task_id))
        except client.exceptions.NoSuchKey:
            raise self.missing(task_id) from None
        return json.loads(found["Body"].read())

    def delete(self, flow_name: str, task_name: str, task_id: str) -> None:
        client = self.client()
        key = self.key(task_id)
        try:
            client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404:
                raise self.missing(task_id) from None
            raise
        client.delete_object(Bucket=self.bucket, Key=key)

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
