"""The recipes in deploy/ work: Debian's nginx in front of gunicorn, systemd's check."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chatapp.config import SETTINGS
from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ROOT
from tests.conftest import ChatClient
from tests.conftest import FromAddress
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import Turn
from tests.conftest import free_port
from tests.conftest import text_of
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"
NGINX_SITE = DEPLOY / "nginx.conf"
UNIT = DEPLOY / "chatapp.service"
ENV_EXAMPLE = DEPLOY / "chatapp.env.example"
RECIPE_LOG = "/var/log/nginx/chatapp.access.log"

# The test harness's main nginx.conf: what /etc/nginx/nginx.conf is on a
# server, with everything in a temporary prefix, and gzip on for every type
# so that the recipe has to keep it off the event stream by itself.
MAIN_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    gzip on;
    gzip_types *;
    gzip_proxied any;
    gzip_min_length 1;
    include {prefix}/chatapp.conf;
    log_format ids '$request_uri $chatapp_request_id';
    access_log {prefix}/access.log ids;
}}
"""


class Nginx:
    """Debian's nginx serving deploy/nginx.conf, its ports and paths changed."""

    def __init__(self, upstream_port: int) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            pytest.fail("nginx is not installed (apt-get install nginx)")
        self.binary = binary
        self.upstream_port = upstream_port
        self.http_port = free_port()
        self.https_port = free_port()
        # Under /tmp and traversable, so nginx's unprivileged workers reach it.
        self.prefix = Path(tempfile.mkdtemp(prefix="chatapp-nginx-"))
        self.prefix.chmod(0o755)
        self.cert = self.prefix / "cert.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def site(self) -> str:
        """The recipe with only its ports and paths replaced."""
        text = NGINX_SITE.read_text(encoding="utf-8")
        live = "/etc/letsencrypt/live/chat.example.com"
        for old, new, times in [
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{self.upstream_port};", 1),
            ("    listen 80;", f"    listen 127.0.0.1:{self.http_port};", 1),
            ("    listen 443 ssl", f"    listen 127.0.0.1:{self.https_port} ssl", 1),
            (f"{live}/fullchain.pem", str(self.cert), 1),
            (f"{live}/privkey.pem", str(self.prefix / "key.pem"), 1),
            (RECIPE_LOG, str(self.prefix / "chatapp.access.log"), 2),
        ]:
            assert text.count(old) == times, f"deploy/nginx.conf: {old!r} {times}x"
            text = text.replace(old, new)
        return text

    def start(self) -> Nginx:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
            + ["-keyout", str(self.prefix / "key.pem"), "-out", str(self.cert)],
            check=True,
            capture_output=True,
        )
        (self.prefix / "chatapp.conf").write_text(self.site(), encoding="utf-8")
        main = self.prefix / "nginx.conf"
        main.write_text(MAIN_CONF.format(prefix=self.prefix), encoding="utf-8")
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(main)]
            + ["-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ready, 20, f"nginx on {self.url}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited early:\n{self.error_log()}")
        try:
            response = requests.get(self.url + "/healthz", verify=self.cert, timeout=1)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        """The recipe's own access log (both of its servers write it)."""
        path = self.prefix / "chatapp.access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def harness_log(self) -> str:
        """The http-level log of the harness: what a server without one writes."""
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, token: str, source: str = "127.0.0.1") -> ChatClient:
        """A browser-like client reaching nginx from the loopback address `source`."""
        client = ChatClient(self.url, token=token)
        # requests lets REQUESTS_CA_BUNDLE override a session's verify.
        client.http.trust_env = False
        client.http.verify = str(self.cert)
        client.http.mount("https://", FromAddress(source))
        return client

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def behind(module_services: ServiceFactory) -> Iterator[tuple[Service, Nginx]]:
    """chatapp as the README says to run it behind nginx, and that nginx."""
    service = module_services(
        CHATAPP_TRUSTED_PROXY_HOPS="1",
        CHATAPP_DEMO_DELAY_MS="30",
        CHATAPP_RATE_LIMITS="2/minute",
    )
    nginx = Nginx(service.port).start()
    yield service, nginx
    nginx.stop()


def read_events(
    response: requests.Response, limit: int | None = None
) -> list[tuple[float, ServerSentEvent]]:
    """Read events with the time each arrived, until `done` or `limit` events."""
    decoder = SSEDecoder()
    out: list[tuple[float, ServerSentEvent]] = []
    try:
        for data in response.raw.stream(1024, decode_content=False):
            for event in decoder.feed(data):
                out.append((time.monotonic(), event))
                if event.event == "done" or (limit and len(out) >= limit):
                    return out
    finally:
        response.close()
    return out


def token_for(service: Service) -> str:
    return ChatClient(service.url).token


def test_the_answer_streams_through_nginx_unbuffered(
    behind: tuple[Service, Nginx],
) -> None:
    service, nginx = behind
    client = nginx.client(token_for(service), "127.0.0.11")
    turn = client.start("hello")
    response = client.open_stream(turn)  # requests asks for gzip by default
    assert "gzip" in response.request.headers["Accept-Encoding"]
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers.get("Content-Encoding", "identity") == "identity"
    timed = read_events(response)
    events = [event for _, event in timed]
    assert events[-1].event == "done"
    first_delta = next(at for at, event in timed if event.event == "delta")
    done = timed[-1][0]
    # The demo speaks 74 words 30 ms apart (~2.2 s): a buffering proxy would
    # hold the whole 4 KB answer back and deliver it at once with `done`.
    assert done - first_delta > 1.0, f"deltas arrived {done - first_delta:.3f}s apart"
    arrivals = sorted({round(at, 1) for at, event in timed if event.event == "delta"})
    assert len(arrivals) > 10


def test_a_streamed_post_answers_through_nginx_unbuffered(
    behind: tuple[Service, Nginx],
) -> None:
    service, nginx = behind
    client = nginx.client(token_for(service), "127.0.0.14")
    response = client.http.post(
        client.base_url + "/api/chat",
        json={"token": client.token, "message": "hello"},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers.get("Content-Encoding", "identity") == "identity"
    timed = read_events(response)
    assert timed[0][1].event == "start" and timed[-1][1].event == "done"
    first_delta = next(at for at, event in timed if event.event == "delta")
    # As for GET stream_url: a buffering proxy would deliver it all at once.
    assert timed[-1][0] - first_delta > 1.0
    assert len({round(at, 1) for at, event in timed if event.event == "delta"}) > 10


def test_resume_with_last_event_id_through_nginx(
    behind: tuple[Service, Nginx],
) -> None:
    service, nginx = behind
    client = nginx.client(token_for(service), "127.0.0.12")
    turn = client.start("hello")
    first = [event for _, event in read_events(client.open_stream(turn), limit=5)]
    assert [e.id for e in first] == ["1", "2", "3", "4", "5"]
    rest = [e for _, e in read_events(client.open_stream(turn, last_event_id=5))]
    assert rest[0].id == "6" and rest[-1].event == "done"
    ids = [int(e.id) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert text_of(first + rest) == text_of(replay(service, turn))
    # After `done`, a reconnect gets 204 through nginx too: EventSource stops.
    after = client.open_stream(turn, last_event_id=int(rest[-1].id))
    assert after.status_code == 204


def replay(service: Service, turn: Turn) -> list[ServerSentEvent]:
    """The whole turn, read straight from chatapp."""
    body = requests.get(service.url + turn.stream_url, timeout=30).content
    return SSEDecoder().feed(body)


def test_the_client_address_reaches_the_limits_and_a_forged_one_buys_nothing(
    behind: tuple[Service, Nginx],
) -> None:
    service, nginx = behind
    token = token_for(service)
    alice = nginx.client(token, "127.0.0.2")
    forged = [
        {},
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"},
        {"X-Forwarded-For": "127.0.0.3"},
    ]
    statuses = [alice.post(message="hi", headers=h).status_code for h in forged]
    # CHATAPP_RATE_LIMITS=2/minute: whatever Alice claims, she is 127.0.0.2.
    assert statuses == [201, 201, 429, 429]
    refused = alice.post(message="hi", headers={"X-Forwarded-For": "192.0.2.1"})
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    # Another address behind the same nginx has its own limit.
    bob = nginx.client(token, "127.0.0.3")
    assert bob.post(message="hi").status_code == 201


def test_nginx_and_chatapp_name_a_request_alike(
    behind: tuple[Service, Nginx],
) -> None:
    _, nginx = behind
    session = requests.Session()
    session.trust_env = False
    session.verify = str(nginx.cert)
    kept = session.get(
        nginx.url + "/healthz?kept", headers={"X-Request-ID": "from-the-client-1"}
    )
    assert kept.headers["X-Request-ID"] == "from-the-client-1"
    made = session.get(nginx.url + "/healthz?made", headers={"X-Request-ID": "bad id"})
    rid = made.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    wait_for(lambda: rid in nginx.access_log(), 10, "nginx's access line")
    assert re.search(
        rf'"GET /healthz HTTP/[0-9.]+" 200 .* {rid}$', nginx.access_log(), re.M
    )
    assert re.search(r" from-the-client-1$", nginx.access_log(), re.M)


def test_the_access_log_holds_no_token(behind: tuple[Service, Nginx]) -> None:
    """Query strings carry tokens (?sso=, ?t=, ?token=), and so does the
    Referer of a page that has one: none of them reaches nginx's log."""
    service, nginx = behind
    client = nginx.client(token_for(service), "127.0.0.13")
    sso = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzc28tbWFya2VyIn0.c3NvLXNpZ25hdHVyZQ"
    referer = {"Referer": f"{nginx.url}/embed?sso={sso}"}
    client.http.get(f"{nginx.url}/embed?sso={sso}", timeout=10)
    turn = client.start("hello", headers=referer)
    stream_token = turn.stream_url.partition("t=")[2]
    assert stream_token
    client.events(turn)
    conversation = client.http.get(
        f"{nginx.url}/api/conversations/{turn.conversation_id}?token={client.token}",
        headers=referer,
        timeout=10,
    )
    assert conversation.status_code == 200
    plain = requests.get(
        f"http://127.0.0.1:{nginx.http_port}/embed?sso={sso}",
        allow_redirects=False,
        timeout=10,
    )
    assert plain.status_code == 301
    wait_for(
        lambda: f"/api/conversations/{turn.conversation_id} " in nginx.access_log(),
        10,
        "the conversation's access line",
    )
    logged = nginx.access_log() + nginx.harness_log()
    assert f"/api/chat/{turn.id}/events " in logged  # the path is there
    assert '"GET /embed HTTP/1.1" 301' in logged  # the plain-http server logs too
    for secret in (sso, stream_token, client.token, "?sso=", "?t=", "?token="):
        assert secret not in logged, secret
    assert nginx.harness_log() == ""  # each of the recipe's servers has its log


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_operator_endpoints_are_refused_from_outside(
    behind: tuple[Service, Nginx], path: str
) -> None:
    """Only the addresses the recipe lists (here 127.0.0.1) may read them;
    127.0.0.2 is on the loopback too, but not on the list."""
    service, nginx = behind
    outsider = nginx.client(token_for(service), "127.0.0.2")
    monitor = nginx.client(token_for(service), "127.0.0.1")

    refused = outsider.http.get(nginx.url + path, timeout=10)
    allowed = monitor.http.get(nginx.url + path, timeout=10)

    assert refused.status_code == 403
    assert "chatapp_" not in refused.text and "ready" not in refused.text
    assert allowed.status_code == 200
    if path == "/metrics":
        assert "chatapp_turns_started_total" in allowed.text
    # /healthz stays open: it says only that the process serves.
    assert outsider.http.get(nginx.url + "/healthz", timeout=10).status_code == 200


def test_plain_http_is_sent_to_https(behind: tuple[Service, Nginx]) -> None:
    _, nginx = behind
    response = requests.get(
        f"http://127.0.0.1:{nginx.http_port}/embed?x=1",
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 301
    assert response.headers["Location"].startswith("https://")
    assert response.headers["Location"].endswith("/embed?x=1")


# -- systemd ------------------------------------------------------------------------


def verify(unit_text: str, tmp_path: Path) -> tuple[int, str]:
    """Run systemd-analyze verify on a copy installed at this checkout."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    # Only the install path changes: verify checks that ExecStart exists.
    unit = tmp_path / "chatapp.service"
    unit.write_text(unit_text.replace("/opt/chatapp", str(ROOT)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert (ROOT / ".venv" / "bin" / "gunicorn").exists()
    assert verify(UNIT.read_text(), tmp_path) == (0, "")


def test_a_misspelt_directive_fails_the_same_check(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectSystem=", "ProtectSytem=")
    status, output = verify(broken, tmp_path)
    assert "ProtectSytem" in output
    assert (status, output) != (0, "")


@pytest.mark.parametrize(
    "directive",
    [
        "User=chatapp",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "EnvironmentFile=/etc/chatapp/chatapp.env",
        "ExecStart=/opt/chatapp/.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app",
    ],
)
def test_the_unit_is_hardened(directive: str) -> None:
    assert directive in UNIT.read_text().splitlines()


def test_the_example_environment_names_only_real_settings() -> None:
    known = {var for var, _, _ in SETTINGS.values()}
    known |= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CHATAPP_BIND", "CHATAPP_WORKERS"}
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M)
    assert {"CHATAPP_ENV", "CHATAPP_SECRET_KEY", "CHATAPP_TRUSTED_PROXY_HOPS"} <= set(
        names
    )
    assert set(names) <= known, set(names) - known
    # No secret is committed: every secret line is empty.
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^(CHATAPP_SECRET_KEY|OPENAI_API_KEY)=", line):
            assert line.endswith("="), line
