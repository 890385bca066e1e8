"""Run the chatapp benchmark: one command, everything on 127.0.0.1, bounded in time.

    .venv/bin/python -m bench.run                 # the full run (about 15 min)
    .venv/bin/python -m bench.run --quick         # a smoke test (about 90 s)
    .venv/bin/python -m bench.run --n 100,1000 --mode memory
    .venv/bin/python -m bench.run --before-root /tmp/before   # before and after

It starts a fake upstream (`bench.upstream`) and, per chatapp mode, a cancel
phase on a service of its own (short orphan time): cancels and vanished
readers timed to the upstream connection closing, against a silent and a
streaming upstream. Then for each N the floor (load client straight to the
upstream) and each target under gunicorn with the load client
(`bench.loadgen`, its own processes). Targets: chatapp per mode (memory: 1
worker; redis: 2 workers and a redis-server of its own), the same modes of an
older checkout (`before-…`), and the yardstick `bench.plain_relay` with as
many workers (`plain`, `plain2`). Per target:

1. hold: open N streams at once, read the workers' RSS, cancel them all;
2. load: N browsers in a closed loop; figures come from a steady window.

Service CPU and RSS are read from the gunicorn workers' /proc entries only
(and redis-server's, in a column of its own). Every process started is
stopped by its pid at the end, on error, on Ctrl-C and at the global deadline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from bench.procs import Children
from bench.procs import children_of
from bench.procs import cpu_seconds
from bench.procs import cpu_split
from bench.procs import free_port
from bench.procs import open_files
from bench.procs import raise_nofile_limit
from bench.procs import rss_bytes
from bench.procs import wait_until
from bench.protocol import Pace
from bench.protocol import marker
from bench.stats import errors_text
from bench.stats import histogram_percentile
from bench.stats import markdown_table
from bench.stats import merge_counts
from bench.stats import ms
from bench.stats import number
from bench.stats import percentile

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TOKEN_MARK = 'name="chatapp-token" content="'
CLIENT_START_SECONDS = 1.5  # a load client's start, gevent imported: ~0.3 s
QUIET_SAMPLE_SECONDS = 1.0
QUIET_BUSY_CORES = 0.3
CANCEL_LABELS = {
    "cancel_silent": "cancel, upstream silent",
    "cancel_streaming": "cancel, upstream streaming",
    "vanish_silent": "reader vanished, upstream silent",
    "vanish_streaming": "reader vanished, upstream streaming",
}


SATURATED_SHARE = 0.95  # svc CPU from which one worker counts as saturated
TOP_REDIS_COMMANDS = 6  # per turn, in the printed report (the JSON has all)
PLAIN_APP = "bench.plain_relay:app"


class DeadlineExceeded(Exception):
    """The run's global deadline passed."""


@dataclass(frozen=True)
class Target:
    """One row of the report: a server measured at every N."""

    label: str  # "memory", "before-redis", "plain2", ...
    kind: str  # "chatapp" or "plain"
    workers: int
    redis: bool = False
    code: str = "after"  # which checkout of chatapp: "after" or "before"


def make_targets(
    modes: tuple[str, ...], before: bool, plain_workers: tuple[int, ...]
) -> tuple[Target, ...]:
    """Name the rows, the yardstick first beside the modes of the same size."""
    chatapp = {
        mode: Target(mode, "chatapp", 2 if mode == "redis" else 1, mode == "redis")
        for mode in modes
    }
    targets: list[Target] = []
    for workers in sorted(set(plain_workers) | {t.workers for t in chatapp.values()}):
        if workers in plain_workers:
            label = "plain" if workers == 1 else f"plain{workers}"
            targets.append(Target(label, "plain", workers))
        for t in chatapp.values():
            if t.workers == workers:
                if before:
                    targets.append(
                        Target(
                            f"before-{t.label}", "chatapp", workers, t.redis, "before"
                        )
                    )
                targets.append(t)
    return tuple(targets)


@dataclass(frozen=True)
class Options:
    """What to run; see `parse_args` for the meaning of each."""

    ns: tuple[int, ...]
    modes: tuple[str, ...]
    pace: Pace
    window: float
    settle: float
    drain: float
    cancel_count: int
    orphan_seconds: float
    clients: int
    deadline: float
    out: Path
    quick: bool
    service_root: Path = ROOT
    before_root: Path | None = None
    targets: tuple[Target, ...] = ()
    stream_conn: str = "same"
    quiet_wait: float = 0.0
    cancel_phase: bool = True
    profile: bool = False
    redis_url: str = ""  # the redis mode's CHATAPP_REDIS_URL; "" = our own server
    # Settings added to every chatapp service's environment (bench.cost).
    service_env: tuple[tuple[str, str], ...] = ()

    @property
    def client_start(self) -> float:
        return CLIENT_START_SECONDS / 2 if self.quick else CLIENT_START_SECONDS

    def ramp(self, n: int) -> float:
        """Spread N starts: about 1,000 per second, 0.5 s at least."""
        return min(5.0, max(0.5, n / 1000))

    def client_count(self, n: int) -> int:
        return self.clients or (1 if n <= 1000 else 2)


@dataclass
class Run:
    """Everything measured, kept as plain data for the JSON report."""

    machine: dict[str, Any]
    options: dict[str, Any]
    floor: dict[int, dict[str, Any]] = field(default_factory=dict)
    # target label -> N -> {"hold": ..., "load": ...}
    service: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    cancel: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- the processes ------------------------------------------------------------


class LineReader:
    """Read JSON lines from a child's stdout with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._stdout = proc.stdout
        self._buf = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """Return the next JSON line, or None at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                return None
            data = os.read(self._stdout.fileno(), 65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        value: dict[str, Any] = json.loads(line)
        return value

    def close(self) -> None:
        self._selector.close()


class Bench:
    """Start, measure and stop the parts of one benchmark run."""

    def __init__(self, options: Options, rundir: Path) -> None:
        self.opt = options
        self.rundir = rundir
        self.children = Children()
        self.upstream_port = 0
        self.upstream: subprocess.Popen[bytes] | None = None
        self.redis_port = 0
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = ""  # --redis-url: measure that Redis instead
        self._servers: list[Any] = []
        self.quiet_budget = options.quiet_wait
        self.phases = 0  # numbers each client start: request ids stay unique
        self.service_dirs = {
            "after": snapshot_service(options.service_root, rundir / "service")
        }
        if options.before_root is not None:
            self.service_dirs["before"] = snapshot_service(
                options.before_root, rundir / "service-before"
            )

    def log_file(self, name: str) -> Any:
        return open(self.rundir / f"{name}.log", "ab")  # noqa: SIM115 - closed at exit

    def time_left(self) -> float:
        return self.opt.deadline - time.monotonic()

    # -- upstream and redis -------------------------------------------------

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        self.upstream = self.children.start(
            "upstream",
            [
                PYTHON,
                "-m",
                "bench.upstream",
                "--port",
                str(self.upstream_port),
                "--max-seconds",
                str(int(self.time_left()) + 60),
            ],
            cwd=ROOT,
            stderr=self.log_file("upstream"),
        )
        wait_until(self._upstream_up, 15, "the fake upstream")

    def upstream_counters(self) -> dict[str, int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, 5)
        try:
            conn.request("GET", "/_bench/journal?from=1000000000")
            counters: dict[str, int] = json.loads(conn.getresponse().read())["counters"]
            return counters
        finally:
            conn.close()

    def _upstream_up(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, 1)
            conn.request("GET", "/_bench/journal?from=0")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def start_redis(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.redis_port = free_port()
        data_dir = self.rundir / "redis"
        data_dir.mkdir(exist_ok=True)
        self.redis = self.children.start(
            "redis",
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
                "--maxclients",
                "30000",
                "--loglevel",
                "warning",
            ],
            stdout=self.log_file("redis"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._redis_up, 15, "redis-server")

    def use_redis(self, url: str) -> None:
        """Measure against a Redis of any kind the service's URL may name."""
        self.redis_url = url
        wait_until(self._redis_up, 15, url)
        # Found once: looking the primaries up again would count commands.
        self._servers = self.redis_servers()

    def service_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=5)

    def redis_servers(self) -> list[Any]:
        """A plain client per server holding data: the primaries, with --redis-url."""
        if not self.redis_url:
            return [self.redis_client()]
        if self._servers:
            return self._servers
        import redis
        from redis.cluster import RedisCluster

        from chatapp.store.redis import connect

        client: Any = connect(self.redis_url, 4)
        if isinstance(client, RedisCluster):
            client.ping()
            return [
                redis.Redis(host=n.host, port=n.port, socket_timeout=5)
                for n in client.get_primaries()
            ]
        conn = client.connection_pool.get_connection()
        try:
            host, port = conn.host, conn.port
        finally:
            client.connection_pool.release(conn)
        return [redis.Redis(host=host, port=port, socket_timeout=5)]

    def redis_pids(self) -> list[int]:
        """The redis-server processes holding data, found by their --port."""
        if self.redis is not None:
            return [self.redis.pid]
        ports = {
            str(c.connection_pool.connection_kwargs["port"])
            for c in self.redis_servers()
        }
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv]
            if not words or "redis-server" not in words[0]:
                continue
            # redis-server retitles itself "redis-server host:port [cluster]".
            after = words[words.index("--port") + 1] if "--port" in words else ""
            titled = words[0].split()[1:2]
            if after in ports or (titled and titled[0].rsplit(":", 1)[-1] in ports):
                found.append(int(entry.name))
        return found

    def _redis_up(self) -> bool:
        try:
            return all(c.ping() for c in self.redis_servers())
        except OSError:
            return False
        except Exception as exc:  # redis.ConnectionError is not an OSError
            if type(exc).__module__.startswith("redis"):
                return False
            raise

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        """Return calls and microseconds spent, per command, since start."""
        stats = self.redis_client().info("commandstats")
        return {
            name.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
            for name, value in stats.items()
            if name != "cmdstat_info"
        }

    def redis_commands_all(self) -> dict[str, tuple[int, int]]:
        """Calls and microseconds per command, summed over every data server."""
        total: dict[str, tuple[int, int]] = {}
        for client in self.redis_servers():
            stats = client.info("commandstats")
            for name, value in stats.items():
                if name in ("cmdstat_info", "cmdstat_cluster|slots", "cmdstat_command"):
                    continue  # the bench's and clients' own look-ups
                calls, usec = total.get(name.removeprefix("cmdstat_"), (0, 0))
                total[name.removeprefix("cmdstat_")] = (
                    calls + int(value["calls"]),
                    usec + int(value["usec"]),
                )
        return total

    # -- the service --------------------------------------------------------

    def start_service(
        self, target: Target, n: int, orphan: float | None = None
    ) -> Service:
        if target.kind == "plain":
            return self._start_plain(target, n)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPP_")}
        env.update(
            {
                "CHATAPP_BIND": f"127.0.0.1:{port}",
                "CHATAPP_SECRET_KEY": secrets.token_urlsafe(32),
                "CHATAPP_PROVIDER": "openai",
                "CHATAPP_PROVIDER_BASE_URL": f"http://127.0.0.1:{self.upstream_port}/v1",
                "OPENAI_API_KEY": "bench-key-not-secret",
                "CHATAPP_MODEL": "bench-model",
                "CHATAPP_RATE_LIMITS": "1000000/minute",
                "CHATAPP_MAX_STREAMS_PER_CLIENT": "1000000",
                # Every virtual user is 127.0.0.1: one client to chatapp.
                "CHATAPP_READERS_PER_CLIENT": "1000000",
                # Each turn counts twice against it (its producer and its
                # reader, see chatapp.turns.admit.Gate.open_streams).
                "CHATAPP_WORKER_MAX_STREAMS": str(max(4000, 2 * n + 1000)),
                "CHATAPP_WORKER_CONNECTIONS": str(_worker_connections(n)),
                "CHATAPP_LOG_LEVEL": "warning",
                "CHATAPP_WORKERS": str(target.workers),
            }
        )
        env.update(dict(self.opt.service_env))
        if orphan is not None:
            env["CHATAPP_ORPHAN_SECONDS"] = str(orphan)
        if target.redis:
            for server in self.redis_servers():
                server.flushall()
            env["CHATAPP_REDIS_URL"] = self.service_redis_url()
        proc = self.children.start(
            f"gunicorn-{target.label}-{n}",
            [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            env=env,
            cwd=self.service_dirs[target.code],
            stdout=self.log_file(f"service-{target.label}-{n}"),
            stderr=subprocess.STDOUT,
        )
        service = Service(proc, port, target)
        wait_until(service.ready, 30, f"the service ({target.label})", every=0.1)
        return service

    def _start_plain(self, target: Target, n: int) -> Service:
        """Serve the plain relay as gunicorn.conf.py serves chatapp."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPP_")}
        env["PYTHONPATH"] = str(ROOT)
        env["PLAIN_RELAY_UPSTREAM"] = f"http://127.0.0.1:{self.upstream_port}"
        argv = [
            PYTHON,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(target.workers),
            "--worker-class",
            "gevent",
            "--worker-connections",
            str(_worker_connections(n)),
            "--keep-alive",
            "5",
            "--timeout",
            "30",
            "--graceful-timeout",
            "20",
            "--error-logfile",
            "-",
            "--log-level",
            "warning",
            "--no-control-socket",
            PLAIN_APP,
        ]
        proc = self.children.start(
            f"gunicorn-{target.label}-{n}",
            argv,
            env=env,
            # Not the checkout: gunicorn would read chatapp's gunicorn.conf.py.
            cwd=self.rundir,
            stdout=self.log_file(f"service-{target.label}-{n}"),
            stderr=subprocess.STDOUT,
        )
        service = Service(proc, port, target)
        wait_until(service.ready, 30, f"the plain relay ({target.label})", every=0.1)
        return service

    def stop_service(self, service: Service) -> None:
        # SIGINT is gunicorn's quick shutdown: open streams are not waited for.
        proc = service.proc
        workers = service.workers()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.children.stop(proc, grace=2)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def profile(self, service: Service, name: str, seconds: float) -> None:
        """Sample the workers with py-spy (if installed) over the window."""
        spy = Path(PYTHON).with_name("py-spy")
        if not spy.exists():
            _say("--profile needs py-spy in the venv (pip install py-spy)")
            return
        for pid in service.workers():
            self.children.start(
                f"py-spy-{pid}",
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(seconds))),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self.rundir / f"profile-{name}-{pid}.txt"),
                ],
                stderr=self.log_file("py-spy"),
                stdout=self.log_file("py-spy"),
            )

    # -- load clients -------------------------------------------------------

    def start_clients(
        self, scenario: str, n: int, port: int, t0: float, **extra: Any
    ) -> list[tuple[subprocess.Popen[bytes], LineReader]]:
        opt = self.opt
        many = ("load", "floor", "relay", "hold", "relay_hold")
        count = opt.client_count(n) if scenario in many else 1
        base = {
            "scenario": scenario,
            "port": port,
            "upstream_port": self.upstream_port,
            "t0": t0,
            "ramp": opt.ramp(n),
            "settle": opt.settle,
            "window": opt.window,
            "drain": opt.drain,
            "pace": asdict(opt.pace),
            "orphan_seconds": opt.orphan_seconds,
            "cancel_count": opt.cancel_count,
            "stream_conn": opt.stream_conn,
            **extra,
        }
        end = t0 + base["ramp"] + base["settle"] + base["window"] + base["drain"]
        base["deadline"] = min(end + 60, opt.deadline)
        started = []
        self.phases += 1
        for k in range(count):
            config = {
                **base,
                "vus": n // count + (1 if k < n % count else 0),
                "name": f"p{self.phases}{scenario[0]}{n}c{k}",
            }
            proc = self.children.start(
                f"loadgen-{scenario}-{k}",
                [PYTHON, "-m", "bench.loadgen", "--config", json.dumps(config)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log_file(f"loadgen-{scenario}-{n}"),
            )
            started.append((proc, LineReader(proc)))
        return started

    def finish_clients(
        self, clients: list[tuple[subprocess.Popen[bytes], LineReader]]
    ) -> tuple[list[dict[str, Any]], float]:
        """Wait for each client's result line; return results and client CPU."""
        results, cpu = [], 0.0
        for proc, reader in clients:
            while True:
                line = reader.next(max(1.0, self.time_left()))
                if line is None:
                    raise RuntimeError(
                        f"a load client ended without a result (pid {proc.pid})"
                    )
                if line["event"] == "result":
                    results.append(line["data"])
                    cpu += float(line.get("cpu_seconds", 0.0))
                    break
            reader.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.children.stop(proc, grace=1)
        return results, cpu


def _worker_connections(n: int) -> int:
    # A VU may hold two connections (its POSTs and its stream), see
    # bench.loadgen.Config.stream_conn.
    return max(6000, 2 * n + 1000)


@dataclass
class Service:
    """A running gunicorn master and its workers."""

    proc: subprocess.Popen[bytes]
    port: int
    target: Target

    @property
    def worker_count(self) -> int:
        return self.target.workers

    @property
    def redis(self) -> bool:
        return self.target.redis

    def workers(self) -> list[int]:
        return children_of(self.proc.pid)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("gunicorn exited at start-up; see its log")
        if len(self.workers()) < self.worker_count:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, 1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def warm_up(self, turns: int) -> None:
        """Run a few quick turns so that lazy imports and caches are done."""
        if self.target.kind == "plain":
            self._warm_up_plain(turns)
            return
        for i in range(turns):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, 10)
            conn.request("GET", "/")
            html = conn.getresponse().read().decode()
            start = html.index(TOKEN_MARK) + len(TOKEN_MARK)
            token = html[start : html.index('"', start)]
            text = f"warm up {marker(f'warm{i}', Pace(0, 0, 5))}"
            body = json.dumps({"message": text, "token": token})
            conn.request(
                "POST", "/api/chat", body, {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            turn = json.loads(response.read())
            if response.status != 201:
                raise RuntimeError(f"warm-up turn refused: {turn}")
            conn.request(
                "GET", turn["stream_url"], headers={"Accept": "text/event-stream"}
            )
            stream = conn.getresponse()
            data = stream.read()
            if b"event: done" not in data:
                raise RuntimeError("warm-up turn did not finish")
            conn.close()

    def _warm_up_plain(self, turns: int) -> None:
        for i in range(turns):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, 10)
            text = f"warm up {marker(f'warm{i}', Pace(0, 0, 5))}"
            body = json.dumps(
                {"model": "bench-model", "stream": True, "messages": [text]}
            )
            conn.request(
                "POST",
                "/v1/chat/completions",
                body,
                {"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            if response.status != 200 or b"[DONE]" not in response.read():
                raise RuntimeError("warm-up call through the plain relay failed")
            conn.close()


def snapshot_service(root: Path, into: Path) -> Path:
    """Copy the service's code, so that edits made meanwhile do not mix in."""
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(
        root / "chatapp",
        into / "chatapp",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(root / name, into / name)
    return into


def source_state(root: Path) -> dict[str, str]:
    """Name the code measured: commit, and whether chatapp/ had local edits."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "?",
        "local_edits": git("status", "--porcelain", "--", "chatapp", "wsgi.py")
        or "none",
    }


# -- system-wide CPU, to see what else ran --------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(bench: Bench, run: Run, phase: str) -> None:
    """Wait (within the run's quiet budget) until other work leaves the CPUs.

    The bench shares the machine; a phase measured while something else keeps
    a core busy says more about that something. Ours are idle between phases.
    """
    while True:
        before = machine_busy_seconds()
        time.sleep(QUIET_SAMPLE_SECONDS)
        busy = (machine_busy_seconds() - before) / QUIET_SAMPLE_SECONDS
        if busy <= QUIET_BUSY_CORES or bench.quiet_budget <= 0:
            break
        bench.quiet_budget -= QUIET_SAMPLE_SECONDS
        if bench.time_left() < 60:
            break
    if busy > QUIET_BUSY_CORES:
        run.notes.append(f"{phase}: started while others kept {busy:.1f} cores busy")


# -- phases --------------------------------------------------------------------


def run_loop_phase(
    bench: Bench,
    scenario: str,
    n: int,
    port: int,
    service: Service | None = None,
    client_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `load` (chatapp), `relay` (the plain relay) or `floor` (the upstream).

    `client_extra` goes into the load clients' Config (see bench.loadgen).
    """
    opt = bench.opt
    t0 = time.monotonic() + opt.client_start
    clients = bench.start_clients(scenario, n, port, t0, **(client_extra or {}))
    ws = t0 + opt.ramp(n) + opt.settle
    we = ws + opt.window
    client_pids = [p.pid for p, _ in clients]
    upstream_pid = [bench.upstream.pid] if bench.upstream else []
    uses_redis = service is not None and service.redis
    redis_pid = bench.redis_pids() if uses_redis else []
    workers = service.workers() if service else []

    def sample() -> dict[str, Any]:
        taken = {
            "t": time.monotonic(),
            "workers_cpu": cpu_seconds(workers),
            "workers_sys": cpu_split(workers)[1],
            "client_cpu": cpu_seconds(client_pids),
            "upstream_cpu": cpu_seconds(upstream_pid),
            "redis_cpu": cpu_seconds(redis_pid),
            "machine_busy": machine_busy_seconds(),
            "upstream": bench.upstream_counters(),
        }
        if uses_redis:
            taken["redis_commands"] = bench.redis_commands_all()
        return taken

    _sleep_until(ws)
    if service is not None and opt.profile:
        bench.profile(service, f"{service.target.label}-{n}", opt.window)
    before = sample()
    peak_rss = 0
    while time.monotonic() < we:
        peak_rss = max(peak_rss, rss_bytes(workers))
        time.sleep(min(0.5, max(0.0, we - time.monotonic())))
    after = sample()
    results, _ = bench.finish_clients(clients)
    span = after["t"] - before["t"]
    merged = _merge(results)
    tokens = merged["tokens_in_window"]
    ours = sum(after[k] - before[k] for k in after if k.endswith("_cpu"))
    out: dict[str, Any] = {
        **merged,
        "window_seconds": span,
        "turns_per_second": merged["completed_in_window"] / span,
        "tokens_per_second": tokens / span,
        "client_cpu_share": (after["client_cpu"] - before["client_cpu"]) / span,
        "upstream_cpu_share": (after["upstream_cpu"] - before["upstream_cpu"]) / span,
        "machine_busy_cores": (after["machine_busy"] - before["machine_busy"]) / span,
        "other_busy_cores": (after["machine_busy"] - before["machine_busy"] - ours)
        / span,
        "client_processes": len(clients),
        "upstream_connections_per_request": _ratio(
            after["upstream"]["connections"] - before["upstream"]["connections"],
            after["upstream"]["requests"] - before["upstream"]["requests"],
        ),
    }
    if service is not None:
        cpu = after["workers_cpu"] - before["workers_cpu"]
        out["service_cpu_share"] = cpu / span
        # The kernel's part (system time): mostly socket reads and writes.
        out["service_sys_share"] = (after["workers_sys"] - before["workers_sys"]) / span
        out["service_cpu_ms_per_1k_tokens"] = cpu * 1e6 / tokens if tokens else None
        out["peak_rss_during_load"] = peak_rss
        if "redis_commands" in after:
            out.update(
                _redis_figures(
                    before["redis_commands"],
                    after["redis_commands"],
                    turns=merged["completed_in_window"],
                    tokens=tokens,
                )
            )
            cpu_redis = after["redis_cpu"] - before["redis_cpu"]
            out["redis_cpu_share"] = cpu_redis / span
            out["redis_cpu_ms_per_1k_tokens"] = (
                cpu_redis * 1e6 / tokens if tokens else None
            )
            out["service_and_redis_cpu_ms_per_1k_tokens"] = (
                (cpu + cpu_redis) * 1e6 / tokens if tokens else None
            )
    return out


def _redis_figures(
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    turns: int,
    tokens: int,
) -> dict[str, Any]:
    """Redis commands over the window: in all, per token, and per turn by command.

    Per turn divides by the turns completed in the window: in a steady closed
    loop as many start as end there.
    """
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for name, (total, spent) in after.items():
        was_calls, was_usec = before.get(name, (0, 0))
        if total - was_calls:
            calls[name] = total - was_calls
            usec[name] = spent - was_usec
    ranked = sorted(calls, key=lambda name: -calls[name])
    return {
        "redis_calls": calls,
        "redis_usec": usec,
        "redis_commands_per_token": sum(calls.values()) / tokens if tokens else None,
        "redis_commands_per_turn": sum(calls.values()) / turns if turns else None,
        "redis_per_turn": [
            {
                "command": name,
                "calls": calls[name] / turns,
                "per_token": calls[name] / tokens if tokens else None,
                "redis_usec": usec[name] / turns,
            }
            for name in ranked
        ]
        if turns
        else [],
    }


def run_hold_phase(
    bench: Bench, n: int, service: Service, ramp: float | None = None
) -> dict[str, Any]:
    """Open N streams (over `ramp` seconds), read the workers' RSS, cancel them."""
    workers = service.workers()
    idle = rss_bytes(workers)
    t0 = time.monotonic() + bench.opt.client_start
    scenario = "relay_hold" if service.target.kind == "plain" else "hold"
    extra = {} if ramp is None else {"ramp": ramp}
    clients = bench.start_clients(scenario, n, service.port, t0, **extra)
    held = 0
    for _, reader in clients:
        line = reader.next(max(1.0, bench.time_left()))
        if line is None or line["event"] != "held":
            raise RuntimeError("a hold client did not report its streams open")
        held += int(line["held"])
    time.sleep(0.3 if bench.opt.quick else 1.0)
    samples = []
    for _ in range(3):
        samples.append(rss_bytes(workers))
        time.sleep(0.3)
    open_rss = max(samples)
    open_fds = open_files(workers)
    for proc, _ in clients:
        assert proc.stdin is not None
        proc.stdin.write(b"release\n")
        proc.stdin.flush()
    results, _ = bench.finish_clients(clients)
    # A client that hit its deadline reports errors but no timings.
    latencies = [x for r in results for x in r.get("cancel_latency", [])]
    timeline = {
        step: [x for r in results for x in r.get("timeline", {}).get(step, [])]
        for step in ("post", "headers", "first_delta")
    }
    errors = _merge(results)["errors"]
    return {
        "held": held,
        "idle_rss": idle,
        "open_rss": open_rss,
        "rss_per_stream": (open_rss - idle) / held if held else None,
        "open_fds": open_fds,
        "cancel_p50": percentile(latencies, 50),
        "cancel_p99": percentile(latencies, 99),
        "cancelled": len(latencies),
        "errors": errors,
        **{
            f"open_{step}_p{q}": percentile(values, q)
            for step, values in timeline.items()
            for q in (50, 99)
        },
    }


def run_cancel_phase(bench: Bench, service: Service) -> dict[str, Any]:
    opt = bench.opt
    t0 = time.monotonic() + opt.client_start
    clients = bench.start_clients(
        "cancel",
        opt.cancel_count * 4,
        service.port,
        t0,
        window=0.0,
        # About 40 starts a second: streaming turns then stay well within what
        # the service relays, so a cancel is timed, not a queue behind tokens.
        ramp=max(2.0, opt.cancel_count * 4 / 40),
    )
    results, _ = bench.finish_clients(clients)
    result = results[0]
    kinds = {}
    for kind, values in result["latency"].items():
        kinds[kind] = {
            "n": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values) if values else None,
            "errors": result["errors"][kind],
        }
    return {"kinds": kinds, "other_errors": result["other_errors"]}


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for r in results:
        for kind, count in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    ttft = [x for r in results for x in r["ttft"]]
    post = [x for r in results for x in r.get("post", [])]
    gaps = merge_counts(r["gaps"] for r in results)
    split = {}
    for where in ("same", "other"):
        part = merge_counts(r.get("gaps_by_worker", {}).get(where, {}) for r in results)
        split[f"gap_{where}_worker_p99"] = histogram_percentile(part, 99)
        split[f"gap_{where}_worker_n"] = sum(part.values())
        split[f"turns_{where}_worker"] = sum(
            r.get("turns_by_worker", {}).get(where, 0) for r in results
        )
    return {
        "errors": errors,
        "ttft_n": len(ttft),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "post_p50": percentile(post, 50),
        "post_p99": percentile(post, 99),
        "gap_p50": histogram_percentile(gaps, 50),
        "gap_p99": histogram_percentile(gaps, 99),
        "gap_n": sum(gaps.values()),
        **split,
        **{
            key: sum(r[key] for r in results)
            for key in (
                "started",
                "completed",
                "completed_in_window",
                "tokens_in_window",
                "cut",
            )
        },
    }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- the run ---------------------------------------------------------------------


def execute(bench: Bench, run: Run) -> None:
    opt = bench.opt
    bench.start_upstream()
    if any(t.redis for t in opt.targets):
        if opt.redis_url:
            bench.use_redis(opt.redis_url)
        else:
            bench.start_redis()
    for target in opt.targets if opt.cancel_phase else ():
        if target.kind != "chatapp":
            continue  # the plain relay has no cancel
        # Its own service: a short orphan time, which would cancel turns whose
        # reader is merely slow to arrive under the load phases' overload.
        _say(
            f"{target.label}: cancel phase "
            f"(CHATAPP_ORPHAN_SECONDS={opt.orphan_seconds:g})"
        )
        service = bench.start_service(target, opt.cancel_count * 4, opt.orphan_seconds)
        try:
            service.warm_up(4 * service.worker_count)
            run.cancel[target.label] = run_cancel_phase(bench, service)
        finally:
            bench.stop_service(service)
    for n in opt.ns:
        needed = _n_estimate(opt, n)
        if bench.time_left() < needed:
            run.notes.append(f"N={n} and above skipped: the global deadline was near")
            _say(run.notes[-1])
            break
        _say(f"floor N={n}")
        wait_for_quiet(bench, run, f"floor N={n}")
        run.floor[n] = run_loop_phase(bench, "floor", n, bench.upstream_port)
        _say(_floor_line(n, run.floor[n]))
        for target in opt.targets:
            name = f"{target.label} N={n}"
            _say(f"{name}: start")
            service = bench.start_service(target, n)
            try:
                service.warm_up(4 * service.worker_count)
                time.sleep(0.5)
                result: dict[str, Any] = {}
                wait_for_quiet(bench, run, name)
                result["hold"] = run_hold_phase(bench, n, service)
                _say(f"{name}: hold {_hold_line(result['hold'])}")
                scenario = "relay" if target.kind == "plain" else "load"
                result["load"] = run_loop_phase(
                    bench, scenario, n, service.port, service
                )
                _say(f"{name}: load {_load_line(result['load'])}")
                run.service.setdefault(target.label, {})[n] = result
            finally:
                bench.stop_service(service)


def _phase_estimate(opt: Options, n: int) -> float:
    return opt.client_start + opt.ramp(n) + opt.settle + opt.window + opt.drain


def _n_estimate(opt: Options, n: int) -> float:
    """Seconds one N needs at least: the floor, and a hold and a load per target."""
    hold = opt.client_start + opt.ramp(n) + 3.0
    return _phase_estimate(opt, n) + len(opt.targets) * (_phase_estimate(opt, n) + hold)


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _floor_line(n: int, r: dict[str, Any]) -> str:
    return (
        f"floor N={n}: {r['turns_per_second']:.1f} turns/s, ttft p50 "
        f"{ms(r['ttft_p50'])} ms p99 {ms(r['ttft_p99'])} ms, gap p99 "
        f"{ms(r['gap_p99'])} ms, errors {errors_text(r['errors'])}"
    )


def _hold_line(r: dict[str, Any]) -> str:
    per = r["rss_per_stream"]
    return (
        f"{r['held']} open (first delta p50 {ms(r['open_first_delta_p50'])} ms, "
        f"p99 {ms(r['open_first_delta_p99'])} ms; POST p99 "
        f"{ms(r['open_post_p99'])} ms), "
        f"{number(per / 1024 if per else None)} KiB/stream, "
        f"cancel p99 {ms(r['cancel_p99'])} ms, errors {errors_text(r['errors'])}"
    )


def _load_line(r: dict[str, Any]) -> str:
    return (
        f"{r['turns_per_second']:.1f} turns/s, ttft p50 {ms(r['ttft_p50'])} p99 "
        f"{ms(r['ttft_p99'])} ms, gap p99 {ms(r['gap_p99'])} ms, "
        f"service cpu {r['service_cpu_share']:.0%}, client cpu "
        f"{r['client_cpu_share']:.0%}, errors {errors_text(r['errors'])}"
    )


# -- the report ------------------------------------------------------------------


def report(run: Run) -> str:
    """Render the tables of a run as Markdown."""
    order = [label for label in _labels(run) if label in run.service]
    split = any(
        r["load"].get("gap_other_worker_n") or r["load"].get("gap_same_worker_n")
        for by_n in run.service.values()
        for r in by_n.values()
    )
    rows = []
    for n in sorted({n for by_n in run.service.values() for n in by_n}):
        floor = run.floor.get(n, {})
        for label in order:
            if n in run.service[label]:
                rows.append(_main_row(label, n, run.service[label][n], floor, split))
    header = [
        "run",
        "N",
        "turns/s",
        "errors",
        "TTFT+ p50 ms",
        "TTFT+ p99 ms",
        "gap+ p99 ms",
        *(["gap+ p99 other ms"] if split else []),
        "RSS KiB/stream",
        "CPU ms/1k tok",
        "+redis ms/1k tok",
        "Redis cmd/tok",
        "svc CPU",
        "client CPU",
    ]
    main = markdown_table(header, rows)
    detail_rows = []
    for n, floor in sorted(run.floor.items()):
        detail_rows.append(_detail_row("floor", n, floor, None))
        for label in order:
            if n in run.service[label]:
                result = run.service[label][n]
                detail_rows.append(
                    _detail_row(label, n, result["load"], result["hold"])
                )
    detail = markdown_table(
        [
            "run",
            "N",
            "turns/s",
            "tok/s",
            "TTFT p50",
            "TTFT p99",
            "POST p50",
            "POST p99",
            "gap p50",
            "gap p99",
            "cut",
            "upstream CPU",
            "client CPU",
            "others",
            "cancel@N p99",
            "peak RSS MiB",
        ],
        detail_rows,
    )
    cancel_rows = []
    for mode, result in run.cancel.items():
        for kind, k in result["kinds"].items():
            cancel_rows.append(
                [
                    mode,
                    CANCEL_LABELS.get(kind, kind),
                    str(k["n"]),
                    ms(k["p50"], 0),
                    ms(k["p99"], 0),
                    ms(k["max"], 0),
                    errors_text(k["errors"]),
                ]
            )
    cancel = markdown_table(
        ["run", "what", "n", "p50 ms", "p99 ms", "max ms", "errors"], cancel_rows
    )
    parts = [
        "Service figures (added = service minus floor at the same N and percentile;"
        " +redis = workers and redis-server together):",
        "",
        main,
    ]
    if any(t.kind == "chatapp" and t.workers > 1 for t in _targets(run)):
        if run.options.get("stream_conn") != "own":
            why = (
                "every stream was read on its POST's connection, in the worker "
                "that started the turn (--stream-conn own to read elsewhere)"
            )
        elif not split:
            why = "not split: the service names no worker (X-Chatapp-Worker)"
        else:
            why = (
                "the column gap+ p99 other counts only the streams read in "
                "another worker than the one that answered their POST"
            )
        parts += ["", f"Readers on another worker: {why}."]
    scale = scale_rows(run)
    if scale:
        parts += [
            "",
            "Workers scale: turns/s with more workers ÷ with 1, at the same N "
            f"(* the 1-worker row's svc CPU ≥ {SATURATED_SHARE:.0%}):",
            "",
            markdown_table(
                ["runs", "N", "1 worker turns/s", "its svc CPU", "turns/s", "ratio"],
                scale,
            ),
            "",
            *scale_headlines(run),
        ]
    redis_rows = _redis_rows(run, order)
    if redis_rows:
        parts += [
            "",
            "Redis commands over the window, per turn (top "
            f"{TOP_REDIS_COMMANDS}: calls per turn, µs redis-server spent on "
            "them per turn; all in the JSON report):",
            "",
            markdown_table(
                ["run", "N", "cmd/turn", "cmd/tok", "redis-server CPU", "top"],
                redis_rows,
            ),
        ]
    parts += [
        "",
        "Raw latencies (ms), throughput and where the CPU went "
        "(shares of one core over the window):",
        "",
        detail,
        "",
        "Cancel and vanished reader → upstream connection closed:",
        "",
        cancel,
    ]
    if run.notes:
        parts += ["", *(f"Note: {note}" for note in run.notes)]
    return "\n".join(parts)


def _targets(run: Run) -> list[Target]:
    return [Target(**t) for t in run.options.get("targets", ())]


def _labels(run: Run) -> list[str]:
    """Row labels in the run's order, then any others the report holds."""
    labels = [t.label for t in _targets(run)]
    return labels + [label for label in run.service if label not in labels]


def _main_row(
    label: str, n: int, result: dict[str, Any], floor: dict[str, Any], split: bool
) -> list[str]:
    load, hold = result["load"], result["hold"]
    errors = dict(load["errors"])
    for kind, count in hold["errors"].items():
        errors[f"hold_{kind}"] = errors.get(f"hold_{kind}", 0) + count
    per = hold["rss_per_stream"]
    other = [_added(load.get("gap_other_worker_p99"), floor.get("gap_p99"))]
    return [
        label,
        f"{n:,}",
        number(load["turns_per_second"]),
        errors_text(errors),
        _added(load["ttft_p50"], floor.get("ttft_p50")),
        _added(load["ttft_p99"], floor.get("ttft_p99")),
        _added(load["gap_p99"], floor.get("gap_p99")),
        *(other if split else []),
        number(per / 1024 if per is not None else None),
        number(load.get("service_cpu_ms_per_1k_tokens"), 0),
        number(load.get("service_and_redis_cpu_ms_per_1k_tokens"), 0),
        number(load.get("redis_commands_per_token"), 2),
        f"{load['service_cpu_share']:.0%}",
        f"{load['client_cpu_share']:.0%}",
    ]


def scale_pairs(run: Run) -> list[tuple[str, str]]:
    """(1 worker, more workers) label pairs of the same server and code."""
    targets = [t for t in _targets(run) if t.label in run.service]
    pairs = []
    for one in (t for t in targets if t.workers == 1):
        for more in targets:
            if more.workers > 1 and more.kind == one.kind and more.code == one.code:
                pairs.append((one.label, more.label))
    return pairs


def scale_rows(run: Run) -> list[list[str]]:
    rows = []
    for one, more in scale_pairs(run):
        for n in sorted(set(run.service[one]) & set(run.service[more])):
            a, b = run.service[one][n]["load"], run.service[more][n]["load"]
            mark = "*" if a["service_cpu_share"] >= SATURATED_SHARE else ""
            rows.append(
                [
                    f"{more} ÷ {one}",
                    f"{n:,}{mark}",
                    number(a["turns_per_second"]),
                    f"{a['service_cpu_share']:.0%}",
                    number(b["turns_per_second"]),
                    number(_ratio(b["turns_per_second"], a["turns_per_second"]), 2),
                ]
            )
    return rows


def scale_headlines(run: Run) -> list[str]:
    """The ratio at the smallest N where the 1-worker row saturated.

    The smallest: there one worker relays the most it can; at larger N its
    throughput falls under overload and the ratio grows for that reason.
    """
    lines = []
    for one, more in scale_pairs(run):
        common = sorted(set(run.service[one]) & set(run.service[more]))
        saturated = [
            n
            for n in common
            if run.service[one][n]["load"]["service_cpu_share"] >= SATURATED_SHARE
        ]
        if not saturated:
            lines.append(
                f"Workers scale, {more} ÷ {one}: — ({one} never reached "
                f"{SATURATED_SHARE:.0%} svc CPU at the N tried)"
            )
            continue
        n = saturated[0]
        a = run.service[one][n]["load"]["turns_per_second"]
        b = run.service[more][n]["load"]["turns_per_second"]
        lines.append(
            f"Workers scale, {more} ÷ {one}: {number(_ratio(b, a), 2)}× at N={n:,}, "
            f"the smallest N where {one} saturated."
        )
    return lines


def _redis_rows(run: Run, order: list[str]) -> list[list[str]]:
    rows = []
    for label in order:
        for n, result in sorted(run.service[label].items()):
            load = result["load"]
            if "redis_per_turn" not in load:
                continue
            top = ", ".join(
                f"{c['command']} {c['calls']:.1f} · {c['redis_usec']:.0f} µs"
                for c in load["redis_per_turn"][:TOP_REDIS_COMMANDS]
            )
            rows.append(
                [
                    label,
                    f"{n:,}",
                    number(load.get("redis_commands_per_turn"), 1),
                    number(load.get("redis_commands_per_token"), 2),
                    f"{load.get('redis_cpu_share', 0.0):.0%}",
                    top or "—",
                ]
            )
    return rows


def _added(value: float | None, floor: float | None) -> str:
    if value is None or floor is None:
        return "—"
    return f"{(value - floor) * 1000:+.1f}"


def _detail_row(
    name: str, n: int, r: dict[str, Any], hold: dict[str, Any] | None
) -> list[str]:
    return [
        name,
        f"{n:,}",
        number(r["turns_per_second"]),
        number(r["tokens_per_second"], 0),
        ms(r["ttft_p50"]),
        ms(r["ttft_p99"]),
        ms(r["post_p50"]) if hold else "—",
        ms(r["post_p99"]) if hold else "—",
        ms(r["gap_p50"]),
        ms(r["gap_p99"]),
        str(r["cut"]),
        f"{r['upstream_cpu_share']:.0%}",
        f"{r['client_cpu_share']:.0%}",
        f"{max(0.0, r['other_busy_cores']):.0%}",
        ms(hold["cancel_p99"], 0) if hold else "—",
        number(r["peak_rss_during_load"] / 2**20, 0) if hold else "—",
    ]


def describe_machine() -> dict[str, Any]:
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    versions = {}
    for name in ("gevent", "gunicorn", "greenlet", "flask", "redis", "requests"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not shown
            versions[name] = "?"
    redis_version = "?"
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if Path(binary).exists():
        redis_version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "redis_server": redis_version,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- entry point -----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n", default=None, help="concurrent streams, comma-separated")
    parser.add_argument("--mode", default=None, help="memory,redis (default both)")
    parser.add_argument("--quick", action="store_true", help="a smoke test, < 60 s")
    parser.add_argument("--window", type=float, default=None, help="seconds measured")
    parser.add_argument(
        "--ttft-ms", type=int, default=200, help="upstream time to first token"
    )
    parser.add_argument(
        "--token-ms", type=int, default=20, help="upstream gap between tokens"
    )
    parser.add_argument("--tokens", type=int, default=50, help="tokens per answer")
    parser.add_argument("--cancel-count", type=int, default=None, help="per kind")
    parser.add_argument("--orphan-seconds", type=float, default=2.0)
    parser.add_argument(
        "--clients", type=int, default=0, help="load client processes (0: auto)"
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="seconds for the whole run"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument(
        "--no-cancel", action="store_true", help="skip the cancel phase"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="seconds, in all, to wait for other work to leave the CPUs "
        "before phases (default 0 with --quick, else 120)",
    )
    parser.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        help="directory holding wsgi.py and chatapp/ (default: this checkout)",
    )
    parser.add_argument(
        "--before-root",
        type=Path,
        default=None,
        help="also measure the chatapp modes of this checkout (e.g. made with "
        "`git worktree add /tmp/before <commit>`), as before-memory, before-redis",
    )
    parser.add_argument(
        "--plain-workers",
        default=None,
        help="worker counts of the plain relay yardstick, comma-separated; "
        "'none' to leave it out (default: the chatapp modes' counts, 1 and 2)",
    )
    parser.add_argument(
        "--stream-conn",
        choices=("own", "same"),
        default="same",
        help="same: each VU reads its streams on its POSTs' connection, so in "
        "the worker that started the turn; own: on a connection of their own, "
        "so with 2 workers often in another worker, which the gap split by "
        "worker needs (default same)",
    )
    parser.add_argument(
        "--redis-url",
        default="",
        help="the redis mode's CHATAPP_REDIS_URL, any form (e.g. a "
        "redis+cluster:// URL); default: a redis-server the bench starts. "
        "Flushed before each service; commands and CPU summed over its primaries",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the workers with py-spy during each load window",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    ns = args.n or ("100" if quick else "100,500,1000,2000,5000")
    modes = tuple(
        m.strip() for m in (args.mode or "memory,redis").split(",") if m.strip()
    )
    for mode in modes:
        if mode not in ("memory", "redis"):
            raise SystemExit(f"bench: unknown mode {mode!r}")
    if args.plain_workers is None:
        plain_workers = tuple(sorted({2 if m == "redis" else 1 for m in modes}))
    elif args.plain_workers.strip().lower() in ("", "none", "0"):
        plain_workers = ()
    else:
        plain_workers = tuple(int(w) for w in args.plain_workers.split(",") if w)
    before_root = args.before_root.resolve() if args.before_root else None
    targets = make_targets(modes, before_root is not None, plain_workers)
    # Default run about 15 min, the before rows add about 7. --quick takes
    # about 80 s on a quiet machine; its deadline leaves room for a busy one.
    deadline = args.deadline or (
        (150.0 if quick else 900.0)
        + (0.0 if before_root is None else (60.0 if quick else 420.0))
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Options(
        ns=tuple(int(x) for x in ns.split(",") if x.strip()),
        modes=modes,
        pace=Pace(args.ttft_ms, args.token_ms, args.tokens),
        window=args.window or (3.0 if quick else 12.0),
        settle=0.5 if quick else 2.0,
        drain=3.0 if quick else 6.0,
        cancel_count=args.cancel_count or (10 if quick else 100),
        orphan_seconds=args.orphan_seconds,
        clients=args.clients,
        deadline=time.monotonic() + deadline,
        out=args.out or ROOT / "bench" / "results" / f"{stamp}.json",
        quick=quick,
        service_root=args.service_root.resolve(),
        before_root=before_root,
        targets=targets,
        stream_conn=args.stream_conn,
        quiet_wait=(
            args.quiet_wait
            if args.quiet_wait is not None
            else (0.0 if quick else 120.0)
        ),
        profile=bool(args.profile),
        cancel_phase=not args.no_cancel,
        redis_url=args.redis_url.strip(),
    )


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    for root in filter(None, (opt.service_root, opt.before_root)):
        if not (root / "chatapp").is_dir() or not (root / "wsgi.py").is_file():
            raise SystemExit(f"bench: {root} holds no chatapp/ and wsgi.py")
    raise_nofile_limit()
    opt.out.parent.mkdir(parents=True, exist_ok=True)
    rundir = opt.out.with_suffix("")
    rundir.mkdir(parents=True, exist_ok=True)
    run = Run(
        {
            **describe_machine(),
            "source": source_state(opt.service_root),
            "before_source": source_state(opt.before_root) if opt.before_root else None,
        },
        {**asdict(opt), "out": str(opt.out)},
    )
    bench = Bench(opt, rundir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise DeadlineExceeded("the global deadline passed")

    # Also when started in the background, where a shell ignores SIGINT.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(bench.time_left()) + 1))
    status = 0
    try:
        execute(bench, run)
    except DeadlineExceeded as exc:
        run.notes.append(f"stopped early: {exc}")
        status = 2
    except KeyboardInterrupt:
        run.notes.append("interrupted")
        status = 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        run.notes.append(f"failed: {exc} (logs in {rundir})")
        status = 1
    finally:
        signal.alarm(0)
        bench.children.stop_all()
    text = report(run)
    shutil.rmtree(rundir / "service", ignore_errors=True)
    shutil.rmtree(rundir / "service-before", ignore_errors=True)
    opt.out.write_text(json.dumps(asdict(run), indent=1, default=str))
    print(text)
    print(f"\nJSON report: {opt.out}; process logs: {rundir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
