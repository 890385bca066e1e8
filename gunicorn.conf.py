"""gunicorn settings for chatapp. Never imports the app: workers load it."""

import logging
import os
import resource
import secrets
import shutil
import sys
import tempfile

from gunicorn import glogging

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
# On SIGTERM a worker lets running turns finish for CHATAPP_DRAIN_SECONDS,
# ends the rest with error + done, and exits; gunicorn waits a little longer.
try:
    _drain = float(os.environ.get("CHATAPP_DRAIN_SECONDS") or 30)
except ValueError:
    _drain = 30.0  # the app refuses the setting with a clear line at start-up
graceful_timeout = max(1, int(_drain) + 10)
keepalive = 5
loglevel = os.environ.get("CHATAPP_LOG_LEVEL", "info").strip().lower() or "info"
if loglevel not in ("debug", "info", "warning", "error", "critical"):
    sys.exit(
        f"chatapp: CHATAPP_LOG_LEVEL={loglevel!r} is invalid: "
        "must be one of debug, info, warning, error, critical"
    )


class AccessFields(logging.Filter):
    """Turn gunicorn's access-log atoms into JSON fields; no address, no query."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, dict):
            record.method = atoms["m"]
            record.path = atoms["U"]
            record.status = int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"]
            record.bytes = atoms["B"]
            record.duration_ms = round(atoms["D"] / 1000, 1)
            record.request_id = atoms["{x-request-id}o"]
            record.client = atoms["{chatapp.client}e"]
            record.msg, record.args = "http.access", ()
        return True


# One JSON object per line on stderr for gunicorn's error log, its access log
# (on when CHATAPP_ACCESS_LOG is set: "-" for stderr, or a file) and the app's
# own lines, which propagate to the root logger. Same shape as chatapp.web.logs.
_access_log = os.environ.get("CHATAPP_ACCESS_LOG", "").strip()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {
                "levelname": "level",
                "name": "logger",
                "message": "event",
            },
            "timestamp": "time",
        }
    },
    "filters": {"access_fields": {"()": AccessFields}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["access_fields"],
            "stream": "ext://sys.stderr",
        }
        if _access_log in ("", "-")
        else {
            "class": "logging.handlers.WatchedFileHandler",
            "formatter": "json",
            "filters": ["access_fields"],
            "filename": _access_log,
        },
    },
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {
            "level": loglevel.upper(),
            "handlers": ["stderr"],
            "propagate": False,
        },
        "gunicorn.access": {
            "level": "INFO" if _access_log else "CRITICAL",
            "handlers": ["access"],
            "propagate": False,
        },
    },
}
# The handlers above replace gunicorn's plain-text ones.
accesslog = None


class Logger(glogging.Logger):
    """gunicorn's logger, which builds no access line while the access log is off.

    With a logconfig_dict gunicorn builds every request's access atoms (about
    40 us) and hands them to the gunicorn.access logger, which drops them at
    CRITICAL unless CHATAPP_ACCESS_LOG is set.
    """

    def _compute_access_log_enabled(self) -> bool:
        return bool(_access_log) and bool(super()._compute_access_log_enabled())


logger_class = Logger
errorlog = "-"
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

# Metrics: every worker writes its own files here and /metrics adds them up
# (prometheus_client's multiprocess mode). A fresh folder per master start.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chatapp-metrics-")
    _own_metrics_dir = True
else:
    _own_metrics_dir = False


def post_worker_init(worker):  # noqa: ANN001, ANN201 -- gunicorn's hook
    """Leave what the worker loaded out of the cyclic collector's passes.

    The app and its libraries (about 120,000 objects) live as long as the
    worker, yet every full collection walked them all again: about 100 us
    of CPU per turn. gc.freeze() moves them to the permanent generation;
    what turns allocate is collected as before.
    """
    import gc

    gc.freeze()


def child_exit(server, worker):  # noqa: ANN001, ANN201 -- gunicorn's hook
    """Drop a finished worker's live gauges from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201 -- gunicorn's hook
    """Remove the metrics folder this master made."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
