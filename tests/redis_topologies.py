"""Real Sentinel sets and Redis Clusters on 127.0.0.1, started by the tests.

Every process is a plain `redis-server` (sentinels too, with `--sentinel`)
on a free port, with its files in a temporary directory; `stop()` kills the
ones this helper started, by their Popen handles.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.conftest import redis_server_args
from tests.conftest import wait_for

SERVICE = "chatapp"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install redis-server)")
    return path


def cli(port: int, *args: str, check: bool = True) -> str:
    """Run one command with redis-cli against 127.0.0.1:port."""
    done = subprocess.run(
        [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout


class _Processes:
    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *args: str) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), *args, *redis_server_args(port, workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        return cli(port, "PING", check=False).strip() == "PONG"
    except subprocess.TimeoutExpired:
        return False


class SentinelSet:
    """One primary, one replica and three sentinels watching them."""

    def __init__(self) -> None:
        self._p = _Processes("chatapp-sentinel-")
        self.primary = free_port()
        self.replica = free_port()
        self.sentinels = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    @property
    def data_ports(self) -> list[int]:
        return [self.primary, self.replica]

    def start(self) -> SentinelSet:
        self._p.spawn(self.primary)
        self._p.spawn(self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        for port in self.sentinels:
            conf = self._p.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._p.spawn(port, str(conf), "--sentinel")
        for port in [*self.data_ports, *self.sentinels]:
            wait_for(lambda port=port: _answers(port), 10, f"redis on {port}")
        wait_for(self._settled, 20, "the sentinels to find each other", every=0.2)
        return self

    def _settled(self) -> bool:
        for port in self.sentinels:
            info = _fields(cli(port, "SENTINEL", "MASTER", SERVICE, check=False))
            if info.get("num-other-sentinels") != "2" or info.get("num-slaves") != "1":
                return False
        sync = _fields(cli(self.replica, "INFO", "replication"), sep=":")
        return sync.get("master_link_status") == "up"

    def current_primary(self) -> int | None:
        """The port the sentinels name as primary now."""
        out = cli(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        lines = out.split()
        return int(lines[1]) if len(lines) == 2 else None

    def kill_primary(self) -> int:
        port = self.current_primary()
        assert port is not None
        self._p.kill(port)
        return port

    def stop(self) -> None:
        self._p.stop()


class RedisClusterSet:
    """A Redis Cluster of three primaries, each with one replica."""

    def __init__(self, replicas: int = 1) -> None:
        self._p = _Processes("chatapp-cluster-")
        self.replicas = replicas
        self.ports = [free_port() for _ in range(3 * (1 + replicas))]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])
        return f"redis+cluster://{hosts}"

    def start(self) -> RedisClusterSet:
        for port in self.ports:
            self._p.spawn(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "1000",
                # port + 10000, the default bus port, may be past 65535.
                "--cluster-port",
                str(free_port()),
            )
        for port in self.ports:
            wait_for(lambda port=port: _answers(port), 10, f"redis on {port}")
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in self.ports],
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_for(self._settled, 30, "the cluster to settle", every=0.2)
        return self

    def _settled(self) -> bool:
        for port in self.ports:
            info = _fields(cli(port, "CLUSTER", "INFO", check=False), sep=":")
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_known_nodes", 0)) != len(self.ports):
                return False
        for port in self.replica_ports():
            sync = _fields(cli(port, "INFO", "replication"), sep=":")
            if sync.get("master_link_status") != "up":
                return False
        return True

    def nodes(self) -> list[tuple[int, str, str]]:
        """(port, role, node id) of every live node, as one of them sees it."""
        alive = [p for p in self.ports if p in self._p.procs]
        out = cli(alive[0], "CLUSTER", "NODES")
        found = []
        for line in out.splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            flags = fields[2]
            if "fail" in flags and "fail?" not in flags:
                continue
            role = "primary" if "master" in flags else "replica"
            found.append((port, role, fields[0]))
        return found

    def primary_ports(self) -> list[int]:
        return sorted(p for p, role, _ in self.nodes() if role == "primary")

    def replica_ports(self) -> list[int]:
        return sorted(p for p, role, _ in self.nodes() if role == "replica")

    def kill(self, port: int) -> None:
        self._p.kill(port)

    def keys(self, pattern: str = "*") -> dict[str, int]:
        """Every key on every live primary, with the port that holds it."""
        found: dict[str, int] = {}
        for port in self.primary_ports():
            out = cli(port, "--scan", "--pattern", pattern)
            for key in out.splitlines():
                if key:
                    found[key] = port
        return found

    def slot_of(self, key: str) -> int:
        return int(cli(self.ports[0], "CLUSTER", "KEYSLOT", key).strip())

    def stop(self) -> None:
        self._p.stop()


def _fields(text: str, sep: str = "\n") -> dict[str, str]:
    """Read `name value` line pairs (Sentinel) or `name:value` lines (INFO)."""
    if sep == "\n":
        lines = [line.strip() for line in text.splitlines()]
        return dict(zip(lines[::2], lines[1::2], strict=False))
    out = {}
    for line in text.splitlines():
        name, found, value = line.strip().partition(":")
        if found:
            out[name] = value
    return out


def wait_until(predicate: object, timeout: float, every: float = 0.05) -> float:
    """Seconds until `predicate()` held; raise if it never did."""
    started = time.monotonic()
    wait_for(predicate, timeout, "a topology change", every=every)
    return time.monotonic() - started
