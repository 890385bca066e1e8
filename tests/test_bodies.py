"""Request bodies: JSON parsed in linear time, nesting bounded, never a 500."""

from __future__ import annotations

import json
import timeit

import pytest

from chatapp.errors import ApiError
from chatapp.web.bodies import MAX_JSON_DEPTH
from chatapp.web.bodies import parse_json_object
from chatapp.web.bodies import too_deep


def nested(levels: int) -> bytes:
    """An object whose value nests `levels - 1` arrays: `levels` in all."""
    return b'{"a": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def refusal(raw: bytes) -> str:
    with pytest.raises(ApiError) as caught:
        parse_json_object(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_input"
    return caught.value.message


def test_nesting_up_to_the_bound_is_read() -> None:
    assert parse_json_object(nested(MAX_JSON_DEPTH))["a"] is not None


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 999, 5000, 60000])
def test_deeper_nesting_is_refused(levels: int) -> None:
    # Below Python's recursion limit the parsed value is measured; above it
    # the parser's RecursionError is caught: both are a 400, never a 500.
    assert "nested too deeply" in refusal(nested(levels))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b"{nope", "not valid JSON"),
        (b'"' + b'\\"' * 100, "not valid JSON"),
        (b"\xff{}", "UTF-8"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, says: str) -> None:
    assert says in refusal(raw)


def test_too_deep_counts_levels_of_arrays_and_objects() -> None:
    assert not too_deep({"a": 1}, 1)
    assert too_deep({"a": [1]}, 1)
    assert not too_deep({"a": [{"b": []}]}, 4)
    assert too_deep({"a": [{"b": [[]]}]}, 4)
    assert not too_deep("text", 0)


def test_lone_surrogates_are_replaced() -> None:
    assert parse_json_object(b'{"m": "a\\ud800b"}') == {"m": "a\ufffdb"}


# The worst bodies of 64 KiB found for each step (bench/hostile.py): the
# unterminated string of escaped quotes cost the old depth regex 18-24 s.
HOSTILE = {
    "escaped quotes": b'"' + b'\\"' * 32760,
    "deep arrays": b"[" * 65536,
    "deep, closed": b"[" * 32768 + b"]" * 32768,
    "wide arrays": b'{"a": [' + b"[]," * 21000 + b"[]]}",
    "wide objects": b'{"a": [' + b"{}," * 21000 + b"{}]}",
    "surrogates": b'{"a": "' + b"\\ud800" * 10900 + b'"}',
    "many keys": b"{" + b",".join(b'"%d": 0' % n for n in range(6500)) + b"}",
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_body_of_64_kib_is_read_in_linear_time(raw: bytes) -> None:
    assert len(raw) <= 64 * 1024 + 32

    def read() -> None:
        try:
            parse_json_object(raw)
        except ApiError:
            pass

    # The best of three: a busy machine only ever adds to the step's own cost
    # (a few milliseconds; the old depth regex took 18 s and more).
    took = min(timeit.repeat(read, number=1, repeat=3))
    assert took < 0.5, f"{took:.3f}s"


def test_a_flat_body_parses_to_its_fields() -> None:
    body = {"message": "hello", "token": "t", "conversation_id": None}
    assert parse_json_object(json.dumps(body).encode()) == body
