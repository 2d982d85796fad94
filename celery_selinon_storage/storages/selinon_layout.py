"""What Selinon 1.4's own adapters write, shared by the built-ins' variants that keep their layout.

Selinon encodes with ``json.dumps`` and its defaults: ASCII escapes and ``", "``/``": "`` separators. The
variants write the same bytes (NaN and infinities still refused), so old and new workers can share a store.
"""

from __future__ import annotations

from typing import Any

from ..errors import OptionProblem
from .base import Record
from .json_text import json_encoder, to_json

#: ``json.dumps`` as Selinon calls it, minus NaN and infinities (refused before any I/O by ``record``).
selinon_json = json_encoder(ensure_ascii=True, separators=(", ", ": "))


def node_args_data(node_args: Any) -> Any:
    """Node arguments as JSON data: themselves when JSON holds them, else their text (they are informational;
    Selinon's adapters fail on them)."""
    try:
        to_json(node_args).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return ascii(node_args)
    return node_args


def selinon_record(record: Record) -> dict[str, Any]:
    """The whole record, in the order Selinon's Redis adapter writes its fields."""
    return {
        "node_args": node_args_data(record.node_args),
        "flow_name": record.flow_name,
        "task_name": record.task_name,
        "task_id": record.task_id,
        "result": record.result,
    }


def result_field(label: str, task_id: str, record: Any) -> Any:
    """The ``result`` of a record in Selinon's layout, or ``ValueError`` naming what was found instead."""
    if not isinstance(record, dict) or "result" not in record:
        raise ValueError(
            f"storage {label!r}: the record of task id {task_id!r} is not in Selinon's layout (it has no "
            "'result' field); another program wrote that key"
        )
    return record["result"]


def as_int(option: str, value: int | str) -> int:
    """An integer option that Selinon's adapters also took as text (``port: '6379'``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise OptionProblem(option, f"must be an integer, not {value!r}; fix its value") from None
