"""The fixed facts of one turn, as every turn log stores them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnInfo:
    """The fixed facts of one turn."""

    id: str
    owner: str
    conversation_id: str
    created_at: float
