"""JSON on the hot paths: orjson where it reads and writes what Python's json would, json
everywhere else, so that nothing a user sends or stored changes meaning.

Every event is parsed from its webhook body, written to the bus and into the store: ~7 KB of
JSON three times over for a GitHub push. orjson does each at a third of json's cost or less.
But it differs at the edges, and there json keeps the last word:
- reading: orjson refuses NaN, Infinity, 1e400, a BOM, UTF-16/32 text, lone surrogate escapes
  and deep nesting (json decides, and words any refusal), and reads an integer beyond 64 bits
  as a float (text that may hold one goes to json);
- writing: orjson writes NaN and infinities as null and writes datetimes or UUIDs that json
  refuses (a document holding anything but plain JSON values goes to json), and refuses big
  integers, keys that are not strings and lone surrogates (json writes those).

This module is pure: no I/O.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

# Digits as "0", anything else as " ": a run of 19 digits is then found by bytes.find, two
# orders of magnitude faster than a regular expression scanning for one.
_DIGITS_ONLY = bytes(ord("0") if ord("0") <= byte <= ord("9") else ord(" ") for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19
_VALUE_BEFORE = b":,["
JSON_SPACE = b" \t\n\r"
# Deeper than orjson goes (it refuses past 255); a cycle gets there too, and json reports it.
_ORJSON_DEPTH = 255


def may_hold_big_integer(text: bytes) -> bool:
    """Whether `text` may hold an integer beyond 64 bits: a run of 19 digits where a JSON
    value can start (after `:`, `,`, `[`, `-` or at the start). Text inside a string can look
    like that too: that text only takes the slower path."""
    digits = text.translate(_DIGITS_ONLY)
    start = digits.find(_NINETEEN_DIGITS)
    while start >= 0:
        before = start - 1 if start and text[start - 1] == ord("-") else start
        while before and text[before - 1] in JSON_SPACE:
            before -= 1
        if not before or text[before - 1] in _VALUE_BEFORE:
            return True
        end = digits.find(b" ", start)
        start = -1 if end < 0 else digits.find(_NINETEEN_DIGITS, end)
    return False


def loads(text: bytes | str) -> Any:
    """`json.loads(text)`: the same value, or the same ValueError."""
    if isinstance(text, str):
        try:
            encoded = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: only json reads it
            return json.loads(text)
    else:
        encoded = text
    if not may_hold_big_integer(encoded):
        try:
            return orjson.loads(encoded)
        except orjson.JSONDecodeError:
            pass  # json decides, and words the refusal
    return json.loads(text)


def dumps(value: Any) -> bytes:
    """UTF-8 JSON of `value` that reads back as json's compact form would; TypeError for a
    value no JSON holds."""
    if _plain(value):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # an integer beyond 64 bits, a key that is not a string, a lone surrogate
    # Escaped to ASCII: a lone surrogate has no UTF-8, and the escape reads back the same.
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def dumps_text(value: Any) -> str:
    """`dumps` as text, for a database driver."""
    return dumps(value).decode()


def _plain(document: Any) -> bool:
    """Whether `document` holds only dicts, lists, strings, integers, booleans, None and finite
    floats: what orjson writes as json does."""
    level = [document]
    for _ in range(_ORJSON_DEPTH):  # one level of nesting at a time
        inner: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is dict:
                inner.extend(item.values())
            elif kind is list:
                inner.extend(item)
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif kind is not str and kind is not int and kind is not bool and item is not None:
                return False
        if not inner:
            return True
        level = inner
    return False
