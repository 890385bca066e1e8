"""What the spend governor costs Redis: commands per turn, with and without it.

    .venv/bin/python -m bench.spend_commands [--turns 200] [--concurrency 8]

Starts its own redis-server, the fake provider of the tests and chatapp
under gunicorn (2 workers on that Redis) four times: the daily token budget
alone, and the budget with prices and spend ceilings, each with a short (10
tokens) and a long (400 tokens) answer. Every turn is started and read to
`done`. Redis MONITOR counts the commands the workers send (a script is one,
the commands it runs inside are listed apart), and INFO commandstats counts
everything redis-server ran, scripts' insides included.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider

MODEL = "gpt-4o-mini"
GOVERNOR = {
    "CHATAPP_PRICES": f"{MODEL}=0.15/0.60",
    "CHATAPP_SPEND_LIMITS": "1000/day;10000/month",
}
ANSWERS = {"short": 10, "long": 400}  # tokens: the fake sends 3 characters each


class Monitor:
    """Count the commands redis-server receives, by client kind and name."""

    def __init__(self, port: int) -> None:
        self.sent: Counter[str] = Counter()
        self.inside: Counter[str] = Counter()
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while not self._stop:
            data = self._sock.recv(65536)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if not line.startswith(b"+") or b"] " not in line:
                    continue
                where, _, command = line.partition(b"] ")
                words = command.split(b" ", 2)
                name = words[0].strip(b'"').decode().upper()
                if name == "EVALSHA" and len(words) > 1:
                    name += " " + words[1].strip(b'"').decode()[:8]
                (self.inside if b" lua" in where else self.sent)[name] += 1

    def stop(self) -> None:
        self._stop = True
        self._sock.close()


def run(factory: ServiceFactory, settings: dict[str, Any], turns: int, c: int) -> Any:
    service = factory(**settings)
    client = ChatClient(service.url)
    text = "x" * (3 * settings.pop("_tokens"))
    client.answer(f"fake: | {text}")  # warm both paths before counting
    r = redis.Redis.from_url(settings["CHATAPP_REDIS_URL"])
    r.config_resetstat()
    monitor = Monitor(r.connection_pool.connection_kwargs["port"])
    time.sleep(0.2)  # MONITOR's reply has been read by then

    def one(_: int) -> None:
        _, events = client.answer(f"fake: | {text}")
        assert events[-1].event == "done"

    started = time.monotonic()
    with ThreadPoolExecutor(c) as pool:
        list(pool.map(one, range(turns)))
    # The last settlements wait at most a second for a reservation to carry
    # them; count the flush that then carries them too.
    time.sleep(1.5)
    elapsed = time.monotonic() - started
    monitor.stop()
    stats = r.info("commandstats")
    service.stop()
    ran = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    ran.pop("config|resetstat", None)
    ran.pop("info", None)
    monitor.sent.pop("INFO", None)
    return {
        "turns": turns,
        "seconds": round(elapsed, 1),
        "sent_per_turn": round(sum(monitor.sent.values()) / turns, 2),
        "sent": dict(monitor.sent.most_common()),
        "inside_scripts": dict(monitor.inside.most_common()),
        "commandstats_per_turn": round(sum(ran.values()) / turns, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    results: dict[str, Any] = {}
    try:
        with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
            factory = ServiceFactory(Path(tmp))
            url = server.url
            base = openai_settings(
                fake,
                CHATAPP_MODEL=MODEL,
                CHATAPP_REDIS_URL=url,
                CHATAPP_WORKERS="2",
                CHATAPP_DAILY_TOKEN_BUDGET="100000000",
                CHATAPP_MAX_OUTPUT_TOKENS="1024",
            )
            for answer, tokens in ANSWERS.items():
                for name, extra in (("budget", {}), ("budget+governor", GOVERNOR)):
                    server.flush()
                    settings = {**base, **extra, "_tokens": tokens}
                    results[f"{name}, {answer}"] = run(
                        factory, settings, args.turns, args.concurrency
                    )
                    print(name, answer, results[f"{name}, {answer}"]["sent_per_turn"])
            factory.stop_all()
    finally:
        server.kill()
    print(json.dumps(results, indent=2))
    out = Path("artifacts")
    out.mkdir(exist_ok=True)
    (out / "spend-commands.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
