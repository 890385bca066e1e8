"""The WSGI entry point: gevent patches first, then the one module-level app."""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import sys  # noqa: E402

from chatapp import create_app  # noqa: E402
from chatapp.errors import ConfigError  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

try:
    app = create_app()
except ConfigError as exc:
    print(f"chatapp: {exc}", file=sys.stderr, flush=True)
    # 3 is gunicorn's "worker failed to boot": the master stops instead of
    # respawning the worker forever.
    sys.exit(3)
