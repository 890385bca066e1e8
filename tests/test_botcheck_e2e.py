"""The bot check (CHATAPP_BOT_CHECK=pow) over HTTP, through real gunicorn.

Solutions are made the way the page makes them: fetch `GET /api/challenge`,
find the number whose hash is the challenge, send ALTCHA's base64 payload.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import requests
from altcha import ChallengeV1
from altcha import PayloadV1
from altcha import solve_challenge_v1

from chatapp.botcheck import BotCheck
from chatapp.config import SETTINGS as SETTINGS_DEFAULTS
from chatapp.store.challenges import MemorySpentSolutions
from chatapp.tokens import HUMAN_SECONDS
from chatapp.tokens import Identity
from chatapp.tokens import TokenSigner
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory

pytestmark = pytest.mark.e2e

SECRET_KEY = "bot-check-test-secret-key-0123456789"
WP_SECRET = "wordpress-shared-secret-for-the-tests-0123456789"
SETTINGS = {
    "CHATAPP_BOT_CHECK": "pow",
    "CHATAPP_SECRET_KEY": SECRET_KEY,
    "CHATAPP_WP_SHARED_SECRET": WP_SECRET,
}


def solve(challenge: dict[str, Any]) -> str:
    """Solve a challenge as the page does and return the payload it sends."""
    made = ChallengeV1(
        challenge["algorithm"],
        challenge["challenge"],
        challenge["maxnumber"],
        challenge["salt"],
        challenge["signature"],
    )
    solution = solve_challenge_v1(made)
    assert solution is not None
    payload = PayloadV1(
        made.algorithm, made.challenge, solution.number, made.salt, made.signature
    )
    return payload.to_base64()


def fresh_solution(service: Service) -> str:
    response = requests.get(service.url + "/api/challenge", timeout=10)
    assert response.status_code == 200, response.text
    return solve(response.json())


def tampered(payload: str, **changes: Any) -> str:
    data = json.loads(base64.b64decode(payload))
    data.update(changes)
    return base64.b64encode(json.dumps(data).encode()).decode()


def error_code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> Service:
    return module_services(**SETTINGS)


def test_challenge_is_signed_expiring_and_never_cached(service: Service) -> None:
    response = requests.get(service.url + "/api/challenge", timeout=10)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    challenge = response.json()
    assert set(challenge) == {
        "algorithm",
        "challenge",
        "maxnumber",
        "salt",
        "signature",
    }
    assert challenge["algorithm"] == "SHA-256"
    assert len(challenge["challenge"]) == 64
    assert challenge["maxnumber"] == SETTINGS_DEFAULTS["BOT_CHECK_MAX_NUMBER"][2]
    expires = int(challenge["salt"].split("expires=")[1].rstrip("&"))
    assert time.time() + 60 < expires <= time.time() + 301


def test_challenge_is_404_while_the_check_is_off(
    module_services: ServiceFactory,
) -> None:
    plain = module_services()
    response = requests.get(plain.url + "/api/challenge", timeout=10)

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_unverified_visitor_without_a_solution_is_asked_for_one(
    service: Service,
) -> None:
    response = ChatClient(service.url).post(message="hello")

    assert response.status_code == 403
    assert error_code(response) == "challenge_required"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("why", "spoil"),
    [
        ("not base64", lambda p: "%%%not-base64%%%"),
        ("not JSON", lambda p: base64.b64encode(b"{nope").decode()),
        ("a JSON list", lambda p: base64.b64encode(b"[1, 2]").decode()),
        ("a wrong number", lambda p: tampered(p, number=json_number(p) + 1)),
        ("a number as text", lambda p: tampered(p, number=str(json_number(p)))),
        ("a forged signature", lambda p: tampered(p, signature="00" * 32)),
        ("another algorithm", lambda p: tampered(p, algorithm="SHA-1")),
        (
            "a salt with a later expiry",
            lambda p: tampered(p, salt="abc?expires=99999999999&"),
        ),
    ],
)
def test_invalid_solutions_are_refused(service: Service, why: str, spoil: Any) -> None:
    payload = spoil(fresh_solution(service))
    response = ChatClient(service.url).post(message="hello", altcha=payload)

    assert response.status_code == 403, why
    assert error_code(response) == "challenge_required", why


def json_number(payload: str) -> int:
    return int(json.loads(base64.b64decode(payload))["number"])


def test_expired_solution_is_refused(service: Service) -> None:
    # A challenge this service signed (same secret key), expired a second ago.
    check = BotCheck((SECRET_KEY,), MemorySpentSolutions(), max_number=1000)
    payload = solve(check.challenge(expires_at=time.time() - 1))

    response = ChatClient(service.url).post(message="hello", altcha=payload)

    assert response.status_code == 403
    assert error_code(response) == "challenge_required"


def test_a_challenge_signed_with_another_key_is_refused(service: Service) -> None:
    check = BotCheck(("another-key",), MemorySpentSolutions(), max_number=1000)
    payload = solve(check.challenge())

    response = ChatClient(service.url).post(message="hello", altcha=payload)

    assert response.status_code == 403


def test_valid_solution_verifies_and_the_renewed_token_needs_no_other(
    service: Service,
) -> None:
    client = ChatClient(service.url)
    first = client.post(message="hello", altcha=fresh_solution(service))

    assert first.status_code == 201, first.text
    renewed = first.json()["token"]
    assert renewed != client.token

    client.token = renewed
    for message in ("second", "third"):
        again = client.post(message=message)
        assert again.status_code == 201, again.text
        assert "token" not in again.json()


def test_solution_in_the_header_verifies_too(service: Service) -> None:
    client = ChatClient(service.url)
    response = client.post(
        message="hello", headers={"X-Altcha": fresh_solution(service)}
    )

    assert response.status_code == 201, response.text
    assert "token" in response.json()


def test_a_refreshed_verified_token_stays_verified(service: Service) -> None:
    client = ChatClient(service.url)
    first = client.post(message="hello", altcha=fresh_solution(service))
    refreshed = requests.post(
        service.url + "/api/token", json={"token": first.json()["token"]}, timeout=10
    )
    client.token = refreshed.json()["token"]

    assert client.post(message="again").status_code == 201


def test_a_replayed_solution_is_refused(service: Service) -> None:
    payload = fresh_solution(service)
    first = ChatClient(service.url).post(message="hello", altcha=payload)
    replay = ChatClient(service.url).post(message="hello", altcha=payload)

    assert first.status_code == 201, first.text
    assert replay.status_code == 403
    assert error_code(replay) == "challenge_required"


@pytest.mark.redis
def test_a_replayed_solution_is_refused_by_every_worker(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    shared = service_factory(
        **SETTINGS, CHATAPP_REDIS_URL=redis_server.url, CHATAPP_WORKERS="2"
    )
    payload = fresh_solution(shared)
    answers = [
        ChatClient(shared.url).post(message="hello", altcha=payload).status_code
        for _ in range(4)
    ]

    assert answers == [201, 403, 403, 403]
    assert redis_server.command("KEYS", "chatapp:altcha:*").strip()


def test_an_idempotent_retry_gets_the_same_turn_and_token(service: Service) -> None:
    client = ChatClient(service.url)
    payload = fresh_solution(service)
    headers = {"Idempotency-Key": "retry-of-the-first-message"}
    first = client.post(message="hello", altcha=payload, headers=dict(headers))
    retry = client.post(message="hello", altcha=payload, headers=dict(headers))

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert "token" in retry.json()


def test_wordpress_users_are_never_asked(service: Service) -> None:
    now = int(time.time())
    sso = jwt.encode(
        {
            "sub": "42",
            "name": "Ada",
            "site": "https://blog.example",
            "iat": now,
            "exp": now + 300,
            "aud": "chatapp",
        },
        WP_SECRET,
        algorithm="HS256",
    )
    client = ChatClient(service.url, token=None)
    client.token = client.page_token(f"/embed?sso={sso}")

    response = client.post(message="hello")

    assert response.status_code == 201, response.text
    assert "token" not in response.json()


# -- what one solved check buys: one address, one hour ---------------------------------


def verified_from(service: Service, source: str) -> ChatClient:
    """A visitor on `source` that solved the check; its token is the stamped one."""
    client = ChatClient(service.url, source=source)
    first = client.post(message="hello", altcha=fresh_solution(service))
    assert first.status_code == 201, first.text
    client.token = first.json()["token"]
    return client


def test_a_verified_token_vouches_only_for_the_address_that_solved(
    service: Service,
) -> None:
    solver = verified_from(service, "127.0.0.21")
    elsewhere = [
        ChatClient(service.url, token=solver.token, source=f"127.0.0.{n}")
        for n in range(22, 27)
    ]

    answers = [c.post(message="hi").status_code for c in elsewhere]
    home = solver.post(message="hi")

    assert answers == [403] * len(elsewhere)
    assert error_code(elsewhere[0].post(message="hi")) == "challenge_required"
    assert home.status_code == 201, home.text
    # A new solution from the new address vouches for that one from then on.
    moved = elsewhere[0]
    again = moved.post(message="hi", altcha=fresh_solution(service))
    assert again.status_code == 201, again.text
    moved.token = again.json()["token"]
    assert moved.post(message="hi").status_code == 201


def stamped_token(solved_ago: float, client_key: str = "ip:127.0.0.31") -> str:
    """A page token this service signs, stamped `solved_ago` seconds ago."""
    then = TokenSigner(
        (SECRET_KEY,),
        page_ttl=7200,
        stream_ttl=60,
        clock=lambda: time.time() - solved_ago,
    )
    return then.page_token(then.stamp_human(Identity("visitor-31"), client_key))


def test_a_verified_token_lapses_after_an_hour(service: Service) -> None:
    fresh = ChatClient(service.url, token=stamped_token(60), source="127.0.0.31")
    lapsed = ChatClient(
        service.url, token=stamped_token(HUMAN_SECONDS + 5), source="127.0.0.31"
    )

    assert fresh.post(message="hi").status_code == 201
    refused = lapsed.post(message="hi")
    assert refused.status_code == 403
    assert error_code(refused) == "challenge_required"
    # Renewing the token does not renew the stamp.
    renewed = requests.post(
        service.url + "/api/token", json={"token": lapsed.token}, timeout=10
    )
    lapsed.token = renewed.json()["token"]
    assert lapsed.post(message="hi").status_code == 403


def test_a_token_verified_before_stamps_existed_is_asked_again(
    service: Service,
) -> None:
    """Old tokens said only `"h": 1`, valid from any address for 30 days."""
    signer = TokenSigner((SECRET_KEY,), page_ttl=7200, stream_ttl=60)
    old = signer._page.dumps({"v": "visitor-41", "o": int(time.time()), "h": 1})
    response = ChatClient(service.url, token=old).post(message="hi")
    assert response.status_code == 403
    assert error_code(response) == "challenge_required"
