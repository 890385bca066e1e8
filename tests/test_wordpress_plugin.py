"""Pin the WordPress plugin: valid PHP, a passing PHP suite, tokens that verify here."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from chatapp.tokens import SSOExpired
from chatapp.tokens import SSOInvalid
from chatapp.tokens import verify_wp_sso

pytestmark = pytest.mark.php

ROOT = Path(__file__).resolve().parent.parent
WORDPRESS = ROOT / "wordpress"
PLUGIN = WORDPRESS / "chatapp-embed"
MINT = WORDPRESS / "tests" / "mint_token.php"
PHP_FILES = sorted(WORDPRESS.rglob("*.php"))
SECRET = "cross-language-secret-0123456789abcdef"
CLAIMS = {"sub", "name", "site", "iat", "exp", "aud"}


def php() -> str:
    """The php binary; a missing one fails the test, because CI installs php-cli."""
    path = shutil.which("php")
    if path is None:
        pytest.fail("php is not installed (apt-get install php-cli)")
    return path


def run_php(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [php(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mint(
    sub: str = "42",
    name: str = "Ada Lovelace",
    site: str = "https://wp.example",
    ttl: int | None = None,
) -> str:
    """A token minted by the plugin's own PHP code."""
    args = [MINT, SECRET, sub, name, site]
    if ttl is not None:
        args.append(str(ttl))
    result = run_php(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.strip()


def decode_wp_sso(token: str, secret: str = SECRET) -> dict[str, object]:
    """Check a token against the SPEC's SSO rules with PyJWT alone."""
    claims = jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        audience="chatapp",
        options={"require": sorted(CLAIMS)},
    )
    if claims["exp"] - claims["iat"] > 600:
        raise jwt.InvalidTokenError("exp is more than 10 minutes after iat")
    return claims


def b64url(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unverified(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def resign(token: str, **changes: object) -> str:
    """The token's claims with changes, signed properly with the shared secret."""
    return jwt.encode({**unverified(token), **changes}, SECRET, algorithm="HS256")


def test_plugin_ships_its_php_files() -> None:
    names = {path.relative_to(WORDPRESS).as_posix() for path in PHP_FILES}
    assert {
        "chatapp-embed/chatapp-embed.php",
        "chatapp-embed/includes/jwt.php",
        "chatapp-embed/uninstall.php",
        "tests/stubs.php",
        "tests/run.php",
        "tests/mint_token.php",
    } <= names


@pytest.mark.parametrize(
    "path", PHP_FILES, ids=[p.relative_to(WORDPRESS).as_posix() for p in PHP_FILES]
)
def test_php_file_lints(path: Path) -> None:
    result = run_php("-l", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_plugin_header_declares_the_contract() -> None:
    header = (PLUGIN / "chatapp-embed.php").read_text(encoding="utf-8")[:1200]
    for line in (
        "Plugin Name:",
        "Version:           1.0.0",
        "Requires at least: 6.0",
        "Requires PHP:      7.4",
        "License:           GPL-2.0-or-later",
        "Text Domain:       chatapp-embed",
    ):
        assert line in header


def test_php_suite_passes_without_notices() -> None:
    result = run_php(WORDPRESS / "tests" / "run.php")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.strip().splitlines()
    assert lines, output
    match = re.fullmatch(r"(\d+) passed, 0 failed", lines[-1])
    assert match is not None, output
    assert int(match.group(1)) >= 20


def test_minted_token_verifies_with_exactly_the_contract_claims() -> None:
    before = int(time.time())
    token = mint(sub="42", name="Ada Lovelace", site="https://wp.example")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert "=" not in token
    claims = decode_wp_sso(token)
    assert set(claims) == CLAIMS
    assert claims["sub"] == "42"
    assert claims["name"] == "Ada Lovelace"
    assert claims["site"] == "https://wp.example"
    assert claims["aud"] == "chatapp"
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == 300


def test_minted_token_carries_unicode_and_quotes_in_the_name() -> None:
    name = 'Zoë "Q" O\'Brien <b>&'
    assert decode_wp_sso(mint(name=name))["name"] == name


def forge_claims(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url({**unverified(token), 'sub': '1'})}.{signature}"


def forge_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{header}.{payload}.{flipped}"


def forge_alg_none(token: str) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(unverified(token))}."


def forge_audience(token: str) -> str:
    return resign(token, aud="someone-else")


def forge_lifetime(token: str) -> str:
    iat = unverified(token)["iat"]
    assert isinstance(iat, int)
    return resign(token, exp=iat + 601)


FORGERIES = [
    (forge_claims, jwt.InvalidSignatureError),
    (forge_signature, jwt.InvalidSignatureError),
    (forge_alg_none, jwt.InvalidAlgorithmError),
    (forge_audience, jwt.InvalidAudienceError),
    (forge_lifetime, jwt.InvalidTokenError),
]
FORGERY_IDS = [forge.__name__ for forge, _ in FORGERIES]


@pytest.mark.parametrize(("forge", "error"), FORGERIES, ids=FORGERY_IDS)
def test_forged_token_is_refused(
    forge: Callable[[str], str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        decode_wp_sso(forge(mint()))


@pytest.mark.parametrize("forge", [forge for forge, _ in FORGERIES], ids=FORGERY_IDS)
def test_server_refuses_forged_token(forge: Callable[[str], str]) -> None:
    with pytest.raises(SSOInvalid):
        verify_wp_sso(forge(mint()), SECRET)


def test_wrong_secret_is_refused() -> None:
    token = mint()
    with pytest.raises(jwt.InvalidSignatureError):
        decode_wp_sso(token, secret=SECRET + "x")
    with pytest.raises(SSOInvalid):
        verify_wp_sso(token, SECRET + "x")


def test_plugin_token_with_a_long_lifetime_is_refused() -> None:
    token = mint(ttl=601)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="chatapp")
    assert claims["exp"] - claims["iat"] == 601
    with pytest.raises(jwt.InvalidTokenError, match="10 minutes"):
        decode_wp_sso(token)
    with pytest.raises(SSOInvalid):
        verify_wp_sso(token, SECRET)


def test_expired_plugin_token_is_refused() -> None:
    with pytest.raises(jwt.ExpiredSignatureError):
        decode_wp_sso(mint(ttl=-60))


def test_server_accepts_the_plugin_token() -> None:
    user = verify_wp_sso(mint(sub="7", name="Grace"), SECRET)
    assert (user.sub, user.name, user.site) == ("7", "Grace", "https://wp.example")


def test_server_treats_an_old_plugin_token_as_expired() -> None:
    token = mint()
    iat = unverified(token)["iat"]
    assert isinstance(iat, int)
    with pytest.raises(SSOExpired):
        verify_wp_sso(token, SECRET, now=iat + 3600)
