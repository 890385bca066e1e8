"""Start-up under gunicorn: gevent first, and refusals in one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def test_wsgi_patches_gevent_before_anything_else() -> None:
    probe = (
        "import sys\n"
        "import wsgi\n"
        "from gevent import monkey\n"
        "import socket, threading\n"
        "assert monkey.is_module_patched('socket'), 'socket not patched'\n"
        "assert monkey.is_module_patched('threading'), 'threading not patched'\n"
        "import requests.adapters, urllib3.connection\n"
        "assert urllib3.connection.socket.socket is socket.socket\n"
        "print('patched-first')\n"
    )
    assert "patched-first" in _run_probe(probe)


def test_gunicorn_conf_never_imports_the_app() -> None:
    probe = (
        "import runpy, sys\n"
        "runpy.run_path('gunicorn.conf.py')\n"
        "assert 'chatapp' not in sys.modules and 'flask' not in sys.modules\n"
        "print('clean')\n"
    )
    assert "clean" in _run_probe(probe)


def _run_probe(probe: str) -> str:
    """Run Python code in a fresh interpreter at the repo root; return stdout."""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATAPP_", "OPENAI_", "ANTHROPIC_"))
    }
    env["CHATAPP_BIND"] = f"127.0.0.1:{free_port()}"
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"CHATAPP_PROVIDER": "openai"}, "needs OPENAI_API_KEY"),
        ({"CHATAPP_ENV": "production"}, "needs CHATAPP_SECRET_KEY"),
        (
            {"CHATAPP_MAX_OUTPUT_TOKENS": "many"},
            "CHATAPP_MAX_OUTPUT_TOKENS='many' is invalid",
        ),
        ({"CHATAPP_WORKERS": "2"}, "CHATAPP_WORKERS > 1 needs CHATAPP_REDIS_URL"),
    ],
)
def test_bad_settings_stop_gunicorn_with_one_clear_line(
    settings: dict[str, str], line: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    ours = [row for row in result.stderr.splitlines() if row.startswith("chatapp: ")]
    assert len(ours) == 1 and line in ours[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("CHATAPP_REDIS_URL", "redis+sentinel://:s3cret-Pw@127.0.0.1:26379"),
        ("CHATAPP_REDIS_URL", "rediss+cluster://admin:s3cret-Pw@127.0.0.1:x"),
        ("CHATAPP_REDIS_URL", "redis://admin:s3cret-Pw@127.0.0.1:6379/0?db=x"),
        ("CHATAPP_MODERATION_BASE_URL", "ftp://admin:s3cret-Pw@moderation.example/v1"),
    ],
)
def test_a_refused_url_setting_never_prints_its_password(name: str, url: str) -> None:
    settings = {name: url}
    if name == "CHATAPP_MODERATION_BASE_URL":
        settings |= {"CHATAPP_MODERATION": "openai", "OPENAI_API_KEY": "sk-x"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=_env(CHATAPP_WORKERS="1", **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    ours = [row for row in result.stderr.splitlines() if row.startswith("chatapp: ")]
    assert len(ours) == 1 and name in ours[0], result.stderr
    assert "***@" in ours[0], ours[0]
    assert "s3cret-Pw" not in result.stderr
    assert "admin" not in result.stderr
