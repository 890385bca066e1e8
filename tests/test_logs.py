"""The log helpers the core calls: one JSON object per line, nothing clashing."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pythonjsonlogger.json import JsonFormatter

from chatapp import create_app
from chatapp.web.logs import JSON_FORMAT
from chatapp.web.logs import hash_client
from chatapp.web.logs import log_turn
from tests.conftest import ROOT


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Capture the chatapp loggers' lines through the production formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(**JSON_FORMAT))
    logger = logging.getLogger("chatapp")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(row) for row in out.getvalue().splitlines()]


def test_log_turn_writes_one_json_object_with_its_fields(captured: io.StringIO) -> None:
    log_turn(
        "turn.ended",
        turn_id="t-1",
        outcome="stop",
        input_tokens=12,
        output_tokens=34,
        duration_ms=120.5,
    )
    [line] = parsed(captured)
    assert line["event"] == "turn.ended"
    assert line["logger"] == "chatapp.turn"
    assert line["level"] == "INFO"
    assert line["time"].endswith("+00:00")
    assert (line["turn_id"], line["outcome"]) == ("t-1", "stop")
    assert (line["input_tokens"], line["output_tokens"]) == (12, 34)


def test_fields_named_like_logging_attributes_do_not_break_a_line(
    captured: io.StringIO,
) -> None:
    log_turn(
        "turn.ended",
        name="n",
        message="m",
        module="x",
        event="e",
        time=1,
        level=logging.WARNING,
    )
    [line] = parsed(captured)
    assert (line["name_"], line["message_"], line["module_"]) == ("n", "m", "x")
    assert (line["event"], line["event_"], line["time_"]) == ("turn.ended", "e", 1)
    assert line["level"] == "WARNING"


def test_lines_logged_during_a_request_carry_its_id(captured: io.StringIO) -> None:
    app = create_app({"SECRET_KEYS": ("test-key",)})
    with app.test_request_context(headers={"X-Request-ID": "given-id-1234"}):
        app.preprocess_request()
        logging.getLogger("chatapp.anything").warning("something happened")
        # An explicit id in a request is the same id, never a clash.
        log_turn("turn.accepted", turn_id="t-2", request_id="given-id-1234")
    first, second = parsed(captured)
    assert first["request_id"] == second["request_id"] == "given-id-1234"
    assert second["turn_id"] == "t-2"


def test_a_client_hash_is_keyed_stable_and_opaque() -> None:
    one = hash_client("ip:203.0.113.9", b"k1")
    assert one == hash_client("ip:203.0.113.9", b"k1")
    assert one != hash_client("ip:203.0.113.9", b"k2")
    assert one != hash_client("ip:203.0.113.10", b"k1")
    assert len(one) == 16 and "203" not in one


def run_probe(probe: str) -> subprocess.CompletedProcess[str]:
    """Run `probe` in a fresh interpreter at the repository's root."""
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_gunicorn_formats_its_lines_as_the_app_does() -> None:
    # gunicorn.conf.py may not import the app, so it spells the format out.
    probe = (
        "import json, runpy\n"
        "conf = runpy.run_path('gunicorn.conf.py')['logconfig_dict']\n"
        "print(json.dumps(conf['formatters']['json']))\n"
    )
    formatter = json.loads(run_probe(probe).stdout)
    assert formatter.pop("()") == "pythonjsonlogger.json.JsonFormatter"
    assert formatter == JSON_FORMAT


def test_configured_logging_writes_the_same_lines() -> None:
    # configure_logging stops logging from finding each record's caller,
    # thread and process: no line writes them, so every line stays the same.
    probe = (
        "import io, json, logging\n"
        "from pythonjsonlogger.json import JsonFormatter\n"
        "from chatapp.web.logs import JSON_FORMAT, configure_logging, log_turn\n"
        "out = io.StringIO()\n"
        "handler = logging.StreamHandler(out)\n"
        "handler.setFormatter(JsonFormatter(**JSON_FORMAT))\n"
        "logging.getLogger('chatapp').addHandler(handler)\n"
        "logging.getLogger('chatapp').setLevel(logging.INFO)\n"
        "log_turn('turn.ended', turn_id='t-1', error=None, cached=False)\n"
        "configure_logging('INFO')\n"
        "log_turn('turn.ended', turn_id='t-1', error=None, cached=False)\n"
        "print(out.getvalue(), end='')\n"
    )
    result = run_probe(probe)
    before, after = (json.loads(row) for row in result.stdout.splitlines())
    assert before.pop("time") and after.pop("time")
    assert after == before
    assert list(after) == [
        "level", "logger", "event", "turn_id", "error", "cached"
    ]  # fmt: skip
    assert '"turn_id": "t-1"' in result.stderr  # the root handler's line
