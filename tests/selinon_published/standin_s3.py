"""What the S3-backed stand-ins share: a client, a bucket made if absent, one JSON object per record."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

import boto3
import botocore.exceptions


@functools.cache
def client(endpoint_url: str | None, key_id: str | None, secret: str | None, region: str | None) -> Any:
    """A boto3 S3 client (the endpoint of the test's S3 server); one per process and settings (boto3's
    clients are thread-safe, and making one takes a tenth of a second)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region or "us-east-1",
    )


def ensure_bucket(s3: Any, bucket: str) -> None:
    """Make ``bucket`` unless it is there (several entries share one; another process may be first)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)


def put_json(s3: Any, bucket: str, key: str, value: Any) -> str:
    """Write ``value`` as JSON at ``key``; returns the key."""
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(value).encode())
    return key


def get_json(s3: Any, bucket: str, key: str) -> Any:
    """The JSON object at ``key``."""
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
