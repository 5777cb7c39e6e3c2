"""How the store's JSON columns are written and read: orjson, with the standard library's json
for the few values orjson would refuse or change.

Every event the dispatcher records carries its CloudEvent document (a GitHub push is ~7 KB), and
the engines serialize it on the store's writer thread, holding the GIL: orjson does it in a
fifth of json's time. What json wrote and read must still be written and read alike, so:
integers beyond 64 bits and lone surrogates, which orjson refuses, go through json; text that
orjson cannot parse (NaN and Infinity, lone surrogate escapes, written by json before) is read
by json; and text that may hold an integer beyond 64 bits, which orjson would read as a float,
is read by json too. The one difference left: orjson writes a NaN or an infinity as null,
where json wrote a token that PostgreSQL refuses. This module knows no table and no engine.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A run of 19 digits may be an integer orjson reads as a float: past 2**64 - 1 or below -2**63.
_LONG_DIGITS = re.compile(r"\d{19,}")
# What comes before a number in JSON (before its minus sign, if any): in a string, anything else.
_BEFORE_A_NUMBER = frozenset("[:, \t\n\r")


def dumps(value: Any) -> str:
    """`value` as JSON text, keys that are not strings written as json writes them."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate, or no JSON
        return json.dumps(value)


def loads(text: str) -> Any:
    """The value of JSON `text`, as json would read it."""
    if not _may_hold_long_integer(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity or a lone surrogate from json.dumps; json reads them
    return json.loads(text)


def _may_hold_long_integer(text: str) -> bool:
    """A run of 19 or more digits starts a number (not a string, a fraction or an exponent).
    GitHub's all-zero commit ids are such runs inside strings, so the start is checked."""
    for match in _LONG_DIGITS.finditer(text):
        start = match.start()
        if start > 0 and text[start - 1] == "-":
            start -= 1
        if start == 0 or text[start - 1] in _BEFORE_A_NUMBER:
            return True
    return False
