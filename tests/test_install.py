"""install(app): the step and the option, once; where the storages come from."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_selinon_storage import StorageStep, install
from celery_selinon_storage.bootstep import STORAGES_ENV, STORAGES_SETTING, StoragesSource, storages_source


def test_install_adds_the_step_and_the_option() -> None:
    app = Celery("proj", set_as_current=False)
    install(app)
    assert StorageStep in app.steps["worker"]
    assert sorted(option.name for option in app.user_options["worker"]) == [
        "storages",
        "storages_metrics_port",
    ]


def test_install_twice_is_refused() -> None:
    app = Celery("proj", set_as_current=False)
    install(app)
    with pytest.raises(
        ImproperlyConfigured, match=r"already installed on app 'proj'; call install\(app\) once"
    ):
        install(app)


def test_the_option_beats_the_environment_which_beats_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("proj", set_as_current=False)
    monkeypatch.delenv(STORAGES_ENV, raising=False)
    assert storages_source(app, None) is None
    app.conf[STORAGES_SETTING] = "from-setting.yml"
    assert storages_source(app, None) == StoragesSource("from-setting.yml", "selinon_storages")
    monkeypatch.setenv(STORAGES_ENV, "from-env.yml")
    assert storages_source(app, None) == StoragesSource("from-env.yml", "$CELERY_SELINON_STORAGES")
    assert storages_source(app, "from-option.yml") == StoragesSource("from-option.yml", "--storages")
