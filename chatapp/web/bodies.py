"""Request bodies read safely: bounded nesting, well-formed text, no 500s.

Any POST body a client sends is read here. JSON nested deeper than
MAX_JSON_DEPTH is refused before it is parsed (Python's parser would raise
RecursionError, which is no ValueError), and every string that comes out
has its lone surrogates replaced with U+FFFD (see chatapp.text).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from flask import request

from chatapp.errors import ApiError
from chatapp.text import scrub
from chatapp.text import scrub_parsed

# Our bodies are flat objects; a little room for clients that add metadata.
MAX_JSON_DEPTH = 32

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """Return how deeply a JSON text nests arrays and objects, without parsing."""
    brackets = _BRACKETS.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body, refusing malformed or deeply nested input."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_input", "The body must be UTF-8 JSON.") from exc
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ApiError(400, "invalid_input", "The JSON body is nested too deeply.")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_input", "The body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_input", "The body must be a JSON object.")
    return dict(scrub_parsed(text, data))


def read_fields() -> dict[str, Any]:
    """Read the request body, JSON or a form, into a dict of scrubbed fields."""
    if request.is_json:
        return parse_json_object(request.get_data(cache=True))
    # A part whose name the multipart parser cannot read comes back named
    # None (e.g. name="x\\"): it is no field of ours, so it is skipped.
    return {scrub(k): scrub(v) for k, v in request.form.items() if k is not None}
