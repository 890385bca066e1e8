"""The WSGI entry point: gevent patches first, then the one module-level app."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

from chatapp import create_app  # noqa: E402
from chatapp.errors import ConfigError  # noqa: E402
from chatapp.logs import configure_logging  # noqa: E402

# Under gunicorn its logconfig_dict has set up the same JSON lines already.
configure_logging(os.environ.get("CHATAPP_LOG_LEVEL", "info"))

try:
    app = create_app()
except ConfigError as exc:
    print(f"chatapp: {exc}", file=sys.stderr, flush=True)
    # 3 is gunicorn's "worker failed to boot": the master stops instead of
    # respawning the worker forever.
    sys.exit(3)
