"""celery-selinon-storage check FILE: check a storages file without the project's Celery app."""

from __future__ import annotations

import sys

from .commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
