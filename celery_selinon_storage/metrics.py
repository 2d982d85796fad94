"""Prometheus metrics of the storages: calls, errors, retries and latency, per storage and operation.

Off unless the worker is given a port: ``--storages-metrics-port [HOST:]PORT``, else
``$CELERY_SELINON_STORAGES_METRICS_PORT``, else ``app.conf.selinon_storages_metrics_port``; it then needs
prometheus-client (the ``[metrics]`` extra). The worker's main process serves ``/metrics`` on that port.
Under prefork the children record into prometheus_client's multiprocess directory
(``$PROMETHEUS_MULTIPROC_DIR``, made and removed by the worker when unset) and the main process serves
the sum over all of them, the children that have exited included. docs/metrics.md lists the metrics.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import click
from celery import bootsteps, signals
from celery.utils.log import get_logger

from .errors import ConfigurationError
from .guards import pool_traits

if TYPE_CHECKING:
    from celery import Celery
    from prometheus_client import CollectorRegistry, Counter, Histogram

logger = get_logger("celery_selinon_storage")

#: Where the port comes from, strongest first: the worker option, the environment, the app setting.
METRICS_OPTION = "--storages-metrics-port"
METRICS_ENV = "CELERY_SELINON_STORAGES_METRICS_PORT"
METRICS_SETTING = "selinon_storages_metrics_port"
#: The address served when the value is a port alone (every interface, as exporters do).
DEFAULT_HOST = "0.0.0.0"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("storage", "operation")
#: Latency buckets in seconds: from a local SQLite or Redis call (~0.5 ms) to retried calls on a slow server.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
E_NO_CLIENT = (
    "the storages' metrics need prometheus-client, which is not installed; "
    "pip install 'celery-selinon-storage[metrics]', or remove the setting"
)


class ErrorCount(Protocol):
    """What ``record_call`` reads of a call's statistics: its errors so far (``managed.OperationStats``)."""

    errors: int


class _Recorder:
    """The metrics of this process, made once (prometheus_client allows one metric of each name)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.calls = Counter("selinon_storage_calls", "Storage calls that ended, failed or not", LABELS)
        self.errors = Counter("selinon_storage_errors", "Storage calls that raised an error", LABELS)
        self.retries = Counter(
            "selinon_storage_retries", "Tries of a storage call repeated after a transient error", LABELS
        )
        self.duration = Histogram(
            "selinon_storage_call_duration_seconds",
            "Time a storage call took, its retries and waits included",
            LABELS,
            buckets=BUCKETS,
        )
        self._lock = threading.Lock()
        #: (storage, operation) -> its series.
        self._series: dict[tuple[str, str], _Series] = {}

    def series(self, storage: str, operation: str) -> _Series:
        """The series of one storage and operation, made (at 0) on first use."""
        found = self._series.get((storage, operation))
        if found is None:
            with self._lock:
                found = self._series.setdefault(
                    (storage, operation),
                    _Series(
                        self.calls.labels(storage, operation),
                        self.errors.labels(storage, operation),
                        self.retries.labels(storage, operation),
                        self.duration.labels(storage, operation),
                    ),
                )
        return found

    def call(self, storage: str, operation: str, stats: ErrorCount, seconds: float) -> None:
        series = self.series(storage, operation)
        with self._lock:  # errors counted since the last call: concurrent calls count each error once
            new_errors = stats.errors - (series.errors_seen if series.stats_seen is stats else 0)
            series.stats_seen, series.errors_seen = stats, stats.errors
        series.calls.inc()
        series.duration.observe(seconds)
        if new_errors > 0:
            series.errors.inc(new_errors)


class _Series:
    """One storage and operation's counters and histogram, and what ``_Recorder.call`` last saw."""

    __slots__ = ("calls", "duration", "errors", "errors_seen", "retries", "stats_seen")

    def __init__(self, calls: Counter, errors: Counter, retries: Counter, duration: Histogram) -> None:
        self.calls = calls
        self.errors = errors
        self.retries = retries
        self.duration = duration
        self.stats_seen: ErrorCount | None = None
        self.errors_seen = 0


_recorder: _Recorder | None = None

#: Whether calls are recorded in this process: read on every storage call (a module attribute is cheaper
#: than calling ``record_call`` to find out).
recording = False


def record_call(storage: str, operation: str, stats: ErrorCount, seconds: float) -> None:
    """Count one ended call of ``storage`` (``ManagedStorage``), a failure when ``stats.errors`` grew."""
    if _recorder is not None:
        _recorder.call(storage, operation, stats, seconds)


def record_retry(storage: str, operation: str) -> None:
    """Count one retry of a call of ``storage``."""
    if _recorder is not None:
        _recorder.series(storage, operation).retries.inc()


def enable() -> None:
    """Record from now on in this process (and in the processes it forks)."""
    global _recorder, recording
    if _recorder is None:
        _recorder = _Recorder()
    recording = True


# -- configuration ----------------------------------------------------------------------------------


def metrics_port_option() -> click.Option:
    """The ``--storages-metrics-port [HOST:]PORT`` worker option (a new one for each app)."""
    return click.Option(
        [METRICS_OPTION],
        default=None,
        metavar="[HOST:]PORT",
        help=(
            "Serve the storages' Prometheus metrics at http://HOST:PORT/metrics (needs the [metrics] "
            f"extra); else ${METRICS_ENV}, else app.conf.{METRICS_SETTING}. Default: off."
        ),
    )


def configured_address(app: Celery, option: str | None) -> tuple[str, int, str] | None:
    """Host, port and where they were set (option, environment, setting), or None when metrics are off.

    Raises ``ConfigurationError`` for a value that is not ``PORT`` or ``HOST:PORT``.
    """
    candidates = (
        (option, METRICS_OPTION),
        (os.environ.get(METRICS_ENV), f"${METRICS_ENV}"),
        (app.conf.get(METRICS_SETTING), f"app.conf.{METRICS_SETTING}"),
    )
    for value, where in candidates:
        if value is not None and value != "":
            host, port = parse_address(value, where)
            return host, port, where
    return None


def parse_address(value: Any, where: str) -> tuple[str, int]:
    """``9809`` or ``"9809"`` -> (DEFAULT_HOST, 9809); ``"127.0.0.1:9809"``, ``"[::1]:9809"`` likewise."""
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    host, _, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HOST
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigurationError(
            f"{shown} is not a port; give PORT or HOST:PORT (e.g. 9809 or 127.0.0.1:9809; 0: any free port)",
            source=where,
        )
    return host, int(port_text)


# -- the worker's endpoint ----------------------------------------------------------------------------


class Exporter:
    """The scrape endpoint of one worker: set up before the pool forks, served from the main process."""

    def __init__(self, host: str, port: int, where: str, *, multiprocess: bool) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigurationError(E_NO_CLIENT, source=where) from None
        self.host = host
        self.port = port
        self.where = where
        #: Prefork: the directory the children record into, and whether this worker made it.
        self.directory: str | None = None
        self.owns_directory = False
        self._server: Any = None
        if multiprocess:
            self._use_multiprocess_directory()
        enable()

    def _use_multiprocess_directory(self) -> None:
        from prometheus_client import values

        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            os.makedirs(directory, exist_ok=True)
        else:
            directory = tempfile.mkdtemp(prefix="celery-selinon-storage-metrics-")
            os.environ[MULTIPROC_ENV] = directory  # inherited by every child
            self.owns_directory = True
        self.directory = directory
        if not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus_client picks file-backed values at import when the variable is set; the app
            # imported it before the worker set the variable: pick again, as it would have.
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        signals.worker_process_shutdown.connect(
            _mark_child_dead, weak=False, dispatch_uid=__name__ + ".child-exit"
        )

    def check_port(self) -> None:
        """``OSError`` when the port cannot be had (checked before the pool forks, served after)."""
        if self.port == 0:
            return
        family, kind, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind(address)

    def registry(self) -> CollectorRegistry:
        """What is served: the sum over the children's files under prefork, else this process's metrics."""
        from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

        if self.directory is None:
            return REGISTRY
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return registry

    def serve(self) -> str:
        """Start serving in a background thread; the URL. ``OSError`` when the port cannot be had."""
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry())
        port = self._server.server_port
        return f"http://{self.host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving (the worker is stopping)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def remove_directory(self) -> None:
        """After the last child: remove the multiprocess directory if this worker made it."""
        if self.owns_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.directory:
                del os.environ[MULTIPROC_ENV]
            self.owns_directory = False


def _mark_child_dead(pid: int | None = None, **kwargs: Any) -> None:
    """A prefork child is exiting: prometheus_client's bookkeeping for a dead process."""
    from prometheus_client import multiprocess

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid or os.getpid(), directory)  # type: ignore[no-untyped-call]


class MetricsStep(bootsteps.StartStopStep):
    """Serves the storages' metrics from the worker's main process, when a port is configured."""

    label = "StorageMetrics"
    requires = ("celery.worker.components:Pool",)  # serve once the children have forked

    def __init__(self, w: Any, storages_metrics_port: str | None = None, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.exporter: Exporter | None = None
        try:
            address = configured_address(w.app, storages_metrics_port)
            if address is None:
                return
            host, port, where = address
            self.exporter = Exporter(host, port, where, multiprocess=pool_traits(w.pool_cls).in_children)
        except ConfigurationError as exc:
            _exit_with(str(exc))
        try:
            self.exporter.check_port()
        except OSError as exc:
            self._give_up(exc)
        signals.worker_shutdown.connect(self._on_worker_shutdown, sender=w, weak=False)

    def include_if(self, w: Any) -> bool:
        return self.exporter is not None

    def start(self, w: Any) -> None:
        assert self.exporter is not None
        try:
            url = self.exporter.serve()
        except OSError as exc:  # taken since __init__ checked it
            self._give_up(exc)
        mode = f", summed over the pool's processes from {self.exporter.directory}"
        logger.info(
            "celery-selinon-storage: storage metrics at %s%s", url, mode if self.exporter.directory else ""
        )

    def _give_up(self, error: OSError) -> NoReturn:
        exporter, self.exporter = self.exporter, None
        assert exporter is not None
        exporter.remove_directory()
        address = f"{exporter.host}:{exporter.port}"
        _exit_with(
            f"{exporter.where}: cannot serve the storages' metrics on {address} "
            f"({error.strerror or type(error).__name__}); choose a free port"
        )

    def stop(self, w: Any) -> None:
        if self.exporter is not None:
            self.exporter.close()

    terminate = stop

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        if self.exporter is not None:
            self.exporter.close()
            self.exporter.remove_directory()


def _exit_with(message: str) -> NoReturn:
    """One line on stderr and exit status 78 (``EX_CONFIG``), as for a bad storages file."""
    print(f"celery-selinon-storage: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(os.EX_CONFIG)
