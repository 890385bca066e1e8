#!/usr/bin/env bash
# Install what the tests need (once) and run them all: lint, types, tests.
# The tests start their own redis-server, gunicorn services, fake provider,
# nginx and headless Chromium, all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v php >/dev/null || need+=(php-cli)
# A real WordPress for tests/test_wordpress_e2e.py: Debian's, with its own MariaDB.
[ -e /usr/share/wordpress/wp-load.php ] || need+=(wordpress)
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
php -r 'exit(extension_loaded("mysqli") ? 0 : 1);' 2>/dev/null || need+=(php-mysql)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)  # checks deploy/'s alert rule
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: please install: ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  # Installed packages must not start their services here (nginx would take
  # port 80, redis-server 6379, wordpress's apache2 port 80 too, mariadb its
  # socket): the tests start their own on free ports.
  guard=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if [ requirements-dev.txt -nt .venv/.installed-dev ] || [ requirements.txt -nt .venv/.installed-dev ] \
   || ! .venv/bin/python -c 'import pytest, xdist, playwright, ruff, pythonjsonlogger, jsonschema, schemathesis' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  touch .venv/.installed-dev
fi

.venv/bin/ruff check chatapp tests bench wsgi.py gunicorn.conf.py
.venv/bin/ruff format --check chatapp tests bench wsgi.py gunicorn.conf.py
.venv/bin/mypy

# The suite in two parts, both always run. First every test not marked
# `serial`, whole files spread over CHATAPP_TEST_WORKERS processes
# (pytest-xdist --dist loadfile: a module's shared services stay in one
# process; the tests wait on their servers far more than they compute, so
# more processes than cores pay), in collection order, which starts the
# longest files first, each on a process of its own (tests/conftest.py),
# instead of xdist's biggest-file-first. Then the `serial` ones alone (the
# Redis failovers, timed against a bound): other tests beside them would
# blur their timings. Timing comparisons belong in bench/, so the serial
# part stays short.
# With a selection among the arguments (a path, -k or -m), it is yours: one
# run. Exit code 5 (no test collected) fails like any other.
workers="${CHATAPP_TEST_WORKERS:-3}"
for arg in "$@"; do
  if [[ -e "${arg%%::*}" || "$arg" == -k* || "$arg" == -m* ]]; then
    exec .venv/bin/pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
  fi
done
# Each part ends with its 15 slowest steps, so a CI log shows where the time goes.
status=0
.venv/bin/pytest -n "$workers" --dist loadfile --no-loadscope-reorder --durations=15 \
  -m "not serial" "$@" || status=$?
.venv/bin/pytest -p no:xdist --durations=15 -m serial "$@" || status=$((status ? status : $?))
exit "$status"
