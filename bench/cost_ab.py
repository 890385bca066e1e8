"""Fixed CPU per streamed turn, two checkouts side by side, the load alternating.

On a shared machine two runs minutes apart differ by more than a cut saves.
This starts one gunicorn worker (memory mode) for each checkout and one
fake upstream, then sends the same load (virtual users with their own
addresses, each POSTing a 1-token turn with ``Accept: text/event-stream``
and reading its stream) to one service for a window, then to the other,
for several rounds, in alternating order. Each window's CPU (utime + stime
of the worker, from /proc) divided by the turns completed in it is that
window's figure; the first round warms both up and is not counted.

    python -m bench.cost_ab --a /tmp/before --b . --window 10 --rounds 8

Every process it starts is stopped by pid at the end, on error, on Ctrl-C
and at the deadline.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench.httpc import Connection  # noqa: E402
from bench.httpc import HTTPError  # noqa: E402
from bench.loadgen import TOKEN_MARK  # noqa: E402
from bench.procs import Children  # noqa: E402
from bench.procs import children_of  # noqa: E402
from bench.procs import cpu_split  # noqa: E402
from bench.procs import free_port  # noqa: E402
from bench.procs import wait_until  # noqa: E402
from bench.protocol import Pace  # noqa: E402
from bench.protocol import marker  # noqa: E402

PYTHON = sys.executable
HOST = "127.0.0.1"
SETTLE_SECONDS = 2.0


@dataclass
class Service:
    root: Path
    port: int
    worker: int
    token: str


def service_env(port: int, upstream: int) -> dict[str, str]:
    """bench.run's settings, with one address per virtual user."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHATAPP_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "CHATAPP_BIND": f"{HOST}:{port}",
            "CHATAPP_SECRET_KEY": secrets.token_urlsafe(32),
            "CHATAPP_PROVIDER": "openai",
            "CHATAPP_PROVIDER_BASE_URL": f"http://{HOST}:{upstream}/v1",
            "OPENAI_API_KEY": "bench-key-not-secret",
            "CHATAPP_MODEL": "bench-model",
            "CHATAPP_RATE_LIMITS": "1000000/minute",
            "CHATAPP_MAX_STREAMS_PER_CLIENT": "1000000",
            "CHATAPP_READERS_PER_CLIENT": "1000000",
            "CHATAPP_WORKER_MAX_STREAMS": "4000",
            "CHATAPP_WORKER_CONNECTIONS": "2000",
            "CHATAPP_LOG_LEVEL": "warning",
            "CHATAPP_WORKERS": "1",
            "CHATAPP_TRUSTED_PROXY_HOPS": "1",
        }
    )
    return env


def start_service(children: Children, root: Path, upstream: int, logs: Path) -> Service:
    port = free_port()
    proc = children.start(
        f"gunicorn-{port}",
        [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        env=service_env(port, upstream),
        cwd=root,
        stdout=(logs / f"service-{port}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    page: list[str] = []

    def ready() -> bool:
        try:
            conn = Connection(HOST, port, 2)
            response = conn.request("GET", "/", {"Accept": "text/html"})
            conn.close()
        except (OSError, HTTPError):
            return False
        if response.status == 200:
            page.append(response.body.decode())
        return bool(page) and bool(children_of(proc.pid))

    wait_until(ready, 60, f"the service in {root}", every=0.1)
    start = page[-1].index(TOKEN_MARK) + len(TOKEN_MARK)
    token = page[-1][start : page[-1].index('"', start)]
    return Service(root, port, children_of(proc.pid)[0], token)


class Load:
    """Virtual users in a closed loop against whichever service is the target."""

    def __init__(self, users: int) -> None:
        self.target: Service | None = None
        self.turns = 0
        self.errors = 0
        self._rid = 0
        self._users = [gevent.spawn(self._user, i) for i in range(users)]

    def stop(self) -> None:
        gevent.killall(self._users)

    def _user(self, vu: int) -> None:
        conn: Connection | None = None
        current: Service | None = None
        while True:
            target = self.target
            if target is None:
                gevent.sleep(0.01)
                continue
            if conn is None or target is not current:
                if conn is not None:
                    conn.close()
                conn, current = Connection(HOST, target.port), target
            if not self._turn(conn, target, vu):
                gevent.sleep(0.2)  # as a refused page waits; conn reconnects
            elif self.target is target:
                self.turns += 1

    def _turn(self, conn: Connection, target: Service, vu: int) -> bool:
        self._rid += 1
        pace = Pace(ttft_ms=100, gap_ms=0, tokens=1)
        body = json.dumps(
            {
                "message": f"Tell me something. {marker(f'ab{self._rid}', pace)}",
                "token": target.token,
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "X-Forwarded-For": f"10.{vu % 256}.{vu // 256 % 256}.{vu % 256}",
        }
        try:
            conn.send("POST", "/api/chat", headers, body)
            head = conn.head()
            if head.status != 200:
                conn.body(head)
                self.errors += 1
                return False
            if b"event: done" not in b"".join(conn.chunks(head)):
                self.errors += 1
                return False
        except Exception:  # noqa: BLE001 -- counted; the user reconnects
            self.errors += 1
            conn.close()
            return False
        return True


def measure(load: Load, service: Service, window: float) -> tuple[float, int]:
    """CPU µs per turn of one service over one window, and its turns."""
    load.target = service
    gevent.sleep(SETTLE_SECONDS)
    cpu0, turns0 = sum(cpu_split([service.worker])), load.turns
    gevent.sleep(window)
    cpu1, turns1 = sum(cpu_split([service.worker])), load.turns
    turns = turns1 - turns0
    return (cpu1 - cpu0) / max(1, turns) * 1e6, turns


def run(args: argparse.Namespace, children: Children, logs: Path) -> dict[str, object]:
    upstream = free_port()
    children.start(
        "upstream",
        [PYTHON, "-m", "bench.upstream", "--port", str(upstream)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=(logs / "upstream.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    a = start_service(children, args.a.resolve(), upstream, logs)
    b = start_service(children, args.b.resolve(), upstream, logs)
    load = Load(args.users)
    figures: dict[str, list[float]] = {"a": [], "b": []}
    try:
        for n in range(args.rounds + 1):
            pair = ((a, "a"), (b, "b")) if n % 2 == 0 else ((b, "b"), (a, "a"))
            for service, name in pair:
                us, turns = measure(load, service, args.window)
                load_avg = os.getloadavg()[0]
                print(
                    f"round {n} {name}: {us:,.0f} µs/turn, {turns} turns, "
                    f"load {load_avg:.1f}{' (warm-up)' if n == 0 else ''}",
                    file=sys.stderr,
                    flush=True,
                )
                if n > 0:
                    figures[name].append(us)
    finally:
        load.target = None
        load.stop()
    return {
        name: {
            "root": str(root),
            "mean": statistics.fmean(figures[name]),
            "median": statistics.median(figures[name]),
            "windows": [round(v) for v in figures[name]],
        }
        for name, root in (("a", args.a), ("b", args.b))
    } | {"errors": load.errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="a checkout")
    parser.add_argument("--b", type=Path, default=Path("."), help="another")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--window", type=float, default=10.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds")
    parser.add_argument("--logs", type=Path, default=Path("bench/results/cost_ab"))
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    children = Children()
    started = time.monotonic()
    try:
        with gevent.Timeout(args.deadline):
            result = run(args, children, args.logs)
    except gevent.Timeout:
        print(
            f"bench.cost_ab: deadline ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
        )
        return 1
    finally:
        children.stop_all()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
