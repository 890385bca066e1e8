"""A few connections to one SQLite file, each call run off the gevent hub.

sqlite3 never yields to gevent: a search holds the worker's hub for its
whole CPU time (5 to 7 ms at 10,000 passages), and every other stream of the
worker stalls meanwhile. sqlite3 releases the GIL while a statement steps, so
under gevent each call runs in a thread of the hub's threadpool and the hub
goes on serving. A call has a connection to itself for its duration, so
sqlite3's check_same_thread is off and no connection is ever used by two
threads at once. Unpatched (the command line, tests) a call runs in the
caller's thread, as a plain function call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic
from typing import TypeVar

import gevent
from gevent import monkey

T = TypeVar("T")
R = TypeVar("R")

# Calls (so connections, and threads under gevent) of one process at once.
# Readers never wait for each other in WAL mode, but every thread's Python
# side wants the GIL the hub needs: with 4 searches at once, a timer greenlet
# woke 0.13 ms late (p50) with 2 threads and 1.2 ms with 4, searches equally
# fast (bench/knowledge_hub.py, 2 cores). gunicorn runs a worker per core.
CONNECTIONS = 2


class Pool(Generic[T]):
    """Up to `size` connections made by `connect`, lent to one call at a time."""

    def __init__(
        self,
        connect: Callable[[], T],
        close: Callable[[T], None],
        size: int = CONNECTIONS,
    ) -> None:
        self._connect = connect
        self._close = close
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[T] = []
        self._slots = threading.BoundedSemaphore(size)
        self._pid = os.getpid()
        self._generation = 0  # a connection lent before close() is not kept

    def run(self, fn: Callable[[T], R]) -> R:
        """Call `fn` with a connection of its own; off the hub under gevent.

        A new connection is made in the thread that first uses it. One whose
        call was interrupted (a gevent.Timeout, a killed greenlet) while its
        thread still runs is closed when the thread is done, never lent again.
        """
        self._after_fork()
        with self._slots:
            held, generation = self._checkout()

            def call() -> R:
                if not held:
                    held.append(self._connect())
                return fn(held[0])

            if not monkey.is_module_patched("threading"):
                try:
                    return call()
                finally:
                    self._checkin(held, generation)
            task = gevent.get_hub().threadpool.spawn(call)
            try:
                result: R = task.get()
                return result
            finally:
                if task.ready():
                    self._checkin(held, generation)
                else:  # interrupted while its thread still uses the connection
                    task.rawlink(lambda _: self._discard(held))

    def close(self) -> None:
        """Close the idle connections; a lent one is closed when it comes back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn in idle:
            self._close(conn)

    def _checkout(self) -> tuple[list[T], int]:
        with self._lock:
            return ([self._idle.pop()] if self._idle else []), self._generation

    def _checkin(self, held: list[T], generation: int) -> None:
        if not held:
            return
        with self._lock:
            if generation == self._generation and len(self._idle) < self._size:
                self._idle.append(held[0])
                return
        self._close(held[0])

    def _discard(self, held: list[T]) -> None:
        if held:
            self._close(held[0])

    def _after_fork(self) -> None:
        # A forked child must not use its parent's connections (SQLite's
        # rule); they are left to the parent, not closed.
        if self._pid != os.getpid():
            with self._lock:
                self._idle = []
                self._slots = threading.BoundedSemaphore(self._size)
                self._pid = os.getpid()
                self._generation += 1
