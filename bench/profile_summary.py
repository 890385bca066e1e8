"""Where a turn's CPU goes: py-spy's raw (collapsed) stacks, summed by piece.

py-spy records with --gil: only Python holding the GIL, which is what the
workers' user time pays for. Each sample is given to one piece: the
innermost frame of its stack that belongs to a piece named below wins (so
JSON encoding inside a log call is logging, a Redis round trip inside the
limiter is the limiter). A piece's share of the samples times the workers'
user CPU per turn (or token), measured from /proc over the same window, is
what it costs; the kernel's time (system time: socket reads and writes,
wake-ups) is its own row, from /proc too. So neither the sampler's clock
nor a loaded machine's preemption enters the figures, only the shares.

    python -m bench.profile_summary RUNDIR/profile-two-fixed-PID.txt \\
        --turns 900 --user-ms 2.1 --sys-ms 0.7
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stats import markdown_table

# (piece, patterns matched against "function (path:line)"), in no priority:
# the innermost matching frame decides.
PIECES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "flask-limiter hit",
        ("flask_limiter/", "/limits/", "chatapp/web/limiter.py", "moving_window.py"),
    ),
    ("token signing/verifying", ("itsdangerous/", "chatapp/tokens.py")),
    ("JSON logging", ("logging/", "chatapp/web/logs.py")),
    (
        "CORS, request id, guards",
        ("chatapp/web/cors.py", "chatapp/web/guards.py", "chatapp/web/request_id"),
    ),
    (
        "response building",
        ("werkzeug/wrappers/response", "werkzeug/sansio/response", "flask/wrappers"),
    ),
    ("SSE out (stream, readers)", ("chatapp/web/stream.py", "chatapp/web/readers.py")),
    ("turn start, admission", ("chatapp/turns/start.py", "chatapp/turns/admit.py")),
    ("turn producing, relay", ("chatapp/turns/",)),
    ("store (turn log, conversations)", ("chatapp/store/",)),
    ("upstream call (requests, urllib3)", ("requests/", "urllib3/")),
    ("upstream decoding", ("chatapp/upstream/",)),
    ("redis-py", ("redis/",)),
    ("other chatapp", ("chatapp/",)),
    ("Flask/Werkzeug request handling", ("flask/", "werkzeug/")),
    (
        "socket reads and writes (syscalls)",
        ("gevent/_socketcommon.py", "gevent/_socket3.py", "socket.py", "ssl.py"),
    ),
    ("gunicorn, gevent", ("gunicorn/", "gevent/")),
)
KERNEL = "kernel: socket calls, wake-ups (system time)"
IDLE = "Hub.run (gevent/hub.py"  # alone on a stack: the hub waiting in epoll
_FRAME = re.compile(r"^(.*) \((.*):\d+\)$")


def piece_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        found = _FRAME.match(frame)
        where = found.group(2) if found else frame
        for piece, patterns in PIECES:
            if any(p in where for p in patterns):
                return piece
    return "other (interpreter, stdlib)"


def read_samples(path: Path) -> Counter[str]:
    """Count samples per piece in one py-spy raw file."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if len(frames) == 1 and frames[0].startswith(IDLE):
            continue  # py-spy cannot see libev's wait as idle
        counts[piece_of(frames)] += int(count)
    return counts


def summarise(
    path: Path, turns: int, user_per_unit: float | None, sys_per_unit: float | None
) -> dict[str, Any]:
    """Microseconds of CPU per turn (or token), per piece, from one profile."""
    counts = read_samples(path)
    total = sum(counts.values())
    per: dict[str, float | None] = {
        piece: count / total * user_per_unit * 1e6 if total and user_per_unit else None
        for piece, count in counts.most_common()
    }
    if sys_per_unit is not None:
        per[KERNEL] = sys_per_unit * 1e6
    return {"path": str(path), "samples": total, "turns": turns, "us_per_unit": per}


def report_lines(result: dict[str, Any]) -> list[str]:
    """A table per profiled loop: the pieces, µs per turn, share."""
    lines: list[str] = []
    for label, row in result.get("rows", {}).items():
        for loop in ("fixed", "marginal"):
            for summary in row.get(loop, {}).get("profile", {}).values():
                per = summary["us_per_unit"]
                total = sum(v for v in per.values() if v)
                if not total:
                    continue
                rows = [
                    [piece, f"{us:,.0f}", f"{us / total:.0%}"]
                    for piece, us in per.items()
                    if us
                ]
                rows.append(["all sampled", f"{total:,.0f}", "100%"])
                unit = "token" if loop == "marginal" else "turn"
                what = "200-token" if loop == "marginal" else "1-token"
                lines += [
                    "",
                    f"### Profile: {label}, {what} answers, "
                    f"{summary['turns']} turns, {summary['samples']} samples",
                    "",
                    markdown_table(["piece", f"µs CPU per {unit}", "share"], rows),
                ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--user-ms", type=float, required=True, help="per turn")
    parser.add_argument("--sys-ms", type=float, default=None, help="per turn")
    args = parser.parse_args()
    sys_s = None if args.sys_ms is None else args.sys_ms / 1000
    summary = summarise(args.path, args.turns, args.user_ms / 1000, sys_s)
    fake = {"rows": {args.path.name: {"fixed": {"profile": {"x": summary}}}}}
    print("\n".join(report_lines(fake)))


if __name__ == "__main__":
    main()
