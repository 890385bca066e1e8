#!/usr/bin/env bash
# Install what the service needs (once) and run it under gunicorn.
# With no settings: the demo provider, memory storage, http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c 'import flask, gunicorn, gevent, flask_limiter, redis, jwt, pythonjsonlogger' 2>/dev/null \
   || [ requirements.txt -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  touch .venv/.installed
fi
exec .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app "$@"
