"""Settings are read once, validated, and fail fast with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatapp.config import SETTINGS
from chatapp.config import load_config
from chatapp.errors import ConfigError


def test_no_settings_means_demo_memory_and_ephemeral_key() -> None:
    config = load_config({})
    assert config.provider == "demo"
    assert config.redis_url == ""
    assert config.ephemeral_key is True
    assert len(config.secret_keys) == 1
    assert config.max_output_tokens == 1024
    assert config.max_message_chars == 4000
    assert config.rate_limits == "10/minute;200/day"


def test_workers_share_the_masters_ephemeral_key() -> None:
    env = {"CHATAPP_EPHEMERAL_SECRET_KEY": "shared"}
    assert load_config(env).secret_keys == ("shared",)


def test_key_list_rotates() -> None:
    config = load_config({"CHATAPP_SECRET_KEY": "new, old ,"})
    assert config.secret_keys == ("new", "old")
    assert config.ephemeral_key is False


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CHATAPP_PROVIDER": "openai"}, "OPENAI_API_KEY"),
        ({"CHATAPP_PROVIDER": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"CHATAPP_PROVIDER": "gemini"}, "CHATAPP_PROVIDER"),
        ({"CHATAPP_ENV": "production"}, "CHATAPP_SECRET_KEY"),
        ({"CHATAPP_MAX_OUTPUT_TOKENS": "lots"}, "CHATAPP_MAX_OUTPUT_TOKENS"),
        ({"CHATAPP_MAX_MESSAGE_CHARS": "0"}, "CHATAPP_MAX_MESSAGE_CHARS"),
        ({"CHATAPP_TEMPERATURE": "3"}, "CHATAPP_TEMPERATURE"),
        ({"CHATAPP_REDIS_URL": "http://x"}, "CHATAPP_REDIS_URL"),
        ({"CHATAPP_RATE_LIMITS": "ten per minute"}, "CHATAPP_RATE_LIMITS"),
        ({"CHATAPP_EMBED_ORIGINS": "https://a.example/path"}, "CHATAPP_EMBED_ORIGINS"),
        ({"CHATAPP_WP_SHARED_SECRET": "short"}, "CHATAPP_WP_SHARED_SECRET"),
        (
            {"CHATAPP_SYSTEM_PROMPT": "@/nonexistent/prompt.txt"},
            "CHATAPP_SYSTEM_PROMPT",
        ),
        ({"CHATAPP_PROVIDER_BASE_URL": "ftp://x"}, "CHATAPP_PROVIDER_BASE_URL"),
        (
            {"CHATAPP_ENV": "production", "CHATAPP_SECRET_KEY": "short-but-set"},
            "at least 32 characters",
        ),
        (
            {"CHATAPP_ENV": "production", "CHATAPP_SECRET_KEY": f"{'k' * 32},old"},
            "CHATAPP_SECRET_KEY",
        ),
        ({"CHATAPP_TRUSTED_PROXIES": "10.0.0.0/33"}, "CHATAPP_TRUSTED_PROXIES"),
        ({"CHATAPP_BODY_READ_SECONDS": "0"}, "CHATAPP_BODY_READ_SECONDS"),
        ({"CHATAPP_MODERATION": "strict"}, "CHATAPP_MODERATION"),
        ({"CHATAPP_MODERATION": "openai"}, "OPENAI_API_KEY"),
        (
            {
                "CHATAPP_MODERATION": "openai",
                "OPENAI_API_KEY": "k",
                "CHATAPP_MODERATION_BASE_URL": "api.openai.com/v1",
            },
            "CHATAPP_MODERATION_BASE_URL",
        ),
        ({"CHATAPP_MODERATION_TIMEOUT": "0"}, "CHATAPP_MODERATION_TIMEOUT"),
        ({"CHATAPP_BOT_CHECK": "captcha"}, "CHATAPP_BOT_CHECK"),
        ({"CHATAPP_BOT_CHECK_MAX_NUMBER": "10"}, "CHATAPP_BOT_CHECK_MAX_NUMBER"),
    ],
)
def test_bad_settings_stop_with_one_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_provider_defaults_and_overrides() -> None:
    config = load_config(
        {
            "CHATAPP_PROVIDER": "openai",
            "OPENAI_API_KEY": "k",
            "CHATAPP_PROVIDER_BASE_URL": "http://127.0.0.1:11434/v1/",
            "CHATAPP_MODEL": "llama3.2",
            "CHATAPP_TEMPERATURE": "0.2",
        }
    )
    assert config.provider_base_url == "http://127.0.0.1:11434/v1"
    assert config.model == "llama3.2"
    assert config.temperature == 0.2
    assert config.provider_api_key == "k"


def test_system_prompt_from_file(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You answer in haiku.\n", encoding="utf-8")
    config = load_config({"CHATAPP_SYSTEM_PROMPT": f"@{prompt}"})
    assert config.system_prompt == "You answer in haiku."


def test_embed_origins_are_parsed() -> None:
    config = load_config(
        {"CHATAPP_EMBED_ORIGINS": "https://blog.example http://127.0.0.1:8080/"}
    )
    assert config.embed_origins == ("https://blog.example", "http://127.0.0.1:8080")


DURATIONS = [
    "CHATAPP_TOKEN_TTL",
    "CHATAPP_STREAM_TTL",
    "CHATAPP_HISTORY_TTL",
    "CHATAPP_HEARTBEAT_SECONDS",
    "CHATAPP_ORPHAN_SECONDS",
    "CHATAPP_UPSTREAM_CONNECT_TIMEOUT",
    "CHATAPP_UPSTREAM_IDLE_TIMEOUT",
    "CHATAPP_UPSTREAM_TOTAL_TIMEOUT",
    "CHATAPP_CACHE_TTL",
]


def _setting(var: str) -> str:
    return next(name for name, spec in SETTINGS.items() if spec[0] == var)


@pytest.mark.parametrize("var", DURATIONS)
@pytest.mark.parametrize(
    ("raw", "seconds"), [("0.25", 0.25), ("1", 1.0), (" 2.5 ", 2.5), ("1e3", 1000.0)]
)
def test_any_positive_number_of_seconds_is_a_duration(
    var: str, raw: str, seconds: float
) -> None:
    # The idle timeout may not exceed the total one: move both together.
    env = {var: raw}
    if "UPSTREAM_IDLE" in var or "UPSTREAM_TOTAL" in var:
        env |= {"CHATAPP_UPSTREAM_IDLE_TIMEOUT": raw}
        env |= {"CHATAPP_UPSTREAM_TOTAL_TIMEOUT": raw}
    assert getattr(load_config(env), _setting(var).lower()) == seconds


@pytest.mark.parametrize("var", DURATIONS)
@pytest.mark.parametrize(
    "raw", ["-1", "-0.5", "ten", "nan", "inf", "-inf", "1e400", "5s", "0x10"]
)
def test_a_duration_that_is_no_positive_number_stops_with_one_line(
    var: str, raw: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({var: raw})
    message = str(info.value)
    assert message.startswith(f"{var}={raw!r} is invalid")
    assert "seconds" in message
    assert "\n" not in message


@pytest.mark.parametrize("var", [v for v in DURATIONS if v != "CHATAPP_CACHE_TTL"])
def test_zero_is_no_duration(var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_config({var: "0"})


def test_cache_ttl_zero_means_off() -> None:
    assert load_config({"CHATAPP_CACHE_TTL": "0"}).cache_ttl == 0


def test_a_long_enough_secret_key_starts_production() -> None:
    config = load_config({"CHATAPP_ENV": "production", "CHATAPP_SECRET_KEY": "k" * 32})
    assert config.secret_keys == ("k" * 32,)


def test_trusted_proxies_are_networks() -> None:
    config = load_config({"CHATAPP_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1 ::1"})
    assert [str(n) for n in config.trusted_proxies] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "::1/128",
    ]


def test_abuse_guards_are_off_by_default_and_read_when_on() -> None:
    assert load_config({}).moderation == "off"
    assert load_config({}).bot_check == "off"
    config = load_config(
        {
            "CHATAPP_MODERATION": "openai",
            "OPENAI_API_KEY": " key ",
            "CHATAPP_MODERATION_BASE_URL": "http://127.0.0.1:9/v1/",
            "CHATAPP_BOT_CHECK": "POW",
        }
    )
    assert config.moderation_api_key == "key"
    assert config.moderation_base_url == "http://127.0.0.1:9/v1"
    assert config.bot_check == "pow"
