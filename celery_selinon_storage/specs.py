"""A storages YAML file, or the same data in a setting, becomes a list of checked ``StorageSpec`` objects."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selinon import DataStorage

from .envvars import Braces, InvalidReference, expand
from .errors import ConfigurationError, OptionProblem, describe_exception, printable, shortened
from .locations import FileLocation, KeyPath, Location, SettingLocation
from .options import check_options
from .retry import DEFAULT_RETRY, RetryPolicy, retry_policy
from .selinon_classes import SELINON_CLASSES, announce, serving_class
from .storages import BUILTIN_STORAGES, builtin_storage_class
from .storages.base import JsonStorage
from .yaml_source import LONGEST_MESSAGE, duplicate_key, load_yaml_file

#: Keys a storage entry may have (``cache`` is Selinon's and is accepted, not used here).
ENTRY_KEYS = ("name", "classname", "import", "configuration", "cache", "retry", "timeout")

#: ``import:`` values that mean "the built-in adapters" (the first is what Selinon's docs write).
BUILTIN_MODULE_ALIASES = frozenset(
    {"selinon.storage", "selinon.storages", "celery_selinon_storage", "celery_selinon_storage.storages"}
)


#: True while the loader builds an instance only to check its options (then drops it): an adapter that
#: counts or registers its instances can leave that one out.
BUILDING_TO_CHECK: ContextVar[bool] = ContextVar("BUILDING_TO_CHECK", default=False)


@dataclass(frozen=True)
class StorageSpec:
    """One storage to create in every worker process: its class and checked keyword options."""

    name: str
    cls: type[DataStorage]
    options: Mapping[str, Any] = field(repr=False)  # may hold secrets
    source: str = "<memory>"
    line: int = 0
    retry: RetryPolicy = DEFAULT_RETRY

    def create(self) -> DataStorage:
        """A new, unconnected instance (built-in adapters learn their name, for messages)."""
        instance = self.cls(**self.options)
        if isinstance(instance, JsonStorage):
            instance.storage_name = self.name
        return instance


def load_storages(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> list[StorageSpec]:
    """Read and check a storages file (a Selinon ``nodes.yml`` works as is).

    Whatever the file holds, the only exception is a ``ConfigurationError`` whose message is one
    printable line.
    """
    source = str(path)
    try:
        document = load_yaml_file(Path(path))
        return parse_storages(document, FileLocation(document, source), _environ(environ))
    except ConfigurationError as exc:
        raise _printable_error(exc) from None
    except RecursionError:  # the limits in yaml_source should make this unreachable
        raise ConfigurationError(
            "the file is nested too deeply to be checked; flatten it", source=printable(source)
        ) from None


def load_inline_storages(
    value: Any, setting: str = "selinon_storages", environ: Mapping[str, str] | None = None
) -> list[StorageSpec]:
    """Check storages given as Python data: a mapping with a ``storages`` list, or that list itself.

    The data has the shape of the YAML file and gets the same checks; an error names the setting path
    (``selinon_storages[1].configuration.port``) where a file's would name its line.
    """
    listed = isinstance(value, (list, tuple))
    document = {"storages": value} if listed else value
    try:
        return parse_storages(document, SettingLocation(document, setting, listed=listed), _environ(environ))
    except ConfigurationError as exc:
        raise _printable_error(exc) from None
    except RecursionError:  # a list that holds itself, say
        raise ConfigurationError(
            "the value is nested too deeply (or holds itself) and cannot be checked; flatten it",
            source=printable(setting),
        ) from None


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _printable_error(exc: ConfigurationError) -> ConfigurationError:
    """``exc``, or the same error escaped and cut short: a path or a message may hold any character."""
    message = str(exc)
    if message.isprintable() and len(message) <= LONGEST_MESSAGE:
        return exc
    return ConfigurationError(
        shortened(printable(" ".join(exc.problem.split())), LONGEST_MESSAGE // 2),
        source=None if exc.source is None else shortened(printable(exc.source), LONGEST_MESSAGE // 5),
        line=exc.line,
        storage=None if exc.storage is None else shortened(exc.storage, LONGEST_MESSAGE // 10),
        option=None if exc.option is None else shortened(exc.option, LONGEST_MESSAGE // 10),
    )


def parse_storages(document: Any, where: Location, environ: Mapping[str, str]) -> list[StorageSpec]:
    """Check the parsed document (plain Python data, or YAML that knows its lines); every problem
    raises a one-line ``ConfigurationError`` that says ``where`` the culprit is."""
    if document is None:
        raise where.error("the file is empty; it needs a top-level 'storages:' list")
    _refuse_duplicate_keys(document, where, ())
    if not isinstance(document, Mapping):
        raise where.error("the top level must be a mapping with a 'storages:' list")
    if "storages" not in document:
        raise where.error("there is no top-level 'storages:' list; add one")
    entries = document["storages"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise where.error(
            "'storages:' must be a non-empty list of storages (each with name, classname, configuration)",
            ("storages",),
        )

    specs: list[StorageSpec] = []
    first_path: dict[str, KeyPath] = {}
    for index, entry in enumerate(entries):
        path = ("storages", index)
        spec = _parse_entry(entry, path, where, environ)
        if spec.name in first_path:
            raise where.error(
                f"the name is used twice (first {where.mention((*first_path[spec.name], 'name'))}); "
                "storage names must be unique",
                (*path, "name"),
                storage=spec.name,
            )
        first_path[spec.name] = path
        specs.append(spec)
    return specs


def _parse_entry(entry: Any, path: KeyPath, where: Location, environ: Mapping[str, str]) -> StorageSpec:
    if not isinstance(entry, Mapping):
        raise where.error(
            "each item of 'storages:' must be a mapping with name, classname and configuration", path
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise where.error("a storage needs a 'name:' (non-empty text)", (*path, "name"))
    if not name.isprintable():
        raise where.error(
            "the name must be printable text (no control characters or lone surrogates); rename the storage",
            (*path, "name"),
            storage=name,
        )

    def fail(problem: str, key: str | None = None, option: str | None = None) -> ConfigurationError:
        return where.error(problem, (*path, key or "name"), storage=name, option=option)

    _refuse_duplicate_keys(entry, where, path, name)
    for key in entry:
        if key not in ENTRY_KEYS:
            raise fail(f"unknown key {key!r}; a storage takes: {', '.join(ENTRY_KEYS)}", key)

    configuration = entry.get("configuration")
    if configuration is None:
        configuration = {}
    if not isinstance(configuration, Mapping):
        raise fail("'configuration:' must be a mapping of option: value", "configuration")
    options_path = (*path, "configuration")
    _refuse_duplicate_keys(configuration, where, options_path, name, in_options=True)
    cls = _resolve_class(entry, name, fail)

    raw: dict[str, Any] = {}
    for option, value in configuration.items():
        if not isinstance(option, str):
            raise fail("option names must be text", "configuration")
        nested = duplicate_key(value)
        if nested:
            _refuse_duplicate_keys(value, where, (*options_path, option), name, option, nested=nested)
        try:
            raw[option] = _expanded(value, environ, _braces(cls))
        except InvalidReference as exc:
            raise where.error(str(exc), (*options_path, option), storage=name, option=option) from None
    options = _built_once(cls, raw, entry, path=path, where=where, fail=fail)
    retry = _retry_policy(entry, path, where, name)
    source, line = where.place((*path, "name"))
    return StorageSpec(name=name, cls=cls, options=options, source=source, line=line or 0, retry=retry)


def _built_once(
    cls: type[DataStorage],
    raw: dict[str, Any],
    entry: Mapping[str, Any],
    *,
    path: KeyPath,
    where: Location,
    fail: Any,
) -> dict[str, Any]:
    """The checked options, once one instance has been built with them (no adapter may do I/O then).

    Built-in adapters check their option values when built; a custom one may read the environment.
    Whatever either raises becomes one line naming the storage and the class.
    """
    name = entry["name"]
    key = "configuration" if "configuration" in entry else "classname"
    try:
        options = check_options(cls, raw)
    except OptionProblem as exc:
        raise _option_error(exc, path, where, name) from None
    except Exception as exc:  # noqa: BLE001 - e.g. environment text that YAML cannot read
        raise fail(
            f"the configuration cannot be checked ({describe_exception(exc)}); "
            "check its values and the environment variables they use",
            key,
        ) from None
    checking = BUILDING_TO_CHECK.set(True)
    try:
        cls(**options)
    except OptionProblem as exc:
        raise _option_error(exc, path, where, name) from None
    except Exception as exc:  # noqa: BLE001 - whatever an adapter raises when built is the configuration's
        raise fail(
            f"{cls.__module__}.{cls.__qualname__} could not be built ({describe_exception(exc)}); "
            "fix its configuration or the environment it reads",
            key,
        ) from None
    finally:
        BUILDING_TO_CHECK.reset(checking)
    return options


def _option_error(exc: OptionProblem, path: KeyPath, where: Location, name: str) -> ConfigurationError:
    """One option's problem, where that option is written (or the configuration, when it is missing)."""
    option_path = (*path, "configuration", *(() if exc.option is None else (exc.option,)))
    return where.error(str(exc), option_path, storage=name, option=exc.option)


def _retry_policy(entry: Mapping[str, Any], path: KeyPath, where: Location, storage: str) -> RetryPolicy:
    """The entry's ``retry:`` mapping and ``timeout:`` as a policy (absent: the defaults)."""
    value = entry.get("retry")
    if value is not None and not isinstance(value, Mapping):
        raise where.error(
            "'retry:' must be a mapping with attempts, backoff and max_backoff",
            (*path, "retry"),
            storage=storage,
        )
    try:
        return retry_policy(value, entry.get("timeout"))
    except OptionProblem as exc:
        if exc.option == "timeout":
            culprit: KeyPath = (*path, "timeout")
        else:
            culprit = (*path, "retry", (exc.option or "").removeprefix("retry."))
        raise where.error(str(exc), culprit, storage=storage, option=exc.option) from None


def _refuse_duplicate_keys(
    value: Any,
    where: Location,
    path: KeyPath,
    storage: str | None = None,
    option: str | None = None,
    *,
    in_options: bool = False,
    nested: tuple[Any, int, int] | None = None,
) -> None:
    """A key written twice is an error (YAML would silently keep the last one; Python data cannot)."""
    duplicates = [nested] if nested else getattr(value, "duplicates", None)
    if not duplicates:
        return
    key, line, first_line = duplicates[0]
    what = f"key {key!r}" if option or not in_options else "the option"
    raise where.error(
        f"{what} is written twice in one mapping (first on line {first_line}); keep only one of them",
        path,
        storage=storage,
        option=option or (str(key) if in_options else None),
        line=line,
    )


def _resolve_class(entry: Mapping[str, Any], name: str, fail: Any) -> type[DataStorage]:
    classname = entry.get("classname", name)
    if not isinstance(classname, str) or not classname:
        raise fail("'classname:' must be the name of a class", "classname")
    module_name = entry.get("import")
    if module_name is not None and not isinstance(module_name, str):
        raise fail("'import:' must be a module path such as myproject.storages", "import")

    if module_name is None or module_name in BUILTIN_MODULE_ALIASES:
        if classname not in BUILTIN_STORAGES:
            raise fail(
                f"class {classname!r} is not a built-in storage (built-ins: {', '.join(BUILTIN_STORAGES)}); "
                "fix 'classname:' or set 'import:' to the module that defines it",
                "classname",
            )
        try:
            cls = builtin_storage_class(classname)
        except ImportError as exc:
            raise fail(f"{exc}", "classname") from None
    elif (module_name, classname) in SELINON_CLASSES:  # Selinon's own classes fail on current drivers
        try:
            cls = serving_class(module_name, classname)  # type: ignore[assignment]
        except ImportError as exc:
            raise fail(f"{exc}", "import") from None
        announce(name, module_name, classname, entry.get("configuration"))
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a configuration problem
            raise fail(
                f"module {module_name!r} cannot be imported ({type(exc).__name__}: {exc}); "
                "fix 'import:' or install the package that provides it",
                "import",
            ) from None
        cls = getattr(module, classname, None)  # type: ignore[assignment]
        if cls is None:
            raise fail(f"module {module_name!r} has no class {classname!r}; fix 'classname:'", "classname")

    if not (isinstance(cls, type) and issubclass(cls, DataStorage)):
        raise fail(
            f"{classname!r} is not a subclass of selinon.DataStorage; a storage class must implement it",
            "classname",
        )
    abstract = getattr(cls, "__abstractmethods__", ())
    if abstract:
        missing = ", ".join(sorted(abstract))
        raise fail(
            f"{classname!r} is an abstract class (it does not implement {missing}); "
            "name a class that implements them, such as a built-in storage",
            "classname",
        )
    return cls


def _expanded(value: Any, environ: Mapping[str, str], braces: Braces = "literal") -> Any:
    """Plain Python data with environment references expanded in every text value.

    ``braces`` says how ``{...}`` is read in the value itself (``envvars.expand``); inside a list or a
    mapping, where Selinon's adapters formatted nothing, a Selinon-form reference is refused rather than
    expanded (built-in storages) or kept as written (custom classes).
    """
    if isinstance(value, str):
        return expand(value, environ, braces=braces)
    inner: Braces = "literal" if braces == "literal" else "refuse"
    if isinstance(value, dict):
        return {key: _expanded(item, environ, inner) for key, item in value.items()}
    if isinstance(value, list):
        return [_expanded(item, environ, inner) for item in value]
    return value


def _braces(cls: type) -> Braces:
    """How an option's braces are read: refused where they look like Selinon's ``{VAR}`` in the options of
    a built-in storage (which never read them), as written for a custom class (which may format them)."""
    return "refuse" if cls.__module__.startswith(f"{__package__}.storages.") else "literal"
