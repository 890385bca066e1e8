"""Real parts for the tests: redis-server, gunicorn services, a fake provider."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Playwright
from playwright.sync_api import sync_playwright
from requests.adapters import HTTPAdapter

from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.browser import launch_chromium
from tests.browser import new_context
from tests.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    """Ask the OS for a free port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll a readiness probe of an external process until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


# -- ordering -------------------------------------------------------------------


# The two longest files (minutes each, most of it CPU), first: each starts at
# once on a process of its own.
LONGEST = ("test_reliability_fuzz.py", "test_reliability_soak.py")
# Fixtures that start real servers: a test that uses one takes seconds.
SERVER_FIXTURES = {
    "service_factory",
    "module_services",
    "openai_service",
    "anthropic_service",
    "browser",
    "redis_server",
    "postgres_server",
    "fake_provider",
}


def _weight(item: pytest.Item) -> tuple[int, int]:
    """The longest files, the rest of the battery, real servers, the rest."""
    if item.path.name in LONGEST:
        return (0, LONGEST.index(item.path.name))
    if item.get_closest_marker("reliability"):
        return (1, 0)
    if item.get_closest_marker("e2e") or item.get_closest_marker("browser"):
        return (2, 0)
    return (
        (2, 0) if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) else (3, 0)
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Longest files first, so that no long one starts last (xdist --dist loadfile).

    xdist hands each process one file, then one more file queued behind it,
    then the next file whenever a process has two tests or fewer left. So the
    two longest files (one test each) go first, on processes of their own,
    and the files queued behind them are two quick ones; then the rest of
    the battery, the files with real servers, and the quick ones, which fill
    in at the end. The sorts are stable, and every xdist process collects the
    same order, as it must.
    """
    files: dict[Path, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    weight = {path: min(map(_weight, tests)) for path, tests in files.items()}
    order = sorted(files, key=weight.__getitem__)
    workers = getattr(config, "workerinput", {}).get("workercount", 0)
    quick = [path for path in order if weight[path][0] == 3][:2]
    if workers >= 2 and len(order) > workers + 2 and len(quick) == 2:
        for path in quick:
            order.remove(path)
        order[workers:workers] = quick
    items[:] = [item for path in order for item in files[path]]


# -- redis ------------------------------------------------------------------


def redis_server_args(port: int, workdir: str | Path) -> list[str]:
    """redis-server's options for a throwaway server of the tests' own."""
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


class RedisServer:
    """A real redis-server on a free port, killable and restartable."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chatapp-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, *redis_server_args(self.port, self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, "redis-server to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """Run one command with redis-cli and return its raw output."""
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
        ).stdout

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        self.command("FLUSHALL")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


# -- the service under gunicorn ----------------------------------------------


def _clean_env() -> dict[str, str]:
    drop = ("CHATAPP_", "OPENAI_", "ANTHROPIC_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@dataclass
class Service:
    """chatapp running under real gunicorn with gevent workers."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Service:
        return self.spawn().wait_ready()

    def spawn(self) -> Service:
        """Start gunicorn; `wait_ready` waits for it to answer."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self) -> Service:
        # Booting takes a second; on a machine busy with other runs (or with
        # services booting side by side) it can take many.
        wait_for(self._ready, 60, f"the service on {self.url}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The lines the service has finished writing.

        A line still being written when the file is read has no newline yet;
        it is left for the next read.
        """
        written, _, _unfinished = self.log().rpartition("\n")
        return written.splitlines()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers' pids (children of the master)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        self.signal_stop()
        self.wait_stopped()

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Quick shutdown: a graceful one waits out idle keep-alive
            # connections, which tests do not need.
            self.proc.send_signal(signal.SIGQUIT)

    def wait_stopped(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


class ServiceFactory:
    """Start services with given settings; stop them all at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Service] = []

    def __call__(self, **settings: Any) -> Service:
        return self._made(settings).start()

    def many(self, *settings: dict[str, Any]) -> list[Service]:
        """Start several services at once: they boot side by side."""
        made = [self._made(each).spawn() for each in settings]
        return [service.wait_ready() for service in made]

    def _made(self, settings: dict[str, Any]) -> Service:
        env = _clean_env()
        env.update(
            {
                "CHATAPP_DEMO_DELAY_MS": "2",
                "CHATAPP_LOG_LEVEL": "warning",
                # Tests of other behaviour must not trip the visitor limits;
                # the limits' own tests set them.
                "CHATAPP_RATE_LIMITS": "100000/minute",
                "CHATAPP_MAX_STREAMS_PER_CLIENT": "1000",
                # Tests of other behaviour see each upstream failure once;
                # the retries' own tests (test_models_e2e.py) set it.
                "CHATAPP_UPSTREAM_RETRIES": "0",
            }
        )
        env.update({k: str(v) for k, v in settings.items()})
        port = free_port()
        env["CHATAPP_BIND"] = f"127.0.0.1:{port}"
        log_path = self.tmp / f"gunicorn-{port}.log"
        service = Service(env, port, log_path)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.signal_stop()
        for service in self.started:
            service.wait_stopped()


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path_factory.mktemp("services"))
    yield factory
    factory.stop_all()


# -- the fake provider -------------------------------------------------------


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> FakeProvider:
    fake_provider_server.reset()
    return fake_provider_server


def openai_settings(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "CHATAPP_PROVIDER": "openai",
        "CHATAPP_PROVIDER_BASE_URL": fake.openai_base_url,
        "OPENAI_API_KEY": "test-openai-key-not-secret",
        **extra,
    }


def anthropic_settings(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "CHATAPP_PROVIDER": "anthropic",
        "CHATAPP_PROVIDER_BASE_URL": fake.anthropic_base_url,
        "ANTHROPIC_API_KEY": "test-anthropic-key-not-secret",
        **extra,
    }


@pytest.fixture
def openai_service(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> Service:
    return _shared(module_services, openai_settings(fake_provider))


@pytest.fixture
def anthropic_service(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> Service:
    return _shared(module_services, anthropic_settings(fake_provider))


def _shared(factory: ServiceFactory, settings: dict[str, Any]) -> Service:
    """Reuse one running service per settings within a module."""
    for service in factory.started:
        if all(service.env.get(k) == str(v) for k, v in settings.items()):
            if service.proc is not None and service.proc.poll() is None:
                return service
    return factory(**settings)


# -- headless chromium (tests marked `browser`) --------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser)
    yield context
    context.close()


# -- a client that acts as a browser does -------------------------------------


@dataclass
class Turn:
    """A started turn as the API described it."""

    id: str
    conversation_id: str
    stream_url: str
    cancel_url: str


class ChatClient:
    """Get a page token, start turns, read their streams: as a browser would."""

    def __init__(
        self, base_url: str, token: str | None = None, source: str | None = None
    ) -> None:
        self.base_url = base_url
        self.http = requests.Session()
        if source is not None:  # connect from this loopback address
            self.http.trust_env = False
            self.http.mount("http://", FromAddress(source))
        self.token = token or self.page_token()

    def page_token(self, path: str = "/") -> str:
        html = self.http.get(self.base_url + path, timeout=10).text
        marker = 'name="chatapp-token" content="'
        start = html.index(marker) + len(marker)
        return html[start : html.index('"', start)]

    def post(self, **fields: Any) -> requests.Response:
        headers = fields.pop("headers", {})
        body = {"token": self.token, **fields}
        return self.http.post(
            self.base_url + "/api/chat", json=body, headers=headers, timeout=10
        )

    def start(self, message: str, **fields: Any) -> Turn:
        response = self.post(message=message, **fields)
        assert response.status_code == 201, response.text
        body = response.json()
        return Turn(
            body["id"], body["conversation_id"], body["stream_url"], body["cancel_url"]
        )

    def open_stream(
        self, turn: Turn, last_event_id: int | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        return self.http.get(
            self.base_url + turn.stream_url,
            headers=headers,
            stream=True,
            timeout=kwargs.pop("timeout", 30),
            **kwargs,
        )

    def events(
        self, turn: Turn, last_event_id: int | None = None, limit: int | None = None
    ) -> list[ServerSentEvent]:
        """Read the stream until `done` (or `limit` events) and close it."""
        response = self.open_stream(turn, last_event_id)
        assert response.status_code == 200, response.text
        decoder = SSEDecoder()
        out: list[ServerSentEvent] = []
        try:
            for data in response.raw.stream(1024, decode_content=False):
                for event in decoder.feed(data):
                    out.append(event)
                    if event.event == "done" or (limit and len(out) >= limit):
                        return out
        finally:
            response.close()
        return out

    def cancel(self, turn: Turn) -> requests.Response:
        return self.http.post(self.base_url + turn.cancel_url, timeout=10)

    def answer(self, message: str, **fields: Any) -> tuple[Turn, list[ServerSentEvent]]:
        turn = self.start(message, **fields)
        return turn, self.events(turn)


class FromAddress(HTTPAdapter):
    """Connect from a chosen loopback address: another client, as a server sees it.

    All of 127.0.0.0/8 is the loopback on Linux, so 127.0.0.2 reaches a
    service bound to 127.0.0.1 as a client of its own.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def text_of(events: list[ServerSentEvent]) -> str:
    """Join the delta texts of a stream."""
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "delta")


def data_of(events: list[ServerSentEvent], name: str) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.event == name]


# -- postgres ----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.stop()
