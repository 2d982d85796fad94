"""The demo's broker: kombu's filesystem transport, with each message file appearing whole.

kombu 5 creates a message file and then writes it, while a consumer may already be moving it away and
reading it; the consumer then finds an empty file and the worker stops on a JSON error. Here a message
is written under a name consumers ignore and renamed into the queue folder, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):  # type: ignore[misc]
    """A filesystem channel whose message files are renamed into place once written."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        try:
            with open(partial, "wb") as file:
                file.write(str(dumps(message)).encode())  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"cannot add message file {final!r}: {exc}") from exc


class Transport(filesystem.Transport):  # type: ignore[misc]
    """kombu's filesystem transport with the atomic channel above."""

    Channel = Channel
