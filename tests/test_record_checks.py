"""Which task ids and names ``check_keys`` refuses, against the rule written out once more, by hand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selinon_storage.errors import InvalidRecordError
from celery_selinon_storage.storages.memory import InMemoryStorage


def refused_by_rule(task_id: Any, flow_name: Any, task_name: Any) -> bool:
    """Text of at most 255 characters, none of them C0 controls, DEL or lone surrogates; a task id not empty."""

    def bad(value: Any) -> bool:
        return (
            not isinstance(value, str)
            or len(value) > 255
            or any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value)
        )

    return bad(task_id) or bad(flow_name) or bad(task_name) or task_id == ""


class Text(str):
    """A subclass of str: still text."""


keys = (
    st.text(st.characters(codec=None), max_size=260)
    | st.text(st.sampled_from("a\u00a0\u200b\u2028\x00\x1f\x7f\ud800é🐎"), max_size=8)
    | st.text(max_size=3).map(Text)
    | st.integers()
    | st.none()
    | st.binary(max_size=3)
)


@given(keys, keys, keys)
def test_check_keys_refuses_exactly_what_the_rule_refuses(
    task_id: Any, flow_name: Any, task_name: Any
) -> None:
    storage = InMemoryStorage()
    try:
        storage.check_keys(task_id, flow_name, task_name)
    except InvalidRecordError:
        assert refused_by_rule(task_id, flow_name, task_name)
    else:
        assert not refused_by_rule(task_id, flow_name, task_name)


@pytest.mark.parametrize(
    "name", ["no\u00a0break", "zero\u200bwidth", "line\u2028separator", "soft\u00adhyphen"]
)
def test_text_that_is_not_printable_but_holds_no_control_character_is_accepted(name: str) -> None:
    storage = InMemoryStorage()
    storage.connect()
    storage.store(None, name, name, name, {"n": 1})
    assert storage.retrieve(name, name, name) == {"n": 1}
