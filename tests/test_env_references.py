"""Selinon's ``{VAR}`` references: read as Selinon read them where a built-in serves Selinon's class, refused in
the built-ins' own options (with the ``${VAR}`` form to write), kept as written for custom classes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from celery_selinon_storage import ConfigurationError
from celery_selinon_storage.envvars import (
    SELINON_FORMATTED_OPTIONS,
    ExpandedText,
    InvalidReference,
    expand,
    expand_selinon_format,
)
from celery_selinon_storage.secrets import public_target
from celery_selinon_storage.specs import load_storages
from celery_selinon_storage.storages.redis import RedisStorage
from tests.custom_adapters import EnvironmentUrlStorage

ENVIRON = {"REDIS_HOST": "cache.internal", "REDIS_PORT": "6380", "PW": "pa{ss}${X}word", "EMPTY": ""}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "storages.yml"
    path.write_text(text)
    return path


def load_error(path: Path, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path, environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- Selinon's form, read as Selinon read it ---------------------------------------------------------------


def test_selinons_form_is_read_as_str_format_and_ours_in_the_same_pass() -> None:
    assert (
        expand_selinon_format("redis://{REDIS_HOST}:{REDIS_PORT}/0", ENVIRON)
        == "redis://cache.internal:6380/0"
    )
    assert expand_selinon_format("{{literal}} $$ ${REDIS_HOST:-x} {REDIS_HOST}", ENVIRON) == (
        "{literal} $ cache.internal cache.internal"
    )
    assert expand_selinon_format("{REDIS_HOST[0]}{REDIS_PORT!r}", ENVIRON) == "c'6380'"  # as str.format does
    assert expand_selinon_format("no references", ENVIRON) == "no references"


def test_text_from_the_environment_is_never_scanned_again() -> None:
    assert expand_selinon_format("postgresql://u:{PW}@h/db", ENVIRON) == "postgresql://u:pa{ss}${X}word@h/db"
    assert (
        expand("postgresql://u:${PW}@h/db", ENVIRON, braces="refuse") == "postgresql://u:pa{ss}${X}word@h/db"
    )


def test_one_whole_reference_of_either_form_may_stand_for_a_number() -> None:
    port = expand_selinon_format("{REDIS_PORT}", ENVIRON)
    assert port == "6380" and isinstance(port, ExpandedText)
    assert isinstance(expand_selinon_format("${REDIS_PORT}", ENVIRON), ExpandedText)
    assert not isinstance(expand_selinon_format("{REDIS_PORT}0", ENVIRON), ExpandedText)
    assert not isinstance(expand_selinon_format("{{}}", ENVIRON), ExpandedText)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{SECRET_NAME_1}",
            "the {...} reference names an environment variable that is not set; set the variable, or write "
            "${NAME:-default} to give a default, or {{ and }} for literal braces",
        ),
        (
            "{REDIS_HOST}:{SECRET_NAME_1}",
            "the 2nd {...} reference (of 2) names an environment variable that is not set; set the variable, "
            "or write ${NAME:-default} to give a default, or {{ and }} for literal braces",
        ),
        (
            "ab}SECRET_NAME_1",
            "a single { or } is not valid where options are read as Selinon read them (str.format); "
            "write {{ or }} for a literal brace",
        ),
        (
            "{}",
            "the {...} reference is not valid; write {NAME} or ${NAME} (NAME made of letters, digits and _), "
            "or {{ and }} for literal braces",
        ),
        (
            "{REDIS_HOST.SECRET_NAME_1}",
            "the {...} reference is not valid; write {NAME} or ${NAME} (NAME made of letters, digits and _), "
            "or {{ and }} for literal braces",
        ),
    ],
)
def test_a_bad_selinon_reference_is_one_line_that_never_quotes_the_text(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        expand_selinon_format(text, ENVIRON)
    assert str(caught.value) == message
    assert "SECRET_NAME" not in str(caught.value)


#: Pieces of text: plain characters, Selinon's escapes and references to set and unset variables.
PIECES = st.sampled_from(
    ["a", "-", ":", "/", " ", "{{", "}}", "{REDIS_HOST}", "{PW}", "{EMPTY}", "{UNSET}", "{", "}"]
)


@given(st.lists(PIECES, max_size=12).map("".join))
def test_selinons_form_reads_exactly_as_str_format_does(text: str) -> None:
    try:
        expected = text.format(**ENVIRON)
    except (KeyError, ValueError, IndexError):
        with pytest.raises(InvalidReference):
            expand_selinon_format(text, ENVIRON)
    else:
        assert expand_selinon_format(text, ENVIRON) == expected


@given(st.text(alphabet="{}aB_0:!.[]"))
def test_whatever_selinons_form_accepts_str_format_reads_the_same(text: str) -> None:
    environ = {"a": "x{y}", "B": "", "B_0": "z", "_": "u"}
    try:
        ours = expand_selinon_format(text, environ)
    except InvalidReference:
        return
    assume(":" not in text and "!" not in text)  # format specs and conversions: str.format's own
    assert ours == text.format(**environ)


def test_the_formatted_options_are_those_selinon_1_4s_adapters_format() -> None:
    for class_path, options in SELINON_FORMATTED_OPTIONS.items():
        module, _, _class = class_path.rpartition(".")
        spec = importlib.util.find_spec(module)  # the source only: importing needs each adapter's driver
        assert spec is not None and spec.origin is not None
        origin = Path(spec.origin)
        files = sorted(origin.parent.glob("*.py")) if origin.name == "__init__.py" else [origin]
        source = "\n".join(file.read_text() for file in files)
        formatted = set(re.findall(r"\(?(\w+)(?: or '[^']*'\))?\.format\(\*\*os\.environ\)", source))
        assert formatted == options, class_path


# --- the built-ins' own options: refused, with the ${VAR} form ----------------------------------------


def test_selinons_form_in_a_built_ins_option_is_refused_with_the_form_to_write(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Cache
    classname: RedisStorage
    configuration:
      port: 6379
      host: '{REDIS_HOST}'
""",
    )
    assert load_error(path, ENVIRON) == (
        f"{path}:6: storage 'Cache', option 'host': the value holds a {{NAME}} reference (Selinon's form), "
        "which built-in storages do not read; write ${NAME} or ${NAME:-default} instead "
        "(a literal {NAME} can come from a variable: ${VAR})"
    )


@pytest.mark.parametrize(
    "import_line", ["", "    import: selinon.storage\n", "    import: celery_selinon_storage\n"]
)
def test_the_refusal_holds_in_every_form_that_names_a_built_in_and_never_quotes_the_value(
    tmp_path: Path, import_line: str
) -> None:
    path = write(
        tmp_path,
        f"""\
storages:
  - name: Results
    classname: SqlStorage
{import_line}    configuration:
      connection_string: 'postgresql://app:pa{{SECRET_PART}}ss@db/app'
""",
    )
    message = load_error(path, {})
    assert "option 'connection_string': the value holds a {NAME} reference (Selinon's form)" in message
    assert "SECRET_PART" not in message


def test_the_refusal_reaches_into_nested_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Results
    classname: SqlStorage
    configuration:
      connection_string: 'sqlite://'
      engine_options: {connect_args: {database: '{DB_FILE}'}}
""",
    )
    assert "option 'engine_options': the value holds a {NAME} reference" in load_error(path, {})


def test_braces_that_are_not_selinons_form_stay_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Cache
    classname: RedisStorage
    configuration:
      key_prefix: '{selinon}:results:'
      password: '$${NOT_A_REFERENCE}{x}'
      username: '${USER_FROM_ENV}'
""",
    )
    [spec] = load_storages(path, environ={"USER_FROM_ENV": "{ALSO_TEXT}"})
    assert spec.options["key_prefix"] == "{selinon}:results:"  # a Redis Cluster hash tag
    assert spec.options["password"] == "${NOT_A_REFERENCE}{x}"
    assert spec.options["username"] == "{ALSO_TEXT}"  # what the environment holds is never scanned


def test_a_custom_class_gets_selinons_form_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """\
storages:
  - name: Legacy
    classname: EnvironmentUrlStorage
    import: tests.custom_adapters
    configuration: {url: 'redis://{REDIS_HOST}:${REDIS_PORT}/0'}
""",
    )
    monkeypatch.setenv("REDIS_HOST", "cache.internal")  # the class reads os.environ itself, as Selinon's did
    [spec] = load_storages(path, environ={"REDIS_PORT": "6380"})
    assert spec.options["url"] == "redis://{REDIS_HOST}:6380/0"
    storage = spec.create()
    assert isinstance(storage, EnvironmentUrlStorage) and storage.url == "redis://cache.internal:6380/0"


# --- secrets --------------------------------------------------------------------------------------------


def test_a_password_read_from_selinons_form_is_masked_like_any_other() -> None:
    url = expand_selinon_format(
        "redis://:{REDIS_PASSWORD}@{REDIS_HOST}:6379/0", {**ENVIRON, "REDIS_PASSWORD": "Sel-9k2"}
    )
    storage = RedisStorage(url=url)
    shown = public_target(storage)
    assert "Sel-9k2" not in shown and "***" in shown and "cache.internal" in shown
