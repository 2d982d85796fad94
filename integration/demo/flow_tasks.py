"""The demo's Selinon flow: each task reads its parent's result back from the storage."""

from __future__ import annotations

import os
from typing import Any

from selinon import SelinonTask


class Square(SelinonTask):  # type: ignore[misc]
    """n -> n²."""

    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        return {"n": node_args["n"], "value": node_args["n"] ** 2, "pids": [os.getpid()]}


class Increment(SelinonTask):  # type: ignore[misc]
    """n² -> n² + 1, reading Square's result from the storage."""

    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        parent = self.parent_task_result("Square")
        return {**parent, "value": parent["value"] + 1, "pids": [*parent["pids"], os.getpid()]}


class Report(SelinonTask):  # type: ignore[misc]
    """The final record, reading Increment's result from the storage."""

    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        parent = self.parent_task_result("Increment")
        return {**parent, "pids": [*parent["pids"], os.getpid()]}
