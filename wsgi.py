"""The WSGI entry point: gevent patches first, then the one module-level app."""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

# No spawning tree (parent, locals, the spawner's stack) kept per greenlet:
# chatapp reads none of it, and a turn's producer is spawned from a view
# some twenty frames deep. Spawning it costs 1.8 us instead of 7.6, and
# about 1 KiB less per greenlet alive (one per running turn).
gevent.config.track_greenlet_tree = False

from chatapp import create_app  # noqa: E402
from chatapp.errors import ConfigError  # noqa: E402
from chatapp.web.logs import configure_logging  # noqa: E402

try:
    app = create_app()
except ConfigError as exc:
    print(f"chatapp: {exc}", file=sys.stderr, flush=True)
    # 3 is gunicorn's "worker failed to boot": the master stops instead of
    # respawning the worker forever.
    sys.exit(3)

# At the level CHATAPP_LOG_LEVEL names, validated with the other settings.
# Under gunicorn its logconfig_dict has set up the same JSON lines already.
configure_logging(app.extensions["chatapp"].settings.log_level)


def _drain_on_sigterm() -> None:
    """On SIGTERM, let running turns finish, then end the rest (SPEC: drain).

    gunicorn's own handler still runs: the worker stops accepting at once and
    waits up to its graceful_timeout for open connections.
    """
    previous = signal.getsignal(signal.SIGTERM)
    state = app.extensions["chatapp"]

    def on_sigterm(signum: int, frame: object) -> None:
        # Draining from this very moment: no request served after the signal
        # may start a turn or call this worker ready.
        state.relay.draining = True
        gevent.spawn(state.relay.drain, state.settings.drain_seconds)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


_drain_on_sigterm()
