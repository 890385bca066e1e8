"""Runs the turn-log contract suite against memory and a real redis-server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

BOOT = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys, pytest\n"
    "args = ['-q', '-p', 'no:cacheprovider', 'tests/gevent_contract.py']\n"
    "sys.exit(pytest.main(args))\n"
)


def test_turn_log_contract_under_gevent(redis_server: RedisServer) -> None:
    env = dict(os.environ, CHATAPP_TEST_REDIS_URL=redis_server.url)
    result = subprocess.run(
        [sys.executable, "-c", BOOT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 24, summary
    assert "failed" not in summary and "error" not in summary
