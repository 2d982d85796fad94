"""The worker bootstep that owns the storages, and ``install`` that adds it to an app."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

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
from .specs import StorageSpec, load_inline_storages, load_storages

logger = get_logger("celery_selinon_storage")

#: Where the storages come from, strongest first: the ``--storages`` option, this environment variable
#: (both a file's path), then this app setting (a path, or the storages themselves).
STORAGES_ENV = "CELERY_SELINON_STORAGES"
STORAGES_SETTING = "selinon_storages"
#: Whether a worker with no storages configured refuses to start (the default) or runs without them.
REQUIRED_SETTING = "selinon_storages_required"

#: Exit status for a bad or missing storages configuration (``EX_CONFIG`` from sysexits.h).
EX_CONFIG = 78

E_SETTING_TYPE = (
    "must be the path of a storages YAML file, a mapping with a 'storages' list, or that list; it is {kind}"
)

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


@dataclass(frozen=True)
class StoragesSource:
    """Where a worker's storages come from, and what was given there."""

    #: A file's path, or (from the app setting) the storages themselves.
    value: Any
    #: The option, variable or setting that gave it, as a user writes it (``--storages``,
    #: ``$CELERY_SELINON_STORAGES``, ``selinon_storages``, ``CELERY_SELINON_STORAGES`` in Django).
    origin: str

    def load(self) -> list[StorageSpec]:
        """The checked storages, or a one-line ``ConfigurationError``."""
        if isinstance(self.value, (str, os.PathLike)):
            return load_storages(self.value)
        if isinstance(self.value, (Mapping, list, tuple)):
            return load_inline_storages(self.value, self.origin)
        raise ConfigurationError(E_SETTING_TYPE.format(kind=type(self.value).__name__), source=self.origin)


def storages_source(app: Celery, option: str | None) -> StoragesSource | None:
    """Where this worker's storages come from: the option, else the environment, else the app setting."""
    if option:
        return StoragesSource(option, "--storages")
    if os.environ.get(STORAGES_ENV):
        return StoragesSource(os.environ[STORAGES_ENV], f"${STORAGES_ENV}")
    value = app.conf.get(STORAGES_SETTING)
    if value is None or value == "":
        return None
    return StoragesSource(value, setting_name(app, STORAGES_SETTING))


def setting_name(app: Celery, key: str) -> str:
    """``key`` as the user wrote it: ``CELERY_SELINON_STORAGES`` when the app reads its settings with a
    namespace (``config_from_object(..., namespace="CELERY")``, as Django projects do)."""
    app.conf.get(key)  # reads the app's configuration, if it has not been read yet
    prefix = getattr(app.conf, "prefix", None)
    if not prefix or (key in app.conf.changes and not _written(app, prefix + key.upper())):
        return key
    return f"{prefix}{key.upper()}"


def _written(app: Celery, key: str) -> bool:
    """Whether ``key`` itself is in the app's settings (not only under another name)."""
    return any(key in found for found in (app.conf.changes, *app.conf.maps))


def storages_required(app: Celery) -> bool:
    """The ``selinon_storages_required`` setting (default True), or exit 78 when it is not a bool."""
    value = app.conf.get(REQUIRED_SETTING, True)
    if not isinstance(value, bool):
        _exit_config(
            f"{setting_name(app, REQUIRED_SETTING)}: must be True or False, not {type(value).__name__}"
        )
    return bool(value)


def missing_storages_advice(app: Celery, option: str = "start the worker with --storages FILE") -> str:
    """What to set when there are no storages: the setting, the ``--storages`` option and the variable."""
    name = setting_name(app, STORAGES_SETTING)
    setting = f"app.conf.{name}" if name == STORAGES_SETTING else f"the setting {name}"
    return (
        f"set {setting} (a storages YAML file's path, or the storages inline), {option}, "
        f"or set the environment variable {STORAGES_ENV} to a file's path"
    )


class StorageStep(bootsteps.StartStopStep):
    """Creates the storages in every worker process and disconnects them after the last task."""

    label = "Storages"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, storages: str | None = None, **kwargs: Any) -> None:
        bridge_selinon()  # for apps that add the step themselves
        register_inspect_command()
        #: The checked storages; ``None`` when the worker has none (``selinon_storages_required = False``).
        self.specs: Sequence[StorageSpec] | None = None
        super().__init__(w, **kwargs)
        self.traits = pool_traits(w.pool_cls)
        source = storages_source(w.app, storages)
        if source is None:
            _no_storages(w.app)
            return
        self.specs = _load_or_exit(source)
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


def _no_storages(app: Celery) -> None:
    """No storages configured: exit 78, or with ``selinon_storages_required = False`` warn and go on."""
    advice = missing_storages_advice(app)
    if storages_required(app):
        required = setting_name(app, REQUIRED_SETTING)
        _exit_config(
            f"no storages configured; {advice} (or set {required} = False to run this worker without them)"
        )
    logger.warning(
        "celery-selinon-storage: no storages configured, so this worker has none and get_storage() fails "
        "in its tasks; %s",
        advice,
    )


def _load_or_exit(source: StoragesSource) -> Sequence[StorageSpec]:
    """The checked specs, or one line on stderr and exit status 78 (no traceback)."""
    try:
        return source.load()
    except ConfigurationError as exc:
        _exit_config(str(exc))


def _exit_config(message: str) -> NoReturn:
    """One line on stderr, and exit status 78."""
    print(f"celery-selinon-storage: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EX_CONFIG) from None
