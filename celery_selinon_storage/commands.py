"""The check and schema commands, in both places they are offered.

``celery -A proj storages check|schema`` is a Celery subcommand (installed through Celery's
``celery.commands`` entry point): it reads the storages the worker would use. ``celery-selinon-storage
check FILE`` is the same check of one file, for machines without the project's app.

Exit status of check: 0 when the storages are valid and every one connected (or connecting was not
tried), 1 when one did not connect, 78 for a bad or missing configuration, 2 for bad usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from .bootstep import EX_CONFIG, STORAGES_ENV, missing_storages_advice, storages_source
from .errors import ConfigurationError
from .health import StorageHealth, check_storages
from .schema import SCHEMA_PATH
from .specs import StorageSpec, load_storages

#: Exit status of a check in which a storage did not connect.
EX_UNAVAILABLE = 1

#: Columns of the check's table: heading, and the text of one storage's row (the target starts with the
#: class; ``--json`` has the class on its own).
_COLUMNS: tuple[tuple[str, Callable[[StorageHealth], str]], ...] = (
    ("NAME", lambda r: r.name),
    ("TARGET", lambda r: r.target),
    ("TIME", lambda r: "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms"),
    ("CONNECT", lambda r: "; ".join([r.connect if r.error is None else f"{r.connect}: {r.error}", *r.notes])),
)
#: Columns aligned to the right (numbers).
_RIGHT = frozenset({"TIME"})

_CHECK_HELP_TAIL = """

\b
Exit status: 0 when every storage connected (or connecting was not tried),
1 when one did not, 78 for a bad or missing configuration, 2 for bad usage.
Usable as a container readiness probe."""


def check_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options both check commands take."""
    options = (
        click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            metavar="SECONDS",
            help="Seconds to wait for each storage to connect.",
        ),
        click.option(
            "--no-connect", is_flag=True, help="Only check the configuration; connect to no storage."
        ),
        click.option(
            "--create-tables",
            is_flag=True,
            help="Create what the worker creates at start (SQL tables). By default a check creates no "
            "table and reports a missing one.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def run_check(
    load: Callable[[], Sequence[StorageSpec]],
    *,
    as_json: bool,
    timeout: float,
    no_connect: bool,
    create_tables: bool,
) -> NoReturn:
    """Load the storages, connect to each unless told not to, print the report, exit with its status."""
    try:
        specs = load()
    except ConfigurationError as exc:
        _fail(str(exc))

    def on_slow(name: str, waited: float) -> None:
        click.echo(f"waiting for {name} ({waited:.0f} s)...", err=True)

    results = check_storages(specs, timeout, on_slow, connect=not no_connect, create_tables=create_tables)
    ok = all(result.ok for result in results)
    if as_json:
        report = {"ok": ok, "storages": [result.as_dict() for result in results]}
        click.echo(json.dumps(report, indent=2))
    else:
        for line in table(results):
            click.echo(line)
    sys.exit(0 if ok else EX_UNAVAILABLE)


def table(results: Sequence[StorageHealth]) -> list[str]:
    """The report as aligned columns under a heading, one row per storage."""
    rows = [[heading for heading, _ in _COLUMNS]]
    rows += [[cell(result) for _, cell in _COLUMNS] for result in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            text.rjust(width) if heading in _RIGHT else text.ljust(width)
            for text, width, (heading, _) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def print_schema() -> None:
    """Print the JSON Schema of the storages file (the one shipped beside the package)."""
    click.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)


def _fail(message: str) -> NoReturn:
    """One line on stderr, and exit status 78."""
    click.echo(f"celery-selinon-storage: error: {message}", err=True)
    sys.exit(EX_CONFIG)


# -- celery -A proj storages ... ------------------------------------------------------------------


@click.group(name="storages")
def storages() -> None:
    """Check the storages this app's workers use, or print the storages file's JSON Schema."""


@storages.command(name="check", epilog=_CHECK_HELP_TAIL)
@click.option(
    "--storages",
    "path",
    metavar="FILE",
    default=None,
    help=f"Storages YAML (or Selinon nodes.yml); else ${STORAGES_ENV}, else the app's selinon_storages.",
)
@check_options
@click.pass_context
def check_app(ctx: click.Context, /, path: str | None, **options: Any) -> None:
    """Check the storages the worker would use: build each, connect to each, report."""
    app = ctx.obj.app
    source = storages_source(app, path)
    if source is None:
        _fail(f"no storages configured; {missing_storages_advice(app, 'pass --storages FILE')}")
    run_check(source.load, **options)


@storages.command(name="schema")
def schema() -> None:
    """Print the JSON Schema of the storages file (for editors and CI)."""
    print_schema()


# -- celery-selinon-storage ... --------------------------------------------------------------------


@click.group(name="celery-selinon-storage")
def standalone() -> None:
    """Check a storages file, or print its JSON Schema."""


@standalone.command(name="check", epilog=_CHECK_HELP_TAIL)
@click.argument("file", metavar="FILE")
@check_options
def check_file(file: str, **options: Any) -> None:
    """Check FILE (a storages YAML or Selinon nodes.yml): build each storage, connect to each, report."""
    run_check(lambda: load_storages(file), **options)


standalone.add_command(schema)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celery-selinon-storage`` command; its exit status."""
    try:
        standalone.main(args=argv, prog_name="celery-selinon-storage")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    return 0
