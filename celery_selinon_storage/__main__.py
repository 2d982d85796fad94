"""``celery-selinon-storage check FILE``: validate a storages file and connect to every storage.

Exit status: 0 when every storage answered, 1 when one did not, 78 for a bad file, 2 for bad usage.
Usable as a container readiness probe.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigurationError
from .health import check_storages
from .specs import load_storages

EX_UNAVAILABLE = 1
EX_CONFIG = 78


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celery-selinon-storage`` command."""
    parser = argparse.ArgumentParser(prog="celery-selinon-storage", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate FILE and connect to each storage")
    check.add_argument("file", metavar="FILE", help="storages YAML (or Selinon nodes.yml)")
    check.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each storage (10)")
    check.add_argument("--no-connect", action="store_true", help="only validate the file")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    try:
        specs = load_storages(args.file)
    except ConfigurationError as exc:
        print(f"celery-selinon-storage: error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.no_connect:
        for spec in specs:
            print(f"{spec.name}: {spec.cls.__name__} ok")
        return 0

    def on_slow(name: str, waited: float) -> None:
        print(f"waiting for {name} ({waited:.0f} s)...", file=sys.stderr, flush=True)

    results = check_storages(specs, args.timeout, on_slow)
    if args.json:
        print(
            json.dumps(
                {"ok": all(r.ok for r in results), "storages": [r.as_dict() for r in results]}, indent=2
            )
        )
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            status = "ok" if r.ok else f"FAILED {r.error}"
            print(f"{r.name:<{width}}  {r.classname}  {r.target}  {status}  {r.latency_ms:.1f} ms")
    return 0 if all(r.ok for r in results) else EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
