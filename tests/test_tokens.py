"""Page and stream tokens, key rotation, and WordPress SSO."""

from __future__ import annotations

import time

import jwt
import pytest
from itsdangerous import URLSafeTimedSerializer

from chatapp.tokens import HUMAN_SECONDS
from chatapp.tokens import PAGE_SALT
from chatapp.tokens import STREAM_SALT
from chatapp.tokens import VISITOR_MAX_AGE
from chatapp.tokens import WP_MAX_AGE
from chatapp.tokens import Identity
from chatapp.tokens import SSOExpired
from chatapp.tokens import SSOInvalid
from chatapp.tokens import TokenExpired
from chatapp.tokens import TokenInvalid
from chatapp.tokens import TokenSigner
from chatapp.tokens import verify_wp_sso
from chatapp.turns.start import idempotency_scope


def signer(*keys: str, page_ttl: int = 60) -> TokenSigner:
    return TokenSigner(keys or ("k1",), page_ttl=page_ttl, stream_ttl=60)


def test_page_token_round_trips_identity() -> None:
    identity = Identity("visitor1", "42", "https://blog.example", "Ada")
    assert signer().read_page_token(signer().page_token(identity)) == identity


def test_the_human_stamp_round_trips_and_old_tokens_read_unstamped() -> None:
    s = signer()
    stamped = s.stamp_human(Identity("visitor1"), "ip:203.0.113.7")
    assert stamped.human is not None
    assert s.read_page_token(s.page_token(stamped)) == stamped
    assert s.read_page_token(s.page_token(Identity("visitor1"))).human is None
    # Tokens minted before the stamp existed: without "h", or with the old
    # unbound flag `"h": 1`, which vouched for any client forever.
    for old in ({"v": "visitor1"}, {"v": "visitor1", "h": 1}):
        assert s.read_page_token(s._page.dumps(old)) == Identity("visitor1")


def test_the_stamp_holds_no_address_in_clear() -> None:
    s = signer()
    token = s.page_token(s.stamp_human(Identity("visitor1"), "ip:203.0.113.7"))
    assert "203.0.113.7" not in str(s._page.loads(token))


def test_the_stamp_vouches_only_for_the_client_that_solved() -> None:
    s = signer()
    stamped = s.stamp_human(Identity("visitor1"), "ip:203.0.113.7")
    assert s.is_human(stamped, "ip:203.0.113.7")
    assert not s.is_human(stamped, "ip:203.0.113.8")
    assert not s.is_human(Identity("visitor1"), "ip:203.0.113.7")


def test_the_stamp_lapses_after_human_seconds_renewals_included() -> None:
    clock = Clock()
    s = TokenSigner(("k1",), page_ttl=60, stream_ttl=60, clock=clock)
    stamped = s.stamp_human(Identity("visitor1"), "ip:203.0.113.7")
    clock.now += HUMAN_SECONDS - 1
    renewed = s.read_page_token(s.page_token(stamped))
    assert s.is_human(renewed, "ip:203.0.113.7")
    clock.now += 1
    assert not s.is_human(s.read_page_token(s.page_token(renewed)), "ip:203.0.113.7")


def test_a_stamp_made_with_a_rotated_key_still_vouches() -> None:
    old = signer("old-key")
    stamped = old.stamp_human(Identity("visitor1"), "ip:203.0.113.7")
    rotated = signer("new-key", "old-key")
    read = rotated.read_page_token(old.page_token(stamped))
    assert rotated.is_human(read, "ip:203.0.113.7")
    assert not signer("new-key").is_human(stamped, "ip:203.0.113.7")


def test_stream_token_is_not_a_page_token_and_vice_versa() -> None:
    s = signer()
    stream = s.stream_token("turn-1")
    page = s.page_token(Identity("v"))
    with pytest.raises(TokenInvalid):
        s.read_page_token(stream)
    with pytest.raises(TokenInvalid):
        s.check_stream_token(page, "turn-1")


def test_stream_token_is_bound_to_its_turn() -> None:
    s = signer()
    s.check_stream_token(s.stream_token("turn-1"), "turn-1")
    with pytest.raises(TokenInvalid):
        s.check_stream_token(s.stream_token("turn-1"), "turn-2")


def test_rotation_first_key_signs_all_verify() -> None:
    old = signer("old")
    rotated = signer("new", "old")
    token = old.page_token(Identity("v"))
    assert rotated.read_page_token(token).visitor == "v"
    fresh = rotated.page_token(Identity("w"))
    with pytest.raises(TokenInvalid):
        old.read_page_token(fresh)
    assert signer("new").read_page_token(fresh).visitor == "w"


def test_tokens_are_itsdangerous_defaults_both_ways() -> None:
    # Tokens signed before the signers named their digest still verify, and
    # the other way round: the same HMAC-SHA1 signatures.
    stock_page = URLSafeTimedSerializer("k1", salt=PAGE_SALT)
    stock_stream = URLSafeTimedSerializer("k1", salt=STREAM_SALT)
    ours = signer("k1")
    old = stock_page.dumps({"v": "visitor1", "o": int(time.time())})
    assert ours.read_page_token(old).visitor == "visitor1"
    assert ours.check_stream_token(stock_stream.dumps({"t": "turn1"}), "turn1") >= 0
    assert stock_page.loads(ours.page_token(Identity("v2")))["v"] == "v2"
    assert stock_stream.loads(ours.stream_token("turn2")) == {"t": "turn2"}


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "x" * 5000])
def test_malformed_tokens_are_invalid(token: str | None) -> None:
    with pytest.raises(TokenInvalid):
        signer().read_page_token(token)


def test_expired_page_token_is_expired_but_refreshable_within_grace() -> None:
    token = signer().page_token(Identity("old"))
    # A max-age below zero makes a token minted now look long expired.
    later = TokenSigner(("k1",), page_ttl=-60, stream_ttl=60)
    with pytest.raises(TokenExpired):
        later.read_page_token(token)
    assert later.read_page_token(token, grace=7 * 24 * 3600).visitor == "old"


SECRET = "wp-shared-secret-of-at-least-32-bytes!"


def sso(**overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "7",
        "name": "Ada",
        "site": "https://blog.example",
        "iat": now,
        "exp": now + 300,
        "aud": "chatapp",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_sso_accepts_a_good_token() -> None:
    user = verify_wp_sso(sso(), SECRET)
    assert (user.sub, user.name, user.site) == ("7", "Ada", "https://blog.example")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(sso(aud="other"), id="wrong-audience"),
        pytest.param(sso(sub=7), id="numeric-sub"),
        pytest.param(sso(sub=None), id="no-sub"),
        pytest.param(sso(exp=int(time.time()) + 3600), id="too-long-lived"),
        pytest.param(
            jwt.encode(
                {"sub": "7"}, "another-secret-of-at-least-32-bytes", algorithm="HS256"
            ),
            id="bad-sig",
        ),
        pytest.param(
            jwt.encode(
                {"sub": "7", "aud": "chatapp", "iat": 1, "exp": 2},
                SECRET * 2,
                algorithm="HS512",
            ),
            id="hs512",
        ),
        pytest.param(sso() + "x", id="tampered"),
        pytest.param("not.a.jwt", id="garbage"),
    ],
)
def test_sso_refuses_bad_tokens(token: str) -> None:
    with pytest.raises(SSOInvalid):
        verify_wp_sso(token, SECRET)


def test_sso_refuses_alg_none() -> None:
    now = int(time.time())
    token = jwt.encode(
        {"sub": "7", "aud": "chatapp", "iat": now, "exp": now + 60},
        key=None,
        algorithm="none",
    )
    with pytest.raises(SSOInvalid):
        verify_wp_sso(token, SECRET)


def test_sso_expired_is_told_apart() -> None:
    past = int(time.time()) - 3600
    with pytest.raises(SSOExpired):
        verify_wp_sso(sso(iat=past, exp=past + 300), SECRET)


def test_sso_tolerates_small_clock_skew() -> None:
    now = int(time.time())
    assert verify_wp_sso(sso(iat=now + 10, exp=now + 310), SECRET).sub == "7"


# -- an identity's absolute lifetime, across renewals ----------------------------------

DAY = 24 * 3600


class Clock:
    """A settable clock for the signer."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_renewal_keeps_the_first_issue_time() -> None:
    clock = Clock()
    s = TokenSigner(("k1",), page_ttl=60, stream_ttl=60, clock=clock)
    first = s.read_page_token(s.page_token(Identity("v")))
    clock.now += 3 * DAY
    renewed = s.read_page_token(s.page_token(first))
    assert renewed.issued == first.issued == int(first.issued or 0)


@pytest.mark.parametrize(
    ("identity", "max_age"),
    [
        (Identity("v"), VISITOR_MAX_AGE),
        (Identity("v", "42", "https://blog.example"), WP_MAX_AGE),
    ],
)
def test_an_identity_ends_at_its_absolute_lifetime_however_renewed(
    identity: Identity, max_age: int
) -> None:
    clock = Clock()
    s = TokenSigner(("k1",), page_ttl=60, stream_ttl=60, clock=clock)
    token = s.page_token(identity)
    start = clock.now
    # Renewed nine times within its lifetime, as an open tab would.
    for _ in range(9):
        clock.now += max_age / 10
        token = s.page_token(s.read_page_token(token, grace=7 * DAY))
    clock.now = start + max_age + 2
    with pytest.raises(TokenExpired):
        s.read_page_token(token, grace=7 * DAY)


def test_wordpress_identities_live_shorter_than_visitors() -> None:
    assert WP_MAX_AGE <= 24 * 3600 < VISITOR_MAX_AGE


def test_a_token_without_issue_time_counts_from_its_signature() -> None:
    s = signer()
    legacy = s._page.dumps({"v": "old-visitor"})
    identity = s.read_page_token(legacy)
    assert identity.issued is not None
    assert abs(identity.issued - time.time()) < 5


# -- owners and idempotency scopes cannot collide --------------------------------------


def test_owner_strings_of_different_users_never_collide() -> None:
    a = Identity("v", wp_user="b:c", wp_site="a")
    b = Identity("v", wp_user="c", wp_site="a:b")
    c = Identity("v", wp_user="x|y", wp_site="s")
    assert len({a.owner, b.owner, c.owner}) == 3
    assert "|" not in c.owner


def test_idempotency_scopes_never_collide() -> None:
    a = Identity("v", wp_user="u|k", wp_site="s")
    b = Identity("v", wp_user="u", wp_site="s")
    assert idempotency_scope(a, "key") != idempotency_scope(b, "k|key")


# -- SSO times that are no numbers ----------------------------------------------------


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        (float("nan"), float("nan")),
        (float("nan"), None),
        (None, float("inf")),
        (float("-inf"), None),
    ],
)
def test_sso_refuses_non_finite_times(iat: float | None, exp: float | None) -> None:
    now = int(time.time())
    token = sso(iat=now if iat is None else iat, exp=now + 60 if exp is None else exp)
    with pytest.raises(SSOInvalid):
        verify_wp_sso(token, SECRET)
