"""Request bodies read safely: bounded nesting, well-formed text, no 500s.

Any POST body a client sends is read here. JSON is parsed by the standard
library's C scanner in one linear pass; nesting deeper than Python's
recursion limit raises RecursionError (no ValueError), which is refused like
any malformed body, and a parsed value nested deeper than MAX_JSON_DEPTH is
refused before anything walks it recursively. Every string that comes out
has its lone surrogates replaced with U+FFFD (see chatapp.text).

Nothing here may cost more than linear time in the body's size: it runs
before any token check or rate limit, inside the worker's one event loop, so
a superlinear step would let one small request freeze every stream of the
worker (RELIABILITY.md, "Hostile input cost").
"""

from __future__ import annotations

import json
from typing import Any

from flask import request

from chatapp.errors import InvalidInput
from chatapp.text import scrub
from chatapp.text import scrub_parsed

# Our bodies are flat objects; a little room for clients that add metadata.
MAX_JSON_DEPTH = 32


def too_deep(value: Any, most: int = MAX_JSON_DEPTH) -> bool:
    """Tell whether a parsed JSON value nests arrays and objects past `most`.

    Level by level, never recursive, stopping at the first level past `most`:
    linear in the value's size, and no value can exhaust the stack.
    """
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(most):
        if not level:
            return False  # nothing nests deeper: no need to count on
        deeper = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, dict | list):
                    deeper.append(child)
        level = deeper
    return bool(level)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body, refusing malformed or deeply nested input."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("The body must be UTF-8 JSON.") from exc
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise InvalidInput("The JSON body is nested too deeply.") from exc
    except ValueError as exc:
        raise InvalidInput("The body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.")
    if too_deep(data):
        raise InvalidInput("The JSON body is nested too deeply.")
    return dict(scrub_parsed(text, data))


def read_fields() -> dict[str, Any]:
    """Read the request body, JSON or a form, into a dict of scrubbed fields."""
    if request.is_json:
        return parse_json_object(request.get_data(cache=True))
    # A part whose name the multipart parser cannot read comes back named
    # None (e.g. name="x\\"): it is no field of ours, so it is skipped.
    return {scrub(k): scrub(v) for k, v in request.form.items() if k is not None}
