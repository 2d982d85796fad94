"""The option checker takes what a constructor can take (no false rejections) and refuses the rest in one line.

The adapters below are loaded by the YAML tests with ``import: tests.test_option_checker``.
"""

from __future__ import annotations

import enum
import math
import re
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.envvars import ExpandedText
from celery_selinon_storage.errors import OptionProblem
from celery_selinon_storage.options import check_options
from celery_selinon_storage.specs import load_storages
from tests.custom_adapters import DictStorage

if TYPE_CHECKING:  # only type checkers see it: the option annotated with it goes unchecked
    from decimal import Decimal


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class TypedStorage(DictStorage):
    """A constructor of the kinds Selinon adapters have; it keeps what it was given."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = None,  # type: ignore[assignment]  # noqa: RUF013 - implicit Optional, as Selinon adapters write
        timeout: float = 1.0,
        path: Path = Path("/tmp"),
        mode: Mode = Mode.FAST,
        level: Level = Level.LOW,
        tags: set[str] | None = None,
        shards: frozenset[int] = frozenset(),
        either: int | str = 0,
        kind: Literal["a", "b"] = "a",
        hosts: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        anything: Any = None,
        debug: bool = False,
    ) -> None:
        super().__init__()
        self.given = dict(locals())
        del self.given["self"], self.given["__class__"]


class HiddenTypeStorage(DictStorage):
    """One annotation names a class imported only under TYPE_CHECKING: only that option goes unchecked."""

    def __init__(self, amount: Decimal | None = None, port: int = 6379, host: str = "localhost") -> None:
        super().__init__()
        self.amount, self.port, self.host = amount, port, host


class RequiredPortStorage(DictStorage):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port


def options(cls: type = TypedStorage, **given: Any) -> dict[str, Any]:
    return check_options(cls, given)


def problem(cls: type = TypedStorage, **given: Any) -> str:
    with pytest.raises(OptionProblem) as caught:
        check_options(cls, given)
    message = f"option '{caught.value.option}': {caught.value}"
    assert "\n" not in message
    return message


# --- what used to be refused, and is taken now -------------------------------------------------------


def test_null_is_taken_where_the_default_is_none() -> None:
    assert options(port=None) == {"port": None}
    assert "must be an integer, not null" in problem(RequiredPortStorage, port=None)


def test_text_is_taken_for_a_path_and_handed_on_as_text() -> None:
    taken = options(path="/var/lib/results")
    assert taken == {"path": "/var/lib/results"} and type(taken["path"]) is str
    assert "'path': must be a path (text), not an integer" in problem(path=5)


def test_an_enum_takes_a_members_value_or_name_as_written() -> None:
    assert options(mode="safe") == {"mode": "safe"}
    assert options(mode="SAFE") == {"mode": "SAFE"}
    assert options(level=2) == {"level": 2}
    assert options(level="HIGH") == {"level": "HIGH"}
    assert "'mode': must be one of 'fast', 'safe' (or a member's name), not text" in problem(mode="slow")


def test_a_set_takes_a_list_and_refuses_text() -> None:
    assert options(tags=["a", "b"], shards=[1, 2]) == {"tags": ["a", "b"], "shards": [1, 2]}
    assert "'tags': must be a list or null, not text" in problem(tags="a,b")


def test_a_quoted_number_becomes_the_number_where_only_a_number_is_taken() -> None:
    assert options(port="5432") == {"port": 5432}
    assert options(timeout="2.5") == {"timeout": 2.5}
    assert options(timeout="1e3") == {"timeout": 1000.0}  # YAML 1.1 (PyYAML) reads 1e3 as text
    assert options(either="5432") == {"either": "5432"}  # text is taken as it is: nothing to convert
    assert options(host="5432") == {"host": "5432"}
    assert options(anything="5432") == {"anything": "5432"}
    assert "'port': must be an integer or null, not text" in problem(port="1e3")
    assert "'port': must be an integer or null, not text" in problem(port="5432.0")
    assert "'port': must be an integer or null, not text" in problem(port="٥٤٣٢")  # Arabic-Indic digits


def test_a_name_imported_only_for_type_checkers_turns_off_only_its_own_check() -> None:
    assert options(HiddenTypeStorage, amount=[1, 2]) == {"amount": [1, 2]}
    assert "'port': must be an integer, not a list" in problem(HiddenTypeStorage, port=[6379])
    assert "'host': must be text, not an integer" in problem(HiddenTypeStorage, host=1)


# --- what is still refused -----------------------------------------------------------------------------


def test_sound_checks_stay() -> None:
    assert problem(port=[5432]) == "option 'port': must be an integer or null, not a list; fix its value"
    assert problem(debug="yes") == "option 'debug': must be true or false, not text; fix its value"
    assert problem(kind="c") == "option 'kind': must be one of 'a', 'b', not text; fix its value"
    assert problem(timeout=True) == "option 'timeout': must be a number, not true or false; fix its value"
    assert problem(hosts="h1") == "option 'hosts': must be a list or null, not text; fix its value"
    assert problem(extra=[1]) == "option 'extra': must be a mapping or null, not a list; fix its value"
    assert problem(color=1).startswith("option 'color': unknown option; TypedStorage takes: host, port, ")


def test_a_number_where_text_is_wanted_says_to_quote_it() -> None:
    assert (
        problem(host=1234)
        == "option 'host': must be text, not an integer; put the value in quotes to give it as text"
    )


# --- how annotations are found ------------------------------------------------------------------------


def _class_with_init_from(module_source: str, decorator_source: str) -> type:
    """A storage class whose ``__init__`` is written in one module and wrapped by a decorator from another."""
    decorators = types.ModuleType("decorators")
    exec(decorator_source, vars(decorators))
    adapters = types.ModuleType("adapters")
    vars(adapters).update(decorators=decorators, DictStorage=DictStorage)
    exec(module_source, vars(adapters))
    cls: type = vars(adapters)["Wrapped"]
    return cls


def test_annotations_resolve_where_init_was_written_through_a_decorator_and_in_its_class() -> None:
    wrapped = _class_with_init_from(
        """\
from __future__ import annotations
import enum
from pathlib import Path

class Wrapped(DictStorage):
    class Kind(enum.Enum):
        A = "a"

    @decorators.logged
    def __init__(self, where: Path = Path("."), kind: Kind = Kind.A, port: int = 1) -> None:
        super().__init__()
""",
        """\
import functools

def logged(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)
    return wrapper
""",
    )
    assert check_options(wrapped, {"where": "/x", "kind": "a", "port": "7"}) == {
        "where": "/x",
        "kind": "a",
        "port": 7,
    }
    assert "'where': must be a path (text), not an integer" in problem(wrapped, where=1)
    assert "'kind': must be one of 'a' (or a member's name), not text" in problem(wrapped, kind="b")


# --- properties ------------------------------------------------------------------------------------------

#: annotation -> values a constructor with that annotation can take, as YAML gives them
TAKEN: list[tuple[str, Any]] = [
    ("host", st.text()),
    ("port", st.none() | st.integers()),
    ("timeout", st.integers() | st.floats()),
    ("path", st.text()),
    ("mode", st.sampled_from(["fast", "safe", "FAST", "SAFE"])),
    ("level", st.sampled_from([1, 2, "LOW", "HIGH"])),
    ("tags", st.none() | st.lists(st.text())),
    ("shards", st.lists(st.integers())),
    ("either", st.integers() | st.text()),
    ("kind", st.sampled_from(["a", "b"])),
    ("hosts", st.none() | st.lists(st.text())),
    ("extra", st.none() | st.dictionaries(st.text(), st.integers() | st.text())),
    ("anything", st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.integers())),
    ("debug", st.booleans()),
]


@given(st.sampled_from(TAKEN).flatmap(lambda pair: st.tuples(st.just(pair[0]), pair[1])))
def test_every_value_the_constructor_takes_is_taken_unchanged(option_and_value: tuple[str, Any]) -> None:
    option, value = option_and_value
    taken = check_options(TypedStorage, {option: value})[option]
    assert taken == value or (isinstance(value, float) and math.isnan(value) and math.isnan(taken))
    assert type(taken) is type(value)
    assert TypedStorage(**{option: taken}).given[option] is taken


@given(st.integers())
def test_an_integer_written_as_text_or_from_the_environment_is_that_integer(number: int) -> None:
    assert options(port=str(number)) == {"port": number}
    assert options(port=ExpandedText(str(number))) == {"port": number}
    assert options(timeout=str(number)) == {"timeout": number}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_in_any_yaml_1_2_form_is_that_float(number: float) -> None:
    for written in (repr(number), f"{number:e}", f"{number:E}", f"{number:.17g}"):
        if "e" in written.lower() or "." in written:
            assert options(timeout=written)["timeout"] == float(written)
            assert options(timeout=ExpandedText(written))["timeout"] == float(written)


@given(st.text().filter(lambda text: not re.fullmatch(r"[-+]?[0-9]+", text)))
def test_text_that_is_no_integer_is_refused_for_an_integer_without_being_quoted(text: str) -> None:
    message = problem(RequiredPortStorage, port=text)
    assert message == "option 'port': must be an integer, not text; fix its value"


@given(st.lists(st.integers()) | st.dictionaries(st.text(), st.integers()) | st.booleans())
def test_a_container_or_boolean_for_an_integer_is_refused(value: Any) -> None:
    assert problem(RequiredPortStorage, port=value).startswith("option 'port': must be an integer, not ")


# --- in a storages file, with line numbers -----------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(text)
    return path


def test_a_selinon_style_file_loads_with_the_options_it_writes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Typed
    import: tests.test_option_checker
    classname: TypedStorage
    configuration:
      host: db.example
      port: '5432'
      timeout: 1e3
      path: /var/lib/results
      mode: safe
      level: HIGH
      tags: [a, b]
      hosts: ~
  - name: Hidden
    import: tests.test_option_checker
    classname: HiddenTypeStorage
    configuration:
      amount: '12.50'
      port: ${PORT:-6380}
""",
    )
    typed, hidden = load_storages(path, environ={})
    assert dict(typed.options) == {
        "host": "db.example",
        "port": 5432,
        "timeout": 1000.0,
        "path": "/var/lib/results",
        "mode": "safe",
        "level": "HIGH",
        "tags": ["a", "b"],
        "hosts": None,
    }
    assert typed.create().given["port"] == 5432  # type: ignore[attr-defined]
    assert dict(hidden.options) == {"amount": "12.50", "port": 6380}


@pytest.mark.parametrize(
    ("line", "written", "message"),
    [
        ("port: [5432]", 6, "option 'port': must be an integer or null, not a list; fix its value"),
        (
            "host: 1234",
            6,
            "option 'host': must be text, not an integer; put the value in quotes to give it as text",
        ),
        (
            "mode: slow",
            6,
            "option 'mode': must be one of 'fast', 'safe' (or a member's name), not text; fix its value",
        ),
        ("debug: 'false'", 6, "option 'debug': must be true or false, not text; fix its value"),
    ],
)
def test_a_wrong_value_is_one_line_naming_file_line_storage_and_option(
    tmp_path: Path, line: str, written: int, message: str
) -> None:
    path = write(
        tmp_path,
        f"""\
storages:
  - name: Typed
    import: tests.test_option_checker
    classname: TypedStorage
    configuration:
      {line}
""",
    )
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path, environ={})
    assert str(caught.value) == f"{path}:{written}: storage 'Typed', {message}"


def test_the_hidden_type_leaves_the_other_options_checked_in_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Hidden
    import: tests.test_option_checker
    classname: HiddenTypeStorage
    configuration:
      amount: 3
      port: [6379]
""",
    )
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path, environ={})
    assert str(caught.value) == (
        f"{path}:7: storage 'Hidden', option 'port': must be an integer, not a list; fix its value"
    )
