"""A Celery app running Selinon flows on the worker's managed storages.

``CSS_TEST_SELINON_CONFIG=early`` (default) sets Selinon's config at import, as most apps do;
``late`` loads the flow YAML once the worker runs: in each prefork child as it starts, else when the
worker is ready. ``Config.set_celery_app`` stays at import in both: Celery only consumes tasks that
are registered before the worker starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import signals
from selinon import Config

from tests.worker_app import make_test_app

HERE = Path(__file__).resolve().parent
NODES = os.environ.get("CSS_TEST_NODES")  # set for the worker; the test process configures itself

app = make_test_app("selinon_app")


def configure_selinon(**_: Any) -> None:
    if not Config.initialized:
        Config.set_config_yaml(str(NODES), [str(HERE / "flows.yml")])


if NODES is None:
    pass
elif os.environ.get("CSS_TEST_SELINON_CONFIG", "early") == "early":
    Config.set_celery_app(app)
    configure_selinon()
else:
    Config.set_celery_app(app)
    signals.worker_process_init.connect(configure_selinon, weak=False)
    signals.worker_ready.connect(configure_selinon, weak=False)
