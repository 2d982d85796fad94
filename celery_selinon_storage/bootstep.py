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

from . import state
from .errors import ConfigurationError, describe_exception
from .guards import pool_traits
from .inspection import ChildReports, register_inspect_command
from .lifecycle import start_process_storages, stop_process_storages
from .metrics import MetricsStep, metrics_port_option
from .secrets import scrub, secret_values
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
    app.steps["worker"].add(MetricsStep)
    app.user_options["worker"].add(storages_option())
    app.user_options["worker"].add(metrics_port_option())
    bridge_selinon()
    register_inspect_command()


def storages_path(app: Celery, option: str | None) -> str | None:
    """The storages file for this worker: the option, else the environment, else the app setting."""
    return option or os.environ.get(STORAGES_ENV) or app.conf.get(STORAGES_SETTING) or None


class StorageStep(bootsteps.StartStopStep):
    """Creates the storages in every worker process and disconnects them after the last task."""

    label = "Storages"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, storages: str | None = None, **kwargs: Any) -> None:
        bridge_selinon()  # for apps that add the step themselves
        register_inspect_command()
        #: The checked storages file; ``None`` when the worker has no storages file.
        self.specs: Sequence[StorageSpec] | None = None
        super().__init__(w, **kwargs)
        self.traits = pool_traits(w.pool_cls)
        path = storages_path(w.app, storages)
        if path is None:
            logger.warning(
                "celery-selinon-storage: no storages file; pass --storages FILE or set $%s", STORAGES_ENV
            )
            return
        self.specs = _load_or_exit(path)
        if self.traits.in_children:
            state.set_plan(state.ChildPlan(self.specs, self.traits.guard_kind, ChildReports()))
            signals.worker_process_init.connect(_on_child_start, weak=False, dispatch_uid=__name__ + ".init")
            signals.worker_process_shutdown.connect(
                _on_child_exit, weak=False, dispatch_uid=__name__ + ".exit"
            )
        signals.worker_shutdown.connect(self._on_worker_shutdown, sender=w, weak=False)

    def include_if(self, w: Any) -> bool:
        return self.specs is not None

    def start(self, w: Any) -> None:
        if self.specs is not None and not self.traits.in_children:
            start_process_storages(self.specs, self.traits.guard_kind)

    def stop(self, w: Any) -> None:
        """Nothing yet: the pool drains running tasks after this; ``worker_shutdown`` closes."""

    def terminate(self, w: Any) -> None:
        """Cold shutdown: disconnect what can be disconnected without waiting long."""
        if not self.traits.in_children:
            stop_process_storages(timeout=COLD_SHUTDOWN_WAIT)

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        stop_process_storages()
        plan = state.plan()
        if plan is not None:
            plan.reports.close()
            state.set_plan(None)


def _on_child_start(**kwargs: Any) -> None:
    plan = state.plan()
    if plan is None:
        return
    try:
        start_process_storages(plan.specs, plan.guard_kind)
    except Exception as exc:  # noqa: BLE001 - reported in one line; tasks are told why
        secrets = [secret for spec in plan.specs for secret in secret_values(spec.options)]
        reason = scrub(describe_exception(exc), secrets)
        state.record_failure(reason)
        logger.error(
            "celery-selinon-storage: storages could not start in process %d: %s", os.getpid(), reason
        )
        return
    plan.reports.start_writer()


def _on_child_exit(**kwargs: Any) -> None:
    stop_process_storages(timeout=COLD_SHUTDOWN_WAIT)
    plan = state.plan()
    if plan is not None:
        plan.reports.remove()


def _load_or_exit(path: str) -> Sequence[StorageSpec]:
    """The checked specs, or one line on stderr and exit status 78 (no traceback)."""
    try:
        return load_storages(path)
    except ConfigurationError as exc:
        print(f"celery-selinon-storage: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
