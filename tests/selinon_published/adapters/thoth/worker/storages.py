"""Stand-in for thoth-station/selinon-worker's ``thoth.worker.storages``: test data, not their code.

Minimal, and shaped like theirs where the worker meets it (tests/selinon_published/README.md): the class
names their nodes.yml names, their constructor (every option required), ``{VAR}`` references expanded
with ``str.format`` at connect, the client in ``.ceph``, made at connect and read by ``is_connected``.
Theirs keep documents in Ceph through thoth-storages, by package name; these keep each record as one JSON
object at ``{prefix}{class name}/{task_id}`` in the bucket, and ``retrieve`` reads it back (several of
theirs raise NotImplementedError there), so that the round trip runs through the worker.
"""

from __future__ import annotations

import os
from typing import Any

from selinon import DataStorage

from tests.selinon_published.standin_s3 import client, ensure_bucket, get_json, put_json


class CephWorkerStorageBase(DataStorage):  # type: ignore[misc]
    """The base of every thoth storage."""

    def __init__(
        self, bucket: str, prefix: str, aws_access_key_id: str, aws_secret_access_key: str, s3_endpoint: str
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix
        self.aws_access_key_id = aws_access_key_id
        self.aws_secret_access_key = aws_secret_access_key
        self.s3_endpoint = s3_endpoint
        self.ceph: Any = None

    def connect(self) -> None:
        env = os.environ
        self.bucket = self.bucket.format(**env)
        self.prefix = self.prefix.format(**env)
        self.ceph = client(
            self.s3_endpoint.format(**env),
            self.aws_access_key_id.format(**env),
            self.aws_secret_access_key.format(**env),
            None,
        )
        ensure_bucket(self.ceph, self.bucket)

    def is_connected(self) -> bool:
        return self.ceph is not None

    def disconnect(self) -> None:
        self.ceph = None

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}{type(self).__name__}/{task_id}"

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        return put_json(self.ceph, self.bucket, self._key(task_id), result)

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        return get_json(self.ceph, self.bucket, self._key(task_id))


class PyPIKeywordsStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Keywords from PyPI."""


class StackOverflowKeywordsStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Keywords from Stack Overflow."""


class AggregatedKeywordsStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Keywords of both."""


class Project2VecModelStore(CephWorkerStorageBase):  # type: ignore[misc]
    """A project2vec model."""


class ProjectInfoStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Project information from PyPI."""


class ReadmeStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Project READMEs."""


class GitHubInfoStore(CephWorkerStorageBase):  # type: ignore[misc]
    """Project information from GitHub."""


class TravisLogsStorage(CephWorkerStorageBase):  # type: ignore[misc]
    """Travis CI logs."""
