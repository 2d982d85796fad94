"""Stand-in for fabric8-analytics-worker's ``f8a_worker.storages``: test data, not their code.

Minimal, and shaped like theirs where the worker meets it (tests/selinon_published/README.md): the class
names their nodes.yml names and their constructors. PostgreSQL: the URL's ``{VAR}`` references expanded at
construction, a libpq URL (``?sslmode=disable``), the connection in ``.session`` (theirs: a SQLAlchemy
session shared by the class). S3: the environment before the YAML (``AWS_S3_*``, ``S3_ENDPOINT_URL`` in
unclouded mode), ``bucket_name`` expanded, both keys required, the client in ``._s3``, the bucket made at
connect. Theirs keep rows in their ORM tables and objects by analysis; these keep each record by task id
(a table ``standin_<their table>``, an object ``{task_id}.json``), and ``store``/``retrieve`` work on
every class (the S3 base of theirs raises NotImplementedError), so that the round trip runs through the
worker.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import psycopg
from selinon import DataStorage

from tests.selinon_published.standin_s3 import client, ensure_bucket, get_json, put_json


class PostgresBase(DataStorage):  # type: ignore[misc]
    """Results in one PostgreSQL table."""

    table = ""

    def __init__(self, connection_string: str, encoding: str = "utf-8", echo: bool = False) -> None:
        super().__init__()
        self.connection_string = connection_string.format(**os.environ)
        self.session: Any = None

    def connect(self) -> None:
        self.session = psycopg.connect(self.connection_string, autocommit=True)
        with contextlib.suppress(psycopg.errors.UniqueViolation):  # another process made it first
            self.session.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (task_id text PRIMARY KEY, result jsonb)"
            )

    def is_connected(self) -> bool:
        return self.session is not None

    def disconnect(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        self.session.execute(
            f"INSERT INTO {self.table} VALUES (%s, %s::jsonb) "
            "ON CONFLICT (task_id) DO UPDATE SET result = excluded.result",
            (task_id, json.dumps(result)),
        )
        return task_id

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        row = self.session.execute(
            f"SELECT result FROM {self.table} WHERE task_id = %s", (task_id,)
        ).fetchone()
        return None if row is None else row[0]


class BayesianPostgres(PostgresBase):  # type: ignore[misc]
    """Results of the analyses of package versions."""

    table = "standin_worker_results"


class PackagePostgres(PostgresBase):  # type: ignore[misc]
    """Results of the analyses of packages."""

    table = "standin_package_worker_results"


class AmazonS3(DataStorage):  # type: ignore[misc]
    """One bucket of S3 objects."""

    def __init__(
        self,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        bucket_name: str | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        use_ssl: bool = False,
        encryption: str | bool | None = None,
        versioned: bool | None = None,
    ) -> None:
        super().__init__()
        env = os.environ
        self.region_name = env.get("AWS_S3_REGION") or region_name
        self._aws_access_key_id = env.get("AWS_S3_ACCESS_KEY_ID") or aws_access_key_id
        self._aws_secret_access_key = env.get("AWS_S3_SECRET_ACCESS_KEY") or aws_secret_access_key
        if env.get("F8A_UNCLOUDED_MODE", "").lower() in ("1", "true", "yes"):
            endpoint_url = env.get("S3_ENDPOINT_URL") or endpoint_url
        self.endpoint_url = endpoint_url
        self.bucket_name = (bucket_name or "").format(**env)
        if not self._aws_access_key_id or not self._aws_secret_access_key:
            raise ValueError("AWS configuration not provided correctly, both key id and key is needed")
        self._s3: Any = None

    def connect(self) -> None:
        self._s3 = client(
            self.endpoint_url, self._aws_access_key_id, self._aws_secret_access_key, self.region_name
        )
        ensure_bucket(self._s3, self.bucket_name)

    def is_connected(self) -> bool:
        return self._s3 is not None

    def disconnect(self) -> None:
        self._s3 = None

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        return put_json(self._s3, self.bucket_name, f"{task_id}.json", result)

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        return get_json(self._s3, self.bucket_name, f"{task_id}.json")


class S3TempArtifacts(AmazonS3):  # type: ignore[misc]
    """Artifacts that expire after ``days_to_expire``; the other options are AmazonS3's."""

    def __init__(self, *, days_to_expire: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.days_to_expire = days_to_expire


class S3Artifacts(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3Data(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3PackageData(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3Manifests(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3MavenIndex(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3Readme(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3UserProfileStore(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3CrowdSourceTags(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3RepositoryDescription(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3UserIntent(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3ManualTagging(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3IssuesPRs(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3GitHub(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3MetaData(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""


class S3InItData(AmazonS3):  # type: ignore[misc]
    """One of the buckets the nodes.yml names."""
