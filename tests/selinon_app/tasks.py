"""A three-step Selinon flow: each task reads its parent's result through the storage."""

from __future__ import annotations

import os
from typing import Any

from selinon import SelinonTask


class Start(SelinonTask):  # type: ignore[misc]
    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        return {"value": node_args["n"], "pids": [os.getpid()]}


class Double(SelinonTask):  # type: ignore[misc]
    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        parent = self.parent_task_result("Start")
        return {"value": parent["value"] * 2, "pids": [*parent["pids"], os.getpid()]}


class AddOne(SelinonTask):  # type: ignore[misc]
    def run(self, node_args: dict[str, Any]) -> dict[str, Any]:
        parent = self.parent_task_result("Double")
        return {"value": parent["value"] + 1, "pids": [*parent["pids"], os.getpid()]}
