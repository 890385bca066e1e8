"""The cost of a turn: fixed CPU per turn, marginal CPU per token, TTFT, 5,000 streams.

    .venv/bin/python -m bench.cost                        # every table, ~15 min
    .venv/bin/python -m bench.cost --before-root /tmp/before --profile
    .venv/bin/python -m bench.cost --mode memory --hold 0 --window 6   # quicker

Per mode (memory: 1 worker; redis: 2 workers and a redis-server of its own)
it measures, at the same N, each row with the same client (`bench.loadgen`):

- the **floor**: the load client reading the fake upstream directly;
- **plain** / **plainK**: the yardstick `bench.plain_relay` (bytes forwarded);
- **two requests**: chatapp as `EventSource` uses it (POST, then GET stream);
- **one request**: POST /api/chat with `Accept: text/event-stream` (SPEC's
  one request per turn); "n/a" when the service answers it 201 JSON;
- **before**: `--before-root`'s chatapp, two requests.

Each row runs three closed loops: 1-token answers (the **fixed** cost of a
turn: worker CPU time / turns completed in the window), 200-token answers
(the **marginal** cost of a token: (CPU per long turn - CPU per short turn)
/ 199) and one user at a time (**TTFT** with no load, minus the floor's).
CPU is the gunicorn workers' utime+stime from /proc, never wall time, so a
loaded machine slows the run but does not change what a turn costs; ratios
against the yardstick measured in the same run are what count. Virtual users
send distinct `X-Forwarded-For` addresses (`CHATAPP_TRUSTED_PROXY_HOPS=1`) so
the limiter keeps a window per visitor; `--addresses single` makes them all
127.0.0.1 (the worst case). Then `--hold` streams are held open per mode
(RSS per stream, file descriptors, errors). `--profile` samples the memory
mode's workers with py-spy in each loop and prints where a turn's CPU goes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import profile_summary
from bench.procs import raise_nofile_limit
from bench.protocol import Pace
from bench.protocol import marker
from bench.run import PYTHON
from bench.run import ROOT
from bench.run import TOKEN_MARK
from bench.run import Bench
from bench.run import DeadlineExceeded
from bench.run import Options
from bench.run import Service
from bench.run import Target
from bench.run import describe_machine
from bench.run import run_hold_phase
from bench.run import run_loop_phase
from bench.run import source_state
from bench.stats import errors_text
from bench.stats import markdown_table

LONG_TOKENS = 200
LOOPS = ("fixed", "marginal", "ttft")


def _say(text: str) -> None:
    print(f"bench.cost: {text}", file=sys.stderr, flush=True)


def rows_of(mode: str, before: bool) -> list[tuple[str, Target, str]]:
    """(row label, target, requests per turn) for one mode, yardstick first."""
    workers = 2 if mode == "redis" else 1
    redis = mode == "redis"
    plain = "plain" if workers == 1 else f"plain{workers}"
    rows = [
        (plain, Target(plain, "plain", workers), "two"),
        (f"{mode} two", Target(mode, "chatapp", workers, redis), "two"),
        (f"{mode} one", Target(mode, "chatapp", workers, redis), "one"),
    ]
    if before:
        target = Target(f"before-{mode}", "chatapp", workers, redis, "before")
        rows.append((f"before-{mode} two", target, "two"))
    return rows


def supports_one_request(service: Service) -> bool:
    """Ask once: does a POST with Accept: text/event-stream get the stream?"""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, 10)
    try:
        conn.request("GET", "/")
        html = conn.getresponse().read().decode()
        start = html.index(TOKEN_MARK) + len(TOKEN_MARK)
        token = html[start : html.index('"', start)]
        text = f"probe {marker('probe-one', Pace(0, 0, 2))}"
        conn.request(
            "POST",
            "/api/chat",
            json.dumps({"message": text, "token": token}),
            {"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = conn.getresponse()
        body = response.read()
        kind = response.getheader("Content-Type", "")
        return (
            response.status == 200
            and kind.startswith("text/event-stream")
            and (b"event: done" in body)
        )
    finally:
        conn.close()


class CostRun:
    """One run: per mode, per row, the three loops; then the holds."""

    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.result: dict[str, Any] = {"rows": {}, "floor": {}, "hold": {}}
        self.result["notes"] = []

    def pace(self, loop: str) -> Pace:
        a = self.args
        if loop == "fixed":
            return Pace(a.ttft_ms, a.token_ms, 1)
        if loop == "marginal":
            return Pace(a.ttft_ms, a.token_ms, LONG_TOKENS)
        return Pace(0, 0, 1)  # ttft: one user, no think time upstream

    def loop(
        self, loop: str, scenario: str, port: int, service: Service | None, **cfg: Any
    ) -> dict[str, Any]:
        """One closed loop; `cfg` goes to the load client's Config."""
        n = 1 if loop == "ttft" else self.args.n
        self.bench.opt = replace(self.bench.opt, pace=self.pace(loop))
        spies = []
        if service is not None and self.args.profile and loop != "ttft":
            if not service.redis and service.target.kind == "chatapp":
                spies = self.spy(service, cfg.get("requests_per_turn", "two"), loop)
        out = run_loop_phase(self.bench, scenario, n, port, service, cfg)
        # py-spy samples Python holding the GIL (--gil): what the user time
        # pays for; the kernel's time (socket calls) is reported apart.
        per = per_token if loop == "marginal" else cpu_per_turn
        user, total = per(out, user=True), per(out)
        kernel = None if user is None or total is None else total - user
        for proc, path in spies:
            proc.wait(30)
            out.setdefault("profile", {})[str(path)] = profile_summary.summarise(
                path, out["completed_in_window"], user, kernel
            )
        return out

    def spy(self, service: Service, requests: str, loop: str) -> list[Any]:
        spy = Path(PYTHON).with_name("py-spy")
        if not spy.exists():
            self.note("--profile: no py-spy in the venv (pip install py-spy)")
            return []
        opt = self.bench.opt
        started = []
        for pid in service.workers():
            path = self.bench.rundir / f"profile-{requests}-{loop}-{pid}.txt"
            # Start with the window (the loop's clients start after client_start
            # and ramp/settle); py-spy runs a window long.
            delay = opt.client_start + opt.ramp(self.args.n) + opt.settle
            argv = [
                "sh",
                "-c",
                f'sleep {delay:.2f}; exec "$0" "$@"',
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(opt.window))),
                "--rate",
                str(self.args.profile_rate),
                "--nonblocking",
                "--gil",
                "--format",
                "raw",
                "--output",
                str(path),
            ]
            proc = self.bench.children.start(
                f"py-spy-{pid}",
                argv,
                stdout=self.bench.log_file("py-spy"),
                stderr=self.bench.log_file("py-spy"),
            )
            started.append((proc, path))
        return started

    def note(self, text: str) -> None:
        _say(text)
        self.result["notes"].append(text)

    def run_floor(self, mode: str) -> None:
        port = self.bench.upstream_port
        floor = {loop: self.loop(loop, "floor", port, None) for loop in LOOPS}
        self.result["floor"][mode] = floor

    def run_row(self, label: str, target: Target, requests: str) -> None:
        bench = self.bench
        _say(f"{label}: start")
        service = bench.start_service(target, self.args.n)
        row: dict[str, Any] = {"target": target.label, "requests": requests}
        try:
            service.warm_up(4 * service.worker_count)
            if target.kind == "chatapp" and requests == "one":
                if not supports_one_request(service):
                    self.note(f"{label}: the service does not stream the POST: n/a")
                    row["supported"] = False
                    self.result["rows"][label] = row
                    return
            row["supported"] = True
            scenario = "relay" if target.kind == "plain" else "load"
            for loop in LOOPS:
                extra = {} if target.kind == "plain" else self.client_cfg(requests)
                row[loop] = self.loop(loop, scenario, service.port, service, **extra)
                _say(f"{label}: {loop} {_short(row[loop])}")
        finally:
            bench.stop_service(service)
        self.result["rows"][label] = row

    def client_cfg(self, requests: str) -> dict[str, Any]:
        return {"requests_per_turn": requests, "addresses": self.args.addresses}

    def run_hold(self, mode: str) -> None:
        n = self.args.hold
        workers = 2 if mode == "redis" else 1
        plain = "plain" if workers == 1 else f"plain{workers}"
        for target in (
            Target(plain, "plain", workers),
            Target(mode, "chatapp", workers, mode == "redis"),
        ):
            _say(f"{target.label}: hold {n} streams")
            self.bench.opt = replace(
                self.bench.opt, pace=Pace(self.args.ttft_ms, 20, 10_000)
            )
            service = self.bench.start_service(target, n)
            try:
                service.warm_up(2 * service.worker_count)
                # Opened at --hold-rate: one worker starts a few hundred
                # turns a second, and a turn refused or timed out in a
                # rush says nothing about holding streams.
                ramp = n / self.args.hold_rate
                hold = run_hold_phase(self.bench, n, service, ramp)
            finally:
                self.bench.stop_service(service)
            self.result["hold"][target.label] = hold
            _say(f"{target.label}: hold {_hold_short(hold)}")

    def execute(self) -> None:
        bench = self.bench
        bench.start_upstream()
        if "redis" in self.args.modes:
            bench.start_redis()
        for mode in self.args.modes if self.args.loops else ():
            self.run_floor(mode)
            before = bench.opt.before_root is not None
            for label, target, requests in rows_of(mode, before):
                self.run_row(label, target, requests)
        if self.args.hold:
            for mode in self.args.modes:
                self.run_hold(mode)


def _short(r: dict[str, Any]) -> str:
    return (
        f"{r['completed_in_window']} turns, {r['tokens_in_window']} tokens, "
        f"svc {r.get('service_cpu_share', 0):.0%} CPU, "
        f"errors {errors_text(r['errors'])}"
    )


def _hold_short(h: dict[str, Any]) -> str:
    per = h["rss_per_stream"]
    return (
        f"held {h['held']}, {per / 1024 if per else 0:.1f} KiB/stream, "
        f"{h['open_fds']} fds, errors {errors_text(h['errors'])}"
    )


# -- the report ------------------------------------------------------------------


def _cpu(r: dict[str, Any], with_redis: bool, user: bool) -> float | None:
    """Worker CPU seconds in the window: all, with redis-server's, or user only."""
    share = r.get("service_cpu_share")
    if share is None:
        return None
    if user:
        share -= r.get("service_sys_share", 0.0)
    if with_redis:
        share += r.get("redis_cpu_share", 0.0)
    return float(share * r["window_seconds"])


def cpu_per_turn(
    r: dict[str, Any], with_redis: bool = False, *, user: bool = False
) -> float | None:
    """Worker CPU seconds per turn completed in the window."""
    turns = r.get("completed_in_window") or 0
    cpu = _cpu(r, with_redis, user)
    return None if not turns or cpu is None else cpu / turns


def per_token(
    r: dict[str, Any], with_redis: bool = False, *, user: bool = False
) -> float | None:
    """Worker CPU seconds per token received in the window."""
    tokens = r.get("tokens_in_window") or 0
    cpu = _cpu(r, with_redis, user)
    return None if not tokens or cpu is None else cpu / tokens


def figures(row: dict[str, Any], with_redis: bool = False) -> dict[str, Any]:
    """Fixed seconds per turn and marginal seconds per token of one row.

    A long turn's CPU is taken per token received (a window holds few whole
    200-token turns, but thousands of tokens) times the answer's length.
    """
    if not row.get("supported"):
        return {}
    fixed = cpu_per_turn(row["fixed"], with_redis)
    token = per_token(row["marginal"], with_redis)
    user = cpu_per_turn(row["fixed"], with_redis, user=True)
    marginal = None
    if fixed is not None and token is not None:
        marginal = (token * LONG_TOKENS - fixed) / (LONG_TOKENS - 1)
    kernel = None if fixed is None or user is None else fixed - user
    return {"fixed": fixed, "marginal": marginal, "fixed_kernel": kernel}


def _us(value: float | None, scale: float = 1e6) -> str:
    return "n/a" if value is None else f"{value * scale:,.0f}"


def _x(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "n/a"
    return f"{value / base:.2f}x"


def report(result: dict[str, Any], modes: list[str]) -> str:
    lines = []
    for mode in modes:
        rows = {k: v for k, v in result["rows"].items() if _mode_of(k) == mode}
        if not rows:
            continue
        floor = result["floor"].get(mode, {})
        yard_label = next(k for k in rows if k.startswith("plain"))
        yard = figures(rows[yard_label])
        table = []
        for label, row in rows.items():
            fig = figures(row)
            ttft = row.get("ttft", {}).get("ttft_p50")
            floor_ttft = floor.get("ttft", {}).get("ttft_p50")
            added = None if ttft is None or floor_ttft is None else ttft - floor_ttft
            cmds = row.get("marginal", {}).get("redis_commands_per_token")
            cmds_turn = row.get("fixed", {}).get("redis_commands_per_turn")
            errors: dict[str, int] = {}
            for loop in LOOPS:
                for kind, count in row.get(loop, {}).get("errors", {}).items():
                    errors[kind] = errors.get(kind, 0) + count
            table.append(
                [
                    label,
                    _us(fig.get("fixed")),
                    _us(fig.get("fixed_kernel")),
                    _x(fig.get("fixed"), yard.get("fixed")),
                    _us(fig.get("marginal")),
                    _x(fig.get("marginal"), yard.get("marginal")),
                    "n/a" if added is None else f"{added * 1000:+.1f}",
                    "-" if cmds is None else f"{cmds:.2f}",
                    "-" if cmds_turn is None else f"{cmds_turn:.1f}",
                    errors_text(errors) if row.get("supported") else "n/a",
                ]
            )
        lines += [
            "",
            f"### {mode}: fixed and marginal CPU (N={result['n']}, "
            f"{result['addresses']} addresses)",
            "",
            markdown_table(
                [
                    "row",
                    "fixed µs/turn",
                    "of it kernel",
                    "× yardstick",
                    "marginal µs/token",
                    "× yardstick",
                    "TTFT added p50 ms (no load)",
                    "Redis cmd/token",
                    "Redis cmd/turn (1-token)",
                    "errors",
                ],
                table,
            ),
        ]
        if mode == "redis":
            lines += _redis_lines(rows)
    lines += _hold_lines(result)
    lines += profile_summary.report_lines(result)
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines)


def _mode_of(label: str) -> str:
    if label.startswith("plain"):
        return "memory" if label == "plain" else "redis"
    return label.split()[0].removeprefix("before-")


def _redis_lines(rows: dict[str, Any]) -> list[str]:
    table = []
    for label, row in rows.items():
        if label.startswith("plain") or not row.get("supported"):
            continue
        fig = figures(row, with_redis=True)
        table.append([label, _us(fig.get("fixed")), _us(fig.get("marginal"))])
    return [
        "",
        "Workers and redis-server together:",
        "",
        markdown_table(["row", "fixed µs/turn", "marginal µs/token"], table),
    ]


def _hold_lines(result: dict[str, Any]) -> list[str]:
    holds = result["hold"]
    if not holds:
        return []
    table = []
    for label, h in holds.items():
        per = h.get("rss_per_stream")
        table.append(
            [
                label,
                str(h["held"]),
                "n/a" if per is None else f"{per / 1024:.1f}",
                f"{h['open_rss'] / 2**20:.0f}",
                str(h["open_fds"]),
                errors_text(h["errors"]),
            ]
        )
    return [
        "",
        f"### {result['hold_n']:,} concurrent streams",
        "",
        markdown_table(
            ["row", "held", "KiB RSS/stream", "workers' RSS MiB", "fds", "errors"],
            table,
        ),
    ]


# -- command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n", type=int, default=20, help="concurrent users per loop")
    parser.add_argument("--mode", default="memory,redis", help="memory,redis")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--ttft-ms", type=int, default=100, help="upstream TTFT")
    parser.add_argument("--token-ms", type=int, default=10, help="gap between tokens")
    parser.add_argument(
        "--addresses",
        choices=("distinct", "single"),
        default="distinct",
        help="distinct: one X-Forwarded-For address per virtual user (default); "
        "single: all 127.0.0.1, one client to the limiter (the worst case)",
    )
    parser.add_argument(
        "--hold", type=int, default=5000, help="streams held open per mode; 0: none"
    )
    parser.add_argument(
        "--hold-rate",
        type=float,
        default=150.0,
        help="streams opened per second in the hold (default 150)",
    )
    parser.add_argument(
        "--no-loops",
        dest="loops",
        action="store_false",
        help="only hold --hold streams open (no fixed/marginal/TTFT loops)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        help="the services' CHATAPP_LOG_LEVEL (default warning, as bench.run; "
        "info, the product's default, adds a JSON line per request and turn)",
    )
    parser.add_argument("--before-root", type=Path, default=None)
    parser.add_argument("--service-root", type=Path, default=ROOT)
    parser.add_argument("--profile", action="store_true", help="py-spy, memory mode")
    parser.add_argument("--profile-rate", type=int, default=250)
    parser.add_argument("--deadline", type=float, default=2400.0, help="seconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for mode in args.modes:
        if mode not in ("memory", "redis"):
            raise SystemExit(f"bench.cost: unknown mode {mode!r}")
    return args


def options_for(args: argparse.Namespace, out: Path) -> Options:
    env = [("CHATAPP_TRUSTED_PROXY_HOPS", "1")] if args.addresses == "distinct" else []
    env.append(("CHATAPP_LOG_LEVEL", args.log_level))
    return Options(
        ns=(args.n,),
        modes=tuple(args.modes),
        pace=Pace(args.ttft_ms, args.token_ms, 1),
        window=args.window,
        settle=1.5,
        drain=max(4.0, (args.ttft_ms + args.token_ms * LONG_TOKENS) / 1000 + 2),
        cancel_count=0,
        orphan_seconds=30.0,
        clients=1,
        deadline=time.monotonic() + args.deadline,
        out=out,
        quick=False,
        service_root=args.service_root.resolve(),
        before_root=args.before_root.resolve() if args.before_root else None,
        service_env=tuple(env),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"cost-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir = out.with_suffix("")
    rundir.mkdir(parents=True, exist_ok=True)
    bench = Bench(options_for(args, out), rundir)
    run = CostRun(bench, args)
    run.result.update(
        n=args.n,
        addresses=args.addresses,
        hold_n=args.hold,
        machine=describe_machine(),
        source=source_state(args.service_root),
        options={k: str(v) for k, v in vars(args).items()},
    )

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise DeadlineExceeded("the global deadline passed")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(bench.time_left()) + 1))
    status = 0
    try:
        run.execute()
    except DeadlineExceeded as exc:
        run.note(f"stopped early: {exc}")
        status = 2
    except KeyboardInterrupt:
        run.note("interrupted")
        status = 130
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        run.note(f"failed: {exc} (logs in {rundir})")
        status = 1
    finally:
        signal.alarm(0)
        bench.children.stop_all()
    shutil.rmtree(rundir / "service", ignore_errors=True)
    shutil.rmtree(rundir / "service-before", ignore_errors=True)
    out.write_text(json.dumps(run.result, indent=1, default=str))
    print(report(run.result, args.modes))
    print(f"\nJSON report: {out}; process logs: {rundir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
