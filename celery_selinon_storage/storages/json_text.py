"""JSON text in and out: the standard library's C encoder and scanner, called without its Python layers.

``json.dumps`` and ``json.loads`` wrap their C code in Python calls that check and set up options on every
call: on a small record a tenth of the encoding and a quarter of the decoding, paid on every store and
retrieve (docs/benchmarks-vs-plain.md). These functions give the same text, values and errors as the
standard library for any input (nesting near the interpreter's recursion limit aside: they use two or
three Python frames fewer, so they reach a little deeper before ``RecursionError``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _stdlib_encoder
from typing import Any

#: The C scanner behind ``json.loads``, and the C encoder behind ``json.dumps`` (None on an interpreter
#: without the accelerator); neither is in the typed interface of ``json``.
_scan_value: Callable[[str, int], tuple[Any, int]] = vars(json.JSONDecoder())["scan_once"]
_c_make_encoder: Any = vars(_stdlib_encoder).get("c_make_encoder")


def json_encoder(*, ensure_ascii: bool, separators: tuple[str, str]) -> Callable[[Any], str]:
    """A strict ``json.dumps`` (NaN and infinities refused) with these options."""
    checked = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False, separators=separators)
    if _c_make_encoder is None:  # an interpreter without the C accelerator
        return checked.encode
    item_separator, key_separator = separators
    strings = _stdlib_encoder.encode_basestring_ascii if ensure_ascii else _stdlib_encoder.encode_basestring
    options = (checked.default, strings, None, key_separator, item_separator, False, False, False)

    def to_text(value: Any) -> str:
        # a new C encoder per call, as json.dumps makes, with its own record of the containers being
        # encoded: a cycle is refused at once, and no state is shared between calls or threads
        return "".join(_c_make_encoder({}, *options)(value, 0))

    return to_text


#: Strict, compact JSON: NaN and infinities are refused (no JSON parser outside Python reads them).
to_json = json_encoder(ensure_ascii=False, separators=(",", ":"))


def from_json(found: str | bytes) -> Any:
    """``json.loads(found)``: the same value, or the same error, for any input.

    What we store is compact text: one scan from its first character to its last. Anything else (space
    around the value, bytes that are not UTF-8, an error) goes to ``json.loads``, which reads or refuses it.
    """
    try:
        text = found if isinstance(found, str) else found.decode("utf-8")
        value, end = _scan_value(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError, AttributeError):
        pass  # json.loads raises its own error, not chained to this one
    return json.loads(found)
