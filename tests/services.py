"""Reach the real servers the tests need; under CI a missing server fails the test instead of skipping it."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

REDIS_URL = os.environ.setdefault("CSS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get("CSS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("CSS_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
#: Set these to use servers of your own (docker-compose.yml) instead of the ones the tests start.
MONGO_URI = os.environ.get("CSS_TEST_MONGO_URI")
S3_ENDPOINT = os.environ.get("CSS_TEST_S3_ENDPOINT")
#: Any keys do for moto_server; MinIO wants its root user's (minioadmin/minioadmin in docker-compose.yml).
S3_KEYS: dict[str, Any] = {
    "aws_access_key_id": os.environ.get("CSS_TEST_S3_ACCESS_KEY", "test"),
    "aws_secret_access_key": os.environ.get("CSS_TEST_S3_SECRET_KEY", "test-secret-key"),
}


def require_server(url: str, what: str) -> str:
    """Return ``url`` if its host:port accepts a TCP connection, else skip (fail under CI)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=3):
            pass
    except OSError as exc:
        message = f"{what} at {parts.hostname}:{parts.port} is not reachable ({exc}); start it (see README)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return url
