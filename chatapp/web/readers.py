"""How many event streams one client, and one turn, may hold open at once.

A browser tab reads a turn with one EventSource; a reconnect may overlap the
connection it replaces for a moment, and a second tab or device may follow
the same turn. So a turn gets READERS_PER_TURN readers, and a client (the
limits' client: a WordPress user, else an address or IPv6 /56)
READERS_PER_CLIENT across its turns, on each worker. The client's turns
that generate at once are capped at CHATAPP_MAX_STREAMS_PER_CLIENT (3 by
default), so a dozen readers already cover every tab of a busy household;
32 leaves room for a NAT.

Past a cap the **oldest** reader gives way, never the new one: SPEC forbids a
non-200 on the stream URL (it kills EventSource silently), and the newest
connection is the one a live browser is reading, while the oldest is the
likeliest to be dead or stuck. Giving way closes its socket, which also
wakes a reader blocked on a client that stopped reading; its EventSource, if
any is still there, reconnects with Last-Event-ID and loses nothing.

A client that stops reading (but keeps its connection) is also dropped on
its own, however few readers it holds, once it has taken no bytes for
CHATAPP_STREAM_SEND_TIMEOUT (60 s): either a write to it has been blocked
that long (the kernel's buffers are full), or bytes have been waiting unsent
in its socket that long without the client taking any. The second case is the
usual one: Linux grows a socket's send buffer to megabytes, more than most
answers, so a chat stream's writes rarely block. Until then a stuck reader
holds a parked greenlet, the one chunk it was writing and the kernel's copy
of what it has not taken: its turn's frames are shared.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import gevent
import gevent.monkey

log = logging.getLogger(__name__)

EXTENSION = "chatapp.readers"
READERS_PER_TURN = 4
READERS_PER_CLIENT = 32
SEND_TIMEOUT = 60.0

_PlainSocket: type[socket.socket] = gevent.monkey.get_original("socket", "socket")


@dataclass(eq=False)
class ReaderSlot:
    """One open event stream, and how to end it if it must give way."""

    client: str
    turn_id: str
    close: Callable[[], None] = field(repr=False)
    evicted: bool = False
    # When the chunk being written was handed to the server; None between writes.
    sending_since: float | None = None
    fd: int = -1  # the client's socket, to ask the kernel what it has not taken
    sent: int = 0  # bytes of chunks the server finished writing
    taken: int = 0  # the most the client was seen to have taken (sent - unsent)
    waiting_since: float | None = None  # since when unsent bytes made no progress


class ReaderCaps:
    """This worker's open readers per client and per turn, oldest first."""

    def __init__(
        self,
        per_turn: int = READERS_PER_TURN,
        per_client: int = READERS_PER_CLIENT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.per_turn = per_turn
        self.per_client = per_client
        self.send_timeout = send_timeout
        self._by_turn: dict[str, list[ReaderSlot]] = {}
        self._by_client: dict[str, list[ReaderSlot]] = {}
        self._open = 0  # the slots in _by_turn: admission asks on every turn
        self.evictions = 0
        self.stalls = 0
        self._watch: gevent.Greenlet | None = None

    def acquire(
        self, client: str, turn_id: str, close: Callable[[], None], fd: int = -1
    ) -> ReaderSlot:
        """Admit a reader, making the oldest give way past either cap."""
        slot = ReaderSlot(client, turn_id, close, fd=fd)
        turn = self._by_turn.setdefault(turn_id, [])
        mine = self._by_client.setdefault(client, [])
        turn.append(slot)
        mine.append(slot)
        self._open += 1
        while len(turn) > self.per_turn:
            self._evict(turn[0])
        while len(mine) > self.per_client:
            self._evict(mine[0])
        if self._watch is None or self._watch.dead:
            self._watch = gevent.spawn(self._watch_stalls)
        return slot

    def release(self, slot: ReaderSlot) -> None:
        """Forget a reader that ended; releasing twice is harmless."""
        for index, key in (
            (self._by_turn, slot.turn_id),
            (self._by_client, slot.client),
        ):
            held = index.get(key)
            if held is not None and slot in held:
                held.remove(slot)
                if index is self._by_turn:
                    self._open -= 1
                if not held:
                    del index[key]

    def sending(
        self,
        slot: ReaderSlot,
        chunks: Iterator[bytes],
        on_close: Callable[[], None] | None = None,
        edit: Callable[[bytes], bytes | None] | None = None,
    ) -> Sending:
        """Pass `chunks` on, marking how long the server has been writing each."""
        return Sending(slot, chunks, on_close, edit)

    def drop_stalled(self, now: float) -> int:
        """End every reader whose client has taken no bytes for the send timeout."""
        stalled = [
            slot
            for held in self._by_turn.values()
            for slot in held
            if self._stalled(slot, now)
        ]
        for slot in stalled:
            log.info(
                "reader of turn %s dropped: its client took no bytes for %.0f s",
                slot.turn_id,
                now - (slot.sending_since or slot.waiting_since or now),
            )
            self.stalls += 1
            self._evict(slot)
        return len(stalled)

    def _stalled(self, slot: ReaderSlot, now: float) -> bool:
        if slot.sending_since is not None:
            return now - slot.sending_since >= self.send_timeout
        unsent = unsent_bytes(slot.fd)
        if not unsent:
            slot.waiting_since = None
            return False
        # What the server wrote less what still waits in the kernel is what
        # the client took (give or take HTTP's chunk framing, which only ever
        # makes it look smaller): progress is when that grows.
        taken = slot.sent - unsent
        if slot.waiting_since is None or taken > slot.taken:
            slot.taken = max(taken, slot.taken)
            slot.waiting_since = now
            return False
        return now - slot.waiting_since >= self.send_timeout

    def _watch_stalls(self) -> None:
        # One timer for all readers, while there are any (as the supervisor).
        tick = max(0.05, min(1.0, self.send_timeout / 4))
        while self._by_turn:
            gevent.sleep(tick)
            self.drop_stalled(time.monotonic())

    @property
    def open(self) -> int:
        """Return how many readers are open on this worker, evicted ones not."""
        return self._open

    def open_for_client(self, client: str) -> int:
        """Return how many readers the client holds open on this worker."""
        return len(self._by_client.get(client, ()))

    def open_for_turn(self, turn_id: str) -> int:
        """Return how many readers follow the turn on this worker."""
        return len(self._by_turn.get(turn_id, ()))

    def _evict(self, slot: ReaderSlot) -> None:
        self.release(slot)
        slot.evicted = True
        self.evictions += 1
        slot.close()


def unsent_bytes(fd: int) -> int:
    """Return how many bytes wait in a TCP socket's send queue; 0 if unknown."""
    if fd < 0:
        return 0
    try:
        out = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0  # closed meanwhile, or not a socket the kernel can tell about
    unsent: int = struct.unpack("i", out)[0]
    return unsent


class Sending:
    """A reader's response body: each chunk marked while the server writes it.

    The server asks it for every token's chunk, so it is one object where a
    generator, werkzeug's ClosingIterator and a wrapper were. `edit` is
    applied to each chunk until it returns one (a streamed POST's `start`).
    `close()` closes `chunks`, then calls `on_close`, once, however the
    response ended, even unstarted.
    """

    __slots__ = ("_chunks", "_closed", "_edit", "_last", "_on_close", "_slot")

    def __init__(
        self,
        slot: ReaderSlot,
        chunks: Iterator[bytes],
        on_close: Callable[[], None] | None,
        edit: Callable[[bytes], bytes | None] | None,
    ) -> None:
        self._slot = slot
        self._chunks = chunks
        self._on_close = on_close
        self._edit = edit
        self._closed = False
        self._last = 0  # the size of the chunk being written

    def __iter__(self) -> Sending:
        return self

    def __next__(self) -> bytes:
        slot = self._slot
        slot.sending_since = None  # asked for the next: the last one is written
        slot.sent += self._last
        self._last = 0
        chunk = next(self._chunks)
        edit = self._edit
        if edit is not None:
            edited = edit(chunk)
            if edited is not None:
                chunk, self._edit = edited, None
        slot.sending_since = time.monotonic()
        self._last = len(chunk)
        return chunk

    def close(self) -> None:
        """Close the chunks' source, then run `on_close`, once."""
        if self._closed:
            return
        self._closed = True
        self._slot.sending_since = None
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if self._on_close is not None:
                self._on_close()


def socket_closer(sock: socket.socket | None) -> Callable[[], None]:
    """Return what makes a reader on `sock` give way: shut its socket down.

    The shutdown goes through a plain socket on the same descriptor: gevent's
    own shutdown() cancels a write waiting on it with EBADF ("closed in
    another greenlet"), which gunicorn logs as an error; this way the write
    wakes up to EPIPE, which it takes as a client gone.
    """

    def close() -> None:
        if sock is None:
            return
        try:
            fd = sock.fileno()
            if fd < 0:
                return
            plain = _PlainSocket(fileno=fd)
        except OSError:
            return  # already gone
        try:
            plain.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        finally:
            plain.detach()  # the descriptor stays the server's to close

    return close
