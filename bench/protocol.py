"""What the load client and the fake upstream agree on: markers and token text.

A turn's user message carries a marker that tells the fake upstream how to
pace that one answer, and names the request so that the upstream can report
when its connection opened and closed::

    [bench rid=c1-42 ttft=200 gap=20 n=50 track=1]

`ttft=-1` stalls before the first token until the client goes away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_CHARS = 4
MARKER = re.compile(
    rb"\[bench rid=([A-Za-z0-9_.-]{1,64}) ttft=(-?\d+) gap=(\d+) n=(\d+) track=([01])\]"
)


@dataclass(frozen=True, slots=True)
class Pace:
    """How one answer streams: time to first token, gap, token count."""

    ttft_ms: int
    gap_ms: int
    tokens: int

    @property
    def silent(self) -> bool:
        return self.ttft_ms < 0


def marker(rid: str, pace: Pace, *, track: bool = False) -> str:
    """Build the marker a user message carries."""
    return (
        f"[bench rid={rid} ttft={pace.ttft_ms} gap={pace.gap_ms} "
        f"n={pace.tokens} track={int(track)}]"
    )


def parse_marker(body: bytes) -> tuple[str, Pace, bool] | None:
    """Find the marker in a request body; None when there is none."""
    found = MARKER.search(body)
    if found is None:
        return None
    rid, ttft, gap, tokens, track = found.groups()
    pace = Pace(int(ttft), int(gap), int(tokens))
    return rid.decode(), pace, track == b"1"


def token_text(index: int) -> str:
    """Return the text of token `index`: always TOKEN_CHARS long, easy to check."""
    return f" {index % 1000:03d}"


def answer_text(tokens: int) -> str:
    """Return the full answer of `tokens` tokens."""
    return "".join(token_text(i) for i in range(tokens))
