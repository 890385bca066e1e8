"""The bot check's core: challenges signed, expiring, and each solution used once."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest
from altcha import ChallengeV1
from altcha import PayloadV1
from altcha import solve_challenge_v1

from chatapp import botcheck
from chatapp.botcheck import CHALLENGE_SECONDS
from chatapp.botcheck import SPENT_MARGIN
from chatapp.botcheck import BotCheck
from chatapp.botcheck import SolutionRefused
from chatapp.store.challenges import MemorySpentSolutions

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def solve(challenge: dict[str, Any]) -> str:
    made = ChallengeV1(
        challenge["algorithm"],
        challenge["challenge"],
        challenge["maxnumber"],
        challenge["salt"],
        challenge["signature"],
    )
    found = solve_challenge_v1(made)
    assert found is not None
    return PayloadV1(
        made.algorithm, made.challenge, found.number, made.salt, made.signature
    ).to_base64()


def check(*keys: str, clock: Clock | None = None) -> BotCheck:
    spent = MemorySpentSolutions(clock=clock or Clock())
    return BotCheck(keys or ("k1",), spent, max_number=2000, clock=clock or Clock())


def test_a_solution_is_accepted_once() -> None:
    bot = check()
    payload = solve(bot.challenge())
    bot.verify(payload)
    with pytest.raises(SolutionRefused, match="used already"):
        bot.verify(payload)


def test_a_challenge_expires() -> None:
    clock = Clock()
    bot = check(clock=clock)
    payload = solve(bot.challenge())
    clock.now += CHALLENGE_SECONDS + 1
    with pytest.raises(SolutionRefused, match="expired"):
        bot.verify(payload)


def test_rotated_keys_still_verify_and_unknown_keys_do_not() -> None:
    old = solve(check("old").challenge())
    check("new", "old").verify(old)
    with pytest.raises(SolutionRefused):
        check("new").verify(solve(check("old").challenge()))


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "",
        "x" * 5000,
        base64.b64encode(b"123").decode(),
        base64.b64encode(json.dumps({"algorithm": "SHA-256"}).encode()).decode(),
        base64.b64encode(
            json.dumps(
                {
                    "algorithm": "SHA-256",
                    "challenge": 1,
                    "number": 1,
                    "salt": [],
                    "signature": "s",
                }
            ).encode()
        ).decode(),
    ],
)
def test_malformed_payloads_are_refused_not_crashes(payload: str | None) -> None:
    with pytest.raises(SolutionRefused):
        check().verify(payload)


def test_a_salt_without_expiry_is_refused() -> None:
    bot = check()
    made = bot.challenge()
    data = json.loads(base64.b64decode(solve(made)))
    data["salt"] = data["salt"].split("?")[0]
    with pytest.raises(SolutionRefused):
        bot.verify(base64.b64encode(json.dumps(data).encode()).decode())


def test_a_spent_solution_is_remembered_a_minute_past_its_expiry() -> None:
    """Clock skew: a host whose clock runs behind still refuses the replay.

    Host A took the solution at the last moment; host B's clock is 30 s
    behind, so to B the challenge is still valid for 30 s more. The record of
    the spent solution (shared through Redis) must still be there.
    """
    recorded: list[float] = []

    class Spent(MemorySpentSolutions):
        def claim(self, key: str, ttl: float) -> bool:
            recorded.append(ttl)
            return super().claim(key, ttl)

    clock = Clock()
    bot = BotCheck(("k1",), Spent(clock=clock), max_number=2000, clock=clock)
    payload = solve(bot.challenge())
    clock.now += CHALLENGE_SECONDS - 1  # one second before it expires
    bot.verify(payload)
    assert recorded == [pytest.approx(1 + SPENT_MARGIN)]
    assert SPENT_MARGIN >= 60


def test_the_signature_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(botcheck.hmac, "compare_digest", spy)
    bot = check()
    payload = solve(bot.challenge())
    bot.verify(payload)
    signature = json.loads(base64.b64decode(payload))["signature"].encode()
    assert any(signature in pair for pair in compared)


def test_non_ascii_fields_are_refused_not_crashes() -> None:
    bot = check()
    data = json.loads(base64.b64decode(solve(bot.challenge())))
    data["signature"] = "é" * 64
    forged = base64.b64encode(json.dumps(data).encode()).decode()
    with pytest.raises(SolutionRefused):
        bot.verify(forged)
