"""A real WordPress for the tests: Debian's package, its own MariaDB, `php -S`.

Nothing outside a temporary directory is touched: MariaDB gets a fresh data
directory and a unix socket (no TCP at all), WordPress a tree of its own
whose PHP entry points are copies (Debian's wp-config.php would read
/etc/wordpress) and whose core directories are links to /usr/share/wordpress.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.conftest import wait_for

WORDPRESS = Path("/usr/share/wordpress")
MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")
PLUGIN = Path(__file__).resolve().parents[1] / "wordpress" / "chatapp-embed"
TOOL = PLUGIN.parent / "tests" / "wp_site.php"
PACKAGES = "apt-get install wordpress mariadb-server php-mysql"

# A throwaway database need not survive a power cut; small logs start faster.
MARIADB_OPTIONS = [
    "--innodb-log-file-size=4M",
    "--innodb-buffer-pool-size=16M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=nosync",
]


def require_packages() -> str:
    """The php binary; missing packages fail the test (test.sh installs them)."""
    php = shutil.which("php")
    missing = [
        str(path)
        for path in (MARIADBD, INSTALL_DB, WORDPRESS / "wp-load.php")
        if not path.exists()
    ]
    if php is None or missing:
        pytest.fail(f"missing {missing or ['php']}: {PACKAGES}")
    result = subprocess.run(
        [php, "-r", "echo extension_loaded('mysqli') ? 'yes' : 'no';"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.stdout != "yes":
        pytest.fail(f"PHP has no mysqli: {PACKAGES}")
    return php


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Stop a process we started, by its PID: `sig`, then SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class MariaDB:
    """mariadb-install-db + mariadbd on a unix socket in a temp dir, no TCP."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir()
        self.data = folder / "data"
        self.socket = folder / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        # mariadbd refuses to run as root unless told to: it runs as `mysql`.
        self.user = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("mysql")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            self.user = ["--user=mysql"]

    def start(self) -> None:
        made = subprocess.run(
            [
                str(INSTALL_DB),
                "--no-defaults",  # never /etc/mysql
                f"--datadir={self.data}",
                *self.user,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *MARIADB_OPTIONS,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"mariadb-install-db:\n{made.stdout}{made.stderr}")
        self.proc = subprocess.Popen(
            [
                str(MARIADBD),
                "--no-defaults",
                f"--datadir={self.data}",
                *self.user,
                f"--socket={self.socket}",
                "--skip-networking",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                f"--log-error={self.dir / 'error.log'}",
                "--skip-log-bin",
                *MARIADB_OPTIONS,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ready, 60, "mariadbd to accept connections", every=0.05)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "error.log").read_text(errors="replace")
            raise RuntimeError(f"mariadbd exited early:\n{log}")
        return self.socket.is_socket()

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)  # a clean shutdown
        self.proc = None


WP_CONFIG = """<?php
// The end-to-end test's own configuration: nothing is read from /etc/wordpress.
define( 'DB_NAME', 'wordpress' );
define( 'DB_USER', 'root' );
define( 'DB_PASSWORD', '' );
define( 'DB_HOST', {db_host} );
define( 'DB_CHARSET', 'utf8mb4' );
define( 'DB_COLLATE', '' );
{keys}
$table_prefix = 'wp_';
define( 'WP_HOME', {home} );
define( 'WP_SITEURL', {home} );
// Only the site itself and chatapp, both on 127.0.0.1, are ever reached.
define( 'WP_HTTP_BLOCK_EXTERNAL', true );
define( 'AUTOMATIC_UPDATER_DISABLED', true );
define( 'WP_DEBUG', true );
define( 'WP_DEBUG_DISPLAY', false );
define( 'WP_DEBUG_LOG', {debug_log} );
define( 'CHATAPP_WP_SHARED_SECRET', {secret} );
if ( ! defined( 'ABSPATH' ) ) {{
	define( 'ABSPATH', __DIR__ . '/' );
}}
require_once ABSPATH . 'wp-settings.php';
"""
KEYS = (
    "AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY "
    "AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT"
).split()


def php_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class WordPressSite:
    """Debian's WordPress with the repository's plugin, served by `php -S`."""

    def __init__(self, secret: str) -> None:
        self.php = require_packages()
        self.secret = secret
        self.dir = Path(tempfile.mkdtemp(prefix="chatapp-wp-"))
        self.dir.chmod(0o711)  # MariaDB's user reaches its own folder inside
        self.root = self.dir / "site"
        self.debug_log = self.dir / "debug.log"
        self.port = free_port()
        self.db = MariaDB(self.dir / "db")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, chatapp_url: str) -> None:
        self.db.start()
        subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                f"--socket={self.db.socket}",
                "--user=root",
                "--execute=CREATE DATABASE wordpress",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._build_tree()
        self._log = open(self.dir / "php-server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.php, "-S", f"127.0.0.1:{self.port}", "-t", str(self.root)],
            cwd=self.root,
            # Two workers: WP-Cron's own jobs (site health, HTTPS detection)
            # request the site itself while the cron run holds a worker.
            # The workers are the server's children, in a process group of
            # its own, stopped with it (stop()).
            env={**os.environ, "PHP_CLI_SERVER_WORKERS": "2"},
            start_new_session=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._serving, 30, f"php -S on {self.url}", every=0.05)
        installed = self.run("install", chatapp_url)
        assert installed["active"] is True, installed

    def _build_tree(self) -> None:
        """Copies of the entry points (their __DIR__ is ABSPATH), links to the rest."""
        self.root.mkdir()
        for entry in WORDPRESS.iterdir():
            if entry.name in {"wp-config.php", "wp-content", ".htaccess"}:
                continue
            if entry.is_file():
                shutil.copy(entry, self.root / entry.name)
            else:
                (self.root / entry.name).symlink_to(entry)
        content = self.root / "wp-content"
        (content / "plugins").mkdir(parents=True)
        (content / "themes").symlink_to(WORDPRESS / "wp-content" / "themes")
        (content / "plugins" / "chatapp-embed").symlink_to(PLUGIN)
        keys = "\n".join(
            f"define( '{key}', {php_string(secrets.token_hex(32))} );" for key in KEYS
        )
        (self.root / "wp-config.php").write_text(
            WP_CONFIG.format(
                db_host=php_string(f"localhost:{self.db.socket}"),
                keys=keys,
                home=php_string(self.url),
                debug_log=php_string(str(self.debug_log)),
                secret=php_string(self.secret),
            ),
            encoding="utf-8",
        )

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"php -S exited early:\n{self.server_log()}")
        try:
            requests.get(self.url + "/wp-includes/version.php", timeout=1)
        except requests.RequestException:
            return False
        return True

    def run(self, command: str, *args: str) -> Any:
        """One command of wordpress/tests/wp_site.php against this site."""
        result = subprocess.run(
            [self.php, str(TOOL), str(self.root), command, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and result.stderr == "", (
            f"wp_site.php {command}: exit {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
        return json.loads(result.stdout)

    def server_log(self) -> str:
        path = self.dir / "php-server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def plugin_notices(self) -> list[str]:
        """Lines of WordPress's debug log that name the plugin."""
        if not self.debug_log.exists():
            return []
        lines = self.debug_log.read_text(errors="replace").splitlines()
        return [line for line in lines if "chatapp-embed" in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The server's group: its workers do not stop with it.
            os.killpg(self.proc.pid, signal.SIGTERM)
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.db.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
