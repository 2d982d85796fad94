"""The worker bootstep that owns the storages, and ``install`` that adds it to an app."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
from celery import Celery, bootsteps, signals
from celery.exceptions import ImproperlyConfigured
from celery.utils.log import get_logger

from . import inspection
from .errors import ConfigurationError
from .guards import GuardKind, guard_kind_for_pool, uses_child_processes
from .lifecycle import start_process_storages, stop_process_storages
from .selinon_bridge import bridge_selinon
from .specs import StorageSpec, load_storages

logger = get_logger("celery_selinon_storage")

#: Where the storages file comes from, strongest first: the ``--storages`` option, this
#: environment variable, then this app setting.
STORAGES_ENV = "CELERY_SELINON_STORAGES"
STORAGES_SETTING = "selinon_storages"

#: Exit status for a bad storages file (``EX_CONFIG`` from sysexits.h).
EX_CONFIG = 78

#: A cold shutdown waits at most this long for a running call before disconnecting anyway.
COLD_SHUTDOWN_WAIT = 2.0

E_INSTALLED_TWICE = (
    "celery-selinon-storage is already installed on app {app!r}; call install(app) once "
    "(or add StorageStep yourself, not both)"
)


def storages_option() -> click.Option:
    """The ``--storages FILE`` worker option (a new one for each app)."""
    return click.Option(
        ["--storages"],
        default=None,
        metavar="FILE",
        help=f"Storages YAML (or Selinon nodes.yml); else ${STORAGES_ENV}, else app.conf.{STORAGES_SETTING}.",
    )


def install(app: Celery) -> None:
    """Add ``StorageStep`` and the ``--storages`` option to ``app``'s worker; route Selinon's
    ``StoragePool`` to the managed storages."""
    if StorageStep in app.steps["worker"]:
        raise ImproperlyConfigured(E_INSTALLED_TWICE.format(app=app.main))
    app.steps["worker"].add(StorageStep)
    app.user_options["worker"].add(storages_option())
    bridge_selinon()


def storages_path(app: Celery, option: str | None) -> str | None:
    """The storages file for this worker: the option, else the environment, else the app setting."""
    return option or os.environ.get(STORAGES_ENV) or app.conf.get(STORAGES_SETTING) or None


class StorageStep(bootsteps.StartStopStep):
    """Creates the storages in every worker process and disconnects them after the last task."""

    label = "Storages"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, storages: str | None = None, **kwargs: Any) -> None:
        bridge_selinon()  # for apps that add the step themselves
        #: The checked storages file; ``None`` when the worker has no storages file.
        self.specs: Sequence[StorageSpec] | None = None
        #: True under prefork: each child builds its own after the fork, the parent never connects.
        self.in_children = False
        super().__init__(w, **kwargs)
        path = storages_path(w.app, storages)
        if path is None:
            logger.warning(
                "celery-selinon-storage: no storages file; pass --storages FILE or set $%s", STORAGES_ENV
            )
            return
        self.specs = _load_or_exit(path)
        self.in_children = uses_child_processes(w.pool_cls)
        self.guard_kind = GuardKind.NONE if self.in_children else guard_kind_for_pool(w.pool_cls)
        if self.in_children:
            _ChildStorages.plan(self.specs)
            inspection.child_reports = inspection.ChildReports()
            signals.worker_shutdown.connect(self._on_worker_shutdown, sender=w, weak=False)
        else:
            signals.worker_shutdown.connect(self._on_worker_shutdown, sender=w, weak=False)

    def include_if(self, w: Any) -> bool:
        return self.specs is not None

    def start(self, w: Any) -> None:
        if self.specs is not None and not self.in_children:
            start_process_storages(self.specs, self.guard_kind)

    def stop(self, w: Any) -> None:
        """Nothing yet: the pool drains running tasks after this; ``worker_shutdown`` closes."""

    def terminate(self, w: Any) -> None:
        """Cold shutdown: disconnect what can be disconnected without waiting long."""
        if not self.in_children:
            stop_process_storages(timeout=COLD_SHUTDOWN_WAIT)

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        stop_process_storages()
        if inspection.child_reports is not None:
            inspection.child_reports.close()


class _ChildStorages:
    """Prefork: the specs checked in the parent, built in each child after the fork."""

    specs: Sequence[StorageSpec] = ()

    @classmethod
    def plan(cls, specs: Sequence[StorageSpec]) -> None:
        cls.specs = specs
        signals.worker_process_init.connect(_on_child_start, weak=False, dispatch_uid=__name__ + ".init")
        signals.worker_process_shutdown.connect(_on_child_exit, weak=False, dispatch_uid=__name__ + ".exit")


def _on_child_start(**kwargs: Any) -> None:
    start_process_storages(_ChildStorages.specs, GuardKind.NONE)
    if inspection.child_reports is not None:
        inspection.child_reports.start_writer()


def _on_child_exit(**kwargs: Any) -> None:
    stop_process_storages(timeout=COLD_SHUTDOWN_WAIT)
    if inspection.child_reports is not None:
        inspection.child_reports.remove()


def _load_or_exit(path: str) -> Sequence[StorageSpec]:
    """The checked specs, or one line on stderr and exit status 78 (no traceback)."""
    try:
        return load_storages(path)
    except ConfigurationError as exc:
        print(f"celery-selinon-storage: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
