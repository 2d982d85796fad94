"""The demo's filesystem broker never hands a consumer a message file that is still being written."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.transport import filesystem
from kombu.utils.json import dumps as kombu_dumps

from integration.demo import transport

KOMBU_FILESYSTEM = "filesystem"
DEMO_FILESYSTEM = "integration.demo.transport:Transport"


def slow_dumps(payload: Any) -> str:
    """Serialise like kombu, slowly, as a large message does on a busy machine."""
    time.sleep(1.0)
    return str(kombu_dumps(payload))  # type: ignore[no-untyped-call]


def put_while_consuming(folder: Path, transport_path: str) -> Any:
    """Put one message from a thread while the consumer polls; return what the consumer received."""
    # kombu keeps declared exchanges in class-level state, so each test uses its own queue name.
    name = f"demo-{uuid.uuid4().hex}"
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder)}
    consumer_options = {**options, "polling_interval": 0.01}
    with Connection(  # type: ignore[no-untyped-call]
        "filesystem://", transport=transport_path, transport_options=options
    ) as producer_connection:
        producer = producer_connection.SimpleQueue(name)
        sender = threading.Thread(target=producer.put, args=({"n": 7},))
        with Connection(  # type: ignore[no-untyped-call]
            "filesystem://", transport=transport_path, transport_options=consumer_options
        ) as connection:
            queue = connection.SimpleQueue(name)
            sender.start()
            try:
                message = queue.get(timeout=5)
                message.ack()
                return message.payload
            finally:
                sender.join()


def test_kombus_own_filesystem_channel_hands_out_a_file_before_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproducer: kombu 5 creates the file, then serialises into it; a consumer can take it empty."""
    monkeypatch.setattr(filesystem, "dumps", slow_dumps)
    with pytest.raises(json.JSONDecodeError):
        put_while_consuming(tmp_path, KOMBU_FILESYSTEM)


def test_the_demo_channel_renames_a_message_into_the_queue_only_once_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "dumps", slow_dumps)
    assert put_while_consuming(tmp_path, DEMO_FILESYSTEM) == {"n": 7}
    assert list(tmp_path.glob("*.partial")) == []
