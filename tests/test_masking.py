"""Every masking rule of ``secrets.py`` and every ``${...}`` message of ``envvars.py``, as pure unit tests."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from celery_selinon_storage.envvars import InvalidReference, expand
from celery_selinon_storage.secrets import (
    is_secret_name,
    mask_url,
    scrub,
    secret_values,
    url_secrets,
)

# -- mask_url: the password field ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+pg8000://app:hunter2@db.example:5432/results",
            "postgresql+pg8000://app:***@db.example:5432/results",
        ),
        ("mysql+pymysql://root:pw@127.0.0.1:3306/test", "mysql+pymysql://root:***@127.0.0.1:3306/test"),
        ("rediss://default:pw@cache:6380/2", "rediss://default:***@cache:6380/2"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "mongodb://app:pw@h1:27017,h2:27018/db?replicaSet=rs0",
            "mongodb://app:***@h1:27017,h2:27018/db?replicaSet=rs0",
        ),
        ("http://user:pw@[::1]:9000/bucket", "http://user:***@[::1]:9000/bucket"),
        ("http://user:p%40ss%2Fw@host", "http://user:***@host"),
    ],
)
def test_the_password_field_is_masked_and_the_rest_stays_as_written(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_password_that_is_part_of_the_scheme_leaves_the_scheme_alone() -> None:
    # the user name equal to the password would give it away: it is masked too
    assert (
        mask_url("postgresql+pg8000://postgres:postgres@127.0.0.1:5432/test")
        == "postgresql+pg8000://***:***@127.0.0.1:5432/test"
    )
    assert mask_url("postgresql://app:postgres@postgres:5432/postgres") == (
        "postgresql://app:***@postgres:5432/postgres"
    )


def test_a_password_of_one_digit_leaves_the_digits_of_host_port_and_path_alone() -> None:
    assert mask_url("redis://:1@127.0.0.1:6379/1") == "redis://:***@127.0.0.1:6379/1"
    assert mask_url("redis://1:1@10.1.1.1:1111/11") == "redis://***:***@10.1.1.1:1111/11"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),  # '@' in the password
        ("redis://:pa/ss@host:6379/0", "redis://:***@host:6379/0"),  # '/' cuts the authority short
        ("redis://:pa?ss@host/0?password=x", "redis://:***@host/0?password=***"),
        ("redis://:pa#ss@host/0", "redis://:***@host/0"),
        ("postgresql://app:a:b:c@db/app", "postgresql://app:***@db/app"),  # ':' in the password
    ],
)
def test_unencoded_special_characters_in_a_password_are_masked_whole(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:@host/0",  # empty password: nothing to hide
        "redis://user@host/0",  # no password
        "https://github.com/org/repo",
        "sqlite:///tmp/results.sqlite3",
        "sqlite://",
        "mongodb://h1:27017,h2:27017/?replicaSet=rs0",
        "http://[::1]:9000/",
        "not a url at all",
        "",
    ],
)
def test_a_url_without_secrets_comes_back_unchanged(url: str) -> None:
    assert mask_url(url) == url
    assert url_secrets(url) == []


# -- mask_url: parameters ------------------------------------------------------------------------

LISTED_PARAMETERS = [
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "key",
    "access_key",
    "secret_key",
    "sslpassword",
    "api_key",
]


@pytest.mark.parametrize("name", [*LISTED_PARAMETERS, *(n.upper() for n in LISTED_PARAMETERS), "Password"])
def test_every_password_like_query_parameter_is_masked_and_its_neighbours_stay(name: str) -> None:
    url = f"postgresql://app@db:5432/app?sslmode=require&{name}=Val-9&application_name=worker"
    assert mask_url(url) == f"postgresql://app@db:5432/app?sslmode=require&{name}=***&application_name=worker"


@pytest.mark.parametrize(
    "name",
    [
        "tlsCertificateKeyFilePassword",  # MongoDB, camelCase
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "client_secret",
        "x-api-key",
        "apiKey",
        "aws_secret_access_key",
        "pass%77ord",  # percent-encoded name
    ],
)
def test_secret_parameter_names_are_recognised_in_any_spelling(name: str) -> None:
    assert mask_url(f"https://host/p?{name}=Val-9&a=1") == f"https://host/p?{name}=***&a=1"


def test_parameters_in_the_fragment_and_after_semicolons_are_masked_too() -> None:
    assert mask_url("https://h/cb#access_token=Val-9&state=ok") == "https://h/cb#access_token=***&state=ok"
    assert (
        mask_url("mysql://u@h/db?charset=utf8;password=Val-9") == "mysql://u@h/db?charset=utf8;password=***"
    )


def test_a_query_without_a_scheme_is_masked_as_well() -> None:
    assert mask_url("db.example/app?password=Val-9") == "db.example/app?password=***"


@pytest.mark.parametrize(
    "name",
    [
        "key_prefix",
        "sslmode",
        "authSource",
        "ssl_keyfile",
        "keyspace",
        "monkey",
        "username",
        "db",
        "replicaSet",
    ],
)
def test_other_parameters_stay_readable(name: str) -> None:
    url = f"redis://h:6379/0?{name}=Val-9&password="
    assert mask_url(url) == url  # an empty password= hides nothing


def test_masking_twice_changes_nothing_more() -> None:
    url = "postgresql://app:pw@db/app?password=x&sslpassword=y&sslmode=require"
    assert (
        mask_url(mask_url(url))
        == mask_url(url)
        == ("postgresql://app:***@db/app?password=***&sslpassword=***&sslmode=require")
    )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(":/?#@[]&;=%+.,-_aZ09 \\'\"\x00é")), max_size=40))
def test_mask_url_never_raises_on_odd_text(text: str) -> None:
    for candidate in (text, "redis://" + text, "postgresql+pg8000://" + text, "http://[" + text):
        assert isinstance(mask_url(candidate), str)


_PASSWORDS = st.text(
    alphabet=st.sampled_from(list("abcXYZ0189!$&'()*+,;=-._~%:@/?# ")), min_size=1, max_size=16
)


@settings(max_examples=300, deadline=None)
@given(password=_PASSWORDS, port=st.integers(1, 65535), db=st.integers(0, 15))
def test_no_password_survives_in_the_password_field(password: str, port: int, db: int) -> None:
    url = f"redis://app:{password}@cache.example:{port}/{db}"
    assert mask_url(url) == f"redis://app:***@cache.example:{port}/{db}"


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=st.sampled_from(list("abcXYZ0189!$'()*+,-._~%:@/? ")), min_size=1, max_size=16))
def test_no_query_password_survives(value: str) -> None:
    masked = mask_url(f"postgresql://app@db:5432/app?password={value}&sslmode=require")
    readable = "postgresql://app@db:5432/app?password=***&sslmode=require"
    # an '@' in the value makes the URL ambiguous: what either reading calls a secret is masked
    assert masked == readable or ("@" in value and masked == "postgresql://app@db:***&sslmode=require")


# -- names and options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "aws_secret_access_key",
        "aws_access_key_id",
        "aws_session_token",
        "sslpassword",
        "api_key",
        "apiKey",
        "client-secret",
        "pwd",
        "db_pwd",
        "key",
        "ssl_key",
        "credentials",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key_prefix", "username", "host", "bucket", "keyspace", "ssl_keyfile", "url", "monkey", "db"]
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_secret_values_of_named_options_urls_and_nested_options() -> None:
    options = {
        "connection_string": "postgresql://app:p%40ss@db/app?sslpassword=ssl-Pw&sslmode=require",
        "url": "redis://:1@127.0.0.1:6379/0",
        "endpoint_url": "http://key-user:endpoint-Pw@s3:9000",
        "engine_options": {"connect_args": {"password": "nested-Pw", "timeout": 5}, "pool_size": 3},
        "hosts": ["mongodb://u:list-Pw@h1/db"],
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "s3-Secret",
        "password": 4711,
        "token": "",
        "key_prefix": "selinon:",
        "username": "app",
        "port": 6379,
        "tls": True,
    }
    found = secret_values(options)
    assert set(found) == {
        "p%40ss",
        "p@ss",
        "ssl-Pw",
        "1",
        "endpoint-Pw",
        "nested-Pw",
        "list-Pw",
        "AKIDEXAMPLE",
        "s3-Secret",
        "4711",
    }
    assert len(found) == len(set(found))


# -- scrub: secrets as whole tokens --------------------------------------------------------------


def test_a_secret_inside_a_longer_word_is_left_alone_and_a_whole_one_is_masked() -> None:
    text = 'connecting with postgresql+pg8000: FATAL: password authentication failed for user "postgres"'
    assert scrub(text, ["postgres"]) == (
        'connecting with postgresql+pg8000: FATAL: password authentication failed for user "***"'
    )


def test_a_secret_of_one_digit_leaves_addresses_ports_and_other_numbers_alone() -> None:
    text = "Error 111 connecting to 127.0.0.1:6379. Connection refused; took 1.5 s; password 1 was sent (1)."
    assert scrub(text, ["1"]) == (
        "Error 111 connecting to 127.0.0.1:6379. Connection refused; took 1.5 s; password *** was sent (***)."
    )


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("hunter2", "***"),
        ("pw=hunter2.", "pw=***."),
        ("'hunter2'", "'***'"),
        ("(hunter2)", "(***)"),
        ("hunter2-x", "***-x"),
        ("hunter2x", "hunter2x"),
        ("xhunter2", "xhunter2"),
        ("hunter2_", "hunter2_"),
        ("hunter23", "hunter23"),
        ("hunter2.5", "hunter2.5"),  # inside a number
    ],
)
def test_token_boundaries(text: str, masked: str) -> None:
    assert scrub(text, ["hunter2"]) == masked


def test_a_secret_with_punctuation_at_its_edges_is_masked_wherever_it_appears() -> None:
    assert scrub("x!pw!x and !pw!", ["!pw!"]) == "x***x and ***"


def test_regular_expression_characters_in_a_secret_are_literal() -> None:
    assert scrub("pXs and p.s*", ["p.s*"]) == "pXs and ***"


def test_the_longest_of_overlapping_secrets_is_masked_in_one_piece() -> None:
    assert scrub("abc def, abc", ["abc", "abc def"]) == "***, ***"


def test_encoded_and_escaped_forms_of_a_secret_are_masked() -> None:
    assert scrub("sent p%40ss%20w", ["p@ss w"]) == "sent ***"
    assert scrub("sent p%40ss+w", ["p@ss w"]) == "sent ***"
    assert scrub(r"SqlStorage(password='a\\b')", ["a\\b"]) == "SqlStorage(password='***')"
    assert scrub('{"password": "tab\\there"}', ["tab\there"]) == '{"password": "***"}'


def test_empty_and_blank_secrets_change_nothing() -> None:
    text = "nothing to hide here"
    assert scrub(text, ["", " ", "\n"]) == text
    assert scrub(text, []) == text


# -- scrub: URLs in text -------------------------------------------------------------------------


def test_urls_in_text_are_masked_by_structure_even_when_their_secrets_are_unknown() -> None:
    text = (
        'Could not connect to the endpoint URL: "http://key-user:Unknown-1@127.0.0.1:9000/b"; '
        "also (redis://:Unknown-2@cache:6379/0). And postgresql://app@db/app?password=Unknown-3."
    )
    assert scrub(text, []) == (
        'Could not connect to the endpoint URL: "http://key-user:***@127.0.0.1:9000/b"; '
        "also (redis://:***@cache:6379/0). And postgresql://app@db/app?password=***."
    )


def test_scheme_host_port_and_path_of_a_url_are_never_masked() -> None:
    text = "RedisStorage('redis://:redis@redis:6379/1') and SqlStorage('sqlite:///1/x.db')"
    assert (
        scrub(text, ["redis", "1"])
        == "RedisStorage('redis://:***@redis:6379/1') and SqlStorage('sqlite:///1/x.db')"
    )


def test_the_brief_examples_in_a_repr() -> None:
    sql = (
        "SqlStorage('postgresql+pg8000://postgres:postgres@127.0.0.1:5432/test?password=Q-9', table_name='t')"
    )
    assert scrub(sql, ["postgres", "Q-9"]) == (
        "SqlStorage('postgresql+pg8000://***:***@127.0.0.1:5432/test?password=***', table_name='t')"
    )
    redis = "RedisStorage('redis://:1@127.0.0.1:16379/0', key_prefix='css1:', ttl=None)"
    assert (
        scrub(redis, ["1"]) == "RedisStorage('redis://:***@127.0.0.1:16379/0', key_prefix='css1:', ttl=None)"
    )


def test_a_secret_that_cuts_a_url_short_is_masked_whole() -> None:
    # a space in the password ends the URL as text sees it; the known secret still goes as one piece
    assert scrub("see redis://:my pass@host:6379/0).", ["my pass"]) == "see redis://:***@host:6379/0)."
    assert scrub('to "postgresql://u:pa\'ss@h/db"', ["pa'ss"]) == 'to "postgresql://u:***@h/db"'


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(alphabet=st.sampled_from(list("abcXYZ0189!$&+-._~@?' ")), min_size=1, max_size=12),
    before=st.sampled_from([" ", "(", "'", '"', "=", ": ", "\n"]),
    after=st.sampled_from([" ", ")", "'", '"', ";", ", ", "\n"]),
)
def test_a_secret_standing_between_separators_never_survives(secret: str, before: str, after: str) -> None:
    assume(secret.strip())
    assert secret not in scrub(f"<<{before}{secret}{after}>>", [secret])


# -- ${...} references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("Tail${Pw-Part-7731}x", "Pw-Part-7731"),  # not a name
        ("${DB_PASS:Hunter-3391}", "Hunter-3391"),  # ':' written for ':-'
        ("${9LEAK}", "9LEAK"),
        ("${ leak }", "leak"),
    ],
)
def test_an_invalid_reference_is_not_quoted(text: str, hidden: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        expand(text, {})
    message = str(caught.value)
    assert hidden not in message and "Tail" not in message
    assert message == (
        "the ${...} reference is not valid; write ${NAME} or ${NAME:-default} (NAME made of letters, "
        "digits and _, not starting with a digit), or $$ for a literal dollar"
    )


def test_an_unset_variable_is_not_named() -> None:
    with pytest.raises(InvalidReference) as caught:
        expand("pre${LEAKY_PART_5512}post", {})
    message = str(caught.value)
    assert "LEAKY_PART_5512" not in message
    assert message == (
        "the ${...} reference names an environment variable that is not set; set the variable, "
        "or write ${NAME:-default} to give a default, or $$ for a literal dollar"
    )


def test_which_of_several_references_is_wrong_is_said_by_position() -> None:
    with pytest.raises(InvalidReference, match=re.escape("the 3rd ${...} reference (of 4) names")):
        expand("${A}${B:-x}${C}${D}", {"A": "1", "D": "4"})
    with pytest.raises(InvalidReference, match=re.escape("the 2nd ${...} reference (of 2) is not valid")):
        expand("$${LITERAL} ${A} ${B-C}", {"A": "1"})


def test_an_unclosed_reference_keeps_its_message() -> None:
    with pytest.raises(InvalidReference) as caught:
        expand("sqlite:///${HOME", {})
    assert str(caught.value) == "'${' is not closed; write ${NAME} or $$ for a literal dollar"


def test_references_still_expand() -> None:
    assert expand("postgresql://app:${PW}@${HOST:-db}/app", {"PW": "p{a}ss$word"}) == (
        "postgresql://app:p{a}ss$word@db/app"
    )
    assert expand("price_in_$$", {}) == "price_in_$"


@settings(max_examples=200, deadline=None)
@given(body=st.text(alphabet=st.sampled_from(list("abXY09_-:. !@#")), min_size=1, max_size=20))
def test_no_reference_error_quotes_its_body(body: str) -> None:
    marked = f"Qz{body}"
    try:
        expand(f"pw${{{marked}}}", {})
    except InvalidReference as exc:
        assert marked not in str(exc) and "pw" not in str(exc)


def test_a_placeholder_host_keeps_its_port() -> None:
    # Selinon's nodes.yml files write hosts as {REDIS_HOST}: a host, not a user name and password
    assert mask_url("redis://{REDIS_HOST}:6379/13") == "redis://{REDIS_HOST}:6379/13"
    assert mask_url("redis://${REDIS_HOST}:6379/13") == "redis://${REDIS_HOST}:6379/13"
    assert mask_url("redis://:pw@{REDIS_HOST}:6379/13") == "redis://:***@{REDIS_HOST}:6379/13"
