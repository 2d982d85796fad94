"""The seed's form in Selinon's own loader: ``import: selinon.storage`` with ``classname: RedisStorage``.

Selinon's documentation, and this package's, name the built-in adapters as ``selinon.storage``'s
``SqlStorage``, ``RedisStorage``, ``MongoStorage``, ``S3Storage`` (and ``InMemoryStorage``). In Selinon 1.4
``selinon.storage`` is the module of its configuration class and holds no adapter, so Selinon's
``Config.set_config_yaml`` stops with ImportError on a file this package reads. ``offer_builtins_to_selinon``
(run when ``celery_selinon_storage`` is imported) makes those names importable from that module, without
replacing anything Selinon defines there, so one ``nodes.yml`` serves Selinon and the worker.

Selinon builds its own instance of each storage when its config is set. What it builds here reads its
configuration as the worker's loader does (``${VAR}`` expanded, ``port: '5432'`` a number, the same
refusals); with the bridge on (``install(app)``), Selinon's look-ups get the worker's managed instances, so
Selinon's own is never connected.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from .envvars import InvalidReference
from .errors import ConfigurationError, OptionProblem
from .options import check_options
from .specs import _braces, _expanded
from .storages import BUILTIN_STORAGES, builtin_storage_class

#: Selinon's module that the seed's ``import:`` names.
SELINON_MODULE = "selinon.storage"

_MARK = "_celery_selinon_storage_builtins"


def offer_builtins_to_selinon() -> None:
    """Make ``from selinon.storage import RedisStorage`` (and the other built-ins) work; idempotent.

    Each class is imported when Selinon first asks for it (with its driver). A name Selinon's module
    defines itself stays Selinon's. Should Selinon have no such module, one is registered.
    """
    try:
        module = importlib.import_module(SELINON_MODULE)
    except ImportError:
        module = types.ModuleType(SELINON_MODULE, "The built-in storages of celery_selinon_storage")
        sys.modules[SELINON_MODULE] = module
        package = importlib.import_module(SELINON_MODULE.rpartition(".")[0])
        vars(package)[SELINON_MODULE.rpartition(".")[2]] = module
    namespace = vars(module)
    previous = namespace.get("__getattr__")
    if getattr(previous, _MARK, False):
        return
    namespace["__getattr__"] = _module_getattr(module.__name__, previous)


def _module_getattr(name: str, previous: Callable[[str], Any] | None) -> Callable[[str], Any]:
    def __getattr__(attribute: str) -> Any:  # the module-level hook of PEP 562
        if attribute in BUILTIN_STORAGES:
            return selinon_class(attribute)
        if previous is not None:
            return previous(attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    setattr(__getattr__, _MARK, True)
    return __getattr__


@functools.cache
def selinon_class(name: str) -> type:
    """The built-in ``name`` as Selinon builds it: a subclass that reads its options as the loader does."""
    builtin = builtin_storage_class(name)
    builtin_init: Callable[..., None] = builtin.__init__  # type: ignore[misc]

    @functools.wraps(builtin_init)
    def __init__(self: Any, **options: Any) -> None:
        builtin_init(self, **_as_the_loader_reads(builtin, options))

    return type(name, (builtin,), {"__init__": __init__, "__module__": SELINON_MODULE, "__qualname__": name})


def _as_the_loader_reads(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with environment references expanded and values checked, as ``load_storages`` does."""
    where = f"{SELINON_MODULE}.{cls.__name__}"
    expanded: dict[str, Any] = {}
    for option, value in options.items():
        try:
            expanded[option] = _expanded(value, os.environ, _braces(cls))
        except InvalidReference as exc:
            raise ConfigurationError(str(exc), source=where, option=option) from None
    try:
        return check_options(cls, expanded)
    except OptionProblem as exc:
        raise ConfigurationError(str(exc), source=where, option=exc.option) from None
