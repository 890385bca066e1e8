"""Well-formed text: lone surrogates replaced, as a UTF-8 decoder would.

JSON may escape a lone surrogate (``"\\ud800"``); Python then holds a string
that cannot be encoded to UTF-8, so no event frame, poll answer or history
entry holding it could be sent or stored. Every string parsed from a client
or a provider passes through here and gets U+FFFD in its place.
"""

from __future__ import annotations

import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What a lone surrogate looks like in JSON text before parsing.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def scrub(text: str) -> str:
    """Replace lone surrogates with U+FFFD, so the text can be encoded."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def scrub_value(value: Any) -> Any:
    """Scrub every string inside a parsed JSON value, keys included."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [scrub_value(item) for item in value]
    if isinstance(value, dict):
        return {scrub(str(k)): scrub_value(v) for k, v in value.items()}
    return value


def scrub_parsed(raw: str, value: Any) -> Any:
    """Scrub a value parsed from JSON `raw`; free when `raw` escapes no surrogate."""
    return scrub_value(value) if _ESCAPED_SURROGATE.search(raw) else value
