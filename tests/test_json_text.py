"""The adapters' JSON codec gives what ``json.dumps`` and ``json.loads`` give: the same text, value or error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selinon_storage.storages.json_text import from_json, json_encoder, to_json
from celery_selinon_storage.storages.selinon_layout import selinon_json

# every Unicode code point, lone surrogates included
any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(any_text | st.integers() | st.booleans() | st.none(), children, max_size=4)
    ),
    max_leaves=20,
)


def outcome(function: Any, value: Any) -> tuple[str, Any, bool]:
    """What a call gave: its value (NaN made comparable), or its error's type and message, and whether a
    traceback would show it chained to another error."""
    try:
        return "value", repr(function(value)), False
    except (TypeError, ValueError, RecursionError) as exc:
        chained = exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__)
        return type(exc).__name__, str(exc), chained


def stdlib_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@given(json_values)
def test_to_json_writes_what_json_dumps_writes_or_fails_alike(value: Any) -> None:
    assert outcome(to_json, value) == outcome(stdlib_compact, value)


@given(json_values)
def test_selinon_json_writes_what_selinons_json_dumps_writes(value: Any) -> None:
    assert outcome(selinon_json, value) == outcome(lambda v: json.dumps(v, allow_nan=False), value)


class NotJson:
    pass


def cycle() -> list[Any]:
    looped: list[Any] = [1]
    looped.append({"back": looped})
    return looped


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        NotJson(),
        {"a": [NotJson()]},
        {(1, 2): 3},
        cycle(),
        nested(100_000),
        math.nan,
        [math.inf],
        {"n": -math.inf},
    ],
    ids=["object", "nested object", "tuple key", "cycle", "100000 deep", "nan", "inf", "-inf"],
)
def test_to_json_refuses_what_json_dumps_refuses_with_the_same_error(value: Any) -> None:
    ours, theirs = outcome(to_json, value), outcome(stdlib_compact, value)
    assert ours[0] != "value"
    assert ours == theirs


def test_a_cycle_is_refused_at_once_whatever_the_recursion_limit() -> None:
    # Found in review: without the encoder's record of open containers a cycle recursed down to the
    # recursion limit; raised to 100,000 the C stack overflowed first (a segfault). In a child, to be safe.
    script = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from celery_selinon_storage.storages.json_text import to_json\n"
        "looped = []; looped.append({'big': ['x' * 20] * 2000, 'back': looped})\n"
        "try:\n    to_json(looped)\nexcept ValueError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "Circular reference detected"), done.stderr[-500:]


def test_a_failed_encoding_leaves_nothing_behind_for_the_next() -> None:
    shared = {"k": [1, 2]}
    for bad in (cycle(), [shared, NotJson()], nested(100_000)):
        with pytest.raises((TypeError, ValueError, RecursionError)):
            to_json(bad)
    # the same containers again: no leftover marks a second visit as a cycle
    assert to_json([shared, shared]) == '[{"k":[1,2]},{"k":[1,2]}]'


def test_an_encoder_for_other_options_matches_json_dumps_with_them() -> None:
    spaced = json_encoder(ensure_ascii=True, separators=(", ", ": "))
    value = {"é": [1.5, "✓", None]}
    assert spaced(value) == json.dumps(value, allow_nan=False)


json_texts = st.builds(
    lambda value, indent, before, after: before + json.dumps(value, indent=indent) + after,
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | any_text,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
        max_leaves=10,
    ),
    st.none() | st.integers(0, 2),
    st.sampled_from(["", " ", "\n", "\ufeff", "x"]),
    st.sampled_from(["", " ", "\n\t", "x", "}", "\x00"]),
)


@given(json_texts | any_text)
def test_from_json_reads_text_as_json_loads_does(text: str) -> None:
    assert outcome(from_json, text) == outcome(json.loads, text)


@given(
    json_texts.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | json_texts.map(lambda text: text.encode("utf-16"))
    | json_texts.map(lambda text: text.encode("utf-16-le", "surrogatepass"))
    | json_texts.map(lambda text: text.encode("utf-8-sig", "surrogatepass"))
    | st.binary()
)
def test_from_json_reads_bytes_as_json_loads_does(data: bytes) -> None:
    assert outcome(from_json, data) == outcome(json.loads, data)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}',
        '  {"a":1}',
        '{"a":1}  ',
        "[1,2",
        "",
        "NaN",
        "1e400",
        '"\\ud800"',
        "[" * 100_000,
        "12345678901234567890123",
    ],
)
def test_from_json_edge_cases(text: str) -> None:
    assert outcome(from_json, text) == outcome(json.loads, text)
    assert outcome(from_json, text.encode()) == outcome(json.loads, text.encode())
