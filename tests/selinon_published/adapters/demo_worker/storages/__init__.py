"""Stand-in for selinon/demo-worker's ``demo_worker.storages``: test data, not their code.

Minimal, and shaped like theirs where the worker meets it (tests/selinon_published/README.md): the class
``TravisLogsStorage`` is a subclass of Selinon 1.4's own S3 adapter, kept as it is (its import path is not
one of Selinon's), and writes through Selinon's private ``_s3`` (a boto3 resource) and ``_bucket_name``.
Theirs writes a build's log at ``travis/logs/{organization}/{repo}/2/{build}.json`` and raises
NotImplementedError in ``retrieve``; this one writes at ``travis/logs/{task_id}.json`` and reads it back,
so that the round trip runs through the worker.
"""

from __future__ import annotations

import json
from typing import Any

from selinon.storages.s3 import S3


class TravisLogsStorage(S3):  # type: ignore[misc]
    """Travis CI build logs, in S3."""

    def store(self, node_args: Any, flow_name: str, task_name: str, task_id: str, result: Any) -> str:
        key = f"travis/logs/{task_id}.json"
        self._s3.Object(self._bucket_name, key).put(Body=json.dumps(result).encode())
        return key

    def retrieve(self, flow_name: str, task_name: str, task_id: str) -> Any:
        blob = self._s3.Object(self._bucket_name, f"travis/logs/{task_id}.json").get()["Body"].read()
        return json.loads(blob)
