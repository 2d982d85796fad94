"""Prometheus metrics of the storages, scraped from real workers' endpoints: every call, error, retry
and latency observation is counted once, under prefork summed over all children (exited ones too)."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celery_selinon_storage import install
from celery_selinon_storage.errors import ConfigurationError
from celery_selinon_storage.metrics import (
    DEFAULT_HOST,
    METRICS_ENV,
    METRICS_OPTION,
    METRICS_SETTING,
    MetricsStep,
    configured_address,
    parse_address,
)
from tests.worker_app import store_and_read_back, store_in
from tests.workers import WorkerProcess

SERVED = re.compile(
    r"storage metrics at (http://\S+/metrics)(?:, summed over the pool's processes from (\S+))?"
)
#: Labels of one series -> value, for each sample name.
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def storages_file(tmp_path: Path) -> Path:
    """Results: SQLite in tmp_path. Broken: SQLite in a directory that does not exist, so every call
    fails with sqlite's "unable to open database file" (transient: tried 3 times, without waiting)."""
    path = tmp_path / "storages.yml"
    path.write_text(
        f"""\
storages:
  - name: Results
    classname: SqlStorage
    configuration: {{connection_string: "sqlite:///{tmp_path}/results.sqlite3", table_name: results}}
  - name: Broken
    classname: SqlStorage
    configuration: {{connection_string: "sqlite:///{tmp_path}/missing/results.sqlite3", table_name: results}}
    retry: {{attempts: 3, backoff: 0, max_backoff: 0}}
"""
    )
    return path


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def series(samples: Samples, name: str, storage: str, operation: str, **extra: str) -> float:
    labels = tuple(sorted({"storage": storage, "operation": operation, **extra}.items()))
    return samples[name][labels]


def run_workload(queue: str, stores: int, broken: int) -> None:
    """``stores`` tasks that store in Results and read back; ``broken`` tasks whose store in Broken fails."""
    sent = [store_and_read_back.apply_async((["Results"], {"i": i}), queue=queue) for i in range(stores)]
    assert [result.get(timeout=120) for result in sent] == [True] * stores
    failing = [store_in.apply_async((["Broken"],), queue=queue) for _ in range(broken)]
    for result in failing:
        with pytest.raises(
            Exception, match=r"storage 'Broken' is unavailable \(OperationalError on store, 3 attempts\)"
        ):
            result.get(timeout=120)


def assert_counts(samples: Samples, stores: int, broken: int) -> None:
    for operation in ("store", "retrieve"):
        assert series(samples, "selinon_storage_calls_total", "Results", operation) == stores
        assert series(samples, "selinon_storage_errors_total", "Results", operation) == 0
        assert series(samples, "selinon_storage_retries_total", "Results", operation) == 0
        assert series(samples, "selinon_storage_call_duration_seconds_count", "Results", operation) == stores
        assert (
            series(samples, "selinon_storage_call_duration_seconds_bucket", "Results", operation, le="+Inf")
            == stores
        )
        assert series(samples, "selinon_storage_call_duration_seconds_sum", "Results", operation) > 0
    assert series(samples, "selinon_storage_calls_total", "Broken", "store") == broken
    assert series(samples, "selinon_storage_errors_total", "Broken", "store") == broken
    assert series(samples, "selinon_storage_retries_total", "Broken", "store") == broken * 2  # 3 tries each
    assert series(samples, "selinon_storage_call_duration_seconds_count", "Broken", "store") == broken
    # no other series: nothing counted twice, nothing counted that was not called
    assert len(samples["selinon_storage_calls_total"]) == 3


@pytest.mark.worker
@pytest.mark.service
def test_a_prefork_worker_serves_the_sum_of_its_children_exited_ones_included(
    tmp_path: Path, queue: str, redis_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(
        storages=storages_file(tmp_path),
        pool="prefork",
        concurrency=2,
        queue=queue,
        extra=(METRICS_OPTION, "127.0.0.1:0", "--max-tasks-per-child", "4"),  # children are replaced
    )
    worker.start().wait_ready()
    served = SERVED.search(worker.output)
    assert served is not None, worker.output
    url, directory = served.groups()
    assert directory is not None  # made by the worker: PROMETHEUS_MULTIPROC_DIR was not set

    run_workload(queue, stores=20, broken=3)
    samples = scrape(url)
    assert_counts(samples, stores=20, broken=3)
    # 23 tasks, at most 4 per child: at least 6 children have recorded, most of them exited since
    assert len(list(Path(directory).glob("counter_*.db"))) >= 6

    assert worker.stop(signal.SIGTERM) == 0, worker.output
    assert not Path(directory).exists()  # the worker made the directory, and removes it


@pytest.mark.worker
@pytest.mark.service
@pytest.mark.parametrize("pool", ["threads", "gevent", "eventlet"])
def test_a_one_process_worker_serves_its_calls_set_by_the_environment(
    pool: str, tmp_path: Path, queue: str, redis_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(
        storages=storages_file(tmp_path),
        pool=pool,
        concurrency=4,
        queue=queue,
        env={METRICS_ENV: "127.0.0.1:0"},
    )
    worker.start().wait_ready()
    served = SERVED.search(worker.output)
    assert served is not None, worker.output
    url, directory = served.groups()
    assert directory is None  # one process: its own registry

    run_workload(queue, stores=20, broken=3)
    assert_counts(scrape(url), stores=20, broken=3)
    assert worker.stop(signal.SIGTERM) == 0, worker.output


@pytest.mark.worker
@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (
            (METRICS_OPTION, "nine"),
            {},
            "celery-selinon-storage: error: --storages-metrics-port: 'nine' is not a port; give PORT or HOST:PORT (e.g. 9809 or 127.0.0.1:9809; 0: any free port)",
        ),
        (
            (),
            {METRICS_ENV: "127.0.0.1:70000"},
            "celery-selinon-storage: error: $CELERY_SELINON_STORAGES_METRICS_PORT: '127.0.0.1:70000' is not a port; give PORT or HOST:PORT (e.g. 9809 or 127.0.0.1:9809; 0: any free port)",
        ),
    ],
)
def test_a_port_that_is_not_one_stops_the_worker_with_one_line(
    tmp_path: Path,
    extra: tuple[str, ...],
    env: dict[str, str],
    expected: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers(storages=storages_file(tmp_path), pool="prefork", extra=extra, env=env)
    assert worker.run_to_exit() == 78, worker.output
    assert expected in worker.output.splitlines()
    assert "Traceback" not in worker.output


@pytest.mark.worker
@pytest.mark.service
def test_a_port_in_use_stops_the_worker_with_one_line(
    tmp_path: Path, queue: str, redis_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = workers(
            storages=storages_file(tmp_path),
            pool="prefork",
            queue=queue,
            extra=(METRICS_OPTION, f"127.0.0.1:{port}"),
        )
        assert worker.run_to_exit() == 78, worker.output
    expected = f"celery-selinon-storage: error: --storages-metrics-port: cannot serve the storages' metrics on 127.0.0.1:{port} (Address already in use); choose a free port"
    assert expected in worker.output.splitlines(), worker.output
    assert "Traceback" not in worker.output


# -- where the port comes from (pure unit tests) ------------------------------------------------------


def test_install_adds_the_metrics_step_and_its_option() -> None:
    app = Celery("metrics_install", set_as_current=False)
    install(app)
    assert MetricsStep in app.steps["worker"]
    assert "storages_metrics_port" in [option.name for option in app.user_options["worker"]]


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (9809, (DEFAULT_HOST, 9809)),
        ("9809", (DEFAULT_HOST, 9809)),
        (" 127.0.0.1:9809 ", ("127.0.0.1", 9809)),
        ("[::1]:9809", ("::1", 9809)),
        ("metrics.local:0", ("metrics.local", 0)),
    ],
)
def test_a_port_or_host_and_port_is_read(value: object, address: tuple[str, int]) -> None:
    assert parse_address(value, "here") == address


@pytest.mark.parametrize("value", ["", "x", "9809:", "65536", "-1", "١٢٣", True, 98.09, None, [9809]])
def test_anything_else_is_one_line_naming_where_it_was_set(value: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_address(value, "app.conf.selinon_storages_metrics_port")
    message = str(raised.value)
    assert message.startswith(f"app.conf.selinon_storages_metrics_port: {value!r} is not a port; give PORT")
    assert "\n" not in message


def test_the_option_beats_the_environment_which_beats_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("metrics_settings", set_as_current=False)
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert configured_address(app, None) is None  # off by default

    app.conf[METRICS_SETTING] = 9801
    assert configured_address(app, None) == (DEFAULT_HOST, 9801, "app.conf.selinon_storages_metrics_port")
    monkeypatch.setenv(METRICS_ENV, "127.0.0.1:9802")
    assert configured_address(app, None) == ("127.0.0.1", 9802, "$CELERY_SELINON_STORAGES_METRICS_PORT")
    assert configured_address(app, "9803") == (DEFAULT_HOST, 9803, "--storages-metrics-port")
