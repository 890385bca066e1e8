"""Under gevent a knowledge search runs off the hub: the worker's streams go on.

The probe runs in a gevent-patched interpreter, as a gunicorn worker does.
Its search is held inside SQLite (a progress handler waits on a native lock)
until a ticking greenlet has ticked and lets it go: when the search ran on
the hub, the greenlet could not tick until the hold timed out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

HELD_INDEX = """
from gevent import monkey; monkey.patch_all()
import json, sys
import gevent
from chatapp.knowledge.index import Passage
from chatapp.knowledge.sqlite_index import SqliteIndex

TICKS = 3
allocate_lock = monkey.get_original("_thread", "allocate_lock")


class HeldIndex(SqliteIndex):
    # A slow search, on cue: held inside SQLite until the gate opens.
    def __init__(self, path):
        super().__init__(path)
        self.gate = allocate_lock()
        self.gate.acquire()
        self.armed = False

    def _connect(self):
        link = super()._connect()
        link.conn.set_progress_handler(self._hold, 20)
        return link

    def _hold(self):
        if self.armed:
            self.armed = False
            self.gate.acquire(timeout=5)  # a hub held here never opens it
        return 0


index = HeldIndex(sys.argv[1])
url = "https://s.test/zebras"
index.replace(url, "Zebras", [Passage(url, "Zebras", "", "Zebras have stripes.")])
events = []
"""

TICKING = """


def ticker():
    for _ in range(TICKS):
        gevent.sleep(0.001)
        events.append("tick")
    index.gate.release()


index.armed = True
ticking = gevent.spawn(ticker)
found = index.search("zebra stripes")
events.append("searched")
ticking.join()
index.close()
print(json.dumps({"events": events, "found": [p.url for p in found]}))
"""

INTERRUPTED = """
index.armed = True
with gevent.Timeout(0.05, False):
    index.search("zebra")
    events.append("not interrupted")
index.gate.release()  # the abandoned search's thread finishes
found = index.search("zebra stripes")
index.close()
print(json.dumps({"events": events, "found": [p.url for p in found]}))
"""


def probe(tmp_path: Path, script: str) -> dict[str, list[str]]:
    """Run the held index and `script` in a gevent-patched interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", HELD_INDEX + script, str(tmp_path / "k.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen: dict[str, list[str]] = json.loads(result.stdout)
    return seen


def test_a_slow_search_leaves_other_greenlets_running(tmp_path: Path) -> None:
    seen = probe(tmp_path, TICKING)
    assert seen["found"] == ["https://s.test/zebras"]
    assert seen["events"] == ["tick", "tick", "tick", "searched"]


def test_a_search_given_up_mid_way_leaves_the_index_usable(tmp_path: Path) -> None:
    seen = probe(tmp_path, INTERRUPTED)
    assert seen == {"events": [], "found": ["https://s.test/zebras"]}
