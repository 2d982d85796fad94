"""``python -m celery_selinon_storage check FILE``: validate a storages file."""

from __future__ import annotations

import sys

from .errors import ConfigurationError
from .specs import load_storages


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celery-selinon-storage`` command."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "check":
        print("usage: celery-selinon-storage check STORAGES.yml", file=sys.stderr)
        return 2
    try:
        specs = load_storages(args[1])
    except ConfigurationError as exc:
        print(f"celery-selinon-storage: error: {exc}", file=sys.stderr)
        return 78
    for spec in specs:
        print(f"{spec.name}: {spec.cls.__name__} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
