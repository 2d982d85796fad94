"""The registry of built-in adapters is the one place that declares them: pyproject's extras, the
package's exports and the contract tests follow it."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import celery_selinon_storage
import celery_selinon_storage.storages
from celery_selinon_storage.storages import BUILTIN_STORAGES, builtin_storage_class

PYPROJECT = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]


def _distribution(requirement: str) -> str:
    """``SQLAlchemy>=2.0,<3`` -> ``sqlalchemy``."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return name.group(0).lower().replace("_", "-")


def test_each_adapters_extra_installs_the_distribution_of_its_driver() -> None:
    providers = importlib.metadata.packages_distributions()
    for name, builtin in BUILTIN_STORAGES.items():
        if builtin.driver is None:
            continue
        assert builtin.extra in EXTRAS, f"{name}: no extra [{builtin.extra}] in pyproject.toml"
        wanted = {dist.lower().replace("_", "-") for dist in providers[builtin.driver]}
        declared = {_distribution(requirement) for requirement in EXTRAS[builtin.extra]}
        assert wanted & declared, f"{name}: [{builtin.extra}] does not install {builtin.driver} ({wanted})"


def test_the_all_extra_holds_every_adapters_extra() -> None:
    extras = {builtin.extra for builtin in BUILTIN_STORAGES.values() if builtin.extra}
    [everything] = EXTRAS["all"]
    assert everything == f"celery-selinon-storage[{','.join(sorted(extras, key=list(EXTRAS).index))}]"


def test_every_adapter_is_exported_and_names_a_server_to_test_on() -> None:
    for name, builtin in BUILTIN_STORAGES.items():
        assert getattr(celery_selinon_storage, name) is builtin_storage_class(name)
        assert builtin.servers, f"{name}: the contract tests need a kind of server to run it on"


def test_type_checkers_see_every_adapter_of_the_registry() -> None:
    source = Path(celery_selinon_storage.storages.__file__).read_text()
    block = source.split("if TYPE_CHECKING:", 1)[1].split("else:", 1)[0]
    assert sorted(re.findall(r"import (\w+) as", block)) == sorted(BUILTIN_STORAGES)
