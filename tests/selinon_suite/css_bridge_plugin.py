"""A pytest plugin (``-p css_bridge_plugin``) that turns ``bridge_selinon()`` on for Selinon's own test suite.

Selinon's suite runs with its ``test/`` directory first on ``sys.path``, where a ``celery`` package of its own
(a mock: ``Task``, ``AsyncResult``, ``states``, ``get_task_logger``) stands in for Celery, and Selinon is
imported against that mock. This package extends a real Celery worker and imports the real Celery (bootsteps,
signals, the worker's control commands). So the plugin imports Selinon as the suite does (against the mock),
then this package with the real Celery, then gives the suite its mock back: Selinon's code and the suite see
only the mock, this package's modules keep the real Celery they imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _celery_modules() -> dict[str, Any]:
    return {
        name: module for name, module in sys.modules.items() if name == "celery" or name.startswith("celery.")
    }


def import_bridge() -> Callable[[], None]:
    """``bridge_selinon``, imported with the real Celery; the suite's mock is ``celery`` again afterwards."""
    import selinon  # noqa: F401 - against the suite's mock, as the suite's own imports do

    mock = _celery_modules()
    mock_home = Path(mock["celery"].__file__).resolve().parent.parent  # the suite's test/ directory
    saved_path = list(sys.path)
    for name in mock:
        del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != mock_home]
    try:
        from celery_selinon_storage.selinon_bridge import bridge_selinon
    finally:
        sys.path[:] = saved_path
        for name in _celery_modules():
            del sys.modules[name]
        sys.modules.update(mock)
    return bridge_selinon


def pytest_configure(config: Any) -> None:
    import_bridge()()


def pytest_report_header(config: Any) -> str:
    from selinon import StoragePool

    bridged = getattr(StoragePool, "_celery_selinon_storage_bridged", False)
    return f"celery-selinon-storage: bridge_selinon() is {'on' if bridged else 'OFF'}"
