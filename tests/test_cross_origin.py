"""Cross-origin use: CORS for CHATAPP_API_ORIGINS, the Origin check, /widget.js."""

from __future__ import annotations

from typing import Any

import pytest

from chatapp import create_app
from chatapp.web.cors import normalise_origin

SHOP = "https://shop.example"
STRANGER = "https://stranger.example"
OWN = "http://localhost"  # Flask's test client talks to http://localhost/
EXPOSED = "Location, Retry-After, X-Request-ID, RateLimit, RateLimit-Policy"


@pytest.fixture
def client() -> Any:
    return create_app({"API_ORIGINS": (SHOP, "http://127.0.0.1:8080")}).test_client()


def _visitor_token(client: Any) -> str:
    response = client.post("/api/token", headers={"Origin": OWN})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["token"])


def _assert_cors(response: Any, origin: str) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert "Origin" in response.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in response.headers


def _assert_no_cors(response: Any) -> None:
    assert not [h for h in response.headers.keys() if h.startswith("Access-Control")]


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("https://Shop.Example", "https://shop.example"),
        ("https://shop.example:443", "https://shop.example"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:80", "http://[::1]"),
        ("null", None),
        ("file://", None),
        ("https://x:notaport", None),
    ],
)
def test_origins_are_compared_in_one_spelling(raw: str, origin: str | None) -> None:
    assert normalise_origin(raw) == origin


def test_a_listed_origin_gets_a_first_token_and_cors_headers(client: Any) -> None:
    response = client.post("/api/token", headers={"Origin": SHOP})

    assert response.status_code == 200
    _assert_cors(response, SHOP)
    token = response.get_json()["token"]
    # The new visitor's token renews like any page token.
    renewed = client.post("/api/token", json={"token": token}, headers={"Origin": SHOP})
    assert renewed.status_code == 200


def test_errors_to_a_listed_origin_carry_cors_headers(client: Any) -> None:
    response = client.post(
        "/api/chat", json={"message": "hi", "token": "forged"}, headers={"Origin": SHOP}
    )

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "invalid_token"
    _assert_cors(response, SHOP)
    missing = client.get("/api/conversations/nope-nope", headers={"Origin": SHOP})
    assert missing.status_code == 404
    _assert_cors(missing, SHOP)


def test_a_preflight_from_a_listed_origin_is_answered(client: Any) -> None:
    response = client.options(
        "/api/chat",
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )

    assert response.status_code == 204
    _assert_cors(response, SHOP)
    methods = response.headers["Access-Control-Allow-Methods"]
    assert methods == "GET, POST, DELETE, OPTIONS"
    allowed = {
        h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert allowed == {
        "Content-Type",
        "X-Chat-Token",
        "Idempotency-Key",
        "Last-Event-ID",
        "X-Altcha",
    }
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/api/chat", {"json": {"message": "hi"}}),
        ("/api/chat", {"data": {"message": "hi", "token": "x"}}),  # a plain form
        ("/api/token", {}),
        ("/api/chat/abcdefgh/cancel", {}),
    ],
)
def test_a_post_from_another_origin_is_refused(
    client: Any, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.post(path, headers={"Origin": STRANGER}, **kwargs)

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "origin_not_allowed"
    assert response.headers["Cache-Control"] == "no-store"
    _assert_no_cors(response)


def test_another_origin_gets_no_cors_headers(client: Any) -> None:
    preflight = client.options(
        "/api/chat",
        headers={"Origin": STRANGER, "Access-Control-Request-Method": "POST"},
    )
    _assert_no_cors(preflight)
    read = client.get("/api/conversations/nope-nope", headers={"Origin": STRANGER})
    assert read.status_code == 404
    _assert_no_cors(read)


def test_own_origin_needs_no_listing(client: Any) -> None:
    token = _visitor_token(client)
    response = client.post(
        "/api/chat", json={"message": "", "token": token}, headers={"Origin": OWN}
    )
    # Past the Origin check, refused for its empty message as before.
    assert response.get_json()["error"]["code"] == "invalid_input"
    _assert_no_cors(response)


def test_requests_without_origin_behave_as_before(client: Any) -> None:
    response = client.post("/api/chat", json={"message": "hi", "token": "forged"})
    assert response.get_json()["error"]["code"] == "invalid_token"
    _assert_no_cors(response)
    # Minting a token is for pages; a server with no Origin renews only.
    mint = client.post("/api/token")
    assert mint.status_code == 403
    assert mint.get_json()["error"]["code"] == "origin_not_allowed"


def test_pages_are_not_touched(client: Any) -> None:
    response = client.get("/", headers={"Origin": SHOP})
    assert response.status_code == 200
    _assert_no_cors(response)


@pytest.mark.parametrize(
    ("hops", "status"),
    [(1, 200), (0, 403)],
)
def test_own_origin_behind_a_trusted_proxy(hops: int, status: int) -> None:
    client = create_app({"TRUSTED_PROXY_HOPS": hops}).test_client()
    response = client.post(
        "/api/token",
        headers={
            "Origin": "https://chat.example.com",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "chat.example.com",
        },
    )
    assert response.status_code == status


def test_widget_script_is_cacheable_and_revalidated() -> None:
    client = create_app().test_client()
    first = client.get("/widget.js")
    first.close()  # the file it streamed

    assert first.status_code == 200
    assert first.mimetype == "text/javascript"
    assert "max-age=" in first.headers["Cache-Control"]
    etag = first.headers["ETag"]
    again = client.get("/widget.js", headers={"If-None-Match": etag})
    again.close()
    assert again.status_code == 304
    assert again.data == b""
