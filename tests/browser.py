"""Playwright helpers: Debian's headless chromium and a chat page driver.

The browser tests never download a browser: they drive `/usr/bin/chromium`
(apt-get install chromium) and fail, not skip, when it is missing.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import ConsoleMessage
from playwright.sync_api import Locator
from playwright.sync_api import Page
from playwright.sync_api import Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000

# Runs before any page script, so it sees every CSP violation the page
# causes, including ones during parsing.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""

# Records every distinct text the latest answer shows, from the DOM itself,
# so a test can see the answer grow without sleeping or racing the stream.
RECORD_ANSWER_STATES = """
() => {
  window.__answerStates = [];
  const log = document.querySelector('[data-chatapp-log]');
  const record = () => {
    const answers = log.querySelectorAll('[data-role="assistant"] .msg__body');
    const text = answers.length ? answers[answers.length - 1].textContent.trim() : '';
    const states = window.__answerStates;
    if (text && states[states.length - 1] !== text) states.push(text);
  };
  new MutationObserver(record).observe(log, {
    childList: true, subtree: true, characterData: true,
  });
}
"""

# Records every text a screen reader would be told about: nodes added to (or
# text changed in) a polite or assertive live region that is not busy, the
# nearest aria-live winning, as browsers resolve it.
RECORD_SPEECH = """
() => {
  window.__spoken = [];
  const politeness = (node) => {
    let el = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
    for (; el; el = el.parentElement) {
      if (el.getAttribute('aria-busy') === 'true') return 'busy';
      if (el.getAttribute('aria-hidden') === 'true') return 'hidden';
      const live = el.getAttribute('aria-live');
      if (live) return live;
      const role = el.getAttribute('role');
      if (role === 'log' || role === 'status') return 'polite';
      if (role === 'alert') return 'assertive';
    }
    return 'off';
  };
  new MutationObserver((records) => {
    for (const record of records) {
      const nodes = record.type === 'characterData'
        ? [record.target] : [...record.addedNodes];
      for (const node of nodes) {
        const text = (node.textContent || '').trim();
        const level = politeness(node);
        const live = level === 'polite' || level === 'assertive';
        if (text && live) window.__spoken.push(text);
      }
    }
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
}
"""


def launch_chromium(playwright: Playwright) -> Browser:
    """Start Debian's chromium headless; fail loudly when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )


@dataclass
class PageWatch:
    """Console errors, uncaught exceptions and CSP violations of one page."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A fresh profile (own storage) with the CSP watcher installed."""
    options.setdefault("viewport", DESKTOP)
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(WATCH_CSP)
    return context


class ChatPage:
    """Drive the chat page the way a person does: type, press keys, read."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.watch = PageWatch()
        self.watch.attach(page)

    # -- navigation -----------------------------------------------------

    def open(self, path: str = "/") -> ChatPage:
        self.page.goto(self.base_url + path)
        return self.wait_ready()

    def reload(self) -> ChatPage:
        self.page.reload()
        return self.wait_ready()

    def wait_ready(self) -> ChatPage:
        """Wait until the script is wired up and any restore has finished."""
        self.page.wait_for_selector("form[data-chatapp-form][data-ready]")
        return self

    # -- the hooks SPEC promises ----------------------------------------

    @property
    def form(self) -> Locator:
        return self.page.locator("form[data-chatapp-form]")

    @property
    def textarea(self) -> Locator:
        return self.form.locator("textarea[name=message]")

    @property
    def send_button(self) -> Locator:
        return self.form.locator("[type=submit]")

    @property
    def stop_button(self) -> Locator:
        return self.page.locator("[data-chatapp-stop]")

    def messages(self, role: str) -> Locator:
        return self.page.locator(f'[data-chatapp-log] [data-role="{role}"]')

    @property
    def answers(self) -> Locator:
        return self.messages("assistant")

    @property
    def errors(self) -> Locator:
        return self.messages("error")

    # -- actions --------------------------------------------------------

    def send(self, text: str) -> None:
        """Type a message and press Enter, as a person would."""
        self.textarea.fill(text)
        self.textarea.press("Enter")

    def record_answer_states(self) -> None:
        self.page.evaluate(RECORD_ANSWER_STATES)

    def answer_states(self) -> list[str]:
        return list(self.page.evaluate("() => window.__answerStates"))

    def record_speech(self) -> None:
        self.page.evaluate(RECORD_SPEECH)

    def spoken(self) -> list[str]:
        """What live regions said since record_speech(), in order."""
        return list(self.page.evaluate("() => window.__spoken"))

    @property
    def scroller(self) -> Locator:
        return self.page.locator("[data-chatapp-scroller]")

    def distance_to_end(self) -> float:
        return float(
            self.scroller.evaluate(
                "(el) => el.scrollHeight - el.scrollTop - el.clientHeight"
            )
        )

    def wait_at_end(self, within: float = 8) -> None:
        """Wait until the thread's view reaches its end, then check that it
        is still there two frames later (blocks that take their real size
        as they near the view move the end while the page settles)."""
        self.page.wait_for_function(
            """([within]) => {
              const el = document.querySelector('[data-chatapp-scroller]');
              return el.scrollHeight - el.scrollTop - el.clientHeight < within;
            }""",
            arg=[within],
        )
        settled = self.scroller.evaluate(
            """(el) => new Promise((resolve) => requestAnimationFrame(
                 () => requestAnimationFrame(
                   () => resolve(el.scrollHeight - el.scrollTop - el.clientHeight))))"""
        )
        assert float(settled) < within

    def wait_answer_finished(self, index: int = -1) -> Locator:
        """Wait until answer `index` is no longer thinking or streaming."""
        answer = self.answers.nth(index) if index >= 0 else self.answers.last
        answer.wait_for()
        self.page.wait_for_function(
            """([index]) => {
              const all = document.querySelectorAll(
                '[data-chatapp-log] [data-role="assistant"]');
              const el = index >= 0 ? all[index] : all[all.length - 1];
              return el && !['thinking', 'streaming'].includes(el.dataset.state);
            }""",
            arg=[index],
        )
        return answer

    def wait_idle(self) -> None:
        """Wait until no turn is running (the Stop button is hidden again)."""
        self.page.wait_for_function(
            "() => document.querySelector('[data-chatapp-stop]').hidden"
        )

    def answer_text(self, index: int = -1) -> str:
        answer = self.answers.nth(index) if index >= 0 else self.answers.last
        # marked ends blocks with a newline; the text people see has none.
        return str(answer.locator(".msg__body").text_content()).strip()

    def stored_state(self) -> dict[str, Any] | None:
        raw = self.page.evaluate("() => localStorage.getItem('chatapp:v1')")
        return json.loads(raw) if raw else None

    # -- problems -------------------------------------------------------

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("() => window.__cspViolations || []"))

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        """No uncaught exception, CSP violation or unexpected console error."""
        assert self.watch.page_errors == [], self.watch.page_errors
        assert self.csp_violations() == []
        unexpected = [
            text
            for text in self.watch.console_errors
            if not any(allowed in text for allowed in allow)
        ]
        assert unexpected == [], unexpected


# -- a network that drops the answer mid-stream --------------------------------

REQUEST_LINE = re.compile(rb"^[A-Z]+ (\S+) HTTP/1\.[01]\r\n")


class _Link:
    """One browser connection and its twin to the service."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.streaming = False
        self.ids = 0
        self.head_sent = False
        self.silenced = False
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            # shutdown first: it wakes the other pump blocked in recv().
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _streams(path: bytes, head: bytes) -> bool:
    """Tell whether a request asks for an event stream (…/events or a turn's POST)."""
    if b"/events?" in path:
        return b"poll=1" not in path
    accept = re.search(rb"(?im)^accept:[^\r\n]*text/event-stream", head)
    return path.endswith(b"/api/chat") and accept is not None


class CuttingProxy:
    """A loopback TCP proxy in front of the service: a network that fails.

    The browser loads the page through it. Once the first event-stream
    response (a turn's POST or EventSource, not a poll) has carried
    `cut_after` event ids, the proxy closes
    that connection, as a flaky network would; the reconnect then goes
    through untouched. `outage()` cuts every connection and refuses new ones
    until `restore()`; `buffer_streams` holds event-stream bodies back as a
    buffering proxy does. Every event-stream request head is kept, so a test
    can read the Last-Event-ID the browser sent.
    """

    def __init__(
        self,
        upstream_url: str,
        cut_after: int | None = None,
        *,
        buffer_streams: bool = False,
    ) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.cut_after = cut_after
        self.buffer_streams = buffer_streams
        self.refusing = False
        self.refused = 0
        self.stream_requests: list[str] = []
        self.requests: list[str] = []
        self.cuts = 0
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._running = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def last_event_ids(self) -> list[str | None]:
        """The id each event-stream request resumed after, None when absent.

        The header (EventSource's own retry) wins over the query parameter
        (a page that reconnects by itself), as on the server.
        """
        found = []
        for head in self.stream_requests:
            header = re.search(r"(?im)^last-event-id:\s*(\S+)", head)
            query = re.search(r"^\S+ \S*[?&]last_event_id=(\d+)", head)
            match = header or query
            found.append(match.group(1) if match else None)
        return found

    def outage(self) -> None:
        """Cut every connection and refuse new ones until restore()."""
        self.refusing = True
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close()

    def restore(self) -> None:
        self.refusing = False

    def silence_streams(self) -> None:
        """Let no more bytes through on the event streams open now, and keep
        them open, as a suspended phone radio leaves them; later streams pass."""
        with self._lock:
            for link in self._links:
                if link.streaming:
                    link.silenced = True

    def close(self) -> None:
        self._running = False
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing:
                # A reset at once, as a host that refuses connections answers.
                client.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                client.close()
                self.refused += 1
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            self._spawn(self._to_service, link)
            self._spawn(self._to_browser, link)

    def _to_service(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                match = REQUEST_LINE.match(data)
                if match:
                    # A new request on this (keep-alive) connection.
                    path = match.group(1)
                    link.streaming = _streams(path, data)
                    link.ids = 0
                    link.head_sent = False
                    with self._lock:
                        self.requests.append(path.decode("latin-1"))
                    if link.streaming:
                        with self._lock:
                            self.stream_requests.append(data.decode("latin-1"))
                link.upstream.sendall(data)
        except OSError:
            pass
        finally:
            link.close()

    def _to_browser(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                if link.silenced:
                    continue
                if link.streaming and self.buffer_streams:
                    self._hold_back(link, data)
                    continue
                link.client.sendall(data)
                link.head_sent = True
                if not link.streaming or self.cut_after is None:
                    continue
                link.ids += data.count(b"\nid: ")
                with self._lock:
                    cut = self.cuts == 0 and link.ids >= self.cut_after
                    if cut:
                        self.cuts += 1
                if cut:
                    return
        except OSError:
            pass
        finally:
            link.close()

    @staticmethod
    def _hold_back(link: _Link, data: bytes) -> None:
        """Pass the response head on, keep the body: a buffering proxy."""
        if link.head_sent:
            return
        end = data.find(b"\r\n\r\n")
        link.client.sendall(data if end < 0 else data[: end + 4])
        link.head_sent = end >= 0


class LocalSite:
    """A real site on another loopback origin, serving fixed files.

    Real, not routed: Chrome's local-network checks refuse a loopback frame
    inside a page that did not itself come from a local address. `files`
    maps a path (query ignored) to (body, content type); "/" is the page.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, kind = site.files.get(
                    self.path.split("?", 1)[0], (b"not found", "text/plain")
                )
                self.send_response(200 if body != b"not found" else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def html(self) -> bytes:
        return self.files.get("/", (b"", ""))[0]

    @html.setter
    def html(self, body: bytes) -> None:
        self.files["/"] = (body, "text/html; charset=utf-8")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
