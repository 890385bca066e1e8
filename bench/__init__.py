"""chatapp's benchmark: a fake upstream, the service under gunicorn, a load client.

Run it with ``.venv/bin/python -m bench.run`` (``--help`` for the flags). Every
process it starts listens on 127.0.0.1 only and is stopped by its pid when the
run ends, fails or is interrupted.
"""
