"""The settings value: frozen, typed, built once with its derived values."""

from __future__ import annotations

import dataclasses

import pytest

from chatapp.config import SETTINGS
from chatapp.config import load_config
from chatapp.errors import ConfigError
from chatapp.settings import Settings
from chatapp.settings.value import LEASE_SECONDS


def test_every_table_key_is_an_attribute_lower_cased() -> None:
    settings = load_config({})
    for name in SETTINGS:
        assert name.lower() in Settings.names(), name
    assert settings.upstream_total_timeout == 600.0
    assert settings.max_output_tokens == 1024
    assert settings.log_level == "info"


def test_the_value_is_frozen() -> None:
    settings = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.model = "other"  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        settings.no_such_setting = 1  # type: ignore[attr-defined]


def test_a_wrong_environment_value_stops_with_the_same_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"CHATAPP_UPSTREAM_TOTAL_TIMEOUT": "soon"})
    message = str(info.value)
    assert message.startswith("CHATAPP_UPSTREAM_TOTAL_TIMEOUT='soon' is invalid:")
    assert "\n" not in message


def test_a_wrong_log_level_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="CHATAPP_LOG_LEVEL"):
        load_config({"CHATAPP_LOG_LEVEL": "loud"})
    assert load_config({"CHATAPP_LOG_LEVEL": " Debug "}).log_level == "debug"


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="UPSTREAM_TIMEOUT"):
        load_config({}, {"UPSTREAM_TIMEOUT": 5.0})


def test_derived_values_follow_their_sources() -> None:
    settings = load_config(
        {"CHATAPP_UPSTREAM_TOTAL_TIMEOUT": "100", "CHATAPP_STREAM_TTL": "20"}
    )
    assert settings.stream_token_ttl == 100 + 20 + 3600
    assert settings.running_ttl == 100 + 20 + LEASE_SECONDS
    assert settings.turn_seconds == 100 + 60
    assert settings.turn_grace == 120
    # A copy with another deadline derives its own values again.
    shorter = dataclasses.replace(settings, upstream_total_timeout=10.0)
    assert shorter.turn_grace == 30
    assert shorter.stream_token_ttl == 10 + 20 + 3600


def test_the_first_token_wait_is_bounded_by_the_turns_deadline() -> None:
    settings = load_config({"CHATAPP_UPSTREAM_TOTAL_TIMEOUT": "40"})
    assert settings.upstream_first_token_timeout == 40


def test_provider_and_fallback_are_resolved() -> None:
    settings = load_config(
        {
            "CHATAPP_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-test",
            "CHATAPP_PROVIDER_BASE_URL": "http://127.0.0.1:9/v1/",
            "CHATAPP_FALLBACK_MODEL": "small",
        }
    )
    assert settings.provider_base_url == "http://127.0.0.1:9/v1"
    assert settings.fallback_provider == "openai"
    assert settings.fallback_base_url == "http://127.0.0.1:9/v1"
    assert settings.fallback_api_key == "sk-test"


def test_keys_stay_out_of_the_repr() -> None:
    settings = load_config(
        {
            "CHATAPP_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-very-secret",
            "CHATAPP_SECRET_KEY": "k" * 40,
            "CHATAPP_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0",
        }
    )
    shown = repr(settings)
    for secret in ("sk-very-secret", "k" * 40, "hunter2"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {
                "CHATAPP_UPSTREAM_IDLE_TIMEOUT": "60",
                "CHATAPP_UPSTREAM_TOTAL_TIMEOUT": "30",
            },
            "CHATAPP_UPSTREAM_IDLE_TIMEOUT must not exceed",
        ),
        (
            {"CHATAPP_DAILY_TOKEN_BUDGET": "100", "CHATAPP_MAX_OUTPUT_TOKENS": "500"},
            "CHATAPP_DAILY_TOKEN_BUDGET=100 is below CHATAPP_MAX_OUTPUT_TOKENS=500",
        ),
        ({"CHATAPP_SPEND_SOFT_LIMITS": "5/day"}, "needs CHATAPP_FALLBACK_MODEL"),
        (
            {"CHATAPP_SPEND_LIMITS": "5/day", "CHATAPP_PRICES": "other=1/1"},
            "no price for the model 'demo'",
        ),
        ({"CHATAPP_MODERATION": "openai"}, "needs OPENAI_API_KEY"),
        ({"CHATAPP_FALLBACK_PROVIDER": "openai"}, "need CHATAPP_FALLBACK_MODEL"),
        (
            {
                "CHATAPP_PROVIDER": "anthropic",
                "ANTHROPIC_API_KEY": "k",
                "CHATAPP_REASONING_EFFORT": "low",
            },
            "above 1024",
        ),
        ({"CHATAPP_RATE_LIMITS": "lots"}, "CHATAPP_RATE_LIMITS='lots' is invalid"),
        ({"CHATAPP_ADMIN_TOKEN": "short"}, "CHATAPP_ADMIN_TOKEN must be at least"),
    ],
)
def test_checks_across_settings(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_budget_that_holds_one_turn_is_accepted() -> None:
    settings = load_config(
        {"CHATAPP_DAILY_TOKEN_BUDGET": "500", "CHATAPP_MAX_OUTPUT_TOKENS": "500"}
    )
    assert settings.daily_token_budget == 500
