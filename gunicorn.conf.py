"""gunicorn settings for chatapp. Never imports the app: workers load it."""

import os
import resource
import secrets
import sys

redis_url = os.environ.get("CHATAPP_REDIS_URL", "").strip()

bind = os.environ.get("CHATAPP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("CHATAPP_WORKERS") or (2 if redis_url else 1))
if workers > 1 and not redis_url:
    sys.exit(
        "chatapp: CHATAPP_WORKERS > 1 needs CHATAPP_REDIS_URL: without Redis, "
        "turns and limits live in one process"
    )

worker_class = "gevent"
# Each open stream holds a connection for minutes; size for thousands.
worker_connections = int(os.environ.get("CHATAPP_WORKER_CONNECTIONS", "6000"))
preload_app = False
# gevent workers notify the arbiter from their own loop, so a long stream
# never looks like a hung worker.
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("CHATAPP_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("CHATAPP_LOG_LEVEL", "info")
# One file descriptor per client and per upstream connection.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

if not os.environ.get("CHATAPP_SECRET_KEY", "").strip():
    # Forked workers inherit this, so they all sign with the same throw-away
    # key; the app warns that it is ephemeral.
    os.environ.setdefault("CHATAPP_EPHEMERAL_SECRET_KEY", secrets.token_urlsafe(32))

# gunicornc's control socket sits at one fixed path per user, so two
# instances on one host would fight over it; chatapp does not use it.
control_socket_disable = True
