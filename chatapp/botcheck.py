"""The bot check: ALTCHA proof-of-work challenges, signed, expiring, used once.

A challenge is `sha256(salt + n)` for a secret n below `maxnumber`; its salt
carries the expiry and an HMAC signs it, so any worker or host holding the
secret key verifies it without shared state. A solution (ALTCHA's base64
JSON payload) is accepted once: its challenge is recorded as spent until it
expires, plus SPENT_MARGIN against clocks that differ between hosts. The
HMAC key is derived from CHATAPP_SECRET_KEY for this purpose alone; keys
rotate like the tokens' (the first signs, all verify). The signature is
compared in constant time. This module knows no Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from typing import Any
from typing import Final

from altcha import ChallengeOptionsV1
from altcha import create_challenge_v1
from altcha import extract_params_v1

from chatapp.errors import SolutionRefused as SolutionRefused
from chatapp.store.challenges import SpentSolutions

ALGORITHM: Final = "SHA-256"
# Long enough to solve while typing a first message, short enough that a
# stock of solved challenges goes stale.
CHALLENGE_SECONDS = 300
# A payload is about 300 characters; refuse to decode anything much larger.
MAX_PAYLOAD_CHARS = 2048
# A spent solution is remembered this long past its challenge's expiry, so a
# host whose clock runs behind the one that took it still refuses a replay.
SPENT_MARGIN = 60
_PURPOSE = b"chatapp.altcha.v1"
_FIELDS = ("algorithm", "challenge", "number", "salt", "signature")


def hmac_key(secret: str) -> str:
    """Derive the key that signs challenges from one secret key."""
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).hexdigest()


class BotCheck:
    """Make challenges and accept each correct solution once."""

    def __init__(
        self,
        secret_keys: tuple[str, ...],
        spent: SpentSolutions,
        *,
        max_number: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = [hmac_key(k) for k in secret_keys]
        self._spent = spent
        self.max_number = max_number
        self._clock = clock

    def challenge(self, *, expires_at: float | None = None) -> dict[str, Any]:
        """Make a signed challenge, by default expiring in CHALLENGE_SECONDS."""
        if expires_at is None:
            expires_at = self._clock() + CHALLENGE_SECONDS
        made = create_challenge_v1(
            ChallengeOptionsV1(
                algorithm=ALGORITHM,
                max_number=self.max_number,
                hmac_key=self._keys[0],
                expires=datetime.fromtimestamp(expires_at, UTC),
            )
        )
        return {
            "algorithm": made.algorithm,
            "challenge": made.challenge,
            "maxnumber": made.max_number,
            "salt": made.salt,
            "signature": made.signature,
        }

    def verify(self, payload: str | None) -> None:
        """Accept a solution once; raise SolutionRefused otherwise."""
        solution = _decode(payload)
        expires = _expiry(solution)
        now = self._clock()
        if expires <= now:
            raise SolutionRefused("the challenge has expired")
        if not _genuine(solution, self._keys):
            raise SolutionRefused("wrong solution or signature")
        if not self._spent.claim(solution["challenge"], expires - now + SPENT_MARGIN):
            raise SolutionRefused("the solution was used already")


def _genuine(solution: dict[str, Any], keys: list[str]) -> bool:
    """Check the number against the challenge, and the challenge's signature.

    As ALTCHA's own verifier does (the salt is hashed as sent, ending in its
    splice guard "&"), but comparing in constant time.
    """
    salt = solution["salt"]
    if not salt.endswith("&"):
        salt += "&"
    challenge = hashlib.sha256(f"{salt}{solution['number']}".encode()).hexdigest()
    if not hmac.compare_digest(challenge.encode(), solution["challenge"].encode()):
        return False
    signature = solution["signature"].encode()
    found = False
    for key in keys:  # every key, so the time says nothing about which one
        expected = hmac.new(key.encode(), challenge.encode(), hashlib.sha256)
        found |= hmac.compare_digest(expected.hexdigest().encode(), signature)
    return found


def _decode(payload: str | None) -> dict[str, Any]:
    """Read ALTCHA's base64 JSON payload, with every field of the right type."""
    if not payload or len(payload) > MAX_PAYLOAD_CHARS:
        raise SolutionRefused("no solution")
    try:
        data = json.loads(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise SolutionRefused("the solution is not base64 JSON") from exc
    if not isinstance(data, dict):
        raise SolutionRefused("the solution is not an object")
    number = data.get("number")
    if (
        data.get("algorithm") != ALGORITHM
        or not all(
            isinstance(data.get(k), str) and data[k].isascii()
            for k in ("challenge", "salt", "signature")
        )
        or not isinstance(number, int)
        or isinstance(number, bool)
        or number < 0
    ):
        raise SolutionRefused("the solution is malformed")
    return {k: data[k] for k in _FIELDS}


def _expiry(solution: dict[str, Any]) -> float:
    """Read the expiry our challenges carry in their (signed) salt."""
    found = extract_params_v1(solution).get("expires")  # type: ignore[arg-type]
    try:
        return float(int(found[0])) if found else 0.0
    except ValueError:
        return 0.0
